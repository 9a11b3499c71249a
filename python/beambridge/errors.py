"""Exceptions of beambridge, all rooted in :class:`BeambridgeError`.

The gateway turns :class:`ProtocolError` into an ``error`` event and keeps
the connection; the link raises :class:`BridgeError` subclasses when a node
refuses or loses the bridge; the SDK raises :class:`ClientError` for what a
server told it.
"""

from __future__ import annotations

__all__ = [
    "BeambridgeError",
    "BridgeError",
    "ClientError",
    "CodecError",
    "HandshakeError",
    "NodeUnavailable",
    "ProtocolError",
    "SessionClosed",
]


class BeambridgeError(Exception):
    """Root of every exception raised by beambridge."""


class CodecError(BeambridgeError):
    """A bridge frame could not be encoded or decoded as ETF."""


class BridgeError(BeambridgeError):
    """The bridge connection to a BEAM node failed."""


class HandshakeError(BridgeError):
    """The node refused the handshake (wrong secret, version, first frame)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class NodeUnavailable(BridgeError):
    """No BEAM node is connected to carry a request."""


class ProtocolError(BeambridgeError):
    """A client message the gateway cannot act on.

    ``code`` is one of the websocket error codes of the contract
    (``bad_request``, ``unknown_session``, ``limit``, ``node_unavailable``,
    ``internal``); ``ref`` and ``session`` are set when the message named them.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        ref: str | None = None,
        session: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.session = session


class ClientError(BeambridgeError):
    """The gateway answered an SDK request with an ``error`` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SessionClosed(ClientError):
    """The session was closed, or lost with its node, before the call ended."""
