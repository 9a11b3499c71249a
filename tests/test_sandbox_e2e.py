"""The sandbox seen from a client: hostile code streamed through the gateway
to the shared embedded node, with a bystander session evaluating beside it.

The node's own suite covers each program in depth; these tests check that
the whole path (websocket, gateway, bridge, node) keeps its promises: the
atom table does not grow with the input, and a hostile fragment gets the
right kind while nothing else is disturbed.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from beambridge import Gateway

from .conftest import Wire, by_type

pytestmark = pytest.mark.asyncio(loop_scope="session")

UNIQUE_NAMES = 300_000
BLOCK_LINES = 1_000
CHUNK_CHARS = 4_096


async def node_atoms(gateway: Gateway) -> int:
    return (await gateway.pool.links[0].fresh_stats(timeout=10))["atoms"]


def assignments(prefix: str, start: int, count: int, grouped: bool) -> str:
    """``count`` lines ``v_N = :PREFIX_N``, as one fragment or one per line."""
    lines = "\n".join(f"v_{n} = :{prefix}_{n}" for n in range(start, start + count))
    return f"(\n{lines}\n)\n" if grouped else lines + "\n"


async def stream_block(wire: Wire, sid: str, text: str) -> dict[str, int]:
    """Stream one block in chunks; count its results by kind (``ok`` for
    successes). Events are read raw: schema-checking 300,000 of them would
    be most of the test's time, and every other test checks their shape."""
    for at in range(0, len(text), CHUNK_CHARS):
        chunk = text[at : at + CHUNK_CHARS]
        await wire.send(type="chunk", session=sid, text=chunk)
    await wire.send(type="end", session=sid)
    kinds: dict[str, int] = {}
    async with asyncio.timeout(30):
        while True:
            event = json.loads(await wire.ws.recv())
            assert event["type"] in {"fragment", "result", "done"}, event
            if event["type"] == "result":
                kind = "ok" if event["ok"] else event["error"]["kind"]
                kinds[kind] = kinds.get(kind, 0) + 1
            elif event["type"] == "done":
                return kinds


class Bystander:
    """A session on its own connection that evaluates sums until stopped,
    checking each value."""

    def __init__(self, wire: Wire, sid: str) -> None:
        self.wire, self.sid = wire, sid
        self.evaluated = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            events = await self.wire.block(self.sid, f"Enum.sum(1..{n})")
            results = by_type(events, "result")
            assert [r["value"] for r in results] == [str(n * (n + 1) // 2)], events
            self.evaluated += 1


async def bystander(connect_wire: Callable[[], Any]) -> Bystander:
    wire = await connect_wire()
    return Bystander(wire, await wire.open("bystander"))


async def test_streaming_300k_unique_names_and_atoms_leaves_the_atom_table_alone(
    gateway: Gateway, connect_wire: Callable[[], Any]
) -> None:
    """300,000 unique variables and atom literals through one session grow
    the node's atom table by fewer than 1,000, and a second session keeps
    evaluating correctly all along."""
    attacker = await connect_wire()
    # Warm up the code paths the attack uses (the node loads modules lazily,
    # and their names are atoms), then measure from there.
    warm = await attacker.open("warm")
    await stream_block(attacker, warm, assignments("w", 0, 300, grouped=False))
    await stream_block(attacker, warm, assignments("w", 300, 300, grouped=True))
    await attacker.send(type="close", session=warm)
    assert (await attacker.recv())["type"] == "closed"
    before = await node_atoms(gateway)

    watcher = await bystander(connect_wire)
    watching = asyncio.create_task(watcher.run())
    sid = await attacker.open("attack")
    kinds: dict[str, int] = {}
    for block in range(UNIQUE_NAMES // BLOCK_LINES):
        # One block in fifteen sends a fragment per line, the rest one
        # fragment of a thousand lines: both parse paths see new names.
        text = assignments(
            "a", block * BLOCK_LINES, BLOCK_LINES, grouped=block % 15 != 0
        )
        for kind, count in (await stream_block(attacker, sid, text)).items():
            kinds[kind] = kinds.get(kind, 0) + count
    watcher.stop.set()
    await asyncio.wait_for(watching, timeout=10)

    grown = await node_atoms(gateway) - before
    assert grown < 1_000, f"the atom table grew by {grown}"
    assert set(kinds) <= {"ok", "denied"}, kinds
    assert kinds.get("ok", 0) <= 256 and kinds["denied"] > 10_000
    assert watcher.evaluated > 10
    events = await attacker.block(sid, "v_0")
    assert by_type(events, "result")[0]["value"] == ":a_0"


HOSTILE = [
    ("file_read", 'File.read!("/etc/passwd")', "denied", {}),
    ("system_cmd", 'System.cmd("id", [])', "denied", {}),
    (
        "spawn_loop",
        "Enum.each(1..100_000, fn _ -> spawn(fn -> Process.sleep(:infinity) end) end)",
        "denied",
        {},
    ),
    ("string_to_atom", 'String.to_atom("bb_e2e_fresh_atom")', "denied", {}),
    (
        "binary_doubling",
        'Enum.reduce(1..40, "xxxxxxxx", fn _, acc -> acc <> acc end)',
        "memory",
        {},
    ),
    (
        "list_bomb",
        "Enum.to_list(1..50_000_000)",
        "memory",
        {"max_heap_bytes": 64 * 1024 * 1024},
    ),
    (
        "infinite_loop",
        "loop = fn f -> f.(f) end\nloop.(loop)",
        "timeout",
        {"timeout_ms": 200},
    ),
]


@pytest.mark.parametrize(
    ("code", "kind", "limits"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
async def test_a_hostile_program_gets_its_kind_and_disturbs_no_one(
    gateway: Gateway,
    connect_wire: Callable[[], Any],
    code: str,
    kind: str,
    limits: dict[str, int],
) -> None:
    """The hostile fragment fails with ``kind``; its own session, a
    bystander evaluating throughout, and ``/healthz`` are fine afterwards."""
    watcher = await bystander(connect_wire)
    watching = asyncio.create_task(watcher.run())
    wire = await connect_wire()
    options = {"limits": limits} if limits else {}
    sid = await wire.open("hostile", **options)

    events = await wire.block(sid, code)
    failed = [r for r in by_type(events, "result") if not r["ok"]]
    assert [r["error"]["kind"] for r in failed] == [kind], events

    watcher.stop.set()
    await asyncio.wait_for(watching, timeout=10)
    assert watcher.evaluated >= 1
    after = by_type(await wire.block(sid, "Enum.sum([1, 2, 3])"), "result")
    assert [r["value"] for r in after] == ["6"]
    url = f"http://127.0.0.1:{gateway.port}/healthz"
    status = await asyncio.to_thread(lambda: urllib.request.urlopen(url).status)
    assert status == 200
