"""Protocol errors: each gets an ``error`` event and the connection lives on."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from .conftest import TOKEN, Wire, by_type

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def still_alive(wire: Wire) -> None:
    """The connection still opens sessions and evaluates."""
    session = await wire.open(ref="alive")
    assert by_type(await wire.block(session, "40 + 2"), "result")[0]["value"] == "42"


@pytest.mark.parametrize(
    "raw,words",
    [
        ("this is not json", "not valid JSON"),
        ('"a string"', "JSON object"),
        ('{"type": "explode"}', "unknown message type"),
        ('{"type": "chunk", "text": "1"}', "missing field 'session'"),
        ('{"type": "open", "ref": 7}', "'ref' must be"),
        ('{"type": "rewind", "session": "s", "to": "one"}', "'to' must be"),
    ],
)
async def test_malformed_messages_get_bad_request(
    wire: Wire, raw: str, words: str
) -> None:
    """Bad JSON, unknown types, missing and mistyped fields are named."""
    await wire.send_raw(raw)
    error = await wire.recv()
    assert error["type"] == "error" and error["code"] == "bad_request"
    assert words in error["message"]
    await still_alive(wire)


async def test_unknown_session_is_reported_with_its_id(wire: Wire) -> None:
    """A message for a session this connection never opened is refused."""
    await wire.send(type="chunk", session="nope", text="1")
    error = await wire.recv()
    assert error == {
        "type": "error",
        "code": "unknown_session",
        "message": error["message"],
        "session": "nope",
    }
    await still_alive(wire)


async def test_sessions_belong_to_their_connection(wire: Wire, connect_wire) -> None:
    """Another connection cannot drive a session it did not open."""
    session = await wire.open()
    other = await connect_wire()
    await other.send(type="eval", session=session, code="1")
    assert (await other.recv())["code"] == "unknown_session"


async def test_message_over_the_size_limit_gets_a_limit_error(
    wire: Wire, gateway
) -> None:
    """A chunk larger than the gateway's limit is refused, not forwarded."""
    session = await wire.open()
    text = "x" * (gateway.config.max_message_bytes + 1)
    await wire.send(type="chunk", session=session, text=text)
    error = await wire.recv()
    assert error["type"] == "error" and error["code"] == "limit"
    await still_alive(wire)


async def test_an_unknown_executor_is_refused_with_its_ref(wire: Wire) -> None:
    """Asking for an executor that does not exist is a bad request."""
    await wire.send(type="open", ref="c", options={"executors": ["beam", "gpu"]})
    error = await wire.recv()
    assert error["code"] == "bad_request" and error["ref"] == "c"


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_missing_or_wrong_token_is_refused_with_401(gateway, token) -> None:
    """The handshake fails with HTTP 401 without the right token."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(gateway.url, additional_headers=headers):
            pass
    assert info.value.response.status_code == 401


async def test_token_in_query_or_header_is_accepted(gateway) -> None:
    """Both ways of passing the token open a connection."""
    async with ws_connect(f"{gateway.url}?token={TOKEN}") as ws:
        await ws.send(json.dumps({"type": "open", "ref": "q"}))
        assert json.loads(await ws.recv())["type"] == "opened"
