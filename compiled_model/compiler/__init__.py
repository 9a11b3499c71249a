"""The compiler: accumulator machine -> graph -> weights, one pass per file.

circuit.build_graph()  what every position computes (graph.py, gadgets.py)
emit.emit(graph)       zeroed tensors with each node written in its slot
"""

from __future__ import annotations

from ..model import Model
from .circuit import build_graph
from .emit import emit

__all__ = ["compile_model"]


def compile_model() -> Model:
    """Build the executor's weights; deterministic, no randomness anywhere."""
    config, weights = emit(build_graph())
    return Model(config, weights)
