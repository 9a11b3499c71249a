"""The executor API the gateway calls: a session of fragments.

A session owns its context (the bindings of earlier fragments). `run` parses
a fragment, lowers it, executes it on the compiled model (or, for tests, on
the reference VM) and reads value, bindings and errors back from the trace
tokens alone. Bindings change only when a fragment succeeds, as on the BEAM.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ParseError, UnsupportedError
from .isa import Program
from .lower import Binding, CompileError, lower
from .parse import Parser, elixir_parse
from .vocab import DIV0, GROUP, HALT, OVF, VOCAB, decode_word

__all__ = ["CompiledResult", "CompiledSession", "Runner", "read_trace"]

log = logging.getLogger(__name__)

# A runner executes a program and returns its trace token ids (after the
# prompt); it stops at an end token or after max_tokens.
Runner = Callable[[Program, int], list[int]]

MAX_TOKENS = 2_000_000


@dataclass(frozen=True)
class CompiledResult:
    ok: bool
    value: str | None
    data: int | bool | None
    error: dict[str, Any] | None
    elapsed_us: int
    trace_tokens: int


@dataclass(frozen=True)
class TraceReading:
    accs: list[int]
    end: str
    pc: int


def read_trace(ids: list[int]) -> TraceReading:
    """Accumulator values and the end of a trace, from its tokens only."""
    toks = [VOCAB[i] for i in ids]
    accs: list[int] = []
    pos, pc = 0, -1
    while pos < len(toks) and toks[pos].startswith("pc:"):
        pc = int(toks[pos][3:])
        word = toks[pos + 1 : pos + GROUP]
        if word and word[0] in (HALT, DIV0, OVF):
            return TraceReading(accs, word[0], pc)
        if len(word) < GROUP - 1:
            break
        accs.append(decode_word(word))
        pos += GROUP
    return TraceReading(accs, "limit", pc)


def _default_runner() -> Runner:
    from .engine import model_runner

    return model_runner()


class CompiledSession:
    """Runs fragments on the compiled model; one context per session.

    Not safe for concurrent `run` calls on the same session; separate
    sessions may run in separate threads.
    """

    def __init__(
        self,
        parser: Parser | None = None,
        runner: Runner | None = None,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self._parse = parser or elixir_parse
        self._run = runner or _default_runner()
        self._max_tokens = max_tokens
        self.bindings: dict[str, Binding] = {}

    def fork(self) -> CompiledSession:
        other = CompiledSession(self._parse, self._run, self._max_tokens)
        other.bindings = dict(self.bindings)
        return other

    def run(self, code: str, line: int = 1) -> CompiledResult:
        start = time.perf_counter()
        try:
            program = lower(self._parse(code), self.bindings, line)
        except ParseError as exc:
            return _fail("SyntaxError", str(exc), exc.line + line - 1, start, 0)
        except CompileError as exc:
            return _fail("CompileError", str(exc), exc.line, start, 0)
        except UnsupportedError as exc:
            return _fail("unsupported", str(exc), exc.line, start, 0)
        ids = self._run(program, self._max_tokens)
        reading = read_trace(ids)
        if reading.end == DIV0:
            where = program.code[reading.pc].line
            msg = "bad argument in arithmetic expression"
            return _fail("ArithmeticError", msg, where, start, len(ids))
        if reading.end == OVF:
            where = program.code[reading.pc].line
            msg = (
                "unsupported: integer result outside the signed 32-bit range "
                "(the BEAM would continue with a bignum)"
            )
            return _fail("unsupported", msg, where, start, len(ids))
        if reading.end != HALT:
            msg = f"unsupported: trace longer than {self._max_tokens} tokens"
            return _fail("unsupported", msg, line, start, len(ids))
        return self._succeed(program, reading, start, len(ids))

    def _succeed(
        self, program: Program, reading: TraceReading, start: float, n: int
    ) -> CompiledResult:
        count = len(program.exports)
        values = reading.accs[-(count + 1) :]
        for (name, kind), raw in zip(program.exports, values):
            self.bindings[name] = Binding(kind, raw)
        data: int | bool = values[-1]
        if program.result_type == "bool":
            data = bool(data)
        value = str(data).lower() if isinstance(data, bool) else str(data)
        return CompiledResult(True, value, data, None, _since(start), n)


def _since(start: float) -> int:
    return int((time.perf_counter() - start) * 1e6)


def _fail(kind: str, message: str, line: int, start: float, n: int) -> CompiledResult:
    error = {"kind": kind, "message": message, "line": line}
    return CompiledResult(False, None, None, error, _since(start), n)
