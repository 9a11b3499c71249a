"""Change-of-mind benchmark: cancel latency, fork cost, result lag at model speed.

Against a ``beambridge serve`` subprocess on an embedded node, over a raw
websocket, in one run:
  - cancel latency: ``cancel`` sent → the busy loop's ``cancelled`` result
    received;
  - fork cost: ``fork`` sent → ``opened`` received, for a session with 1,000
    fragments of history and about 10 MB of bindings, once as heap terms (a
    list) and once as one binary;
  - result lag at model speed: a file streamed at 40 tokens/s in the CLI's
    tokens (``beambridge.cli.tokens``) to two sessions side by side, one with
    speculation and one without; per fragment, its last character sent → its
    result received, and its ``fragment`` event → its result.
Prints a table and writes ``bench/results/change_of_mind.json``.

    python bench/change_of_mind.py [--cancels 300] [--forks 50] [--passes 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beambridge.cli import tokens
from roundtrip import start_gateway  # the same gateway subprocess, started alike
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

ROOT = Path(__file__).resolve().parent.parent
BUSY_LOOP = "Stream.repeatedly(fn -> :spin end) |> Stream.run()"
RATE = 40.0


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds of samples in seconds."""
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {
        "n": len(ordered),
        "p50_ms": pick(0.50) * 1e3,
        "p99_ms": pick(0.99) * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


class Wire:
    """One websocket; a reader task timestamps every event on arrival and
    hands it to the waiter of its session."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.queues: dict[str, asyncio.Queue[tuple[float, dict[str, Any]]]] = (
            defaultdict(asyncio.Queue)
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            at = time.perf_counter()
            event = json.loads(raw)
            key = event.get("session") if event["type"] != "opened" else "opened"
            self.queues[key or "errors"].put_nowait((at, event))

    async def send(self, **msg: Any) -> float:
        await self.ws.send(json.dumps(msg))
        return time.perf_counter()

    async def until(
        self, key: str, match: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> tuple[float, dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while True:
                at, event = await self.queues[key].get()
                if event["type"] == "error":
                    raise RuntimeError(f"error event: {event}")
                if match(event):
                    return at, event

    async def open(self, **options: Any) -> str:
        await self.send(type="open", ref="b", options=options)
        return (await self.until("opened", lambda e: True))[1]["session"]

    async def block(self, session: str, code: str) -> list[dict[str, Any]]:
        """Run ``code`` as a block; return the results that failed."""
        failed: list[dict[str, Any]] = []

        def done(event: dict[str, Any]) -> bool:
            if event["type"] == "result" and not event["ok"]:
                failed.append(event)
            return event["type"] == "done"

        await self.send(type="eval", session=session, code=code)
        await self.until(session, done, timeout=300)
        return failed


# -- cancel ------------------------------------------------------------------


async def cancel_latency(wire: Wire, cancels: int) -> list[float]:
    """Each round: a busy loop starts (its ``fragment`` event is the sign),
    then ``cancel``; the sample ends when its ``cancelled`` result arrives."""
    session = await wire.open()
    samples = []
    for i in range(cancels + cancels // 10):
        await wire.send(type="eval", session=session, code=BUSY_LOOP)
        await wire.until(session, lambda e: e["type"] == "fragment")
        sent = await wire.send(type="cancel", session=session)
        got, result = await wire.until(session, lambda e: e["type"] == "result")
        assert result["error"]["kind"] == "cancelled", result
        await wire.until(session, lambda e: e["type"] == "done")
        if i >= cancels // 10:  # the first tenth warms up
            samples.append(got - sent)
    return samples


# -- fork --------------------------------------------------------------------

# About 10 MB either way: 650,000 list cells of 16 bytes on the heap, or one
# off-heap binary that processes share by reference.
BINDINGS = {
    "heap list": "data = Enum.to_list(1..650_000)",
    "binary": 'data = :binary.copy("x", 10_000_000)',
}


async def fork_cost(wire: Wire, forks: int) -> dict[str, Any]:
    """``fork`` sent → ``opened``, at the last of 1,000 fragments."""
    out = {}
    history = "\n".join(["n = 0", *["n = n + 1"] * 998])
    for name, binding in BINDINGS.items():
        session = await wire.open()
        for code in (binding, history):
            failed = await wire.block(session, code)
            assert not failed, f"setting up the fork benchmark failed: {failed[0]}"
        samples = []
        for i in range(forks + forks // 10):
            sent = await wire.send(type="fork", session=session, at=1000, ref="f")
            got, opened = await wire.until("opened", lambda e: True)
            await wire.send(type="close", session=opened["session"])
            await wire.until(opened["session"], lambda e: e["type"] == "closed")
            if i >= forks // 10:
                samples.append(got - sent)
        await wire.send(type="close", session=session)
        out[name] = {"binding": binding, **percentiles(samples)}
    return out


# -- result lag at model speed -------------------------------------------------


async def result_lag(wire: Wire, text: str, passes: int) -> dict[str, Any]:
    """Stream ``text`` at 40 tokens/s to a speculating and a plain session at
    once (one pacer, each token to both), ``passes`` times."""
    modes = {"speculate": {}, "no speculation": {"speculate": False}}
    sessions = {name: await wire.open(**opts) for name, opts in modes.items()}
    lags: dict[str, list[float]] = {name: [] for name in modes}
    commits: dict[str, list[float]] = {name: [] for name in modes}
    pieces = tokens(text)
    for _ in range(passes):
        sent_at: list[tuple[int, float]] = []
        sent = 0
        collectors = {
            name: asyncio.create_task(collect(wire, sid))
            for name, sid in sessions.items()
        }
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for piece in pieces:
            next_at += 1 / RATE
            if (delay := next_at - loop.time()) > 0:
                await asyncio.sleep(delay)  # the model's pace
            for sid in sessions.values():
                await wire.send(type="chunk", session=sid, text=piece)
            sent += len(piece)
            sent_at.append((sent, time.perf_counter()))
        for sid in sessions.values():
            await wire.send(type="end", session=sid)
        for name, task in collectors.items():
            fragments, results = await task
            offset = 0
            for index, (committed, code) in sorted(fragments.items()):
                offset = text.index(code, offset) + len(code)
                last = next(at for end, at in sent_at if end >= offset)
                lags[name].append(results[index] - last)
                commits[name].append(results[index] - committed)
    return {
        name: {
            "last_char_to_result": percentiles(lags[name]),
            "fragment_event_to_result": percentiles(commits[name]),
        }
        for name in modes
    }


async def collect(
    wire: Wire, session: str
) -> tuple[dict[int, tuple[float, str]], dict[int, float]]:
    fragments, results = {}, {}
    while True:
        at, event = await wire.until(session, lambda e: True)
        if event["type"] == "fragment":
            fragments[event["index"]] = (at, event["code"])
        elif event["type"] == "result":
            results[event["index"]] = at
        elif event["type"] == "done":
            return fragments, results


# Pure fragments that each compute for a few milliseconds, where running
# early has something to hide; demo.exs fragments take a fraction of one.
COMPUTE = """\
limit = 30_000
primes = Enum.filter(2..limit, fn n ->
  Enum.all?(2..max(2, trunc(:math.sqrt(n))), &(&1 == n or rem(n, &1) != 0))
end)
pairs = Enum.chunk_every(primes, 2, 1, :discard)
twins = Enum.count(pairs, fn [a, b] -> b - a == 2 end)
gaps = pairs |> Enum.map(fn [a, b] -> b - a end) |> Enum.frequencies()
digits = Enum.map(primes, fn p -> p |> Integer.digits() |> Enum.sum() end)
IO.puts("#{length(primes)} primes, #{twins} twin pairs, #{map_size(gaps)} gap sizes")
Enum.max(digits)
"""


# -- driver ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    process, url, token = await start_gateway()
    try:
        async with ws_connect(
            url + f"?token={token}", compression=None, max_size=None
        ) as ws:
            wire = Wire(ws)
            warm = await wire.open()
            await wire.block(warm, "1 + 1")
            cancels = percentiles(await cancel_latency(wire, args.cancels))
            forks = await fork_cost(wire, args.forks)
            demo = (ROOT / "examples" / "demo.exs").read_text()
            lag = {
                "examples/demo.exs": await result_lag(wire, demo, args.passes),
                "compute (in this file)": await result_lag(wire, COMPUTE, args.passes),
            }
    finally:
        process.terminate()
        await process.wait()
    return {
        "machine": machine(),
        "cancel_latency": cancels,
        "fork_cost": forks,
        "result_lag": {"rate": RATE, **lag},
    }


def show(results: dict[str, Any]) -> None:
    rows = [("cancel → cancelled result (busy loop)", results["cancel_latency"])]
    for name, row in results["fork_cost"].items():
        rows.append((f"fork → opened, 1,000 fragments, 10 MB {name}", row))
    lag = results["result_lag"]
    for text in ("examples/demo.exs", "compute (in this file)"):
        for mode in ("speculate", "no speculation"):
            row = lag[text][mode]
            rows.append(
                (f"{text}: last char → result, {mode}", row["last_char_to_result"])
            )
            rows.append(
                (f"{text}: commit → result, {mode}", row["fragment_event_to_result"])
            )
    print(f"\n{'measure (ms)':<70}{'p50':>8}{'p99':>8}{'max':>9}{'n':>6}")
    for name, row in rows:
        print(
            f"{name:<70}{row['p50_ms']:8.2f}{row['p99_ms']:8.2f}"
            f"{row['max_ms']:9.2f}{row['n']:6d}"
        )
    print(
        f"\nresult lag: streamed at {lag['rate']:g} tokens/s; commit = fragment event"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cancels", type=int, default=300)
    parser.add_argument("--forks", type=int, default=50)
    parser.add_argument("--passes", type=int, default=4)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    show(results)
    out = ROOT / "bench" / "results" / "change_of_mind.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
