"""The embedded BEAM node: a child process on loopback, owned by the gateway.

:class:`EmbeddedNode` starts ``elixir_node/bin/beam_bridge_node`` (which
compiles the Mix project on first use) with a random secret and port 0,
reads its one ready line for the real port, and restarts it if it dies. The
child runs in its own process group, which is killed on stop; it also halts
by itself when its stdin reaches EOF, so even a gateway killed with SIGKILL
leaves no BEAM behind.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import re
import secrets
import signal
from pathlib import Path

from .errors import BridgeError

__all__ = ["EmbeddedNode", "find_node_script"]

logger = logging.getLogger("beambridge.embedded")

READY = re.compile(rb"^beam_bridge listening on (\S+):(\d+)\s*$")
# First start may compile the Mix project: allow for it.
START_TIMEOUT = 300.0
STOP_TIMEOUT = 5.0
RESTART_BACKOFF_MAX = 5.0


def find_node_script() -> Path:
    """The node's launcher: ``$BEAM_BRIDGE_NODE_DIR`` or the source tree's."""
    env = os.environ.get("BEAM_BRIDGE_NODE_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [parent / "elixir_node" for parent in here.parents]
    candidates.append(Path.cwd() / "elixir_node")
    for folder in candidates:
        script = folder / "bin" / "beam_bridge_node"
        if script.is_file():
            return script
    raise BridgeError(
        "cannot find elixir_node/bin/beam_bridge_node; set BEAM_BRIDGE_NODE_DIR"
    )


class EmbeddedNode:
    """A supervised child BEAM node; :meth:`address` waits until it is ready.

    Not safe to share between event loops. :meth:`stop` is idempotent.
    """

    def __init__(self, *, script: Path | None = None, restart: bool = True) -> None:
        self.script = script or find_node_script()
        self.secret = secrets.token_urlsafe(32)
        self.restart = restart
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._address: asyncio.Future[tuple[str, int]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> tuple[str, int]:
        """Start the node and supervise it; return its address once ready."""
        if self._task is None:
            self._address = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._supervise(), name="embedded node")
        return await self.address()

    async def address(self) -> tuple[str, int]:
        """The ready node's ``(host, port)``, waiting through a restart."""
        if self._address is None:
            raise BridgeError("embedded node not started")
        async with asyncio.timeout(START_TIMEOUT):
            return await asyncio.shield(self._address)

    async def stop(self) -> None:
        """Stop supervising and terminate the node's process group."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._terminate()

    async def _supervise(self) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                await self._spawn()
            except (OSError, BridgeError, TimeoutError) as exc:
                logger.error("embedded node failed to start: %s", exc)
                await self._terminate()
                if not self.restart:
                    assert self._address is not None
                    if not self._address.done():
                        self._address.set_exception(BridgeError(str(exc)))
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF_MAX)
                continue
            assert self.process is not None
            code = await self.process.wait()
            _signal_group(self.process.pid, signal.SIGKILL)
            _forget(self.process.pid)
            if self._stopping or not self.restart:
                return
            logger.warning("embedded node exited with %s; restarting", code)
            self._address = asyncio.get_running_loop().create_future()
            delay = 0.1

    async def _spawn(self) -> None:
        env = dict(os.environ)
        env.pop("BEAM_BRIDGE_SECRET_FILE", None)
        env.update(
            BEAM_BRIDGE_HOST="127.0.0.1",
            BEAM_BRIDGE_PORT="0",
            BEAM_BRIDGE_SECRET=self.secret,
            BEAM_BRIDGE_STDIN_LINK="1",
            # stdout carries the ready line; logs join the gateway's stderr.
            BEAM_BRIDGE_LOG_DEVICE="stderr",
        )
        env.setdefault("MIX_ENV", "prod")
        self.process = await asyncio.create_subprocess_exec(
            str(self.script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        _remember(self.process.pid)
        self.starts += 1
        logger.info("embedded node starting (pid %d)", self.process.pid)
        address = await self._await_ready(self.process)
        assert self._address is not None
        self._address.set_result(address)
        logger.info("embedded node ready on %s:%d", *address)

    async def _await_ready(
        self, process: asyncio.subprocess.Process
    ) -> tuple[str, int]:
        assert process.stdout is not None
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                line = await process.stdout.readline()
                if not line:
                    raise BridgeError(
                        f"node exited before it was ready (status {await process.wait()})"
                    )
                match = READY.match(line)
                if match:
                    break
                logger.debug("node: %s", line.decode(errors="replace").rstrip())
        # Keep draining stdout so a chatty node never blocks on a full pipe.
        asyncio.create_task(_drain(process.stdout))
        return match.group(1).decode(), int(match.group(2))

    async def _terminate(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            logger.warning("embedded node ignored SIGTERM; killing it")
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()
        _signal_group(process.pid, signal.SIGKILL)
        _forget(process.pid)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# Process groups still alive at interpreter exit are killed, whatever path
# the exit took (an exception out of asyncio.run, sys.exit in a handler).
_live_groups: set[int] = set()


def _remember(pid: int) -> None:
    _live_groups.add(pid)


def _forget(pid: int) -> None:
    _live_groups.discard(pid)


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_live_groups):
        _signal_group(pid, signal.SIGKILL)
