"""``beambridge compare FILE``: one program through both executors.

The file runs as one block in a session opened with ``executors: ["beam",
"compiled"]``; each fragment's two results are paired by index. A row shows
the BEAM's value, the compiled executor's, whether they agree (``None`` where
the compiled executor does not support the fragment), both costs, and how
many trace tokens the compiled model decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from .client import connect
from .messages import Fragment, Result

__all__ = ["Row", "compare", "render"]


@dataclass(frozen=True, slots=True)
class Row:
    """One fragment as both executors saw it."""

    index: int
    code: str
    beam: str
    compiled: str
    agrees: bool | None
    beam_us: int
    compiled_us: int
    trace_tokens: int


async def compare(url: str, token: str | None, code: str) -> list[Row]:
    """Run ``code`` on a gateway through both executors; a row per fragment."""
    async with await connect(url, token=token) as client:
        session = await client.open(executors=["beam", "compiled"])
        outcome = await session.eval(code)
        await session.close()
    beam = {r.index: r for r in outcome.results if r.executor == "beam"}
    compiled = {r.index: r for r in outcome.results if r.executor == "compiled"}
    return [
        _row(fragment, beam[fragment.index], compiled[fragment.index])
        for fragment in outcome.fragments
    ]


def _row(fragment: Fragment, beam: Result, compiled: Result) -> Row:
    return Row(
        index=fragment.index,
        code=fragment.code,
        beam=_shown(beam),
        compiled=_shown(compiled),
        agrees=compiled.agrees,
        beam_us=beam.elapsed_us,
        compiled_us=compiled.elapsed_us,
        trace_tokens=compiled.trace_tokens or 0,
    )


def _shown(result: Result) -> str:
    if result.ok:
        return result.value or ""
    error: Any = result.error
    return f"{error.kind}: {error.message}" if error else "error"


def render(rows: list[Row], console: Console) -> None:
    """Print the rows as a table."""
    table = Table(title="BEAM and compiled executor, fragment by fragment")
    table.add_column("#", justify="right")
    table.add_column("fragment", max_width=30, no_wrap=True, overflow="ellipsis")
    for column in ("BEAM", "compiled"):
        table.add_column(column, max_width=20, no_wrap=True, overflow="ellipsis")
    table.add_column("agree", min_width=5)
    for column in ("BEAM µs", "compiled µs", "trace tokens"):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    marks = {True: "[green]yes[/]", False: "[red]NO[/]", None: "[dim]n/a[/]"}
    for row in rows:
        first_line = row.code.splitlines()[0] + (" …" if "\n" in row.code else "")
        table.add_row(
            str(row.index),
            first_line,
            row.beam,
            row.compiled,
            marks[row.agrees],
            str(row.beam_us),
            str(row.compiled_us),
            str(row.trace_tokens),
        )
    console.print(table)
