"""Decoding speed of the compiled executor at long trace lengths.

One long program (a counted loop) is decoded by the fast path (`fast.py`,
hull cache) to the longest length; at each checkpoint it reports the
median tokens/s of the three 1000-token windows before it (one at 1e3).
Beside it, in the same run:

- the numpy hull path (`Model.step` + `kvcache.HullCache`) decodes the same
  trace token by token up to 1e5 tokens; past that it is sampled, from a
  copy of the fast path's keys, values and hull vertices at that length
  (the two hold the same vertices, tests/compiled/test_fast.py);
- the naive caches, numpy and compiled, are sampled the same way for a
  short window (their cost per token depends only on how many keys they
  hold).

Every window's tokens are checked against the VM's trace. Prints a table and
writes bench/results/compiled.json after every checkpoint, so a cut-short
run keeps what it measured.

    .venv/bin/python bench/compiled_bench.py [--lengths 1e3,1e4,1e5,1e6]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from compiled_model import engine, fast, vm
from compiled_model.kvcache import HullCache, NaiveCache
from compiled_model.lower import lower
from compiled_model.model import Config, Model
from compiled_model.parse import elixir_parse
from compiled_model.vocab import ENDS, GROUP, encode_program, token_id

OUT = Path(__file__).parent / "results" / "compiled.json"
WINDOW = 1000  # tokens timed before each checkpoint (fast, numpy hull)
FAST_WINDOWS = 3  # the fast path reports the median of this many windows
NAIVE_WINDOW = 200  # tokens sampled from a copy (naive caches)
NUMPY_FULL = 100_000  # the numpy hull path decodes this far, then is sampled
STOPS = np.array(sorted(token_id(t) for t in ENDS), dtype=np.int64)


def _python_hull_bytes(cache: HullCache) -> int:
    # Three Python lists per hull (x, y, id): a float or int object plus a
    # list slot each, about 32 bytes per entry per list.
    points = sum(len(h.xs) for layer in cache.upper + cache.lower for h in layer)
    return points * 3 * 32


def _numpy_copies(kv: fast.Cache, config: Config) -> tuple[HullCache, NaiveCache]:
    """The fast cache's keys, values and hulls as the numpy caches hold them."""
    t = kv.rows
    hull, naive = HullCache(config, t + WINDOW), NaiveCache(config, 1)
    g = vcol = 0
    for layer, (heads, dv) in enumerate(zip(config.n_heads, config.d_value)):
        if not heads:
            continue
        keys = kv.keys[:t, 2 * g : 2 * (g + heads)].reshape(t, heads, 2)
        values = kv.values[:t, vcol : vcol + heads * dv].reshape(t, heads, dv)
        # Both copies share the arrays: from row t they write the same keys
        # and values, since both are fed the same tokens.
        hull.keys[layer][:t], hull.values[layer][:t] = keys, values
        naive.keys[layer], naive.values[layer] = hull.keys[layer], hull.values[layer]
        hull.n[layer] = naive.n[layer] = t
        for h in range(heads):
            upper, lower = hull.upper[layer][h], hull.lower[layer][h]
            upper.xs, upper.ys, upper.ids = kv.hull(2 * (g + h))
            lower.xs, lower.ys, lower.ids = kv.hull(2 * (g + h) + 1)
        g, vcol = g + heads, vcol + heads * dv
    return hull, naive


def _numpy_window(model: Model, cache, token: int, pos: int, n: int):
    """Time n numpy steps from `token` at `pos`; return (s/token, tokens)."""
    produced = []
    t0 = time.perf_counter()
    for i in range(n):
        produced.append(token)
        token = model.step(token, pos + i, cache)
    return (time.perf_counter() - t0) / n, produced


def _fast_naive_window(kv: fast.Cache, model: Model, n: int):
    naive = fast.Cache(model, "naive")
    naive.keys, naive.values = kv.keys.copy(), kv.values.copy()
    naive.state[:] = kv.state
    t0 = time.perf_counter()
    produced = fast.generate(naive, n, STOPS)
    return (time.perf_counter() - t0) / n, produced


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="1e3,1e4,1e5,1e6")
    args = parser.parse_args()
    lengths = sorted(int(float(x)) for x in args.lengths.split(","))

    model = engine.load_model()
    iterations = lengths[-1] // 100 + 10
    body = "if rem(i, 3) == 0 do acc - i else acc + 2 * i end"
    src = f"Enum.reduce(1..{iterations}, 0, fn i, acc -> {body} end)"
    program = lower(elixir_parse(src), {})
    want = vm.run(program).trace
    prompt = encode_program(program)
    base = len(prompt)

    t0 = time.perf_counter()
    fast.decode(model, prompt, 1, set(STOPS.tolist()))
    warmup = time.perf_counter() - t0  # loads (or compiles) the kernels

    kv = fast.Cache(model)
    fast.decode(model, prompt, 0, set(), kv)
    fast_trace: list[int] = []
    fast_total = 0.0

    ref = HullCache(model.config)
    for pos, tok in enumerate(prompt):
        nxt = model.step(tok, pos, ref)
    ref_trace: list[int] = []
    stamps: list[float] = []

    rows = []
    for length in lengths:
        windows = max(1, min(FAST_WINDOWS, length // WINDOW))
        timed: list[float] = []
        while len(fast_trace) < length:
            timing = len(fast_trace) >= length - windows * WINDOW
            n = WINDOW if timing else length - windows * WINDOW - len(fast_trace)
            t0 = time.perf_counter()
            fast_trace += fast.generate(kv, n, STOPS)
            spent = time.perf_counter() - t0
            fast_total += spent
            if timing:
                timed.append(spent / WINDOW)
        fast_s = statistics.median(timed)
        assert fast_trace == want[:length], "fast trace diverged from the VM"

        if length <= NUMPY_FULL:
            while len(ref_trace) < length:
                ref_trace.append(nxt)
                t0 = time.perf_counter()
                nxt = model.step(nxt, base + len(ref_trace) - 1, ref)
                stamps.append(time.perf_counter() - t0)
            assert ref_trace == want[:length], "numpy hull trace diverged"
            numpy_s = sum(stamps[-WINDOW:]) / len(stamps[-WINDOW:])
            numpy_hull_bytes = _python_hull_bytes(ref)
            sampled = False
        pending, pos = int(kv.state[2]), base + length
        hull_copy, naive_copy = _numpy_copies(kv, model.config)
        if length > NUMPY_FULL:
            numpy_s, got = _numpy_window(model, hull_copy, pending, pos, WINDOW)
            assert got == want[length : length + WINDOW], "numpy hull diverged"
            numpy_hull_bytes = _python_hull_bytes(hull_copy)
            sampled = True
        naive_s, got = _numpy_window(model, naive_copy, pending, pos, NAIVE_WINDOW)
        assert got == want[length : length + NAIVE_WINDOW], "numpy naive diverged"
        fast_naive_s, got = _fast_naive_window(kv, model, NAIVE_WINDOW)
        assert got == want[length : length + NAIVE_WINDOW], "fast naive diverged"

        rows.append(
            {
                "trace_tokens": length,
                "fast_hull_tokens_per_s": round(1 / fast_s),
                "fast_hull_steps_per_s": round(1 / fast_s / GROUP),
                "fast_hull_us_per_token": round(fast_s * 1e6, 2),
                "numpy_hull_tokens_per_s": round(1 / numpy_s),
                "numpy_hull_steps_per_s": round(1 / numpy_s / GROUP),
                "numpy_hull_sampled": sampled,
                "naive_tokens_per_s": round(1 / naive_s),
                "naive_steps_per_s": round(1 / naive_s / GROUP),
                "fast_naive_tokens_per_s": round(1 / fast_naive_s),
                "kv_bytes_per_token": round(kv.nbytes() / kv.rows),
                "fast_hull_bytes_per_token": round(kv.hull_nbytes() / kv.rows),
                "numpy_hull_bytes_per_token": round(numpy_hull_bytes / kv.rows),
                "fast_hull_tokens_per_s_whole_run": round(length / fast_total),
            }
        )
        _report(rows, warmup)


def _report(rows: list[dict], warmup: float) -> None:
    columns = [
        "trace tokens", "fast hull tok/s", "fast hull steps/s", "fast hull µs/tok",
        "numpy hull tok/s", "numpy hull steps/s", "naive tok/s", "naive steps/s",
        "fast naive tok/s", "KV B/tok", "fast hull B/tok", "numpy hull B/tok",
    ]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        numpy_hull = f"{r['numpy_hull_tokens_per_s']}" + (
            " (sampled)" if r["numpy_hull_sampled"] else ""
        )
        cells = [
            r["trace_tokens"],
            r["fast_hull_tokens_per_s"],
            r["fast_hull_steps_per_s"],
            r["fast_hull_us_per_token"],
            numpy_hull,
            r["numpy_hull_steps_per_s"],
            r["naive_tokens_per_s"],
            r["naive_steps_per_s"],
            r["fast_naive_tokens_per_s"],
            r["kv_bytes_per_token"],
            r["fast_hull_bytes_per_token"],
            r["numpy_hull_bytes_per_token"],
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    last = rows[-1]
    print(
        f"fast hull over the whole run: {last['fast_hull_tokens_per_s_whole_run']} "
        f"tokens/s; kernels loaded (or compiled) in {warmup:.2f} s"
    )
    OUT.parent.mkdir(exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "kernel_warmup_s": round(warmup, 3),
        "window": WINDOW,
        "fast_windows": FAST_WINDOWS,
        "naive_window": NAIVE_WINDOW,
        "numpy_hull_full_run_to": NUMPY_FULL,
    }
    OUT.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
