"""Changing course through the SDK: ``Session.cancel``, ``rewind`` and
``fork``, and the raw ``Session.events`` iterator, on the shared embedded node.

Each test waits for the event that shows the state it needs (a fragment
announced, a step reported) before it acts; nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from beambridge import Done, Event, Fragment, Output, Result, Session, Step, connect
from beambridge.messages import Eval

from .conftest import TOKEN, WAIT

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Pure and endless: it never prints, never waits, never finishes.
ENDLESS_SUM = "Stream.repeatedly(fn -> 1 end) |> Enum.reduce(0, &(&1 + &2))"


async def one_block(code: str) -> AsyncIterator[str]:
    yield code


def results(events: list[Event]) -> list[Result]:
    return [e for e in events if isinstance(e, Result)]


async def only_result(session: Session, code: str) -> Result:
    """The single result of ``code`` run as one block."""
    (result,) = (await session.eval(code)).results
    return result


async def test_sdk_cancel_stops_a_busy_loop_and_keeps_earlier_bindings(
    gateway,
) -> None:
    """``Session.cancel`` ends an endless pure loop as ``cancelled`` and the
    bindings made before it still hold."""
    async with await connect(gateway.url, token=TOKEN) as client:
        session = await client.open()
        assert (await session.eval("x = 5\ny = x * 2")).value == "10"

        events: list[Event] = []
        async with asyncio.timeout(WAIT):
            async for event in session.stream(one_block(ENDLESS_SUM + "\n")):
                events.append(event)
                if isinstance(event, Fragment):
                    await session.cancel()

        (result,) = results(events)
        assert result.index == 3 and result.ok is False
        assert result.error is not None and result.error.kind == "cancelled"
        assert isinstance(events[-1], Done)
        assert (events[-1].fragments, events[-1].errors) == (1, 1)

        after = await only_result(session, "{x, y}")
        assert (after.index, after.value) == (4, "{5, 10}")


async def test_sdk_events_yields_output_and_steps_while_the_fragment_runs(
    gateway,
) -> None:
    """``Session.events`` hands over a traced session's output and pipeline
    steps as they happen: the last stage never returns, yet its input's
    step arrives, and only the cancel gives the fragment its result."""
    code = (
        'IO.puts("summing")\n'
        "1..3 |> Enum.sum() |> then(fn s -> Stream.repeatedly(fn -> s end)"
        " |> Stream.run() end)"
    )
    async with await connect(gateway.url, token=TOKEN) as client:
        session = await client.open(trace=True)
        await client.send(Eval(session.id, code))

        seen: list[Event] = []
        async with asyncio.timeout(WAIT):
            async for event in session.events():
                seen.append(event)
                if isinstance(event, Step) and event.value == "6":
                    break
        assert not [r for r in results(seen) if r.index == 2]
        steps = [(s.index, s.value) for s in seen if isinstance(s, Step)]
        assert steps == [(1, ":ok"), (2, "1..3"), (2, "6")]
        outputs = [(o.index, o.text) for o in seen if isinstance(o, Output)]
        assert outputs == [(1, "summing\n")]
        first_result = next(i for i, e in enumerate(seen) if isinstance(e, Result))
        first_output = next(i for i, e in enumerate(seen) if isinstance(e, Output))
        assert first_output < first_result and results(seen)[0].value == ":ok"

        await session.cancel()
        rest: list[Event] = []
        async with asyncio.timeout(WAIT):
            async for event in session.events():
                rest.append(event)
                if isinstance(event, Done):
                    break
        (cancelled,) = results(rest)
        assert cancelled.index == 2 and cancelled.error is not None
        assert cancelled.error.kind == "cancelled"
        assert (rest[-1].fragments, rest[-1].errors) == (2, 1)


async def test_sdk_rewind_to_the_middle_forgets_what_came_after(gateway) -> None:
    """``Session.rewind(1)`` keeps the first binding, drops the later ones,
    and numbers the next fragment 2."""
    async with await connect(gateway.url, token=TOKEN) as client:
        session = await client.open()
        assert (await session.eval("a = 1\nb = a + 1\nc = b + 1")).value == "3"

        await session.rewind(1)

        kept = await only_result(session, "a")
        assert (kept.index, kept.value) == (2, "1")
        gone = await only_result(session, "b")
        assert gone.index == 3 and gone.ok is False
        assert gone.error is not None and gone.error.kind == "CompileError"


async def test_sdk_fork_starts_from_the_parents_context_and_goes_its_own_way(
    gateway,
) -> None:
    """``Session.fork(2)`` gives a session holding the parent's first two
    bindings, numbered from 1, untouched by the parent's later rewind."""
    async with await connect(gateway.url, token=TOKEN) as client:
        parent = await client.open()
        await parent.eval("a = 1\nb = a + 1\nc = b + 1")

        child = await parent.fork(2)
        assert child.id != parent.id
        assert (child.opened.forked_from, child.opened.at) == (parent.id, 2)

        both = await only_result(child, "{a, b}")
        assert (both.index, both.value) == (1, "{1, 2}")
        later = await only_result(child, "c")
        assert later.index == 2 and later.error is not None
        assert later.error.kind == "CompileError"

        await parent.rewind(1)
        assert (await only_result(parent, "binding() |> length()")).value == "1"
        assert (await only_result(child, "b * 10")).value == "20"
