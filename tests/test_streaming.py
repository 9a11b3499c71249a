"""Evaluation overlaps with streaming, through the raw protocol and the SDK."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from beambridge import ClientError, Done, Fragment, Output, Result, connect

from .conftest import TOKEN, Wire, by_type

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_first_result_arrives_before_the_last_chunk_is_sent(wire: Wire) -> None:
    """Fragment 1's result comes while the block is still open: the sender
    waits for it before sending the rest, which would time out otherwise."""
    session = await wire.open()
    await wire.send(type="chunk", session=session, text="x = 1 + 1\n")
    await wire.send(type="chunk", session=session, text="y = x * 21\n")
    early = await wire.until(lambda e: e["type"] == "result")
    assert by_type(early, "result")[0]["value"] == "2"
    await wire.send(type="chunk", session=session, text="y")
    await wire.send(type="end", session=session)
    late = await wire.until(lambda e: e["type"] == "done")
    assert by_type(late, "result")[0]["value"] == "42"


async def test_sdk_stream_yields_results_while_a_slow_stream_continues(
    gateway,
) -> None:
    """At a model-like pace, each result lands before the next line is sent."""
    lines = [f"v{i} = {i} * 2\n" for i in range(6)]
    sent_last_at = 0.0

    async def slow() -> AsyncIterator[str]:
        nonlocal sent_last_at
        for line in lines:
            for at in range(0, len(line), 4):
                yield line[at : at + 4]
                await asyncio.sleep(0.01)  # the model's pace, not a sync point
        sent_last_at = time.perf_counter()

    async with await connect(gateway.url, token=TOKEN) as client:
        session = await client.open()
        result_at: dict[int, float] = {}
        events = []
        async with asyncio.timeout(10):
            async for event in session.stream(slow()):
                events.append(event)
                if isinstance(event, Result):
                    result_at[event.index] = time.perf_counter()
    assert isinstance(events[-1], Done) and events[-1].fragments == 6
    assert result_at[1] < sent_last_at
    assert [e.value for e in events if isinstance(e, Result)] == [
        str(i * 2) for i in range(6)
    ]


async def test_sdk_eval_returns_fragments_output_and_results(gateway) -> None:
    """``Session.eval`` collects a block's events into an Outcome; ``rewind(0)``
    forgets every binding and numbers the next fragment 1."""
    async with await connect(gateway.url, token=TOKEN) as client:
        session = await client.open()
        outcome = await session.eval('IO.puts("hi")\n:ok\n1 / 0')
        assert [f.code for f in outcome.fragments] == ['IO.puts("hi")', ":ok", "1 / 0"]
        assert outcome.output == "hi\n"
        assert outcome.ok is False
        assert outcome.results[2].error is not None
        assert outcome.results[2].error.kind == "ArithmeticError"
        assert outcome.done.errors == 1
        assert (await session.eval("kept = 7")).results[0].index == 4
        fork = await session.fork(1)
        assert (await fork.eval("1")).value == "1"
        await session.rewind(0)
        (gone,) = (await session.eval("kept")).results
        assert gone.index == 1 and gone.error is not None
        assert gone.error.kind == "CompileError" and "kept" in gone.error.message
        await session.close()
        await session.close()


async def test_sdk_open_with_a_bad_option_raises_client_error(gateway) -> None:
    """An ``error`` for the open's ref surfaces as ClientError."""
    async with await connect(gateway.url, token=TOKEN) as client:
        with pytest.raises(ClientError) as info:
            await client.open(on_error="explode")
        assert info.value.code == "bad_request"


async def test_sdk_sessions_can_run_concurrently(gateway) -> None:
    """Many sessions of one client evaluate at the same time."""
    async with await connect(gateway.url, token=TOKEN) as client:
        sessions = await asyncio.gather(*(client.open() for _ in range(10)))
        outcomes = await asyncio.gather(
            *(s.eval(f"Enum.sum(1..{i})") for i, s in enumerate(sessions, 1))
        )
    assert [o.value for o in outcomes] == [str(i * (i + 1) // 2) for i in range(1, 11)]


async def test_sdk_stream_delivers_output_events_live(gateway) -> None:
    """Output of a fragment arrives as Output events between its fragment and result."""

    async def code() -> AsyncIterator[str]:
        yield 'for i <- 1..3, do: IO.puts("line #{i}")\n'

    async with await connect(gateway.url, token=TOKEN) as client:
        session = await client.open()
        kinds = [type(e) async for e in session.stream(code())]
    assert kinds[0] is Fragment and kinds[-1] is Done and kinds[-2] is Result
    assert Output in kinds[1:-2]
