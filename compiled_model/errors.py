"""Exceptions of the compiled executor, rooted in one class."""

from __future__ import annotations

__all__ = ["CompiledModelError", "ParseError", "UnsupportedError"]


class CompiledModelError(Exception):
    """Root of every error this package raises on purpose."""


class ParseError(CompiledModelError):
    """Elixir's parser rejected the fragment."""

    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.line = line


class UnsupportedError(CompiledModelError):
    """The fragment uses a construct outside the compiled subset."""

    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.line = line
