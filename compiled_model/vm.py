"""Reference VM: runs bytecode in plain Python and emits the exact trace
the compiled model must emit. It is the oracle of every model test."""

from __future__ import annotations

from dataclasses import dataclass

from .isa import INT_MAX, INT_MIN, Program
from .vocab import DIV0, HALT, OVF, encode_word, token_id

__all__ = ["RunResult", "run"]

_CMP = {
    "LT": lambda a, b: a < b,
    "LE": lambda a, b: a <= b,
    "GT": lambda a, b: a > b,
    "GE": lambda a, b: a >= b,
    "EQ": lambda a, b: a == b,
    "NE": lambda a, b: a != b,
}


@dataclass(frozen=True)
class RunResult:
    trace: list[int]  # token ids after the prompt
    accs: list[int]  # accumulator after each non-final step
    end: str  # "<halt>", "<err:div0>", "<err:ovf>" or "limit"
    pc: int  # pc of the last step
    steps: int


def _div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


def run(program: Program, max_steps: int = 10**7) -> RunResult:
    code = program.code
    mem: dict[int, int] = {}
    acc, pc, steps = 0, 0, 0
    trace: list[str] = []
    accs: list[int] = []
    end = "limit"
    while steps < max_steps:
        ins = code[pc]
        trace.append(f"pc:{pc}")
        steps += 1
        op, arg = ins.op, ins.arg
        nxt = pc + 1
        if op == "HALT":
            end = HALT
            break
        if op == "CONST":
            acc = arg
        elif op == "LOAD":
            acc = mem[arg]
        elif op == "STORE":
            mem[arg] = acc
        elif op == "ADD":
            acc = acc + mem[arg]
        elif op == "SUB":
            acc = acc - mem[arg]
        elif op == "MUL":
            acc = acc * mem[arg]
        elif op == "DIV":
            if mem[arg] == 0:
                end = DIV0
                break
            acc = _div(acc, mem[arg])
        elif op in _CMP:
            acc = int(_CMP[op](acc, mem[arg]))
        elif op == "NOT":
            acc = 1 - acc
        elif op == "NEG":
            acc = -acc
        elif op == "JMP":
            nxt = arg
        elif op == "JZ":
            nxt = arg if acc == 0 else nxt
        if not INT_MIN <= acc <= INT_MAX:
            end = OVF
            break
        trace += encode_word(acc)
        accs.append(acc)
        pc = nxt
    if end != "limit":
        trace.append(end)
    return RunResult([token_id(t) for t in trace], accs, end, pc, steps)
