"""More of the ``beambridge`` command: ``serve --node`` parsing, ``run
--trace`` and ``demo``, the last two as real subprocesses on their own
embedded stacks."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest
from beambridge.cli import _parser

FINISH = 120.0  # seconds a command may take, embedded node start included


async def run_cli(*args: str) -> tuple[int, str]:
    """Run ``beambridge ARGS`` to its end; its status and its stdout and
    stderr together, rendered wide so that no line wraps."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "beambridge.cli", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(os.environ, COLUMNS="200"),
    )  # fmt: skip
    try:
        async with asyncio.timeout(FINISH):
            out, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.parametrize(
    "argv",
    [
        ["--node", "a:1", "b:2"],
        ["--node", "a:1", "--node", "b:2"],
        ["--node", "a:1", "--port", "0", "--node", "b:2"],
    ],
    ids=["one flag", "repeated flag", "flags apart"],
)
def test_serve_node_addresses_parse_the_same_in_every_form(argv: list[str]) -> None:
    """``--node a:1 b:2`` and ``--node a:1 --node b:2`` give the same nodes."""
    args = _parser().parse_args(["serve", *argv])
    assert args.node == ["a:1", "b:2"]


def test_serve_without_node_has_no_nodes() -> None:
    """No ``--node`` leaves the list empty, which means an embedded node."""
    assert _parser().parse_args(["serve"]).node == []


def test_serve_node_flag_needs_an_address() -> None:
    """A bare ``--node`` is a usage error, not an empty list."""
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["serve", "--node"])
    assert info.value.code == 2


PIPELINE = "n = 4\nn |> Kernel.*(3) |> Integer.to_string()\n"
STEP = re.compile(r"#(\d+) · +L(\d+) → (\S+)")


@pytest.mark.asyncio(loop_scope="session")
async def test_run_trace_prints_each_step_value(tmp_path: Path) -> None:
    """``run --trace`` prints a step for the binding and each pipeline stage,
    on its fragment and line, and exits 0; without ``--trace`` none."""
    source = tmp_path / "pipeline.exs"
    source.write_text(PIPELINE)

    code, text = await run_cli("run", str(source), "--rate", "2000", "--trace")
    assert code == 0, text
    steps = [m.groups() for m in STEP.finditer(text)]
    assert steps == [
        ("1", "1", "4"),
        ("2", "2", "4"),
        ("2", "2", "12"),
        ("2", "2", '"12"'),
    ], text
    assert '✓ "12"' in text and "done: 2 fragments, 0 errors" in text

    code, text = await run_cli("run", str(source), "--rate", "2000")
    assert code == 0, text
    assert STEP.findall(text) == [] and '✓ "12"' in text


@pytest.mark.asyncio(loop_scope="session")
async def test_demo_cancels_a_fragment_rewinds_and_sums_up() -> None:
    """``demo`` at a fast rate exits 0 after showing a cancelled fragment, a
    rewind past the bad binding, the rebound total and the latency table."""
    code, text = await run_cli("demo", "--rate", "5000")
    assert code == 0, text

    cancel = re.search(r"✋ cancel fragment #(\d+)", text)
    assert cancel is not None, text
    assert f"#{cancel.group(1)} ✗ cancelled" in text

    rewind = re.search(r"⟲ rewind to fragment (\d+)", text)
    assert rewind is not None, text
    assert rewind.start() > cancel.start()
    assert "✗ ArithmeticError" in text[cancel.end() : rewind.start()]
    after = text[rewind.end() :]
    first = re.search(r"#(\d+) ✓", after)
    assert first is not None and int(first.group(1)) == int(rewind.group(1)) + 1
    assert "all 4 orders priced: 23.0" in after

    assert "latency (ms)" in text
    for row in ("evaluation on the node", "commit → result at client"):
        assert re.search(rf"{row}\s*│\s*\d+\.\d\d", text), row
