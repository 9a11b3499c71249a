"""A gateway given ``--node`` addresses instead of an embedded node."""

from __future__ import annotations

import asyncio

import pytest

from beambridge import ClientError, Gateway, GatewayConfig, connect

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_gateway_connects_to_a_running_node_by_address(gateway: Gateway) -> None:
    """A second gateway reaches the shared node with its address and secret."""
    assert gateway.embedded is not None
    address = await gateway.embedded.address()
    remote = Gateway(
        GatewayConfig(
            port=0, token=None, nodes=(address,), secret=gateway.embedded.secret
        )
    )
    await remote.start()
    try:
        await remote.wait_nodes(timeout=10)
        assert remote.embedded is None
        async with await connect(remote.url) as client:
            session = await client.open()
            assert (await session.eval("Enum.max([3, 9, 4])")).value == "9"
    finally:
        await remote.close()


async def test_wrong_secret_leaves_the_gateway_without_nodes(gateway: Gateway) -> None:
    """The node refuses a wrong secret; sessions cannot open, nothing crashes."""
    assert gateway.embedded is not None
    address = await gateway.embedded.address()
    remote = Gateway(GatewayConfig(port=0, nodes=(address,), secret="not-the-secret"))
    await remote.start()
    try:
        with pytest.raises(TimeoutError):
            await remote.wait_nodes(timeout=0.5)
        async with await connect(remote.url) as client:
            with pytest.raises(ClientError) as info:
                await asyncio.wait_for(client.open(), 5)
        assert info.value.code == "node_unavailable"
    finally:
        await remote.close()
