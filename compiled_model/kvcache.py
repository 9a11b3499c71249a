"""Key/value caches for hard-max attention with 2-D keys.

`NaiveCache` scores every cached key (O(t) per lookup). `HullCache` keeps,
per head, the convex hull of its keys: the best key for a query direction
is a hull vertex, found by binary search (O(log t) per lookup; insertion is
amortised O(1) when keys arrive in hull order, as position keys do). Both
return the same positions whenever the best score is unique; on exact ties
they may differ, which the compiled weights never produce.
"""

from __future__ import annotations

from bisect import bisect_left

import numpy as np

from .model import Config

__all__ = ["HullCache", "NaiveCache"]


class _Store:
    """Growable per-layer arrays of keys (T, H, 2) and values (T, H, dv)."""

    def __init__(self, config: Config, capacity: int = 1024) -> None:
        self.n = [0] * config.n_layers
        self.keys = [np.zeros((capacity, h, 2)) for h in config.n_heads]
        self.values = [
            np.zeros((capacity, h, dv)) for h, dv in zip(config.n_heads, config.d_value)
        ]

    def put(self, layer: int, keys: np.ndarray, values: np.ndarray) -> int:
        t = self.n[layer]
        if t == len(self.keys[layer]):
            self.keys[layer] = np.concatenate(
                [self.keys[layer], np.zeros_like(self.keys[layer])]
            )
            self.values[layer] = np.concatenate(
                [self.values[layer], np.zeros_like(self.values[layer])]
            )
        self.keys[layer][t] = keys
        self.values[layer][t] = values
        self.n[layer] = t + 1
        return t

    def nbytes(self) -> int:
        return sum(
            k[:n].nbytes + v[:n].nbytes
            for k, v, n in zip(self.keys, self.values, self.n)
        )


class NaiveCache(_Store):
    def append(self, layer: int, keys: np.ndarray, values: np.ndarray) -> None:
        self.put(layer, keys, values)

    def attend(self, layer: int, queries: np.ndarray) -> np.ndarray:
        t = self.n[layer]
        scores = np.einsum("thc,hc->th", self.keys[layer][:t], queries)  # (T, H)
        best = np.argmax(scores, axis=0)  # (H,)
        return self.values[layer][best, np.arange(len(best))]


class _UpperHull:
    """Upper convex hull of points (x, y), x kept sorted."""

    def __init__(self) -> None:
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.ids: list[int] = []

    def _below(self, a: int, b: int, x: float, y: float) -> bool:
        # Is (x, y) on or below the segment from vertex a to vertex b?
        xa, ya, xb, yb = self.xs[a], self.ys[a], self.xs[b], self.ys[b]
        return (x - xa) * (yb - ya) - (y - ya) * (xb - xa) >= 0

    def insert(self, x: float, y: float, pid: int) -> None:
        xs, ys, ids = self.xs, self.ys, self.ids
        i = bisect_left(xs, x)
        if i < len(xs) and xs[i] == x:
            if y <= ys[i]:
                return
            del xs[i], ys[i], ids[i]
        if 0 < i < len(xs) and self._below(i - 1, i, x, y):
            return
        xs.insert(i, x)
        ys.insert(i, y)
        ids.insert(i, pid)
        while i >= 2 and self._below(i - 2, i, xs[i - 1], ys[i - 1]):
            del xs[i - 1], ys[i - 1], ids[i - 1]
            i -= 1
        while i + 2 < len(xs) and self._below(i, i + 2, xs[i + 1], ys[i + 1]):
            del xs[i + 1], ys[i + 1], ids[i + 1]

    def best(self, qx: float, qy: float) -> int:
        xs, ys = self.xs, self.ys
        lo, hi = 0, len(xs) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if qx * xs[mid + 1] + qy * ys[mid + 1] > qx * xs[mid] + qy * ys[mid]:
                lo = mid + 1
            else:
                hi = mid
        return self.ids[lo]


class HullCache(_Store):
    def __init__(self, config: Config, capacity: int = 1024) -> None:
        super().__init__(config, capacity)
        self.upper = [[_UpperHull() for _ in range(h)] for h in config.n_heads]
        self.lower = [[_UpperHull() for _ in range(h)] for h in config.n_heads]

    def append(self, layer: int, keys: np.ndarray, values: np.ndarray) -> None:
        t = self.put(layer, keys, values)
        for head, (kx, ky) in enumerate(keys.tolist()):
            self.upper[layer][head].insert(kx, ky, t)
            self.lower[layer][head].insert(kx, -ky, t)

    def attend(self, layer: int, queries: np.ndarray) -> np.ndarray:
        picked = np.empty(len(queries), dtype=np.int64)
        for head, (qx, qy) in enumerate(queries.tolist()):
            if qy > 0:
                picked[head] = self.upper[layer][head].best(qx / qy, 1.0)
            elif qy < 0:
                picked[head] = self.lower[layer][head].best(-qx / qy, 1.0)
            else:
                hull = self.upper[layer][head]
                picked[head] = hull.ids[-1] if qx > 0 else hull.ids[0]
        return self.values[layer][picked, np.arange(len(picked))]
