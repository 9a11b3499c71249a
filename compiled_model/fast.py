"""The decoding step of `model.py`, compiled with numba: same model, faster.

`Model.step` stays the readable reference. Here the whole step — embedding
and position features, every layer's attention and ReGLU MLP, the cache
insert and lookup, the unembedding and argmax — runs inside compiled
functions over flat float64 arrays, and so does the decode loop, which
feeds back nothing but the argmax ids. Like `model.py` it knows no VM: it
reads a `Model`'s config and weights and nothing else.

Weights are packed once per `Model` as sparse rows (the nonzeros of each
input row of each matrix, rows without any left out): a compiled model is
about 2% nonzero. Skipping zero weights and zero inputs changes no result
(0·∞ aside, which finite weights and inputs never produce): every sum
is exact whenever the weights, keys and positions are exact dyadic numbers
(as the compiler's are); on other weights sums may round in another order
than numpy's. The caches are `Cache(model, "hull")`, the same convex hull
per head as `kvcache.HullCache` (vertex for vertex), and `"naive"`, every
key scored as in `kvcache.NaiveCache`.

Compiled code is cached on disk beside this file, or under
`NUMBA_CACHE_DIR`; where neither is writable it is compiled in every
process (a few seconds on first use) instead of failing.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numba
import numpy as np

from .model import Model

__all__ = ["Cache", "Packed", "decode", "generate", "pack", "step"]

ROOM = 256  # tokens the kernel may run before it returns to grow the buffers

# Columns of `Packed.layers`, one row per layer; *_M name a matrix, whose
# sparse rows are `Packed.mats[m, 0]` up to `Packed.mats[m, 1]`.
HEADS, DVALUE, QKV_M, WO_M, MLP, MLP_M, WD_M, HEAD0, VCOL = range(9)


def _jit(fn):
    # nogil: the kernels touch only their arrays, so sessions decoding in
    # separate threads run in parallel.
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:
        # No writable cache directory anywhere (an unprivileged install):
        # compile in this process rather than refuse to run.
        return numba.njit(nogil=True)(fn)


@dataclass(frozen=True)
class Packed:
    """A model's weights as the kernels read them.

    Every matrix is stored as sparse rows in one table: stored row `r` is
    input `rowidx[r]`, with weights `vals[rowptr[r]:rowptr[r + 1]]` at
    output columns `cols[...]`; matrix m owns rows `mats[m, 0]` up to
    `mats[m, 1]`. `layers` names, per layer, its sizes and matrices; keys of
    global head `g` go to columns 2g, 2g + 1 of a cache row.
    """

    d_model: int
    vocab_size: int
    n_heads: int  # over all layers
    value_width: int  # over all layers and heads
    wte: np.ndarray  # (V, C), dense: one row is read per token
    wp1: np.ndarray  # (C,)
    wp2: np.ndarray  # (C,)
    rowidx: np.ndarray  # (rows,) int64
    rowptr: np.ndarray  # (rows + 1,) int64
    cols: np.ndarray  # (nnz,) int64
    vals: np.ndarray  # (nnz,) float64
    mats: np.ndarray  # (matrices, 2) int64
    layers: np.ndarray  # (L, 9) int64, columns named above
    unembed: int  # the unembedding's matrix
    scratch: int  # widest intermediate vector

    def arrays(self) -> tuple:
        return (
            self.wte,
            self.wp1,
            self.wp2,
            self.rowidx,
            self.rowptr,
            self.cols,
            self.vals,
            self.mats,
            self.layers,
            self.unembed,
            self.scratch,
        )


_packed: weakref.WeakKeyDictionary[Model, Packed] = weakref.WeakKeyDictionary()


def pack(model: Model) -> Packed:
    """The model's weights packed for the kernels, once per `Model`.

    Changing `model.w` in place after the first call is not seen; build a
    new `Model` instead.
    """
    if model not in _packed:
        _packed[model] = _pack(model)
    return _packed[model]


def _pack(model: Model) -> Packed:
    c, w = model.config, model.w
    rowidx: list[int] = []
    nonzero: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    mats: list[tuple[int, int]] = []

    def add(matrix: np.ndarray) -> int:
        first = len(rowidx)
        for i, row in enumerate(np.asarray(matrix, dtype=np.float64)):
            nz = np.flatnonzero(row)
            if len(nz):
                rowidx.append(i)
                nonzero.append(nz)
                weights.append(row[nz])
        mats.append((first, len(rowidx)))
        return len(mats) - 1

    layers = np.zeros((c.n_layers, 9), dtype=np.int64)
    head, vcol, widest = 0, 0, c.vocab_size
    for i, (h, dv, f) in enumerate(zip(c.n_heads, c.d_value, c.d_mlp)):
        layers[i, HEADS], layers[i, DVALUE], layers[i, MLP] = h, dv, f
        if h:
            qkv = np.concatenate([w[f"l{i}.wq"], w[f"l{i}.wk"], w[f"l{i}.wv"]], 1)
            layers[i, QKV_M] = add(qkv)
            layers[i, WO_M] = add(w[f"l{i}.wo"])
            layers[i, HEAD0], layers[i, VCOL] = head, vcol
            head, vcol = head + h, vcol + h * dv
            widest = max(widest, qkv.shape[1])
        if f:
            layers[i, MLP_M] = add(np.concatenate([w[f"l{i}.wg"], w[f"l{i}.wu"]], 1))
            layers[i, WD_M] = add(w[f"l{i}.wd"])
            widest = max(widest, 2 * f)
    unembed = add(w["unembed"])

    rowptr = np.zeros(len(rowidx) + 1, dtype=np.int64)
    rowptr[1:] = np.cumsum([len(nz) for nz in nonzero])
    return Packed(
        c.d_model,
        c.vocab_size,
        head,
        vcol,
        np.ascontiguousarray(w["wte"]),
        np.ascontiguousarray(w["wp1"]),
        np.ascontiguousarray(w["wp2"]),
        np.array(rowidx, dtype=np.int64),
        rowptr,
        np.concatenate(nonzero + [np.zeros(0, np.int64)]).astype(np.int64),
        np.concatenate(weights + [np.zeros(0)]),
        np.array(mats, dtype=np.int64),
        layers,
        unembed,
        max(widest, c.d_model),
    )


class Cache:
    """Keys, values and (for `kind="hull"`) the hulls, as flat arrays.

    Row `t` of `keys` (T, 2·heads) and `values` (T, value width) belongs to
    the t-th position fed. Hull `2g` is the upper hull of head g's keys,
    hull `2g + 1` the upper hull of the keys with y negated (the lower
    hull); each lives in `hx`, `hy`, `hid` from `hstart` for `hlen` points
    (room for `hcap`), with x sorted. `state` is (next position, rows used,
    pending token: the argmax after the last position fed).
    """

    def __init__(self, model: Model, kind: str = "hull") -> None:
        if kind not in ("hull", "naive"):
            raise ValueError(f"unknown cache kind {kind!r}")
        self.packed = pack(model)
        self.kind = kind
        p = self.packed
        self.keys = np.zeros((ROOM, 2 * p.n_heads))
        self.values = np.zeros((ROOM, p.value_width))
        hulls = 2 * p.n_heads if kind == "hull" else 0
        self.hcap = np.full(hulls, ROOM, dtype=np.int64)
        self.hstart = np.arange(hulls, dtype=np.int64) * ROOM
        self.hlen = np.zeros(hulls, dtype=np.int64)
        self.hx = np.zeros(hulls * ROOM)
        self.hy = np.zeros(hulls * ROOM)
        self.hid = np.zeros(hulls * ROOM, dtype=np.int64)
        self.hused = hulls * ROOM  # the vertex arrays are free from here
        self.state = np.array([0, 0, -1], dtype=np.int64)

    @property
    def rows(self) -> int:
        return int(self.state[1])

    def hull(self, g: int) -> tuple[list[float], list[float], list[int]]:
        """Hull g's vertices (x, y, row), x ascending."""
        s, n = self.hstart[g], self.hlen[g]
        part = slice(s, s + n)
        return self.hx[part].tolist(), self.hy[part].tolist(), self.hid[part].tolist()

    def nbytes(self) -> int:
        """Bytes of keys and values in use (not the spare capacity)."""
        return self.rows * (self.keys.shape[1] + self.values.shape[1]) * 8

    def hull_nbytes(self) -> int:
        """Bytes of hull vertices in use: x, y and row, 8 bytes each."""
        return int(self.hlen.sum()) * 24

    def make_room(self) -> None:
        """Give every buffer at least ROOM free entries.

        Keys and values double. A hull short of room moves, with twice its
        capacity, to the free end of the vertex arrays, so one growing
        hull never copies the others; when the arrays are full they are
        doubled and compacted to the live segments.
        """
        t = self.rows
        if len(self.keys) - t < ROOM:
            size = 2 * len(self.keys) + ROOM
            self.keys = _grown(self.keys, size)
            self.values = _grown(self.values, size)
        for g in np.flatnonzero(self.hcap - self.hlen < ROOM):
            cap = 2 * int(self.hcap[g]) + ROOM
            if self.hused + cap > len(self.hx):
                self._compact(cap)
            self._move(g, self.hused, cap)
            self.hused += cap

    def _compact(self, extra: int) -> None:
        old = (self.hx, self.hy, self.hid)
        size = max(2 * len(self.hx), 2 * (int(self.hcap.sum()) + extra))
        self.hx, self.hy = np.zeros(size), np.zeros(size)
        self.hid = np.zeros(size, dtype=np.int64)
        used = 0
        for g in range(len(self.hcap)):
            self._move(g, used, int(self.hcap[g]), old)
            used += int(self.hcap[g])
        self.hused = used

    def _move(self, g: int, start: int, cap: int, old: tuple | None = None) -> None:
        hx, hy, hid = old or (self.hx, self.hy, self.hid)
        n, s = int(self.hlen[g]), int(self.hstart[g])
        self.hx[start : start + n] = hx[s : s + n]
        self.hy[start : start + n] = hy[s : s + n]
        self.hid[start : start + n] = hid[s : s + n]
        self.hstart[g], self.hcap[g] = start, cap

    def arrays(self) -> tuple:
        return (
            self.keys,
            self.values,
            self.hx,
            self.hy,
            self.hid,
            self.hstart,
            self.hcap,
            self.hlen,
            self.state,
        )


def _grown(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + a.shape[1:], dtype=a.dtype)
    out[: len(a)] = a
    return out


def step(token: int, pos: int, cache: Cache) -> int:
    """Feed one token at position `pos`; return the argmax next token."""
    cache.state[0] = pos
    _feed(cache, np.array([token], dtype=np.int64), 0, np.empty(0, np.int64))
    return int(cache.state[2])


def decode(
    model: Model,
    prompt: list[int],
    max_tokens: int,
    stops: frozenset[int] | set[int],
    cache: str | Cache = "hull",
) -> list[int]:
    """Greedy decoding: feed `prompt`, then feed back each argmax id.

    Returns up to `max_tokens` ids, ending early after one in `stops`; the
    same loop as `engine.decode`, run inside the kernel.
    """
    kv = cache if isinstance(cache, Cache) else Cache(model, cache)
    feed = np.asarray(prompt, dtype=np.int64)
    stop_ids = np.array(sorted(stops), dtype=np.int64)
    return _feed(kv, feed, max_tokens, stop_ids).tolist()


def generate(cache: Cache, n: int, stops: np.ndarray) -> list[int]:
    """Continue decoding from `cache`: its pending token first, n tokens."""
    return _feed(cache, np.empty(0, np.int64), n, stops).tolist()


def _feed(cache: Cache, feed: np.ndarray, limit: int, stops: np.ndarray) -> np.ndarray:
    out = np.empty(max(limit, 0), dtype=np.int64)
    progress = np.zeros(2, dtype=np.int64)  # tokens fed from `feed`, produced
    hull = cache.kind == "hull"
    while True:
        cache.make_room()
        weights, caches = cache.packed.arrays(), cache.arrays()
        done = _run(feed, limit, stops, out, progress, hull, weights, caches)
        if done:
            return out[: progress[1]]


# -- kernels -----------------------------------------------------------------


@_jit
def _run(feed, limit, stops, out, progress, hull, weights, caches):
    """Feed `feed`, then up to `limit` argmax ids; stop after a stop id.

    Returns False when the buffers are nearly full (the caller grows them
    and calls again; `progress` and the cache state say where it was).
    """
    keys, values, hx, hy, hid, hstart, hcap, hlen, state = caches
    d, scratch = len(weights[1]), weights[-1]
    room = len(keys) - state[1]
    for g in range(len(hlen)):
        room = min(room, hcap[g] - hlen[g])
    x, delta = np.empty(d), np.empty(d)
    buf, mix = np.empty(scratch), np.empty(scratch)
    while room > 0:
        if progress[0] < len(feed):
            token = feed[progress[0]]
            progress[0] += 1
        else:
            if progress[1] >= limit:
                return True
            token = state[2]
            out[progress[1]] = token
            progress[1] += 1
            for s in stops:
                if token == s:
                    return True
        state[2] = _forward(
            token, state[0], state[1], hull, weights, caches, x, buf, mix, delta
        )
        state[0] += 1
        state[1] += 1
        room -= 1
    return progress[0] >= len(feed) and progress[1] >= limit


@_jit
def _forward(token, pos, t, hull, weights, caches, x, buf, mix, delta):
    """One position through the model; returns the argmax next token."""
    wte, wp1, wp2, rowidx, rowptr, cols, vals, mats, layers, unembed, _ = weights
    keys, values, hx, hy, hid, hstart, hcap, hlen, state = caches
    sparse = (rowidx, rowptr, cols, vals, mats)
    p = float(pos)

    for j in range(len(x)):
        x[j] = wte[token, j] + p * wp1[j] + (p * p) * wp2[j]

    for i in range(len(layers)):
        h, dv = layers[i, HEADS], layers[i, DVALUE]
        if h:
            qkv = buf[: 4 * h + h * dv]  # queries, keys, values of every head
            _matvec(x, layers[i, QKV_M], sparse, qkv)
            head0, vcol = layers[i, HEAD0], layers[i, VCOL]
            for k in range(h):
                g = head0 + k
                kx, ky = qkv[2 * h + 2 * k], qkv[2 * h + 2 * k + 1]
                keys[t, 2 * g], keys[t, 2 * g + 1] = kx, ky
                if hull:
                    _insert(hx, hy, hid, hstart, hlen, 2 * g, kx, ky, t)
                    _insert(hx, hy, hid, hstart, hlen, 2 * g + 1, kx, -ky, t)
            values[t, vcol : vcol + h * dv] = qkv[4 * h :]
            picked = mix[: h * dv]
            for k in range(h):
                g = head0 + k
                qx, qy = qkv[2 * k], qkv[2 * k + 1]
                if hull:
                    row = _hull_pick(hx, hy, hid, hstart, hlen, 2 * g, qx, qy)
                else:
                    row = _naive_pick(keys, t, g, qx, qy)
                first = vcol + k * dv
                picked[k * dv : (k + 1) * dv] = values[row, first : first + dv]
            _matvec(picked, layers[i, WO_M], sparse, delta)
            x += delta

        f = layers[i, MLP]
        if f:
            gate_up = buf[: 2 * f]
            _matvec(x, layers[i, MLP_M], sparse, gate_up)
            hidden = mix[:f]
            for u in range(f):
                up = gate_up[f + u]
                hidden[u] = gate_up[u] * (up if up > 0.0 or up != up else 0.0)
            _matvec(hidden, layers[i, WD_M], sparse, delta)
            x += delta

    logits = buf[: len(wte)]
    _matvec(x, unembed, sparse, logits)
    return _argmax(logits)


@_jit
def _matvec(x, m, sparse, out):
    """out = x @ (matrix m), over its stored rows only."""
    rowidx, rowptr, cols, vals, mats = sparse
    out[:] = 0.0
    for r in range(mats[m, 0], mats[m, 1]):
        xi = x[rowidx[r]]
        if xi == 0.0:
            continue
        for p in range(rowptr[r], rowptr[r + 1]):
            out[cols[p]] += xi * vals[p]


@_jit
def _argmax(v):
    # numpy's rule: the first maximum, or the first NaN if there is one.
    best = 0
    for i in range(len(v)):
        if v[i] != v[i]:
            return i
        if v[i] > v[best]:
            best = i
    return best


@_jit
def _naive_pick(keys, t, g, qx, qy):
    best, top = 0, 0.0
    for r in range(t + 1):
        s = keys[r, 2 * g] * qx + keys[r, 2 * g + 1] * qy
        if s != s:
            return r
        if r == 0 or s > top:
            best, top = r, s
    return best


@_jit
def _hull_pick(hx, hy, hid, hstart, hlen, g, qx, qy):
    """Row of the best key of head g (upper hull 2g, lower 2g + 1)."""
    if qy > 0:
        return _best(hx, hy, hid, hstart[g], hlen[g], qx / qy)
    if qy < 0:
        return _best(hx, hy, hid, hstart[g + 1], hlen[g + 1], -qx / qy)
    s = hstart[g]
    return hid[s + hlen[g] - 1] if qx > 0 else hid[s]


@_jit
def _best(hx, hy, hid, s, n, qx):
    # The scores qx·x + y along the hull rise, then fall: search the peak.
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        a = qx * hx[s + mid] + 1.0 * hy[s + mid]
        b = qx * hx[s + mid + 1] + 1.0 * hy[s + mid + 1]
        if b > a:
            lo = mid + 1
        else:
            hi = mid
    return hid[s + lo]


@_jit
def _below(hx, hy, a, b, x, y):
    # Is (x, y) on or below the segment from point a to point b?
    xa, ya, xb, yb = hx[a], hy[a], hx[b], hy[b]
    return (x - xa) * (yb - ya) - (y - ya) * (xb - xa) >= 0


@_jit
def _insert(hx, hy, hid, hstart, hlen, g, x, y, row):
    """Add (x, y) to upper hull g, as `kvcache._UpperHull.insert` does."""
    s, n = hstart[g], hlen[g]
    if n == 0 or hx[s + n - 1] < x:
        i = n  # past every vertex, as position keys arrive
    else:
        lo, hi = 0, n
        while lo < hi:  # bisect_left on x
            mid = (lo + hi) // 2
            if hx[s + mid] < x:
                lo = mid + 1
            else:
                hi = mid
        i = lo
    if i < n and hx[s + i] == x:
        if y <= hy[s + i]:
            return
        n = _delete(hx, hy, hid, s, n, i)
    if 0 < i < n and _below(hx, hy, s + i - 1, s + i, x, y):
        hlen[g] = n
        return
    for j in range(n, i, -1):
        hx[s + j], hy[s + j], hid[s + j] = hx[s + j - 1], hy[s + j - 1], hid[s + j - 1]
    hx[s + i], hy[s + i], hid[s + i] = x, y, row
    n += 1
    while i >= 2 and _below(hx, hy, s + i - 2, s + i, hx[s + i - 1], hy[s + i - 1]):
        n = _delete(hx, hy, hid, s, n, i - 1)
        i -= 1
    while i + 2 < n and _below(hx, hy, s + i, s + i + 2, hx[s + i + 1], hy[s + i + 1]):
        n = _delete(hx, hy, hid, s, n, i + 1)
    hlen[g] = n


@_jit
def _delete(hx, hy, hid, s, n, i):
    for j in range(i, n - 1):
        hx[s + j], hy[s + j], hid[s + j] = hx[s + j + 1], hy[s + j + 1], hid[s + j + 1]
    return n - 1
