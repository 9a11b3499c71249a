"""Fuzzing with hypothesis: random bytes and random ETF terms against the
node's listener, random and malformed messages against the gateway. Nothing
may crash; every answer is an error (or a legitimate reply), and the node and
the gateway keep serving.

Hypothesis drives synchronous code, so these tests talk to a node and a
gateway started as processes of their own, with blocking sockets.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from beambridge import etf
from beambridge.embedded import find_node_script
from beambridge.etf import Atom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from .conftest import check_event

SECRET = "fuzz-secret"
TOKEN = "fuzz-token"
WAIT = 10.0
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
# Atoms the node knows, so that random maps reach its request validation
# instead of stopping at `binary_to_term(…, [:safe])`.
KNOWN_ATOMS = [
    "type", "session", "text", "code", "to", "at", "new_session", "options",
    "open", "chunk", "end", "eval", "cancel", "rewind", "fork", "close", "ping",
    "on_error", "halt", "continue", "trace", "limits", "timeout_ms", "ref",
]  # fmt: skip
REPLIES = {"error", "pong", "opened", "fragment", "result", "done", "output",
           "rewound", "closed", "step"}  # fmt: skip

terms = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(KNOWN_ATOMS).map(Atom),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(KNOWN_ATOMS).map(Atom), inner, max_size=5)
    ),
    max_leaves=20,
)


def _read_line(process: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"process ended before printing {pattern!r}")


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[str, int]]:
    """A node started by its own script, for this module alone."""
    env = dict(os.environ, BEAM_BRIDGE_SECRET=SECRET, BEAM_BRIDGE_PORT="0")
    process = subprocess.Popen(
        [str(find_node_script())],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        match = _read_line(process, r"^beam_bridge listening on (\S+):(\d+)$")
        yield match[1], int(match[2])
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def gateway_url(node: tuple[str, int]) -> Iterator[str]:
    """A gateway process on that node."""
    env = dict(os.environ, BEAM_BRIDGE_SECRET=SECRET)
    argv = [sys.executable, "-m", "beambridge.cli", "serve", "--port", "0"]
    argv += ["--token", TOKEN, "--node", f"{node[0]}:{node[1]}"]
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        match = _read_line(process, r"listening on (ws://\S+)")
        yield f"{match[1]}?token={TOKEN}"
    finally:
        process.terminate()
        process.wait(timeout=30)


class _Bridge:
    """A raw bridge client, after the handshake."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=WAIT)
        self.send(etf.encode(etf.message("hello", version=1, secret=SECRET)))
        assert self.recv()["type"] == "welcome"

    def send(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def recv(self) -> Any:
        (size,) = struct.unpack(">I", self._exactly(4))
        return etf.decode(self._exactly(size))

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "the node closed the connection"
            data += chunk
        return data

    def ping(self) -> None:
        """Wait for a pong, checking everything before it is a reply."""
        self.send(etf.encode(etf.message("ping", ref="probe")))
        while (reply := self.recv())["type"] != "pong" or reply["ref"] != "probe":
            assert reply["type"] in REPLIES, reply


def test_random_bytes_are_answered_with_errors(node: tuple[str, int]) -> None:
    """Payloads that are not ETF get ``bad_frame``; the connection keeps serving."""
    bridge = _Bridge(node)

    @FUZZ
    @given(payload=st.binary(max_size=200))
    def check(payload: bytes) -> None:
        bridge.send(payload)
        bridge.ping()

    check()
    bridge.send(b"\x83\xff\x00")
    assert bridge.recv()["code"] == "bad_frame"


def test_random_terms_get_errors_or_legitimate_replies(node: tuple[str, int]) -> None:
    """Random ETF terms, maps of known atoms above all, never crash the node."""
    bridge = _Bridge(node)

    @FUZZ
    @given(term=terms)
    def check(term: Any) -> None:
        bridge.send(etf.encode(term))
        bridge.ping()

    check()
    _Bridge(node).ping()


def test_random_websocket_messages_get_error_events(gateway_url: str) -> None:
    """Random text and JSON objects are answered; the connection stays open."""
    with ws_connect(gateway_url) as ws:
        messages = st.text(max_size=100) | st.dictionaries(
            st.sampled_from(["type", "session", "text", "code", "ref", "to", "at"])
            | st.text(max_size=5),
            st.none() | st.integers() | st.text(max_size=10) | st.booleans(),
            max_size=4,
        ).map(json.dumps)

        @FUZZ
        @given(text=messages)
        def check(text: str) -> None:
            ws.send(text)
            _probe(ws)

        check()


def _probe(ws: ClientConnection) -> None:
    """Open and close a session, checking every event on the way."""
    ws.send(json.dumps({"type": "open", "ref": "probe"}))
    while (event := check_event(json.loads(ws.recv(timeout=WAIT)))).get(
        "ref"
    ) != "probe":
        assert event["type"] in REPLIES, event
    assert event["type"] == "opened", event
    ws.send(json.dumps({"type": "close", "session": event["session"]}))
