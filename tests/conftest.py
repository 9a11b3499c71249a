"""Shared fixtures: one embedded gateway per test session, a raw websocket
client that checks every event against ``protocol/schema/event.json``, and
the same check on every event the SDK receives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import beambridge.client
import jsonschema
import pytest
import pytest_asyncio
from beambridge import Gateway, GatewayConfig
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = ROOT / "protocol" / "schema"
TOKEN = "test-token"
WAIT = 10.0  # seconds any single expected event may take


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA_DIR / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


EVENT_SCHEMA = _validator("event.json")
CLIENT_SCHEMA = _validator("client.json")
HEALTH_SCHEMA = _validator("healthz.json")


def check_event(event: dict[str, Any]) -> dict[str, Any]:
    """Fail the test unless ``event`` matches the event schema."""
    errors = sorted(EVENT_SCHEMA.iter_errors(event), key=str)
    assert not errors, f"event {event} breaks the schema: {errors[0].message}"
    return event


@pytest.fixture(autouse=True)
def _sdk_events_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event the SDK parses is first checked against the schema."""
    parse = beambridge.client.parse_event
    monkeypatch.setattr(
        beambridge.client, "parse_event", lambda obj: parse(check_event(obj))
    )


class Wire:
    """A raw websocket client: sends JSON, receives schema-checked events."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def send(self, **msg: Any) -> None:
        await self.ws.send(json.dumps(msg))

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            event = check_event(json.loads(await self.ws.recv()))
        self.seen.append(event)
        return event

    async def until(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> list[dict[str, Any]]:
        """Events up to and including the first that matches."""
        out = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.recv(timeout)
                out.append(event)
                if match(event):
                    return out

    async def open(self, ref: str = "r", **options: Any) -> str:
        msg: dict[str, Any] = {"type": "open", "ref": ref}
        if options:
            msg["options"] = options
        await self.send(**msg)
        opened = await self.recv()
        assert opened["type"] == "opened" and opened["ref"] == ref, opened
        return opened["session"]

    async def block(self, session: str, code: str) -> list[dict[str, Any]]:
        """``eval`` one block and return its events through ``done``."""
        await self.send(type="eval", session=session, code=code)
        return await self.until(
            lambda e: e["type"] == "done" and e["session"] == session
        )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway() -> AsyncIterator[Gateway]:
    """One gateway on an embedded node, shared by the whole test session."""
    gw = Gateway(GatewayConfig(port=0, token=TOKEN))
    await gw.start()
    await gw.wait_nodes(timeout=120)
    yield gw
    await gw.close()


@pytest_asyncio.fixture(loop_scope="session")
async def wire(gateway: Gateway) -> AsyncIterator[Wire]:
    """A fresh raw connection to the shared gateway."""
    async with ws_connect(
        gateway.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as ws:
        yield Wire(ws)


@pytest_asyncio.fixture(loop_scope="session")
async def connect_wire(gateway: Gateway) -> AsyncIterator[Callable[[], Any]]:
    """A factory of extra raw connections, all closed at the end."""
    opened: list[ClientConnection] = []

    async def make() -> Wire:
        ws = await ws_connect(gateway.url + f"?token={TOKEN}")
        opened.append(ws)
        return Wire(ws)

    yield make
    for ws in opened:
        await ws.close()


def by_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]
