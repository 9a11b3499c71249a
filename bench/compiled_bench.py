"""Decoding speed of the compiled executor at long trace lengths.

One long program (a counted loop) is decoded with the hull cache, timing
every token; at each checkpoint length the tokens/s over the preceding
window is reported, and the naive cache is sampled by copying the hull
run's keys and values at that point and decoding a short window with it
(the naive cache's cost per token depends only on how many keys it holds).
Prints a table and writes bench/results/compiled.json after every
checkpoint, so a cut-short run keeps what it measured.

    .venv/bin/python bench/compiled_bench.py [--lengths 1e3,1e4,1e5,1e6]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from compiled_model import engine, vm
from compiled_model.kvcache import HullCache, NaiveCache
from compiled_model.lower import lower
from compiled_model.parse import elixir_parse
from compiled_model.vocab import GROUP, encode_program

OUT = Path(__file__).parent / "results" / "compiled.json"
WINDOW = 1000
NAIVE_WINDOW = 200


def _hull_bytes(cache: HullCache) -> int:
    # Three Python lists per hull (x, y, id): a float or int object plus a
    # list slot each, about 32 bytes per entry per list.
    points = sum(len(h.xs) for layer in cache.upper + cache.lower for h in layer)
    return points * 3 * 32


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

    hull = HullCache(model.config)
    for pos, tok in enumerate(prompt):
        nxt = model.step(tok, pos, hull)
    rows, stamps, trace = [], [], []
    base = len(prompt)
    for n in range(lengths[-1]):
        trace.append(nxt)
        t0 = time.perf_counter()
        nxt = model.step(nxt, base + n, hull)
        stamps.append(time.perf_counter() - t0)
        if n + 1 not in lengths:
            continue
        assert trace == want[: n + 1], "hull trace diverged from the VM"
        hull_s = sum(stamps[-WINDOW:]) / len(stamps[-WINDOW:])
        naive = NaiveCache(model.config)
        naive.n = list(hull.n)
        naive.keys = [k.copy() for k in hull.keys]
        naive.values = [v.copy() for v in hull.values]
        tok, pos, produced = nxt, base + n + 1, []
        t0 = time.perf_counter()
        for i in range(NAIVE_WINDOW):
            produced.append(tok)
            tok = model.step(tok, pos + i, naive)
        naive_s = (time.perf_counter() - t0) / NAIVE_WINDOW
        assert produced == want[n + 1 : n + 1 + NAIVE_WINDOW], "naive diverged"
        kv = hull.nbytes() / hull.n[0]
        rows.append(
            {
                "trace_tokens": n + 1,
                "hull_tokens_per_s": round(1 / hull_s),
                "hull_steps_per_s": round(1 / hull_s / GROUP),
                "hull_us_per_token": round(hull_s * 1e6, 1),
                "naive_tokens_per_s": round(1 / naive_s),
                "naive_steps_per_s": round(1 / naive_s / GROUP),
                "naive_us_per_token": round(naive_s * 1e6, 1),
                "kv_bytes_per_token": round(kv),
                "hull_bytes_per_token": round(_hull_bytes(hull) / hull.n[0]),
            }
        )
        _report(rows)


def _report(rows: list[dict]) -> None:
    columns = [
        "trace tokens", "hull tok/s", "hull steps/s", "hull µs/tok", "naive tok/s",
        "naive steps/s", "naive µs/tok", "KV B/tok", "hull B/tok",
    ]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * 9)
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")
    OUT.parent.mkdir(exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    OUT.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
