"""The gateway: websocket clients on one side, BEAM nodes on the other.

A client message is validated (``messages``), turned into a bridge frame and
written to the link that carries its session, without awaiting, so frames
keep the order of the messages. Node events come back through the link to
the session's :class:`_Session`, which keeps just enough block state to
answer for the node if it is lost (``node_down`` results, the block's
``done``), and are queued to the connection's writer as JSON. ``/healthz``
and ``/metrics`` share the websocket port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import secrets
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from . import etf
from . import compiled
from .compiled import Shadow
from .embedded import EmbeddedNode
from .errors import NodeUnavailable, ProtocolError
from .etf import Atom
from .link import Address, BeamLink, NodePool
from .messages import (
    Cancel,
    Chunk,
    ClientMessage,
    Close,
    Closed,
    Done,
    End,
    Error,
    ErrorInfo,
    Eval,
    Fork,
    Open,
    Result,
    Rewind,
    event_dict,
    parse_client_message,
)
from .metrics import Metrics

__all__ = ["Gateway", "GatewayConfig"]

logger = logging.getLogger("beambridge.gateway")

STREAM_PATH = "/v1/stream"
ERROR_CODES = {
    "bad_request",
    "unknown_session",
    "limit",
    "node_unavailable",
    "internal",
}
# Node error codes that are not websocket codes, and what a client sees.
NODE_ERROR_CODES = {"frame_too_large": "limit", "bad_frame": "internal"}

# Bytes of events waiting for a client that does not read, before the gateway
# gives up on it.
MAX_CLIENT_BACKLOG = 64 * 1024 * 1024

# Atoms of the bridge, made once: they are keys of every frame.
TYPE, SESSION, TEXT, CODE = Atom("type"), Atom("session"), Atom("text"), Atom("code")
CHUNK, END, EVAL = Atom("chunk"), Atom("end"), Atom("eval")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """How a gateway runs.

    ``token`` None means no auth (loopback only, enforced by the CLI);
    ``nodes`` empty means an embedded node. Every limit below is answered
    with an ``error`` event of code ``limit`` and the connection goes on,
    except where noted.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    nodes: tuple[Address, ...] = ()
    secret: str | None = None
    # Bytes of one client message; beyond four times this the message is not
    # even read and the connection is closed with 1009.
    max_message_bytes: int = 1024 * 1024
    # Messages per second per connection, as a token bucket holding one
    # second's worth; a message over it is answered and dropped.
    max_messages_per_second: float = 5000.0
    max_sessions_per_connection: int = 100
    # Sessions open on the whole gateway, over all connections.
    max_sessions: int = 1000
    # Bytes of `chunk` text per session since its last `end` (or `cancel`):
    # a chunk over it is refused before it reaches the node, whose own cap
    # bounds the part not yet committed.
    max_pending_bytes: int = 4 * 1024 * 1024
    # Origins a browser may connect from; empty means no origin check.
    allow_origins: tuple[str, ...] = ()
    debug_frames: bool = False


class _ConnLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self.extra['conn']}] {msg}", kwargs  # type: ignore[index]


class Gateway:
    """A running gateway; :meth:`start`, then :meth:`close` (idempotent)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.embedded: EmbeddedNode | None = None
        self.pool = NodePool([])
        self._server: Server | None = None
        self._connections: set[_Connection] = set()
        self._ids = itertools.count(1)
        self._healthy = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}{STREAM_PATH}"

    async def start(self) -> None:
        """Start the nodes' links (and the embedded node), then listen."""
        config = self.config
        if config.nodes:
            if not config.secret:
                raise ValueError("connecting to nodes needs their secret")
            links = [
                self._link(_fixed(addr), config.secret, f"{addr[0]}:{addr[1]}")
                for addr in config.nodes
            ]
        else:
            self.embedded = EmbeddedNode()
            await self.embedded.start()
            links = [
                self._link(self.embedded.address, self.embedded.secret, "embedded")
            ]
        self.pool = NodePool(links)
        self.pool.start()
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            process_request=self._process_request,
            max_size=4 * config.max_message_bytes,
            compression=None,
        )
        logger.info("gateway listening on %s", self.url)

    def _link(self, resolve: Any, secret: str, name: str) -> BeamLink:
        return BeamLink(
            resolve,
            secret,
            name=name,
            debug_frames=self.config.debug_frames,
            on_state=self._nodes_changed,
        )

    def _nodes_changed(self) -> None:
        self.metrics.nodes_connected = sum(link.connected for link in self.pool.links)
        if self.metrics.nodes_connected:
            self._healthy.set()
        else:
            self._healthy.clear()

    async def wait_nodes(self, timeout: float) -> None:
        """Wait until at least one node is connected."""
        async with asyncio.timeout(timeout):
            await self._healthy.wait()

    async def close(self) -> None:
        """Stop listening, close connections and links, stop the embedded node."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.pool.close()
        compiled.shutdown()
        if self.embedded is not None:
            await self.embedded.stop()
        logger.info("gateway stopped")

    # -- HTTP ----------------------------------------------------------------

    def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/healthz":
            return self._healthz()
        if url.path == "/metrics":
            return _response(
                HTTPStatus.OK,
                self.metrics.render(self.pool.stats()),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        if url.path != STREAM_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        origin = request.headers.get("Origin")
        allowed = self.config.allow_origins
        # Browsers always send Origin; other clients need not, and a client
        # that can leave it out could also forge it.
        if allowed and origin is not None and origin not in allowed:
            return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")
        if self.config.token is not None and not self._authorized(request, url.query):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "bad or missing token\n")
        return None

    def _authorized(self, request: Request, query: str) -> bool:
        expected = self.config.token
        assert expected is not None
        given = ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer ") :]
        else:
            given = parse_qs(query).get("token", [""])[0]
        return hmac.compare_digest(given.encode(), expected.encode())

    def _healthz(self) -> Response:
        nodes = self.pool.describe()
        status = HTTPStatus.OK if nodes else HTTPStatus.SERVICE_UNAVAILABLE
        body = {"status": "ok" if nodes else "unavailable", "nodes": nodes}
        return _response(status, json.dumps(body), "application/json")

    # -- websocket -----------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Connection(self, ws, next(self._ids))
        self._connections.add(conn)
        self.metrics.connections += 1
        try:
            await conn.run()
        finally:
            self.metrics.connections -= 1
            self._connections.discard(conn)


def _fixed(address: Address) -> Any:
    async def resolve() -> Address:
        return address

    return resolve


def _response(status: HTTPStatus, body: str, content_type: str) -> Response:
    data = body.encode()
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(data)))]
    )
    return Response(status.value, status.phrase, headers, data)


class _Connection:
    """One websocket client: its sessions and its ordered outbound events.

    Events are not sent one ``await ws.send()`` at a time: :meth:`emit`
    frames them into a pending list and a ``call_soon`` flush writes all
    that one loop iteration produced (typically a fragment, its result and
    ``done``, decoded from one read of the bridge) in a single socket write.
    On a loaded two-core machine each loopback ``send`` costs tens of
    microseconds, so this is most of the gateway's share of a round trip.
    """

    def __init__(self, gateway: Gateway, ws: ServerConnection, number: int) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        self.ws = ws
        self.debug_frames = gateway.config.debug_frames
        self.log = _ConnLog(logger, {"conn": number})
        self.sessions: dict[str, _Session] = {}
        self._pending: list[str] = []
        self._loop = asyncio.get_running_loop()
        # The message bucket: full at the start, refilled continuously.
        self._tokens = gateway.config.max_messages_per_second
        self._refilled = self._loop.time()

    async def run(self) -> None:
        self.log.info("connection open from %s", self.ws.remote_address)
        try:
            async for raw in self.ws:
                self.receive(raw)
        except ConnectionClosed:
            pass
        finally:
            self._release()
            self.log.info("connection closed")

    def emit(self, event: dict[str, Any]) -> None:
        """Queue one event for the client; events leave in this order."""
        text = json.dumps(event, ensure_ascii=False)
        if self.debug_frames:
            self.log.debug("> %s", text)
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(text)

    def _flush(self) -> None:
        texts, self._pending = self._pending, []
        ws = self.ws
        # websockets' sans-I/O protocol frames the messages; writing its
        # output ourselves lets one write carry them all. Nothing else sends
        # data messages on this connection, so frames cannot interleave.
        if ws.protocol.state is not State.OPEN:
            return
        for text in texts:
            ws.protocol.send_text(text.encode())
        ws.transport.write(b"".join(ws.protocol.data_to_send()))
        if ws.transport.get_write_buffer_size() > MAX_CLIENT_BACKLOG:
            self.log.warning("client is not reading; closing the connection")
            self._loop.create_task(ws.close(1008, "client too slow"))

    def error(self, exc: ProtocolError) -> None:
        self.metrics.protocol_errors_total[exc.code] += 1
        self.emit(event_dict(Error(exc.code, exc.message, exc.ref, exc.session)))

    def receive(self, raw: str | bytes) -> None:
        """Act on one client message; protocol errors become ``error`` events."""
        self.metrics.messages_total += 1
        if self.debug_frames:
            self.log.debug("< %s", raw)
        try:
            limit = self.gateway.config.max_message_bytes
            if len(raw) > limit // 4 and len(_utf8(raw)) > limit:
                raise ProtocolError(
                    "limit", f"message of {len(_utf8(raw))} bytes exceeds {limit}"
                )
            msg = parse_client_message(raw)
            self._spend_token(msg)
            self._act(msg)
        except ProtocolError as exc:
            self.error(exc)
        except Exception:
            self.log.exception("failed on a client message")
            self.error(ProtocolError("internal", "the gateway failed on this message"))

    def _spend_token(self, msg: ClientMessage) -> None:
        """Take one token from the message bucket, or refuse the message."""
        rate = self.gateway.config.max_messages_per_second
        now = self._loop.time()
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1:
            raise ProtocolError(
                "limit",
                f"over {rate:g} messages per second on this connection;"
                f" this {msg.type} message was dropped",
                ref=getattr(msg, "ref", None),
                session=getattr(msg, "session", None),
            )
        self._tokens -= 1

    def _act(self, msg: ClientMessage) -> None:
        if isinstance(msg, Chunk):
            s = self._session(msg.session)
            s.take_text(msg.text)
            s.send({TYPE: CHUNK, SESSION: s.id, TEXT: msg.text})
        elif isinstance(msg, Eval):
            s = self._session(msg.session)
            s.ends += 1
            s.block_bytes = 0
            s.send({TYPE: EVAL, SESSION: s.id, CODE: msg.code})
        elif isinstance(msg, End):
            s = self._session(msg.session)
            s.ends += 1
            s.block_bytes = 0
            s.send({TYPE: END, SESSION: s.id})
        elif isinstance(msg, Open):
            self._open(msg)
        elif isinstance(msg, Cancel):
            s = self._session(msg.session)
            s.block_bytes = 0
            s.send(etf.message("cancel", session=s.id))
        elif isinstance(msg, Rewind):
            s = self._session(msg.session)
            s.send(etf.message("rewind", session=s.id, to=msg.to))
        elif isinstance(msg, Fork):
            self._fork(msg)
        elif isinstance(msg, Close):
            self._close(msg)

    def _session(self, sid: str) -> _Session:
        s = self.sessions.get(sid)
        if s is None or s.closing:
            raise ProtocolError(
                "unknown_session", f"no open session {sid!r}", session=sid
            )
        if s.lost:
            raise ProtocolError(
                "node_unavailable",
                f"session {sid!r} was lost with its node; open a new one",
                session=sid,
            )
        return s

    def _open(self, msg: Open) -> None:
        options = _node_options(msg.options, ref=msg.ref)
        self._check_room(msg.ref)
        try:
            link = self.gateway.pool.pick()
        except NodeUnavailable as exc:
            raise ProtocolError("node_unavailable", str(exc), ref=msg.ref) from exc
        s = self._register(link, msg.ref)
        s.compiled = "compiled" in msg.options.get("executors", ["beam"])
        fields: dict[str, Any] = {"session": s.id}
        if options:
            fields["options"] = options
        s.send(etf.message("open", **fields))

    def _fork(self, msg: Fork) -> None:
        parent = self._session(msg.session)
        self._check_room(msg.ref)
        child = self._register(parent.link, msg.ref)
        child.compiled = parent.shadow is not None
        parent.send(
            etf.message("fork", session=parent.id, at=msg.at, new_session=child.id)
        )

    def _check_room(self, ref: str) -> None:
        """Refuse a new session past the connection's or the gateway's cap."""
        config = self.gateway.config
        if len(self.sessions) >= config.max_sessions_per_connection:
            raise ProtocolError(
                "limit",
                f"this connection holds its most sessions"
                f" ({config.max_sessions_per_connection}); close one first",
                ref=ref,
            )
        if self.metrics.sessions >= config.max_sessions:
            raise ProtocolError(
                "limit",
                f"the gateway holds its most sessions ({config.max_sessions})",
                ref=ref,
            )

    def _register(self, link: BeamLink, ref: str) -> _Session:
        s = _Session(self, link, "s" + secrets.token_hex(8), ref)
        self.sessions[s.id] = s
        link.sessions[s.id] = s
        self.metrics.sessions += 1
        return s

    def _close(self, msg: Close) -> None:
        s = self.sessions.get(msg.session)
        if s is None or s.closing:
            raise ProtocolError(
                "unknown_session",
                f"no open session {msg.session!r}",
                session=msg.session,
            )
        if s.lost:
            s.forget()
            self.emit(event_dict(Closed(s.id)))
            return
        s.closing = True
        s.send(etf.message("close", session=s.id))

    def _release(self) -> None:
        """Close on the node every session this connection leaves open.

        Routes stay on the link until the node's ``closed`` arrives, so the
        link's session count shows what the node still holds.
        """
        for s in list(self.sessions.values()):
            s.forget()
            if s.lost or s.closing:
                continue
            s.closing = True
            # When the node went away too, its sessions went with it.
            with contextlib.suppress(NodeUnavailable):
                s.link.send(etf.message("close", session=s.id))


class _Session:
    """The gateway's view of one session: route, block state, node loss."""

    __slots__ = (
        "conn", "link", "id", "ref", "opened", "closing", "lost",
        "block_bytes",
        "ends", "pending", "block_fragments", "block_errors", "compiled", "shadow",
    )  # fmt: skip

    def __init__(self, conn: _Connection, link: BeamLink, sid: str, ref: str) -> None:
        self.conn = conn
        self.link = link
        self.id = sid
        self.ref = ref
        self.opened = False
        self.closing = False
        self.lost = False
        self.ends = 0
        # Bytes of chunk text since the last end (see GatewayConfig).
        self.block_bytes = 0
        self.pending: dict[int, float] = {}
        self.block_fragments = 0
        self.block_errors = 0
        # The compiled executor beside the BEAM, when the session asked for it.
        self.compiled = False
        self.shadow: Shadow | None = None

    def send(self, msg: dict[Any, Any]) -> None:
        try:
            self.link.send(msg)
        except NodeUnavailable as exc:
            raise ProtocolError("node_unavailable", str(exc), session=self.id) from exc

    def take_text(self, text: str) -> None:
        """Count a chunk's text against the block cap, or refuse it whole."""
        size = len(text) if text.isascii() else len(text.encode())
        cap = self.conn.gateway.config.max_pending_bytes
        if self.block_bytes + size > cap:
            raise ProtocolError(
                "limit",
                f"the block would hold {self.block_bytes + size} bytes of text,"
                f" over {cap} (max_pending_bytes); chunk refused, send end first",
                session=self.id,
            )
        self.block_bytes += size

    def forget(self) -> None:
        if self.conn.sessions.pop(self.id, None) is not None:
            self.conn.metrics.sessions -= 1

    def deliver(self, event: dict[str, Any]) -> None:
        """Forward one node event, keeping the block's state."""
        kind = event["type"]
        metrics = self.conn.metrics
        if kind == "fragment":
            self.pending[event["index"]] = time.perf_counter()
            self.block_fragments += 1
            metrics.fragments_total += 1
        elif kind == "result":
            event["executor"] = "beam"
            started = self.pending.pop(event.get("index"), None)
            if started is not None:
                metrics.observe_latency(time.perf_counter() - started)
            if not event.get("ok"):
                self.block_errors += 1
                error = event.get("error") or {}
                metrics.errors_total[str(error.get("kind"))] += 1
        elif kind == "done":
            self.ends = max(0, self.ends - 1)
            self.block_fragments = self.block_errors = 0
            if self.shadow is not None and not self.shadow.done(event):
                return  # sent by the shadow after the block's compiled results
        elif kind == "opened":
            self.opened = True
            event["ref"] = self.ref
            if self.compiled:
                parent = event.get("forked_from")
                self.shadow = Shadow(
                    self.id, self.conn.emit, parent=parent, at=event.get("at", 0)
                )
        elif kind == "rewound" and self.shadow is not None:
            self.shadow.rewound(event["to"])
        elif kind == "closed":
            self.forget()
            if self.shadow is not None:
                self.shadow.close()
        elif kind == "error":
            self._node_error(event)
            return
        self.conn.emit(event)
        if self.shadow is not None:
            if kind == "fragment":
                self.shadow.fragment(event)
            elif kind == "result":
                self.shadow.beam_result(event)

    def _node_error(self, event: dict[str, Any]) -> None:
        node_code = str(event.get("code"))
        code = (
            node_code
            if node_code in ERROR_CODES
            else NODE_ERROR_CODES.get(node_code, "internal")
        )
        out = {"type": "error", "code": code, "message": str(event.get("message", ""))}
        if not self.opened:
            # The open itself failed: the client knows the session only by ref.
            out["ref"] = self.ref
            self.link.sessions.pop(self.id, None)
            self.forget()
        else:
            out["session"] = self.id
        if code != node_code:
            out["node_code"] = node_code
        self.conn.metrics.protocol_errors_total[code] += 1
        self.conn.emit(out)

    def node_down(self) -> None:
        """The node is gone: answer for what it can no longer answer."""
        conn = self.conn
        self.lost = True
        if self.shadow is not None:
            self.shadow.abandon()
            self.shadow = None
        now = time.perf_counter()
        for index in sorted(self.pending):
            elapsed = int((now - self.pending[index]) * 1e6)
            info = ErrorInfo("node_down", "the BEAM node went away during evaluation")
            conn.emit(event_dict(Result(self.id, index, False, elapsed, error=info)))
            self.block_errors += 1
            conn.metrics.errors_total["node_down"] += 1
        self.pending.clear()
        for _ in range(self.ends):
            conn.emit(
                event_dict(Done(self.id, self.block_fragments, self.block_errors))
            )
            self.block_fragments = self.block_errors = 0
        self.ends = 0
        if not self.opened:
            conn.error(
                ProtocolError(
                    "node_unavailable",
                    "the node went away before the session opened",
                    ref=self.ref,
                )
            )
            self.forget()
        elif self.closing:
            conn.emit(event_dict(Closed(self.id)))
            self.forget()
        else:
            conn.error(
                ProtocolError(
                    "node_unavailable",
                    "the session's node went away; its context is lost",
                    session=self.id,
                )
            )


def _node_options(options: dict[str, Any], *, ref: str) -> dict[Atom, Any]:
    """The bridge form of validated ``open`` options (``executors`` stays
    with the gateway, which runs the compiled executor itself)."""
    out: dict[Atom, Any] = {}
    if "on_error" in options:
        out[Atom("on_error")] = Atom(options["on_error"])
    if "trace" in options:
        out[Atom("trace")] = bool(options["trace"])
    # Only `false` is sent: it is the one value that differs from the node's
    # default, and a node that has not yet loaded its session code does not
    # know the atom, so the key alone would make the open frame unreadable.
    if options.get("speculate") is False:
        out[Atom("speculate")] = False
    if options.get("limits"):
        out[Atom("limits")] = {Atom(k): v for k, v in options["limits"].items()}
    return out


def _utf8(raw: str | bytes) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw
