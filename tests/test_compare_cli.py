"""``beambridge compare FILE``: both executors side by side, exit status
set by agreement."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compare(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beambridge.cli", "compare", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_compare_prints_a_row_per_fragment_and_exits_0_when_they_agree() -> None:
    """The example program agrees everywhere the compiled executor answers."""
    done = _compare(ROOT / "examples" / "compare.exs")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 10
    assert sum("yes" in row for row in rows) == 9
    assert "n/a" in rows[-1] and "-14479" in rows[-2]


def test_compare_exits_1_when_any_fragment_disagrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exit status alone, with the comparison replaced: a correct
    compiler gives no real disagreement to provoke."""
    import beambridge.compare
    from beambridge import cli
    from beambridge.compare import Row

    async def disagreeing(url: str, token: str | None, code: str) -> list[Row]:
        return [Row(1, code, "1", "2", False, 1, 1, 10)]

    monkeypatch.setattr(beambridge.compare, "compare", disagreeing)
    program = tmp_path / "one.exs"
    program.write_text("1\n")
    assert (
        cli.main(["compare", str(program), "--url", "ws://127.0.0.1:1/v1/stream"]) == 1
    )


def test_integers_past_32_bits_are_unsupported_not_a_disagreement(
    tmp_path: Path,
) -> None:
    """The BEAM answers with a bignum; the compiled executor declines."""
    program = tmp_path / "bignum.exs"
    program.write_text("x = 3_000_000_000 * 3\n")
    done = _compare(program)
    assert done.returncode == 0, done.stderr
    assert "9000000000" in done.stdout and "n/a" in done.stdout
