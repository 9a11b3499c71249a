"""The bridge heartbeat: a node that stops answering is dropped and found
again, and its statistics reach ``/metrics``."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from typing import Any

import pytest
from beambridge import Gateway
from beambridge.embedded import EmbeddedNode
from beambridge.link import BeamLink

WAIT = 30.0


async def _until(predicate: Any, timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)  # polling state the link's own tasks change


async def test_a_silent_node_is_dropped_and_reconnected_when_it_answers_again() -> None:
    """SIGSTOP freezes the node with its socket open; only silence shows it."""
    node = EmbeddedNode(restart=False)
    address = await node.start()

    async def resolve() -> tuple[str, int]:
        return address

    link = BeamLink(resolve, node.secret, name="frozen", heartbeat=(0.1, 1.0))
    link.start()
    try:
        await link.wait_connected(WAIT)
        assert node.pid is not None
        group = os.getpgid(node.pid)
        os.killpg(group, signal.SIGSTOP)
        try:
            await _until(lambda: not link.connected)
        finally:
            os.killpg(group, signal.SIGCONT)
        await link.wait_connected(WAIT)
    finally:
        await link.close()
        await node.stop()


@pytest.mark.asyncio(loop_scope="session")
async def test_metrics_show_each_nodes_atoms_processes_and_memory(
    gateway: Gateway,
) -> None:
    """The node's pong carries its numbers; ``/metrics`` turns them into gauges."""
    link = gateway.pool.links[0]
    await _until(lambda: bool(link.stats))
    url = f"http://127.0.0.1:{gateway.port}/metrics"
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(url, timeout=5).read().decode()
    )
    gauges = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("beambridge_node_")
    }
    assert 0 < gauges["beambridge_node_atoms"] < gauges["beambridge_node_atom_limit"]
    assert gauges["beambridge_node_processes"] > 10
    assert gauges["beambridge_node_memory_bytes"] > 1_000_000
    assert "beambridge_node_sessions" in gauges
