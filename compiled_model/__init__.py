"""A transformer whose weights a compiler sets so that greedy decoding
executes a subset of Elixir exactly; beambridge's second executor.

    from compiled_model import CompiledSession
    s = CompiledSession()
    r = s.run("x = div(7, -2)")   # r.value == "-3", as in Elixir
"""

from __future__ import annotations

from .errors import CompiledModelError, ParseError, UnsupportedError
from .session import CompiledResult, CompiledSession

__all__ = [
    "CompiledModelError",
    "CompiledResult",
    "CompiledSession",
    "ParseError",
    "UnsupportedError",
]
