"""A transformer whose weights a compiler sets so that greedy decoding
executes a subset of Elixir exactly; beambridge's second executor.

    from compiled_model import CompiledSession
    s = CompiledSession()
    r = s.run("x = div(7, -2)")   # r.value == "-3", as in Elixir

Names are imported lazily, so `compiled_model.model` (the generic
transformer) can be imported without the compiler, VM or front end.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CompiledModelError",
    "CompiledResult",
    "CompiledSession",
    "ParseError",
    "UnsupportedError",
]


def __getattr__(name: str) -> Any:
    if name in ("CompiledResult", "CompiledSession"):
        from . import session

        return getattr(session, name)
    if name in ("CompiledModelError", "ParseError", "UnsupportedError"):
        from . import errors

        return getattr(errors, name)
    raise AttributeError(name)
