"""Pass 2 vocabulary: exact integer gadgets built from ReGLU units.

All arguments are integer-valued forms. `M` pushes a gadget's inputs far
below zero when its guard is off, so a guarded gadget outputs exactly 0.
"""

from __future__ import annotations

from .graph import Graph, Lin

__all__ = ["M", "eq0_terms", "ge0_terms", "relu"]

M = float(2**40)  # larger than any operand difference the machine forms


def relu(g: Graph, label: str, one: Lin, x: Lin) -> Lin:
    return g.reglu(label, [(1.0, one, x)])


def ge0_terms(one: Lin, x: Lin, off: Lin | None = None) -> list[tuple[float, Lin, Lin]]:
    """[x >= 0] = relu(x + 1) - relu(x); off (0 or M) disables it."""
    off = off or Lin()
    return [(1.0, one, x + one - off), (-1.0, one, x - off)]


def eq0_terms(one: Lin, x: Lin, off: Lin | None = None) -> list[tuple[float, Lin, Lin]]:
    """[x == 0] = relu(x + 1) - 2 relu(x) + relu(x - 1)."""
    off = off or Lin()
    return [(1.0, one, x + one - off), (-2.0, one, x - off), (1.0, one, x - one - off)]
