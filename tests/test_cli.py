"""The ``beambridge`` command, run as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from pathlib import Path

import pytest
from beambridge import connect

pytestmark = pytest.mark.asyncio(loop_scope="session")

LISTENING = re.compile(r"^listening on ws://127\.0\.0\.1:(\d+)/v1/stream$")


def marked_pids(mark: str) -> list[int]:
    """Processes whose environment carries ``mark`` (the CLI's BEAM inherits it)."""
    needle = f"BEAMBRIDGE_TEST_MARK={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def no_marked_process_within(mark: str, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while pids := marked_pids(mark):
            await asyncio.sleep(0.05)  # polling /proc for processes to go
    assert not pids


async def start(*args: str, mark: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, BEAMBRIDGE_TEST_MARK=mark)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "beambridge.cli", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip


async def read_listening(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """The port from the listening line and the token printed before it."""
    assert process.stdout is not None
    token = ""
    async with asyncio.timeout(120):
        while line := (await process.stdout.readline()).decode():
            if line.startswith("token: "):
                token = line.split(": ", 1)[1].strip()
            if match := LISTENING.match(line.strip()):
                return int(match.group(1)), token
    raise AssertionError("serve exited without a listening line")


async def test_serve_prints_the_real_port_and_stops_its_node_on_sigterm() -> None:
    """``serve --port 0`` prints its port and token; SIGTERM leaves no BEAM."""
    mark = uuid.uuid4().hex
    process = await start("serve", "--port", "0", mark=mark)
    try:
        port, token = await read_listening(process)
        assert port > 0 and token
        async with await connect(
            f"ws://127.0.0.1:{port}/v1/stream", token=token
        ) as client:
            session = await client.open()
            assert (await session.eval("1 + 2")).value == "3"
        assert marked_pids(mark), "the embedded node should be running"
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0
        await no_marked_process_within(mark, 5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_killed_gateway_leaves_no_beam_behind() -> None:
    """SIGKILL on the gateway: the node sees its stdin close and halts."""
    mark = uuid.uuid4().hex
    process = await start("serve", "--port", "0", "--token", "t", mark=mark)
    await read_listening(process)
    process.kill()
    await process.wait()
    await no_marked_process_within(mark, 15)


async def test_run_streams_a_file_and_exits_zero(tmp_path: Path) -> None:
    """``run FILE`` prints each result and the block's done line."""
    source = tmp_path / "prog.exs"
    source.write_text('x = 6 * 7\nIO.puts("x=#{x}")\nx + 1\n')
    mark = uuid.uuid4().hex
    process = await start("run", str(source), "--rate", "2000", mark=mark)
    async with asyncio.timeout(120):
        out, _ = await process.communicate()
    text = out.decode()
    assert process.returncode == 0, text
    assert "✓ 42" in text and "x=42" in text and "✓ 43" in text
    assert "done: 3 fragments, 0 errors" in text
    await no_marked_process_within(mark, 5)


async def test_no_auth_is_refused_off_loopback() -> None:
    """``--no-auth`` on a non-loopback host exits 2 before starting anything."""
    process = await start("serve", "--host", "0.0.0.0", "--no-auth", mark="x")
    async with asyncio.timeout(30):
        assert await process.wait() == 2
