"""The gateway's own limits, its origin check and how ``serve`` takes its
token and its signals.

Each limit test runs a gateway of its own with small limits, in this process,
bridged to the shared embedded node; the ``serve`` tests run the CLI as a
subprocess against that same node, so none of them starts a BEAM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from beambridge import Gateway, GatewayConfig
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from .conftest import Wire, by_type
from .test_cli import read_listening

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "limits-token"


@pytest_asyncio.fixture(loop_scope="session")
async def limited(gateway: Gateway) -> AsyncIterator[Callable[..., Any]]:
    """A factory of gateways with the given limits, on the shared node."""
    assert gateway.embedded is not None
    address = await gateway.embedded.address()
    started: list[Gateway] = []

    async def make(**limits: Any) -> Gateway:
        config = GatewayConfig(
            port=0,
            token=TOKEN,
            nodes=(address,),
            secret=gateway.embedded.secret,
            **limits,
        )
        gw = Gateway(config)
        started.append(gw)
        await gw.start()
        await gw.wait_nodes(timeout=10)
        return gw

    yield make
    for gw in started:
        await gw.close()


async def dial(gw: Gateway, **kwargs: Any) -> Wire:
    ws = await ws_connect(gw.url + f"?token={TOKEN}", **kwargs)
    return Wire(ws)


async def expect_limit(wire: Wire, **fields: Any) -> dict[str, Any]:
    event = await wire.recv()
    assert event["type"] == "error" and event["code"] == "limit", event
    for key, value in fields.items():
        assert event.get(key) == value, event
    return event


async def test_a_message_over_the_size_limit_is_refused_and_the_connection_goes_on(
    limited: Callable[..., Any],
) -> None:
    """A message over ``max_message_bytes`` gets ``limit``; the next one runs."""
    gw = await limited(max_message_bytes=1000)
    wire = await dial(gw)
    sid = await wire.open()
    await wire.send(type="eval", session=sid, code="x = 1\n# " + "y" * 2000)
    error = await expect_limit(wire)
    assert "exceeds 1000" in error["message"]
    results = by_type(await wire.block(sid, "40 + 2"), "result")
    assert [r["value"] for r in results] == ["42"]
    await wire.ws.close()


async def test_a_message_four_times_over_the_limit_closes_with_1009(
    limited: Callable[..., Any],
) -> None:
    """Far past the size limit the gateway does not read: close code 1009."""
    gw = await limited(max_message_bytes=1000)
    wire = await dial(gw)
    await wire.send_raw(json.dumps({"type": "open", "ref": "x" * 5000}))
    with pytest.raises(ConnectionClosedError):
        await wire.recv()
    assert wire.ws.close_code == 1009


async def test_messages_over_the_rate_are_answered_and_dropped(
    limited: Callable[..., Any],
) -> None:
    """Past the per-connection rate, each message gets ``limit`` and is dropped;
    once the bucket refills, the connection works as before."""
    rate = 10
    gw = await limited(max_messages_per_second=rate)
    wire = await dial(gw)
    sid = await wire.open()
    for i in range(3 * rate):
        await wire.send(type="eval", session=sid, code=f"{i} * 2")
    errors, dones = [], 0
    async with asyncio.timeout(10):
        # Each eval is answered by its done or by a limit error.
        while dones + len(errors) < 3 * rate:
            event = await wire.recv()
            if event["type"] == "error":
                errors.append(event)
            dones += event["type"] == "done"
    # The open and the first evals emptied the bucket; the rest were dropped.
    assert rate - 1 <= dones <= rate + 2 and len(errors) >= 2 * rate - 2
    assert all(e["code"] == "limit" and e["session"] == sid for e in errors)
    assert "10 messages per second" in errors[0]["message"]
    assert "dropped" in errors[0]["message"]
    # The limit is a rate: what is under test is that time refills it.
    await asyncio.sleep(1.0)
    results = by_type(await wire.block(sid, "21 * 2"), "result")
    assert [r["value"] for r in results] == ["42"]
    await wire.ws.close()


async def test_sessions_per_connection_are_capped(limited: Callable[..., Any]) -> None:
    """The connection's cap refuses an open and a fork; a close makes room."""
    gw = await limited(max_sessions_per_connection=2)
    wire = await dial(gw)
    first = await wire.open("a")
    await wire.open("b")
    await wire.send(type="open", ref="c")
    error = await expect_limit(wire, ref="c")
    assert "most sessions (2)" in error["message"]
    await wire.send(type="fork", session=first, at=0, ref="d")
    await expect_limit(wire, ref="d")
    await wire.send(type="close", session=first)
    assert (await wire.recv())["type"] == "closed"
    third = await wire.open("e")
    results = by_type(await wire.block(third, "1 + 1"), "result")
    assert results[0]["value"] == "2"
    await wire.ws.close()


async def test_sessions_on_the_gateway_are_capped_across_connections(
    limited: Callable[..., Any],
) -> None:
    """The gateway-wide cap counts every connection's sessions."""
    gw = await limited(max_sessions=3)
    one, two = await dial(gw), await dial(gw)
    await one.open("a")
    await one.open("b")
    mine = await two.open("c")
    await one.send(type="open", ref="d")
    error = await expect_limit(one, ref="d")
    assert "gateway holds its most sessions (3)" in error["message"]
    await two.send(type="close", session=mine)
    assert (await two.recv())["type"] == "closed"
    await one.open("e")
    await one.ws.close()
    await two.ws.close()


async def test_pending_text_per_session_is_capped_until_the_block_ends(
    limited: Callable[..., Any],
) -> None:
    """A chunk that would pass ``max_pending_bytes`` is refused whole; ``end``
    commits what was accepted and the next block starts from zero."""
    gw = await limited(max_pending_bytes=100)
    wire = await dial(gw)
    sid = await wire.open()
    accepted = "x = 6 * 7\n" + "#" * 60 + "\n"
    await wire.send(type="chunk", session=sid, text=accepted)
    await wire.send(type="chunk", session=sid, text="y = 1\n" + "#" * 40)
    error = await expect_limit(wire, session=sid)
    assert "over 100" in error["message"]
    await wire.send(type="end", session=sid)
    events = await wire.until(lambda e: e["type"] == "done")
    assert [r["value"] for r in by_type(events, "result")] == ["42"]
    assert [f["code"] for f in by_type(events, "fragment")] == ["x = 6 * 7"]
    await wire.send(type="chunk", session=sid, text=accepted)
    await wire.send(type="cancel", session=sid)
    await wire.send(type="chunk", session=sid, text=accepted)
    await wire.send(type="end", session=sid)
    events = await wire.until(lambda e: e["type"] == "done")
    assert not by_type(events, "error")
    assert [r["value"] for r in by_type(events, "result")] == ["42"]
    await wire.ws.close()


async def test_origin_check_refuses_other_origins_with_403(
    limited: Callable[..., Any],
) -> None:
    """With allowed origins, another Origin fails the handshake with 403;
    an allowed one, or none at all (not a browser), connects."""
    gw = await limited(allow_origins=("https://ok.example", "http://localhost:3000"))
    with pytest.raises(InvalidStatus) as refused:
        await dial(gw, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    for origin in ("https://ok.example", None):
        wire = await dial(gw, origin=origin)
        sid = await wire.open()
        assert by_type(await wire.block(sid, "1"), "result")[0]["value"] == "1"
        await wire.ws.close()


async def test_without_allowed_origins_any_origin_connects(
    limited: Callable[..., Any],
) -> None:
    """No ``allow_origins``: no origin check."""
    gw = await limited()
    wire = await dial(gw, origin="https://anywhere.example")
    await wire.open()
    await wire.ws.close()


# -- serve -------------------------------------------------------------------


async def serve(
    *args: str, env: dict[str, str], stderr: bool = False
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "beambridge.cli", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if stderr else None,
        env=dict(os.environ, **env),
    )  # fmt: skip


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await process.wait()


@pytest_asyncio.fixture(loop_scope="session")
async def node(gateway: Gateway) -> tuple[str, dict[str, str]]:
    """The shared node's ``HOST:PORT`` and the environment naming its secret."""
    assert gateway.embedded is not None
    host, port = await gateway.embedded.address()
    return f"{host}:{port}", {"BEAM_BRIDGE_SECRET": gateway.embedded.secret}


@pytest.mark.parametrize("source", ["BEAMBRIDGE_TOKEN", "BEAMBRIDGE_TOKEN_FILE"])
async def test_serve_takes_its_token_from_the_environment(
    node: tuple[str, dict[str, str]], source: str, tmp_path: Path
) -> None:
    """Without ``--token``, ``serve`` uses the environment's token and does
    not print it; other tokens are refused."""
    address, env = node
    if source == "BEAMBRIDGE_TOKEN":
        env = dict(env, BEAMBRIDGE_TOKEN="from-env")
    else:
        (tmp_path / "token").write_text("from-env\n")
        env = dict(env, BEAMBRIDGE_TOKEN_FILE=str(tmp_path / "token"))
    process = await serve("serve", "--port", "0", "--node", address, env=env)
    try:
        port, printed = await read_listening(process)
        assert printed == ""
        url = f"ws://127.0.0.1:{port}/v1/stream"
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(url + "?token=other")
        assert refused.value.response.status_code == 401
        async with ws_connect(url + "?token=from-env") as ws:
            wire = Wire(ws)
            sid = await wire.open()
            assert by_type(await wire.block(sid, "3"), "result")[0]["value"] == "3"
    finally:
        await stop(process)
    assert process.returncode == 0


async def test_no_auth_is_accepted_on_loopback(
    node: tuple[str, dict[str, str]],
) -> None:
    """``--no-auth`` on 127.0.0.1 serves clients without a token."""
    address, env = node
    process = await serve(
        "serve", "--port", "0", "--no-auth", "--node", address, env=env
    )
    try:
        port, printed = await read_listening(process)
        assert printed == ""
        async with ws_connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
            wire = Wire(ws)
            sid = await wire.open()
            assert by_type(await wire.block(sid, "4"), "result")[0]["value"] == "4"
    finally:
        await stop(process)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.com"])
async def test_no_auth_is_refused_off_loopback(host: str) -> None:
    """``--no-auth`` with any host that is not loopback exits 2 at once."""
    process = await serve("serve", "--host", host, "--no-auth", env={}, stderr=True)
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode == 2
    assert b"--no-auth is allowed only on a loopback host" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_while_waiting_for_the_first_node_stops_serve(
    sig: signal.Signals,
) -> None:
    """A node address where nothing listens: the signal ends the wait for it
    (10 s) at once, and ``serve`` exits 0 without a listening line."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        process = await serve(
            "--log-level", "info", "serve", "--port", "0",
            "--node", f"127.0.0.1:{port}",
            env={"BEAM_BRIDGE_SECRET": "s"}, stderr=True,
        )  # fmt: skip
        assert process.stderr is not None and process.stdout is not None
        try:
            async with asyncio.timeout(30):
                while b"cannot reach" not in await process.stderr.readline():
                    pass
            process.send_signal(sig)
            async with asyncio.timeout(3):
                assert await process.wait() == 0
            assert b"listening on" not in await process.stdout.read()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
