"""beambridge: stream a model's Elixir code to a BEAM node, results back live.

The SDK is :func:`connect`; the gateway is :class:`Gateway`; the CLI is
``beambridge`` (:mod:`beambridge.cli`).
"""

from __future__ import annotations

from .client import Client, Outcome, Session, connect
from .errors import (
    BeambridgeError,
    BridgeError,
    ClientError,
    NodeUnavailable,
    ProtocolError,
    SessionClosed,
)
from .gateway import Gateway, GatewayConfig
from .messages import (
    Closed,
    Done,
    Error,
    ErrorInfo,
    Event,
    Fragment,
    Opened,
    Output,
    Result,
    Rewound,
    Step,
)

__all__ = [
    "BeambridgeError",
    "BridgeError",
    "Client",
    "ClientError",
    "Closed",
    "Done",
    "Error",
    "ErrorInfo",
    "Event",
    "Fragment",
    "Gateway",
    "GatewayConfig",
    "NodeUnavailable",
    "Opened",
    "Outcome",
    "Output",
    "ProtocolError",
    "Result",
    "Rewound",
    "Session",
    "SessionClosed",
    "Step",
    "connect",
]
