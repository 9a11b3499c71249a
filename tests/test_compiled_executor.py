"""The compiled executor beside the BEAM, through the gateway: every
fragment of a session opened with both executors gets a second result,
computed from the compiled executor's own context."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Wire, by_type

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAIT = 120.0  # the first compiled run builds the weights and starts a worker

PROGRAM = """\
x = 6 * 7
y = div(x, -5) + rem(x, 5)
z = if x > y and not (y == 0), do: x - y, else: 0
Enum.reduce(10..1, 0, fn i, acc -> acc + i * z end)
"""


async def _block(wire: Wire, session: str, code: str) -> list[dict[str, Any]]:
    await wire.send(type="eval", session=session, code=code)
    return await wire.until(
        lambda e: e["type"] == "done" and e["session"] == session, timeout=WAIT
    )


def _by_executor(events: list[dict[str, Any]], executor: str) -> list[dict[str, Any]]:
    return [r for r in by_type(events, "result") if r["executor"] == executor]


async def test_both_executors_agree_on_a_program_with_bindings(wire: Wire) -> None:
    """Each fragment gets a BEAM and a compiled result, equal and in order,
    with ``done`` after both; bindings carry across fragments and blocks."""
    session = await wire.open(executors=["beam", "compiled"])
    events = await _block(wire, session, PROGRAM)
    beam, compiled = _by_executor(events, "beam"), _by_executor(events, "compiled")
    assert [r["index"] for r in compiled] == [1, 2, 3, 4]
    assert [r["data"] for r in compiled] == [r["data"] for r in beam]
    assert [r["data"] for r in beam] == [42, -6, 48, 2640]
    assert all(r["agrees"] is True and r["ok"] for r in compiled)
    for r in compiled:
        beam_at = events.index(next(b for b in beam if b["index"] == r["index"]))
        assert events.index(r) > beam_at
    assert events[-1]["type"] == "done" and events[-1]["fragments"] == 4

    again = await _block(wire, session, "x + y")
    assert [r["data"] for r in _by_executor(again, "compiled")] == [36]


async def test_unsupported_fragments_say_so_and_errors_are_compared(wire: Wire) -> None:
    """Outside the subset, ``agrees`` is null; a shared error kind agrees."""
    session = await wire.open(executors=["beam", "compiled"])
    events = await _block(wire, session, 'String.length("abc")\ndiv(1, 0)')
    unsupported, division = _by_executor(events, "compiled")
    assert unsupported["ok"] is False and unsupported["agrees"] is None
    assert unsupported["error"]["kind"] == "unsupported"
    assert division["error"]["kind"] == "ArithmeticError"
    assert division["agrees"] is True


async def test_the_compiled_side_rewinds_and_forks_with_the_session(wire: Wire) -> None:
    """Rewind and fork act on the compiled executor's own history."""
    session = await wire.open(executors=["beam", "compiled"])
    await _block(wire, session, "a = 1\na = a + 10\na = a + 100")
    await wire.send(type="rewind", session=session, to=2)
    await wire.until(lambda e: e["type"] == "rewound")
    events = await _block(wire, session, "a")
    assert [r["data"] for r in _by_executor(events, "compiled")] == [11]

    await wire.send(type="fork", session=session, at=1, ref="f")
    opened = await wire.until(lambda e: e["type"] == "opened")
    fork = opened[-1]["session"]
    events = await _block(wire, fork, "a * 2")
    assert [(r["data"], r["agrees"]) for r in _by_executor(events, "compiled")] == [
        (2, True)
    ]


async def test_sessions_without_the_option_get_beam_results_only(wire: Wire) -> None:
    """The default executor list is just the BEAM."""
    session = await wire.open()
    events = await _block(wire, session, "1 + 1")
    assert {r["executor"] for r in by_type(events, "result")} == {"beam"}
