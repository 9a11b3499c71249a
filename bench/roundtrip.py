"""Round-trip benchmark: beambridge against a warm Jupyter kernel and processes.

Measures, in one run on this machine:
  - the round trip of ``x = 1 + 1`` (send ``eval``, receive ``done``) through
    a ``beambridge serve`` subprocess on an embedded node, raw websocket and SDK;
  - the same code on a warm ipykernel (jupyter_client, execute → reply);
  - ``python -c`` and ``elixir -e`` as fresh subprocesses;
  - streaming lag: a fragment's last character plus the next line's first
    character sent → its result received;
  - fragments per second with 100 concurrent sessions.
Prints a table and writes ``bench/results/roundtrip.json``. jupyter_client and
ipykernel are installed into the running interpreter's environment with pip
when missing (they are not project dependencies).

    python bench/roundtrip.py [--calls 2000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from beambridge import connect
from websockets.asyncio.client import connect as ws_connect

ROOT = Path(__file__).resolve().parent.parent
CODE = "x = 1 + 1"


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds of samples in seconds."""
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "n": len(ordered),
        "p50_ms": pick(0.50) * 1e3,
        "p99_ms": pick(0.99) * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
    }


# -- the gateway under test -------------------------------------------------


async def start_gateway() -> tuple[asyncio.subprocess.Process, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "beambridge.cli", "serve", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    token = ""
    async with asyncio.timeout(300):
        while line := (await process.stdout.readline()).decode():
            if line.startswith("token: "):
                token = line.split(": ", 1)[1].strip()
            if line.startswith("listening on "):
                return process, line.split()[-1], token
    raise RuntimeError("gateway did not start")


async def ws_roundtrip(url: str, token: str, calls: int) -> list[float]:
    """Raw websocket: one session, ``eval`` then wait for ``done``, repeated."""
    async with ws_connect(url + f"?token={token}", compression=None) as ws:
        await ws.send(json.dumps({"type": "open", "ref": "b"}))
        session = json.loads(await ws.recv())["session"]
        message = json.dumps({"type": "eval", "session": session, "code": CODE})
        samples = []
        for i in range(calls + calls // 10):
            started = time.perf_counter()
            await ws.send(message)
            while json.loads(await ws.recv())["type"] != "done":
                pass
            if i >= calls // 10:  # the first tenth warms up
                samples.append(time.perf_counter() - started)
        return samples


async def sdk_roundtrip(url: str, token: str, calls: int) -> list[float]:
    """The SDK's ``Session.eval``: typed events and an Outcome per call."""
    async with await connect(url, token=token) as client:
        session = await client.open()
        samples = []
        for i in range(calls + calls // 10):
            started = time.perf_counter()
            outcome = await session.eval(CODE)
            if i >= calls // 10:
                samples.append(time.perf_counter() - started)
        assert outcome.value == "2"
        return samples


async def streaming_lag(url: str, token: str, lines: int) -> dict[str, Any]:
    """Per fragment: its last char and the next line's first char sent → result.

    When the result has not come 100 ms after that, the node is waiting for
    more of the next line: the rest of its first word is sent (and the lag
    counted from then), then, if still needed, the rest of the line with its
    newline. The report says how many fragments needed each step.
    """
    async with ws_connect(url + f"?token={token}", compression=None) as ws:
        await ws.send(json.dumps({"type": "open", "ref": "lag"}))
        session = json.loads(await ws.recv())["session"]

        async def chunk(text: str) -> None:
            message = {"type": "chunk", "session": session, "text": text}
            await ws.send(json.dumps(message))

        async def result(timeout: float | None) -> bool:
            try:
                async with asyncio.timeout(timeout):
                    while json.loads(await ws.recv())["type"] != "result":
                        pass
                return True
            except TimeoutError:
                return False

        await chunk("v0 = 0 + 1")
        lag: dict[str, list[float]] = {
            "next_char": [],
            "next_word": [],
            "next_newline": [],
        }
        for i in range(1, lines + 1):
            # Each step sends more of line i; the last step cannot fail.
            steps = [
                ("next_char", "\nv", f"{i} = {i} + 1", 0.1),
                ("next_word", f"{i} ", f"= {i} + 1", 0.1),
                ("next_newline", f"= {i} + 1\n", "", None),
            ]
            for name, text, rest, timeout in steps:
                started = time.perf_counter()
                await chunk(text)
                if await result(timeout):
                    lag[name].append(time.perf_counter() - started)
                    if rest:
                        await chunk(rest)
                    break
        await ws.send(json.dumps({"type": "end", "session": session}))
        out: dict[str, Any] = {"fragments": lines}
        for name, samples in lag.items():
            out[name] = percentiles(samples) if samples else None
        return out


async def throughput(
    url: str, token: str, sessions: int, blocks: int, per_block: int
) -> dict[str, Any]:
    """Fragments/s: ``sessions`` sessions over 4 connections, pipelined blocks."""
    block = "\n".join(f"x{i} = {i} + 1" for i in range(per_block))

    async def one_connection(count: int) -> int:
        async with ws_connect(
            url + f"?token={token}", compression=None, max_size=None
        ) as ws:
            ids = []
            for i in range(count):
                await ws.send(json.dumps({"type": "open", "ref": str(i)}))
            while len(ids) < count:
                event = json.loads(await ws.recv())
                if event["type"] == "opened":
                    ids.append(event["session"])
            opened.append(count)
            if len(opened) == connections:
                all_open.set()
            await ready.wait()
            for _ in range(blocks):
                for sid in ids:
                    await ws.send(
                        json.dumps({"type": "eval", "session": sid, "code": block})
                    )
            done = fragments = 0
            while done < count * blocks:
                event = json.loads(await ws.recv())
                if event["type"] == "done":
                    done += 1
                    fragments += event["fragments"]
            return fragments

    ready, all_open = asyncio.Event(), asyncio.Event()
    opened: list[int] = []
    connections = 4
    tasks = [
        asyncio.create_task(one_connection(sessions // connections))
        for _ in range(connections)
    ]
    async with asyncio.timeout(30):
        await all_open.wait()
    started = time.perf_counter()
    ready.set()
    total = sum(await asyncio.gather(*tasks))
    elapsed = time.perf_counter() - started
    return {
        "sessions": sessions,
        "fragments": total,
        "seconds": elapsed,
        "fragments_per_s": total / elapsed,
    }


# -- comparisons -----------------------------------------------------------


def ensure_jupyter() -> None:
    if importlib.util.find_spec("jupyter_client") and importlib.util.find_spec(
        "ipykernel"
    ):
        return
    print(
        "installing jupyter_client and ipykernel for the comparison…", file=sys.stderr
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "jupyter_client", "ipykernel"],
        check=True,
    )


def jupyter_roundtrip(calls: int) -> list[float]:
    """A warm ipykernel: execute ``x = 1 + 1`` and wait for its reply."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        samples = []
        for i in range(calls + calls // 10):
            started = time.perf_counter()
            msg_id = client.execute(CODE, silent=False, store_history=False)
            while True:
                reply = client.get_shell_msg(timeout=10)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            if i >= calls // 10:
                samples.append(time.perf_counter() - started)
        return samples
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def subprocess_roundtrip(argv: list[str], calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return samples


def machine() -> dict[str, Any]:
    model = ""
    try:
        model = re.search(
            r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()
        ).group(1)
    except (OSError, AttributeError):
        pass
    otp = subprocess.run(
        ["erl", "-noshell", "-eval", 'io:format("~s", [erlang:system_info(otp_release)]), halt().'],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        ),
        "python": platform.python_version(),
        "otp": otp,
        "kernel": platform.release(),
    }


# -- driver ----------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "code": CODE, "rows": {}}
    rows = results["rows"]
    process, url, token = await start_gateway()
    try:
        print("beambridge websocket round trip…", file=sys.stderr)
        rows["beambridge (raw websocket)"] = percentiles(
            await ws_roundtrip(url, token, args.calls)
        )
        rows["beambridge (SDK eval)"] = percentiles(
            await sdk_roundtrip(url, token, args.calls)
        )
        print("streaming lag…", file=sys.stderr)
        results["streaming_lag"] = await streaming_lag(url, token, args.lag_fragments)
        print("throughput…", file=sys.stderr)
        results["throughput"] = await throughput(url, token, 100, args.blocks, 10)
    finally:
        process.terminate()
        await process.wait()
    print("warm Jupyter kernel…", file=sys.stderr)
    ensure_jupyter()
    rows["Jupyter warm kernel"] = percentiles(
        await asyncio.to_thread(jupyter_roundtrip, args.calls)
    )
    print("python -c…", file=sys.stderr)
    rows["python -c subprocess"] = percentiles(
        subprocess_roundtrip([sys.executable, "-c", CODE], args.python_calls)
    )
    print("elixir -e…", file=sys.stderr)
    rows["elixir -e subprocess"] = percentiles(
        subprocess_roundtrip(["elixir", "-e", CODE], args.elixir_calls)
    )
    base = rows["beambridge (raw websocket)"]["p50_ms"]
    for row in rows.values():
        row["p50_vs_beambridge"] = row["p50_ms"] / base
    return results


def show(results: dict[str, Any]) -> None:
    print(f"\nround trip of `{results['code']}` (ms)")
    print(f"{'':28} {'n':>6} {'p50':>9} {'p99':>9} {'mean':>9} {'p50 ×':>9}")
    for name, row in results["rows"].items():
        print(
            f"{name:28} {row['n']:>6} {row['p50_ms']:>9.3f} {row['p99_ms']:>9.3f}"
            f" {row['mean_ms']:>9.3f} {row['p50_vs_beambridge']:>9.1f}"
        )
    lag = results["streaming_lag"]
    print(
        "\nstreaming lag (ms): from the text that lets a fragment commit to its result"
    )
    for key in ("next_char", "next_word", "next_newline"):
        if lag[key]:
            row = lag[key]
            print(
                f"  committed on the {key.replace('_', ' '):13} "
                f"{row['n']:>4}/{lag['fragments']}  p50={row['p50_ms']:.3f}"
                f" p99={row['p99_ms']:.3f}"
            )
    tp = results["throughput"]
    print(
        f"\nthroughput: {tp['fragments_per_s']:,.0f} fragments/s "
        f"({tp['fragments']} fragments, {tp['sessions']} sessions, "
        f"{tp['seconds']:.2f}s)"
    )
    m = results["machine"]
    print(
        f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Python {m['python']}, OTP {m['otp']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--python-calls", type=int, default=200)
    parser.add_argument("--elixir-calls", type=int, default=20)
    parser.add_argument("--lag-fragments", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument(
        "--quick", action="store_true", help="few calls, to check the script"
    )
    args = parser.parse_args()
    if args.quick:
        args.calls, args.python_calls, args.elixir_calls = 200, 10, 2
        args.lag_fragments, args.blocks = 20, 3
    try:
        import uvloop  # the gateway runs on it too (see beambridge.cli)

        results = uvloop.run(run(args))
    except ImportError:
        results = asyncio.run(run(args))
    show(results)
    out = ROOT / "bench" / "results" / "roundtrip.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
