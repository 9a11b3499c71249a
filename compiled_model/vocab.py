"""Tokens of programs and traces.

A prompt is `<bos>`, then per instruction `op:<OP> <sign> d7..d0` (the
argument in sign-magnitude, eight hex digits, most significant first), then
`<run>`. A trace is, per executed instruction, `pc:<n>` followed by the
accumulator after it in the same sign + eight digit form — or, for HALT and
errors, `pc:<n>` followed by `<halt>`, `<err:div0>` or `<err:ovf>`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .isa import MAX_PROGRAM, OPS, Program

__all__ = [
    "BOS",
    "ENDS",
    "GROUP",
    "RUN",
    "VOCAB",
    "decode_word",
    "encode_program",
    "encode_word",
    "token_id",
    "write_vocab",
]

BOS, RUN, HALT, DIV0, OVF = "<bos>", "<run>", "<halt>", "<err:div0>", "<err:ovf>"
ENDS = (HALT, DIV0, OVF)
GROUP = 10  # tokens per step that writes the accumulator

VOCAB: tuple[str, ...] = (
    (BOS, RUN, HALT, DIV0, OVF)
    + tuple(f"op:{op}" for op in OPS)
    + ("+", "-")
    + tuple(f"d{k}:{h:x}" for k in range(8) for h in range(16))
    + tuple(f"pc:{n}" for n in range(MAX_PROGRAM))
)
_IDS = {tok: i for i, tok in enumerate(VOCAB)}


def token_id(tok: str) -> int:
    return _IDS[tok]


def encode_word(value: int) -> list[str]:
    """Sign and eight hex digits of |value|, most significant first."""
    mag = abs(value)
    sign = "-" if value < 0 else "+"
    return [sign] + [f"d{k}:{(mag >> (4 * k)) & 15:x}" for k in range(7, -1, -1)]


def decode_word(tokens: list[str]) -> int:
    mag = sum(int(tok[3:], 16) << (4 * (7 - i)) for i, tok in enumerate(tokens[1:]))
    return -mag if tokens[0] == "-" else mag


def encode_program(program: Program) -> list[int]:
    toks = [BOS]
    for ins in program.code:
        toks += [f"op:{ins.op}"] + encode_word(ins.arg)
    toks.append(RUN)
    return [_IDS[t] for t in toks]


def write_vocab(path: Path) -> None:
    path.write_text(json.dumps(list(VOCAB)))
