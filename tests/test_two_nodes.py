"""A gateway in front of two BEAM nodes: the shared embedded one and a second
node process started here through ``elixir_node/bin/beam_bridge_node``.

The gateway places each new session on the connected node with the fewest
sessions, lists every connected node in ``/healthz`` and labels each node's
gauges in ``/metrics``; losing one node must leave the other serving. Waits
are on link state, log lines and protocol events, never on the clock.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from beambridge import Gateway, GatewayConfig
from beambridge.link import BeamLink, parse_address
from websockets.asyncio.client import connect as ws_connect

from .conftest import HEALTH_SCHEMA, TOKEN, WAIT, Wire, by_type
from .test_contract import _get
from .test_remote_node import NODE_READY, NODE_SCRIPT, START, Child
from .test_remote_node import _env as _clean_env

pytestmark = pytest.mark.asyncio(loop_scope="session")

LISTENING = r"^listening on ws://127\.0\.0\.1:(\d+)/v1/stream$"


@dataclass(frozen=True)
class Pair:
    """The two nodes' addresses (embedded first) and the gateway on both."""

    addresses: tuple[str, str]
    second: Child
    gateway: Gateway

    def link(self, address: str) -> BeamLink:
        (link,) = [link for link in self.gateway.pool.links if link.name == address]
        return link


@pytest_asyncio.fixture(loop_scope="session")
async def second_node(gateway: Gateway) -> AsyncIterator[tuple[Child, str]]:
    """A node process of its own, sharing the embedded node's secret so that
    one gateway can reach both."""
    assert gateway.embedded is not None
    child = await Child.start(
        "second node",
        str(NODE_SCRIPT),
        env=_clean_env(
            BEAM_BRIDGE_HOST="127.0.0.1",
            BEAM_BRIDGE_PORT="0",
            BEAM_BRIDGE_SECRET=gateway.embedded.secret,
        ),
    )
    try:
        match = await child.expect(NODE_READY, timeout=START)
        yield child, f"{match.group(1)}:{match.group(2)}"
    finally:
        await child.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def pair(gateway: Gateway, second_node: tuple[Child, str]) -> AsyncIterator[Pair]:
    """A gateway given both nodes' addresses, with both links up."""
    assert gateway.embedded is not None
    host, port = await gateway.embedded.address()
    child, second = second_node
    addresses = (f"{host}:{port}", second)
    both = Gateway(
        GatewayConfig(
            port=0,
            token=TOKEN,
            nodes=tuple(parse_address(a) for a in addresses),
            secret=gateway.embedded.secret,
        )
    )
    await both.start()
    try:
        for link in both.pool.links:
            await link.wait_connected(WAIT)
        yield Pair(addresses, child, both)
    finally:
        await both.close()


async def healthz(port: int) -> tuple[int, dict]:
    status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
    body = json.loads(text)
    assert not list(HEALTH_SCHEMA.iter_errors(body)), body
    return status, body


def node_gauges(text: str) -> dict[str, dict[str, float]]:
    """``/metrics`` node gauges as {gauge: {node label: value}}."""
    gauges: dict[str, dict[str, float]] = {}
    pattern = re.compile(r'^(beambridge_node_\w+)\{node="([^"]*)"\} (\S+)$')
    for line in text.splitlines():
        if match := pattern.match(line):
            name, node, value = match.groups()
            gauges.setdefault(name, {})[node] = float(value)
    return gauges


async def test_sessions_are_spread_over_both_nodes_and_both_answer(
    pair: Pair,
) -> None:
    """Four sessions land two on each node, ``/healthz`` lists both nodes
    with those counts, and every session evaluates."""
    gw = pair.gateway
    async with ws_connect(f"{gw.url}?token={TOKEN}") as ws:
        wire = Wire(ws)
        sessions = [await wire.open(ref=f"s{i}") for i in range(4)]

        placed = {a: set(pair.link(a).sessions) for a in pair.addresses}
        assert [len(ids) for ids in placed.values()] == [2, 2]
        assert set().union(*placed.values()) == set(sessions)

        status, body = await healthz(gw.port)
        assert status == 200 and body["status"] == "ok"
        counts = {n["address"]: n["sessions"] for n in body["nodes"]}
        assert counts == {pair.addresses[0]: 2, pair.addresses[1]: 2}

        for i, session in enumerate(sessions):
            (result,) = by_type(await wire.block(session, f"{i} * 11"), "result")
            assert (result["ok"], result["value"]) == (True, str(i * 11))


async def test_metrics_show_each_of_two_nodes_with_its_own_gauges(
    pair: Pair,
) -> None:
    """After a fresh pong from each node, every node gauge in ``/metrics``
    has one series per node, labelled with that node's address."""
    stats = [await pair.link(a).fresh_stats(WAIT) for a in pair.addresses]
    assert all(s["processes"] > 10 and s["memory_bytes"] > 1_000_000 for s in stats)

    _, text = await asyncio.to_thread(
        _get, f"http://127.0.0.1:{pair.gateway.port}/metrics"
    )
    gauges = node_gauges(text)
    for name in ("atoms", "processes", "memory_bytes"):
        series = gauges[f"beambridge_node_{name}"]
        assert set(series) == set(pair.addresses), f"{name}: {series}"
        assert all(value > 0 for value in series.values())


async def test_losing_one_node_leaves_the_other_serving(pair: Pair) -> None:
    """SIGKILL on the second node: its sessions get ``node_unavailable``, the
    embedded node's sessions keep their context, ``/healthz`` lists only the
    survivor, and a new session opens on it."""
    gw = pair.gateway
    survivor, lost = pair.addresses
    async with ws_connect(f"{gw.url}?token={TOKEN}") as ws:
        wire = Wire(ws)
        sessions = [await wire.open(ref=f"s{i}") for i in range(4)]
        for i, session in enumerate(sessions):
            await wire.block(session, f"n = {i}")
        doomed = set(pair.link(lost).sessions)
        kept = [s for s in sessions if s not in doomed]
        assert len(doomed) == 2 and len(kept) == 2

        pair.second.signal(signal.SIGKILL)
        errors = await wire.until(
            lambda e: e["type"] == "error" and len(by_type(wire.seen, "error")) == 2
        )
        gone = by_type(errors, "error")
        assert {e["code"] for e in gone} == {"node_unavailable"}
        assert {e["session"] for e in gone} == doomed

        status, body = await healthz(gw.port)
        assert status == 200
        assert [n["address"] for n in body["nodes"]] == [survivor]

        for session in kept:
            (result,) = by_type(await wire.block(session, "n * 100"), "result")
            assert result["ok"] is True
            assert result["value"] == str(sessions.index(session) * 100)
        fresh = await wire.open(ref="fresh")
        assert fresh in pair.link(survivor).sessions
        (result,) = by_type(await wire.block(fresh, "Enum.sum(1..4)"), "result")
        assert result["value"] == "10"


async def test_serve_accepts_two_nodes_after_one_node_flag(
    gateway: Gateway, second_node: tuple[Child, str]
) -> None:
    """``beambridge serve --node A B`` connects to both nodes and lists both
    in ``/healthz``."""
    assert gateway.embedded is not None
    host, port = await gateway.embedded.address()
    _, second = second_node
    addresses = [f"{host}:{port}", second]
    serve = await Child.start(
        "serve",
        sys.executable, "-m", "beambridge.cli", "--log-level", "info",
        "serve", "--port", "0", "--token", TOKEN, "--node", *addresses,
        env=_clean_env(BEAM_BRIDGE_SECRET=gateway.embedded.secret),
    )  # fmt: skip
    try:
        for address in addresses:
            await serve.expect(
                rf"connected to \S+ at {re.escape(address)}$", "stderr", timeout=WAIT
            )
        match = await serve.expect(LISTENING, timeout=WAIT)
        status, body = await healthz(int(match.group(1)))
        assert status == 200
        assert sorted(n["address"] for n in body["nodes"]) == sorted(addresses)
    finally:
        await serve.stop()
