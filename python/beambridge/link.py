"""The BEAM link: asyncio connections from the gateway to BEAM nodes.

One :class:`BeamLink` keeps one bridge connection (``protocol/bridge.md``) to
one node: handshake, frames in and out, and reconnection with backoff when
the node goes away. Sessions register a sink on the link that carries them;
node events are routed to it by session id, in the order they arrive. When
the bridge drops, every sink is told (``node_down``) and forgotten, since the
node closes a connection's sessions with it. :class:`NodePool` holds the
links and places new sessions on the least-loaded connected node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from . import etf
from .errors import BridgeError, CodecError, HandshakeError, NodeUnavailable

__all__ = ["BeamLink", "NodePool", "SessionSink", "parse_address"]

BRIDGE_VERSION = 1
HANDSHAKE_TIMEOUT = 5.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
# Above this many bytes waiting in the socket's buffer, senders wait.
WRITE_HIGH_WATER = 4 * 1024 * 1024
# Seconds. A node that keeps its socket open but stops answering (a hung VM,
# a frozen host) is only noticed by silence: the link pings it and drops the
# bridge when nothing at all has arrived for HEARTBEAT_TIMEOUT.
HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_TIMEOUT = 15.0

logger = logging.getLogger("beambridge.link")

Address = tuple[str, int]


def parse_address(text: str) -> Address:
    """``HOST:PORT`` (``[v6]:PORT`` too) to a ``(host, port)`` pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return host.strip("[]"), int(port)


class SessionSink(Protocol):
    """What the gateway registers on a link for each session."""

    def deliver(self, event: dict[str, Any]) -> None: ...

    def node_down(self) -> None: ...


class _BridgeProtocol(asyncio.Protocol):
    """Bytes to decoded frames; everything else lives in :class:`BeamLink`."""

    def __init__(self, link: BeamLink) -> None:
        self.link = link
        self.reader = etf.FrameReader()
        self.transport: asyncio.Transport | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_heard = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_heard = asyncio.get_running_loop().time()
        try:
            for payload in self.reader.feed(data):
                self._frame(etf.decode(payload))
        except CodecError as exc:
            self.link.log.error("bridge stream broken: %s", exc)
            assert self.transport is not None
            self.transport.abort()

    def _frame(self, msg: Any) -> None:
        if not self.welcome.done():
            self.welcome.set_result(msg)
            return
        self.link.dispatch(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(
                BridgeError(f"connection closed during handshake: {exc}")
            )
        if not self.lost.done():
            self.lost.set_result(None)


class BeamLink:
    """A bridge connection to one BEAM node, reconnected while running.

    ``resolve`` is awaited before each connection attempt and returns the
    node's address; an embedded node uses it to hand out its current port.
    ``heartbeat`` is ``(interval, timeout)`` in seconds: how often the node
    is pinged, and how long it may stay silent before the bridge is dropped.
    :meth:`send` and :meth:`dispatch` never await, so frames leave and events
    arrive in order; they must be called from the loop's thread.
    """

    def __init__(
        self,
        resolve: Callable[[], Awaitable[Address]],
        secret: str,
        *,
        name: str = "node",
        debug_frames: bool = False,
        on_state: Callable[[], None] | None = None,
        heartbeat: tuple[float, float] = (HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT),
    ) -> None:
        self._resolve = resolve
        self._secret = secret
        self.name = name
        self.debug_frames = debug_frames
        self._on_state = on_state
        self._heartbeat_interval, self._heartbeat_timeout = heartbeat
        self.log = logging.LoggerAdapter(logger, {"link": name})
        self.node: str | None = None
        self.address: Address | None = None
        self.sessions: dict[str, SessionSink] = {}
        # The node's own numbers from its last pong (atoms, processes, …).
        self.stats: dict[str, int] = {}
        # Pings sent by `fresh_stats`, by ref, waiting for their pong.
        self._stats_waiters: dict[str, asyncio.Future[dict[str, int]]] = {}
        self._protocol: _BridgeProtocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def start(self) -> None:
        """Start connecting (and reconnecting) in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"link {self.name}")

    async def wait_connected(self, timeout: float) -> None:
        """Wait until the bridge is up; raise ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def close(self) -> None:
        """Stop reconnecting and close the bridge; idempotent."""
        self._closing = True
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def send(self, msg: dict[Any, Any]) -> None:
        """Write one frame; raise :class:`NodeUnavailable` if the bridge is down."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            raise NodeUnavailable(f"{self.name} is not connected")
        if self.debug_frames:
            self.log.debug("> %r", msg)
        protocol.transport.write(etf.frame(msg))

    async def fresh_stats(self, timeout: float) -> dict[str, int]:
        """Ping the node now and return the statistics of its answer."""
        ref = f"stats-{secrets.token_hex(4)}"
        waiter = asyncio.get_running_loop().create_future()
        self._stats_waiters[ref] = waiter
        try:
            self.send(etf.message("ping", ref=ref))
            async with asyncio.timeout(timeout):
                return await waiter
        finally:
            self._stats_waiters.pop(ref, None)

    def dispatch(self, msg: Any) -> None:
        """Route one node event to its session's sink."""
        if self.debug_frames:
            self.log.debug("< %r", msg)
        if not isinstance(msg, dict):
            self.log.warning("node sent a non-map frame: %r", msg)
            return
        session = msg.get("session")
        sink = self.sessions.get(session) if session is not None else None
        if sink is not None:
            sink.deliver(msg)
            if msg.get("type") == "closed":
                self.sessions.pop(session, None)
        elif msg.get("type") == "pong":
            stats = msg.get("stats")
            if isinstance(stats, dict):
                self.stats = {str(k): v for k, v in stats.items() if isinstance(v, int)}
            waiter = self._stats_waiters.pop(str(msg.get("ref")), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(self.stats)
        elif msg.get("type") == "error":
            self.log.warning("node error %s: %s", msg.get("code"), msg.get("message"))
        else:
            self.log.debug("event for no session: %r", msg)

    async def _run(self) -> None:
        delay = BACKOFF_FIRST
        refused: str | None = None
        while not self._closing:
            try:
                protocol = await self._connect()
            except HandshakeError as exc:
                # A refusal (a wrong secret, say) will not mend itself: say it
                # loudly once, then quietly on every retry.
                if str(exc) != refused:
                    refused = str(exc)
                    self.log.error("%s refused the bridge: %s", self.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            except (OSError, BridgeError, TimeoutError) as exc:
                self.log.info(
                    "cannot reach %s: %s; retry in %.2fs", self.name, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay, refused = BACKOFF_FIRST, None
            heartbeat = asyncio.create_task(self._heartbeat(protocol))
            try:
                await protocol.lost
            finally:
                heartbeat.cancel()
            self._down()

    async def _heartbeat(self, protocol: _BridgeProtocol) -> None:
        """Ping the node; abort the bridge once it has been silent too long."""
        loop = asyncio.get_running_loop()
        ref = 0
        while protocol.transport is not None and not protocol.lost.done():
            silent = loop.time() - protocol.last_heard
            if silent > self._heartbeat_timeout:
                self.log.warning(
                    "%s silent for %.1fs; dropping the bridge", self.name, silent
                )
                protocol.transport.abort()
                return
            ref += 1
            protocol.transport.write(etf.frame(etf.message("ping", ref=ref)))
            await asyncio.sleep(self._heartbeat_interval)

    async def _connect(self) -> _BridgeProtocol:
        self.address = await self._resolve()
        host, port = self.address
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            _, protocol = await loop.create_connection(
                lambda: _BridgeProtocol(self), host, port
            )
            try:
                assert protocol.transport is not None
                protocol.transport.write(
                    etf.frame(
                        etf.message(
                            "hello", version=BRIDGE_VERSION, secret=self._secret
                        )
                    )
                )
                welcome = await protocol.welcome
            except BaseException:
                if protocol.transport is not None:
                    protocol.transport.abort()
                raise
        if not isinstance(welcome, dict) or welcome.get("type") != "welcome":
            assert protocol.transport is not None
            protocol.transport.abort()
            code = (
                welcome.get("code", "bad_handshake")
                if isinstance(welcome, dict)
                else "bad_handshake"
            )
            message = (
                welcome.get("message", repr(welcome))
                if isinstance(welcome, dict)
                else repr(welcome)
            )
            raise HandshakeError(str(code), str(message))
        sock = protocol.transport.get_extra_info("socket")
        if sock is not None:
            # A Unix socket has no Nagle delay to disable.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.node = str(welcome.get("node"))
        self._protocol = protocol
        self._connected.set()
        self.log.info("connected to %s at %s:%d", self.node, host, port)
        self._state_changed()
        return protocol

    def _down(self) -> None:
        self._protocol = None
        self._connected.clear()
        sinks = list(self.sessions.values())
        self.sessions.clear()
        if not self._closing:
            self.log.warning("lost %s; %d sessions lost with it", self.node, len(sinks))
        for sink in sinks:
            sink.node_down()
        self._state_changed()

    def _state_changed(self) -> None:
        if self._on_state is not None:
            self._on_state()


class NodePool:
    """The links a gateway uses; places each new session on one of them."""

    def __init__(self, links: list[BeamLink]) -> None:
        self.links = links

    def start(self) -> None:
        for link in self.links:
            link.start()

    async def close(self) -> None:
        for link in self.links:
            await link.close()

    @property
    def healthy(self) -> bool:
        return any(link.connected for link in self.links)

    def pick(self) -> BeamLink:
        """The connected link with the fewest sessions."""
        live = [link for link in self.links if link.connected]
        if not live:
            raise NodeUnavailable("no BEAM node is connected")
        return min(live, key=lambda link: len(link.sessions))

    def stats(self) -> dict[str, dict[str, int]]:
        """Each connected node's statistics from its last pong, by address.

        Nodes run without Erlang distribution, so they all report the same
        name (``nonode@nohost``); the address is what tells them apart.
        """
        return {
            _address(link): link.stats
            for link in self.links
            if link.connected and link.stats
        }

    def describe(self) -> list[dict[str, Any]]:
        """The connected nodes, for ``/healthz``."""
        return [
            {
                "node": link.node,
                "address": _address(link) if link.address else None,
                "sessions": len(link.sessions),
            }
            for link in self.links
            if link.connected
        ]


def _address(link: BeamLink) -> str:
    """``host:port`` of the node a link reaches (its name when unknown)."""
    if link.address is None:
        return str(link.node)
    return f"{link.address[0]}:{link.address[1]}"
