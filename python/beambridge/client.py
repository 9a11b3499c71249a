"""The client SDK: ``from beambridge import connect``.

A :class:`Client` is one websocket connection; its reader task routes each
event to the :class:`Session` it names, so many sessions share a
connection. ``Session.stream`` sends code chunks while it yields events;
``Session.eval`` sends a whole block and returns its :class:`Outcome`.
Calls on one session are meant to be sequential (one block at a time);
different sessions may be used concurrently.

    async with await connect(url, token=token) as client:
        session = await client.open()
        outcome = await session.eval("x = 1 + 1")
        print(outcome.value)  # "2"
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from .errors import ClientError, SessionClosed
from .messages import (
    Cancel,
    Chunk,
    ClientMessage,
    Close,
    Closed,
    Done,
    End,
    Error,
    Eval,
    Event,
    Fork,
    Fragment,
    Open,
    Opened,
    Output,
    Result,
    Rewind,
    Rewound,
    encode_client_message,
    parse_event,
)

__all__ = ["Client", "Outcome", "Session", "connect"]


async def connect(
    url: str, *, token: str | None = None, open_timeout: float = 10.0
) -> Client:
    """Open a connection to a gateway (``ws://HOST:PORT/v1/stream``)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    ws = await ws_connect(
        url,
        additional_headers=headers,
        compression=None,
        open_timeout=open_timeout,
        max_size=None,
    )
    return Client(ws)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything one block produced, in order."""

    fragments: tuple[Fragment, ...]
    results: tuple[Result, ...]
    output: str
    done: Done

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def value(self) -> str | None:
        """The inspected value of the last fragment, if it succeeded."""
        return self.results[-1].value if self.results else None


class Client:
    """One websocket connection to a gateway; ``close`` is idempotent."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._sessions: dict[str, Session] = {}
        self._opening: dict[str, asyncio.Future[Opened]] = {}
        self._refs = itertools.count(1)
        self.errors: asyncio.Queue[Error] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(), name="beambridge reader")

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self, **options: Any) -> Session:
        """Open a session; ``options`` as in the contract (``on_error``, …)."""
        ref = f"r{next(self._refs)}"
        return await self._await_opened(ref, Open(ref, options))

    async def _await_opened(self, ref: str, msg: ClientMessage) -> Session:
        future = asyncio.get_running_loop().create_future()
        self._opening[ref] = future
        try:
            await self.send(msg)
            opened = await future
        finally:
            self._opening.pop(ref, None)
        return self._sessions[opened.session]

    async def send(self, msg: ClientMessage) -> None:
        await self.ws.send(encode_client_message(msg))

    async def close(self) -> None:
        await self.ws.close()
        try:
            await self._reader
        except ConnectionClosed:
            pass

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self._route(parse_event(json.loads(raw)))
        except ConnectionClosed:
            pass
        finally:
            gone = SessionClosed("connection_closed", "the connection closed")
            for future in self._opening.values():
                if not future.done():
                    future.set_exception(gone)
            for session in self._sessions.values():
                session._events.put_nowait(None)

    def _route(self, event: Event) -> None:
        if isinstance(event, Opened):
            session = Session(self, event.session, event)
            self._sessions[event.session] = session
            future = self._opening.get(event.ref or "")
            if future is not None and not future.done():
                future.set_result(event)
            return
        if isinstance(event, Error) and event.session is None:
            future = self._opening.get(event.ref or "")
            if future is not None and not future.done():
                future.set_exception(ClientError(event.code, event.message))
            else:
                self.errors.put_nowait(event)
            return
        session = self._sessions.get(getattr(event, "session", None) or "")
        if session is not None:
            session._events.put_nowait(event)
            if isinstance(event, Closed):
                del self._sessions[session.id]
        else:
            if isinstance(event, Error):
                self.errors.put_nowait(event)


class Session:
    """One session on the gateway. Not safe for concurrent blocks."""

    def __init__(self, client: Client, sid: str, opened: Opened) -> None:
        self.client = client
        self.id = sid
        self.opened = opened
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()

    async def events(self) -> AsyncIterator[Event]:
        """Every event of this session as it arrives, until it closes."""
        while (event := await self._events.get()) is not None:
            yield event
            if isinstance(event, Closed):
                return

    async def stream(self, chunks: AsyncIterable[str]) -> AsyncIterator[Event]:
        """Send ``chunks`` as one block and yield its events until ``done``.

        Sending runs concurrently: events arrive while later chunks are
        still being produced. An ``error`` event naming the session ends the
        iteration by raising :class:`ClientError`.
        """
        sender = asyncio.create_task(self._send_block(chunks))
        try:
            while True:
                event = await self._next()
                yield event
                if isinstance(event, Done):
                    break
            await sender
        finally:
            if not sender.done():
                sender.cancel()

    async def _send_block(self, chunks: AsyncIterable[str]) -> None:
        async for text in chunks:
            if text:
                await self.client.send(Chunk(self.id, text))
        await self.client.send(End(self.id))

    async def _next(self) -> Event:
        event = await self._events.get()
        if event is None:
            raise SessionClosed("connection_closed", "the connection closed")
        if isinstance(event, Error):
            raise ClientError(event.code, event.message)
        if isinstance(event, Closed):
            raise SessionClosed("closed", f"session {self.id} closed")
        return event

    async def eval(self, code: str) -> Outcome:
        """Run ``code`` as one block and return what it produced."""
        await self.client.send(Eval(self.id, code))
        fragments, results, output = [], [], []
        while True:
            event = await self._next()
            if isinstance(event, Fragment):
                fragments.append(event)
            elif isinstance(event, Result):
                results.append(event)
            elif isinstance(event, Output):
                output.append(event.text)
            elif isinstance(event, Done):
                return Outcome(tuple(fragments), tuple(results), "".join(output), event)

    async def cancel(self) -> None:
        """Kill the running fragment and drop what is queued."""
        await self.client.send(Cancel(self.id))

    async def rewind(self, to: int) -> None:
        """Restore the context after fragment ``to``; waits for ``rewound``."""
        await self.client.send(Rewind(self.id, to))
        while not isinstance(await self._next(), Rewound):
            pass

    async def fork(self, at: int) -> Session:
        """A new session whose context is this one's after fragment ``at``."""
        ref = f"r{next(self.client._refs)}"
        return await self.client._await_opened(ref, Fork(self.id, at, ref))

    async def close(self) -> None:
        """Close the session and wait for ``closed``; idempotent."""
        if self.id not in self.client._sessions:
            return
        await self.client.send(Close(self.id))
        while True:
            event = await self._events.get()
            if event is None or isinstance(event, Closed):
                return
