"""Per-fragment latency of the compiled executor against the BEAM, on the
same fragments, in one run through one embedded gateway.

Each fragment of examples/compare.exs runs in a session opened with both
executors; the table shows each executor's own ``elapsed_us`` for it (the
BEAM's evaluation; the compiled executor's parse, lowering and decoding)
and the ratio, over several repetitions (the first, which starts the
compiled worker and its parser, is left out).

    .venv/bin/python bench/executors.py [--repeat 5]

Writes bench/results/executors.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
from pathlib import Path

from beambridge import Gateway, GatewayConfig
from beambridge.compare import Row, compare

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "results" / "executors.json"


async def measure(repeat: int) -> list[list[Row]]:
    code = (ROOT / "examples" / "compare.exs").read_text()
    gateway = Gateway(GatewayConfig(port=0, token="bench"))
    await gateway.start()
    try:
        await gateway.wait_nodes(timeout=120)
        runs = [await compare(gateway.url, "bench", code) for _ in range(repeat + 1)]
    finally:
        await gateway.close()
    return runs[1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = asyncio.run(measure(args.repeat))

    rows = []
    for i, first in enumerate(runs[0]):
        beam = statistics.median(run[i].beam_us for run in runs)
        compiled = statistics.median(run[i].compiled_us for run in runs)
        rows.append(
            {
                "fragment": first.code.splitlines()[0],
                "agrees": first.agrees,
                "beam_us": beam,
                "compiled_us": compiled,
                "ratio": compiled / beam if beam else None,
                "trace_tokens": first.trace_tokens,
            }
        )

    print(
        f"\n{'fragment':44} {'agree':>6} {'BEAM µs':>9} {'compiled µs':>12} "
        f"{'ratio':>8} {'tokens':>7}"
    )
    for r in rows:
        ratio = f"{r['ratio']:.0f}×" if r["ratio"] else "-"
        print(
            f"{r['fragment'][:44]:44} {str(r['agrees']):>6} {r['beam_us']:>9.0f} "
            f"{r['compiled_us']:>12.0f} {ratio:>8} {r['trace_tokens']:>7}"
        )

    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                },
                "repeat": args.repeat,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
