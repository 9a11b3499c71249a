"""The compose stack's topology without Docker: the node and the gateway as
separate processes started by the images' own entrypoints.

The node runs from a ``mix release`` built once for this module (the image
builds the same release) through ``elixir_node/bin/beam_bridge_node``; the
gateway runs through ``docker/gateway.sh --node HOST:PORT``. The tests talk
to the gateway over websockets and HTTP like any client, and wait on the
processes' output lines and on protocol events, never on the clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from websockets.asyncio.client import connect as ws_connect

from .conftest import HEALTH_SCHEMA, ROOT, TOKEN, Wire, by_type

pytestmark = pytest.mark.asyncio(loop_scope="session")

NODE_SCRIPT = ROOT / "elixir_node" / "bin" / "beam_bridge_node"
GATEWAY_SCRIPT = ROOT / "docker" / "gateway.sh"
SECRET = "remote-node-test-secret"
START = 60.0  # seconds a process may take to print its ready line
STOP = 10.0  # seconds a process may take to exit after SIGTERM
NODE_READY = r"^beam_bridge listening on (\S+):(\d+)$"
GATEWAY_READY = r"gateway listening on ws://([^/]+):(\d+)/v1/stream"
SLOW = "receive do\nafter 30_000 -> :late\nend\n"


class Child:
    """A process in its own process group, its output kept line by line.

    :meth:`expect` waits for a line to appear; nothing here sleeps.
    """

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = asyncio.Condition()
        self._stopped = False
        self._watchers = [
            asyncio.create_task(self._read("stdout", process.stdout)),
            asyncio.create_task(self._read("stderr", process.stderr)),
            asyncio.create_task(self._wait()),
        ]

    @classmethod
    async def start(cls, name: str, *argv: str, env: dict[str, str]) -> Child:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        return cls(name, process)

    async def _read(self, stream: str, reader: asyncio.StreamReader | None) -> None:
        assert reader is not None
        while line := await reader.readline():
            async with self._changed:
                self.lines[stream].append(line.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self) -> None:
        await self.process.wait()
        async with self._changed:
            self._changed.notify_all()

    def mark(self, stream: str = "stderr") -> int:
        """How many lines ``stream`` holds now, for ``expect(since=...)``."""
        return len(self.lines[stream])

    async def expect(
        self,
        pattern: str,
        stream: str = "stdout",
        *,
        since: int = 0,
        timeout: float = START,
    ) -> re.Match[str]:
        """The first line of ``stream`` from index ``since`` that matches."""
        regex = re.compile(pattern)
        seen = since
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for line in self.lines[stream][seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines[stream])
                if all(task.done() for task in self._watchers):
                    raise AssertionError(
                        f"{self.name} exited ({self.process.returncode}) without"
                        f" printing {pattern!r}; stderr:\n{self.stderr()}"
                    )
                await self._changed.wait()

    def stderr(self) -> str:
        return "\n".join(self.lines["stderr"])

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL if it is still there after ``STOP`` seconds;
        the exit status. Idempotent."""
        if not self._stopped:
            self._stopped = True
            if self.process.returncode is None:
                self.signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(STOP):
                        await self.process.wait()
                except TimeoutError:
                    self.signal(signal.SIGKILL)
            self.signal(signal.SIGKILL)  # anything it left in its group
            await asyncio.gather(*self._watchers)
        assert self.process.returncode is not None
        return self.process.returncode


@dataclass(frozen=True)
class Node:
    child: Child
    address: str


@dataclass(frozen=True)
class Stack:
    node: Node
    gateway: Child
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"


def _env(**overrides: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BEAM_BRIDGE_", "BEAMBRIDGE_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(overrides)
    return env


async def start_node(release: Path, port: int = 0, secret: str = SECRET) -> Node:
    child = await Child.start(
        "node",
        str(NODE_SCRIPT),
        env=_env(
            BEAM_BRIDGE_HOST="127.0.0.1",
            BEAM_BRIDGE_PORT=str(port),
            BEAM_BRIDGE_SECRET=secret,
            BEAM_BRIDGE_RELEASE=str(release),
        ),
    )
    match = await child.expect(NODE_READY)
    return Node(child, f"{match.group(1)}:{match.group(2)}")


async def start_gateway(node: Node, secret: str = SECRET) -> tuple[Child, int]:
    """The gateway's entrypoint at log level info; returns once it listens,
    which it announces on stderr before any node is connected."""
    child = await Child.start(
        "gateway",
        str(GATEWAY_SCRIPT),
        "--node",
        node.address,
        env=_env(
            BEAMBRIDGE_PORT="0",
            BEAMBRIDGE_TOKEN=TOKEN,
            BEAMBRIDGE_LOG_LEVEL="info",
            BEAM_BRIDGE_SECRET=secret,
        ),
    )
    match = await child.expect(GATEWAY_READY, "stderr")
    return child, int(match.group(2))


async def healthz(port: int) -> tuple[int, dict]:
    def get() -> tuple[int, dict]:
        url = f"http://127.0.0.1:{port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, body = await asyncio.to_thread(get)
    assert not list(HEALTH_SCHEMA.iter_errors(body)), body
    return status, body


async def run(
    *argv: str, env: dict[str, str], cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run a command to its end; its status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    async with asyncio.timeout(START):
        out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


async def gateway_health(port: int) -> int:
    code, _, _ = await run(
        str(GATEWAY_SCRIPT), "health", env=_env(BEAMBRIDGE_PORT=str(port))
    )
    return code


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The node's release, built as the image builds it (into a temporary
    folder, so the source tree's launcher keeps running the Mix project)."""
    path = tmp_path_factory.mktemp("release")
    code, out, err = await run(
        "mix",
        "release",
        "--overwrite",
        "--path",
        str(path),
        env=_env(MIX_ENV="prod"),
        cwd=ROOT / "elixir_node",
    )
    assert code == 0, out + err
    return path / "bin" / "beam_bridge"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(release: Path) -> AsyncIterator[Stack]:
    """A node and a gateway in front of it, shared by this module's tests
    that leave both running."""
    node = await start_node(release)
    gateway, port = await start_gateway(node)
    await gateway.expect(r"beambridge\.link: connected to", "stderr")
    yield Stack(node, gateway, port)
    await gateway.stop()
    await node.child.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def wire(stack: Stack) -> AsyncIterator[Wire]:
    """A raw websocket connection to the module's gateway (shadows the
    shared gateway's fixture of the same name)."""
    async with ws_connect(
        stack.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as ws:
        yield Wire(ws)


def _results(events: list[dict]) -> list[tuple[int, bool, str | None]]:
    return [
        (e["index"], e["ok"], e.get("value") or e.get("error", {}).get("kind"))
        for e in by_type(events, "result")
    ]


@pytest.mark.parametrize("mode", ["release", "source tree"])
async def test_health_command_reports_a_ready_node(
    stack: Stack, release: Path, mode: str
) -> None:
    """``beam_bridge_node health HOST:PORT`` shakes hands, pings, exits 0;
    from the release (as in the image) and from the source tree alike."""
    where = str(release) if mode == "release" else "/nonexistent"
    code, out, err = await run(
        str(NODE_SCRIPT),
        "health",
        stack.node.address,
        env=_env(BEAM_BRIDGE_SECRET=SECRET, BEAM_BRIDGE_RELEASE=where),
    )
    assert code == 0, err
    assert out.startswith("ready ") and stack.node.address in out


async def test_health_command_fails_on_a_wrong_secret_or_no_node(
    stack: Stack, release: Path
) -> None:
    """The probe exits 1 and says why when the node refuses it or is absent."""
    env = _env(BEAM_BRIDGE_SECRET="wrong", BEAM_BRIDGE_RELEASE=str(release))
    code, _, err = await run(str(NODE_SCRIPT), "health", stack.node.address, env=env)
    assert code == 1 and "unauthorized" in err

    env = _env(BEAM_BRIDGE_SECRET=SECRET, BEAM_BRIDGE_RELEASE=str(release))
    code, _, err = await run(str(NODE_SCRIPT), "health", "127.0.0.1:1", env=env)
    assert code == 1 and "econnrefused" in err


async def test_the_node_service_logs_to_standard_output(stack: Stack) -> None:
    """Run through its entrypoint, the node writes its log lines to stdout
    beside the ready line, where a container runtime collects them."""
    await stack.node.child.expect(
        r"\[info\] *bridge listener on 127\.0\.0\.1:", "stdout"
    )
    assert "bridge listener on" not in stack.node.child.stderr()


async def test_healthz_lists_the_remote_node(stack: Stack) -> None:
    """/healthz answers 200 naming the node's address, and the gateway
    image's probe agrees."""
    status, body = await healthz(stack.port)
    assert status == 200 and body["status"] == "ok"
    assert [n["address"] for n in body["nodes"]] == [stack.node.address]
    assert await gateway_health(stack.port) == 0


async def test_sessions_on_a_remote_node_keep_their_own_context(wire: Wire) -> None:
    """Several sessions on one connection evaluate blocks on the remote node,
    each in its own context."""
    first = await wire.open(ref="first")
    second = await wire.open(ref="second")
    assert first != second

    events = await wire.block(first, "x = 20\ny = x + 1\nx * y")
    assert _results(events) == [(1, True, "20"), (2, True, "21"), (3, True, "420")]
    assert events[-1] == {
        "type": "done",
        "session": first,
        "fragments": 3,
        "errors": 0,
    }

    events = await wire.block(second, 'x\nString.upcase("beam")')
    assert _results(events) == [(1, False, "CompileError"), (2, True, '"BEAM"')]

    events = await wire.block(first, "Enum.sum([x, y])")
    assert _results(events) == [(4, True, "41")]


async def test_streamed_chunks_commit_fragments_on_the_remote_node(
    wire: Wire,
) -> None:
    """Chunks cut mid-expression become fragments with output and results,
    the same as on an embedded node."""
    session = await wire.open()
    for text in (
        "total = Enum.red",
        "uce(1..4, 0, fn i, acc ->\n",
        "  acc + i\nend)\n",
    ):
        await wire.send(type="chunk", session=session, text=text)
    await wire.send(type="chunk", session=session, text='IO.puts("sum #{total}")\n')
    await wire.send(type="end", session=session)
    events = await wire.until(lambda e: e["type"] == "done")

    fragments = by_type(events, "fragment")
    assert [f["line"] for f in fragments] == [1, 4]
    assert fragments[0]["code"].startswith("total = Enum.reduce(1..4")
    assert [o["text"] for o in by_type(events, "output")] == ["sum 10\n"]
    assert _results(events) == [(1, True, "10"), (2, True, ":ok")]


async def test_several_connections_share_the_remote_node(stack: Stack) -> None:
    """Two clients at once, each with its own session, both answered."""

    async def client(n: int) -> list[tuple[int, bool, str | None]]:
        async with ws_connect(f"{stack.url}?token={TOKEN}") as ws:
            wire = Wire(ws)
            session = await wire.open(ref=f"c{n}")
            return _results(await wire.block(session, f"{n} * 1_000"))

    assert await asyncio.gather(client(1), client(2)) == [
        [(1, True, "1000")],
        [(1, True, "2000")],
    ]


async def test_wrong_secret_is_refused_and_logged(stack: Stack) -> None:
    """A gateway with the wrong secret never becomes healthy and logs the
    node's refusal."""
    gateway, port = await start_gateway(stack.node, secret="not-the-secret")
    try:
        await gateway.expect(r"unauthorized: wrong secret", "stderr")
        status, body = await healthz(port)
        assert (status, body) == (503, {"status": "unavailable", "nodes": []})
        assert await gateway_health(port) == 1
        assert "connected to" not in gateway.stderr()
    finally:
        # Not SIGTERM: `serve` honours it only once its first wait for a
        # node (10 s) is over, and a clean stop is tested below.
        gateway.signal(signal.SIGKILL)
        await gateway.stop()


async def test_gateway_recovers_when_the_node_restarts(release: Path) -> None:
    """Kill the node mid-evaluation: the fragment in flight gets ``node_down``
    and health turns 503; a node started again on the same port is picked up
    (200) and serves new sessions. SIGTERM then stops both with status 0."""
    node = await start_node(release)
    gateway, port = await start_gateway(node)
    try:
        await gateway.expect(r"beambridge\.link: connected to", "stderr")
        async with ws_connect(f"ws://127.0.0.1:{port}/v1/stream?token={TOKEN}") as ws:
            wire = Wire(ws)
            session = await wire.open(limits={"timeout_ms": 60_000})
            await wire.send(type="eval", session=session, code="a = 1\n" + SLOW)
            await wire.until(lambda e: e["type"] == "result" and e["index"] == 1)
            if not any(e["type"] == "fragment" and e["index"] == 2 for e in wire.seen):
                await wire.until(lambda e: e["type"] == "fragment" and e["index"] == 2)

            mark = gateway.mark()
            node.child.signal(signal.SIGKILL)
            await wire.until(lambda e: e["type"] == "done")
            assert _results(wire.seen) == [(1, True, "1"), (2, False, "node_down")]
            assert (await wire.recv())["code"] == "node_unavailable"
            assert (await healthz(port))[0] == 503
            assert await gateway_health(port) == 1
            await node.child.stop()

            node_port = node.address.rsplit(":", 1)[1]
            node = await start_node(release, port=int(node_port))
            await gateway.expect(
                r"beambridge\.link: connected to", "stderr", since=mark
            )
            status, body = await healthz(port)
            assert status == 200
            assert [n["address"] for n in body["nodes"]] == [node.address]

            fresh = await wire.open(ref="fresh")
            assert _results(await wire.block(fresh, "a = 2\na + 1")) == [
                (1, True, "2"),
                (2, True, "3"),
            ]
        assert await gateway.stop() == 0
        assert await node.child.stop() == 0
    finally:
        await gateway.stop()
        await node.child.stop()
