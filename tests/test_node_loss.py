"""Losing the node: node_down results, 503 health, recovery by restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest
import pytest_asyncio
from beambridge import Gateway, GatewayConfig
from websockets.asyncio.client import connect as ws_connect

from .conftest import TOKEN, Wire, by_type
from .test_contract import _get

pytestmark = pytest.mark.asyncio(loop_scope="session")

SLOW = "receive do\nafter 20_000 -> :late\nend\n"


@pytest_asyncio.fixture(loop_scope="session")
async def own_gateway():
    """A gateway with its own embedded node, since this test kills it."""
    gw = Gateway(GatewayConfig(port=0, token=TOKEN))
    await gw.start()
    await gw.wait_nodes(timeout=120)
    yield gw
    await gw.close()


async def test_killed_node_yields_node_down_then_recovers(own_gateway: Gateway) -> None:
    """Kill -9 mid-block: in-flight fragments get node_down, the open eval
    block gets its done, health turns 503, and the restarted node serves."""
    gw = own_gateway
    assert gw.embedded is not None and gw.embedded.pid is not None
    async with ws_connect(
        gw.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as ws:
        wire = Wire(ws)
        streamed = await wire.open(ref="streamed", limits={"timeout_ms": 60_000})
        evaluated = await wire.open(ref="evaluated", limits={"timeout_ms": 60_000})
        for text in ("a = 1\n", "receive do\n"):
            await wire.send(type="chunk", session=streamed, text=text)
        await wire.until(lambda e: e["type"] == "result" and e["index"] == 1)
        for text in ("after 20_000 -> :late\nend\n", "b = 2\n"):
            await wire.send(type="chunk", session=streamed, text=text)
        await wire.until(lambda e: e["type"] == "fragment" and e["index"] == 2)
        await wire.send(type="eval", session=evaluated, code=SLOW)
        await wire.until(
            lambda e: e["type"] == "fragment" and e["session"] == evaluated
        )

        os.killpg(gw.embedded.pid, signal.SIGKILL)
        events = await wire.until(
            lambda e: e["type"] == "error" and len(by_type(wire.seen, "error")) == 2
        )
        health = await asyncio.to_thread(_get, f"http://127.0.0.1:{gw.port}/healthz")
        assert health[0] == 503
        assert json.loads(health[1]) == {"status": "unavailable", "nodes": []}

        mine = [e for e in events if e.get("session") == streamed]
        down = [r for r in by_type(mine, "result") if r["error"]["kind"] == "node_down"]
        assert [r["index"] for r in down] == [2]
        assert mine[-1]["type"] == "error" and mine[-1]["code"] == "node_unavailable"

        theirs = [e for e in events if e.get("session") == evaluated]
        assert [e["type"] for e in theirs] == ["result", "done", "error"]
        assert theirs[0]["error"]["kind"] == "node_down"
        assert theirs[1]["fragments"] == 1 and theirs[1]["errors"] == 1

        await wire.send(type="eval", session=streamed, code="1")
        assert (await wire.recv())["code"] == "node_unavailable"

        await gw.wait_nodes(timeout=60)
        assert gw.embedded.starts == 2
        health = await asyncio.to_thread(_get, f"http://127.0.0.1:{gw.port}/healthz")
        assert health[0] == 200
        fresh = await wire.open(ref="fresh")
        assert by_type(await wire.block(fresh, "6 * 7"), "result")[0]["value"] == "42"
        await wire.send(type="close", session=streamed)
        assert await wire.recv() == {"type": "closed", "session": streamed}


async def test_open_without_a_node_is_node_unavailable(own_gateway: Gateway) -> None:
    """With every node down, ``open`` is refused with node_unavailable."""
    gw = own_gateway
    assert gw.embedded is not None
    await gw.embedded.stop()
    async with ws_connect(gw.url + f"?token={TOKEN}") as ws:
        wire = Wire(ws)
        await wire.send(type="open", ref="x")
        error = await wire.recv()
    assert error["code"] == "node_unavailable" and error["ref"] == "x"
