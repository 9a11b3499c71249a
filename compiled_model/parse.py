"""Fragment source to AST, through Elixir's own parser.

One long-lived `elixir` process runs `ast.exs`; fragments go in as base64
lines and come back as JSON-encoded quoted forms. The process starts on first
use and is shared by the whole process (guarded by a lock). The gateway may
pass its own parser (any callable `code -> AST`) to `CompiledSession`, for
example one that asks the BEAM node, which parses anyway.

AST shape (plain Python values): integers, lists, `Atom(name)`, `Str(text)`,
`Pair(a, b)` for 2-tuples, `Call(form, line, args)` for 3-tuples, and
`Opaque(kind)` for anything the subset never needs (floats, bigger tuples).
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import CompiledModelError, ParseError

__all__ = [
    "Atom",
    "Call",
    "Opaque",
    "Pair",
    "Parser",
    "Str",
    "elixir_parse",
]

_SCRIPT = Path(__file__).with_name("ast.exs")


@dataclass(frozen=True)
class Atom:
    name: str


@dataclass(frozen=True)
class Str:
    text: str


@dataclass(frozen=True)
class Pair:
    left: Any
    right: Any


@dataclass(frozen=True)
class Call:
    form: Any
    line: int
    args: Any


@dataclass(frozen=True)
class Opaque:
    kind: str


Parser = Callable[[str], Any]


def _decode(node: Any) -> Any:
    if isinstance(node, int):
        return node
    if isinstance(node, list):
        return [_decode(item) for item in node]
    if "a" in node:
        return Atom(base64.b64decode(node["a"]).decode())
    if "s" in node:
        return Str(base64.b64decode(node["s"]).decode())
    if "f" in node:
        return Call(_decode(node["f"]), node["l"], _decode(node["x"]))
    if "p" in node:
        return Pair(_decode(node["p"][0]), _decode(node["p"][1]))
    return Opaque(next(iter(node)))


class _ElixirProcess:
    """The shared `elixir ast.exs` child, started lazily."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def _ensure(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                ["elixir", str(_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        return self._proc

    def parse(self, code: str) -> Any:
        framed = base64.b64encode(code.encode()).decode()
        with self._lock:
            proc = self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(framed + "\n")
            proc.stdin.flush()
            reply = proc.stdout.readline()
        if not reply:
            raise CompiledModelError("the elixir parser process exited")
        status, _, rest = reply.rstrip("\n").partition(" ")
        if status == "ok":
            return _decode(json.loads(rest))
        line, _, message = rest.partition(" ")
        raise ParseError(base64.b64decode(message).decode(), int(line))


_PROCESS = _ElixirProcess()


def elixir_parse(code: str) -> Any:
    """Parse one fragment with Elixir's parser; raises ParseError."""
    return _PROCESS.parse(code)
