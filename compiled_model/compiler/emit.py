"""Pass 3: write the graph into the generic model's tensors.

Weights start at zero; each head, unit and embedding feature is written into
its named slot. The unembedding scores token i as 2*i*out - i*i, a parabola
that peaks exactly at i = out (margin 1 for integer ids).
"""

from __future__ import annotations

import numpy as np

from ..model import Config
from .graph import Graph, Lin

__all__ = ["emit"]


def _column(form: Lin, d: int) -> np.ndarray:
    col = np.zeros(d)
    for slot, coef in form.terms.items():
        col[slot] += coef
    return col


def emit(g: Graph) -> tuple[Config, dict[str, np.ndarray]]:
    d, vocab, n_layers = len(g.labels), g.vocab, g.n_layers
    w: dict[str, np.ndarray] = {}

    wte = np.zeros((len(vocab), d))
    for slot, fn in g.features.items():
        wte[:, slot] = [fn(tok) for tok in vocab]
    w["wte"] = wte
    w["wp1"] = np.zeros(d)
    w["wp1"][g.pos_slot] = 1.0
    w["wp2"] = np.zeros(d)
    w["wp2"][g.pos2_slot] = 1.0

    n_heads, d_value, d_mlp = [], [], []
    for layer in range(1, n_layers + 1):
        heads = [h for h in g.heads if h.layer == layer]
        dv = max((len(h.values) for h in heads), default=0)
        i = layer - 1
        if heads:
            wq, wk = np.zeros((d, 2 * len(heads))), np.zeros((d, 2 * len(heads)))
            wv, wo = np.zeros((d, dv * len(heads))), np.zeros((dv * len(heads), d))
            for n, head in enumerate(heads):
                for c in range(2):
                    wq[:, 2 * n + c] = _column(head.query[c], d)
                    wk[:, 2 * n + c] = _column(head.key[c], d)
                for j, (form, dest) in enumerate(head.values):
                    wv[:, dv * n + j] = _column(form, d)
                    wo[dv * n + j, dest] = 1.0
            w.update({f"l{i}.wq": wq, f"l{i}.wk": wk, f"l{i}.wv": wv, f"l{i}.wo": wo})
        units = [u for u in g.units if u.layer == layer]
        if units:
            wg, wu, wd = (
                np.zeros((d, len(units))),
                np.zeros((d, len(units))),
                np.zeros((len(units), d)),
            )
            for n, unit in enumerate(units):
                wg[:, n] = _column(unit.gate, d)
                wu[:, n] = _column(unit.up, d)
                wd[n, unit.out] = unit.coef
            w.update({f"l{i}.wg": wg, f"l{i}.wu": wu, f"l{i}.wd": wd})
        n_heads.append(len(heads))
        d_value.append(dv)
        d_mlp.append(len(units))

    ids = np.arange(len(vocab), dtype=np.float64)
    w["unembed"] = np.outer(_column(g.out, d), 2 * ids) - np.outer(
        _column(g.one, d), ids * ids
    )
    config = Config(len(vocab), d, tuple(n_heads), tuple(d_value), tuple(d_mlp))
    return config, w
