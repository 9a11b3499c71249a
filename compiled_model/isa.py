"""The accumulator machine the front end targets and the model executes.

One accumulator `acc` and a word memory addressed by slot. Every
instruction has one integer argument (a constant, a slot or a jump target):

    CONST c   acc = c                 LOAD x    acc = mem[x]
    STORE x   mem[x] = acc            NEG       acc = -acc
    ADD/SUB/MUL/DIV x  acc = acc op mem[x]   (DIV truncates, as Elixir's div)
    LT/LE/GT/GE/EQ/NE x  acc = 1 if acc cmp mem[x] else 0
    NOT       acc = 1 - acc           JMP t     pc = t
    JZ t      pc = t if acc == 0      HALT      stop; acc is the result

Words are signed 32-bit; a result outside that range ends the run with an
overflow, and DIV by zero ends it with a division error.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_PROGRAM",
    "MAX_SLOTS",
    "OPS",
    "Instr",
    "Program",
]

OPS: tuple[str, ...] = (
    "CONST",
    "LOAD",
    "STORE",
    "ADD",
    "SUB",
    "MUL",
    "DIV",
    "LT",
    "LE",
    "GT",
    "GE",
    "EQ",
    "NE",
    "NOT",
    "NEG",
    "JMP",
    "JZ",
    "HALT",
)

INT_MIN = -(2**31)
INT_MAX = 2**31 - 1

# The vocabulary has one token per pc, and slots must stay far below the
# sentinel address the memory head gives non-writers.
MAX_PROGRAM = 256
MAX_SLOTS = 1024


@dataclass(frozen=True)
class Instr:
    op: str
    arg: int = 0
    line: int = 1


@dataclass(frozen=True)
class Program:
    """Bytecode plus what the session needs to read its result back."""

    code: tuple[Instr, ...]
    result_type: str  # "int" or "bool"
    exports: tuple[tuple[str, str], ...]  # (name, type) read back in order
