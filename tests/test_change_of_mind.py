"""Cancel, rewind, fork, live output, step trace and speculative evaluation,
end to end through the gateway on the shared embedded node.

Nothing here sleeps to wait for the node: each test waits for the event that
shows the state it needs (a fragment announced, a first line of output). The
speculation tests cannot see a speculative run from outside, which is the
point of it; they pace the stream with round trips on a second session so
that the early runs have happened before the text that settles them.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from beambridge.cli import tokens
from beambridge.errors import ProtocolError
from beambridge.messages import Result, parse_client_message, parse_event

from .conftest import CLIENT_SCHEMA, Wire, by_type
from .test_contract import check_order

pytestmark = pytest.mark.asyncio(loop_scope="session")

BUSY_LOOP = "Stream.repeatedly(fn -> :spin end) |> Stream.run()"


def is_done(session: str) -> Any:
    return lambda e: e["type"] == "done" and e.get("session") == session


def results(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return by_type(events, "result")


async def value_of(wire: Wire, session: str, code: str) -> dict[str, Any]:
    """The one result of ``code`` run as a block."""
    (result,) = results(await wire.block(session, code))
    return result


# -- the option on the wire --------------------------------------------------


@pytest.mark.parametrize("flag", [True, False])
async def test_speculate_is_a_boolean_session_option(flag: bool) -> None:
    """``speculate`` passes the schema and the gateway's validation."""
    msg = {"type": "open", "ref": "a", "options": {"speculate": flag}}
    assert not list(CLIENT_SCHEMA.iter_errors(msg))
    assert parse_client_message(json.dumps(msg)).options == {"speculate": flag}


async def test_speculate_that_is_not_a_boolean_is_refused() -> None:
    """A non-boolean ``speculate`` fails the schema and the gateway alike."""
    msg = {"type": "open", "ref": "a", "options": {"speculate": "no"}}
    assert list(CLIENT_SCHEMA.iter_errors(msg))
    with pytest.raises(ProtocolError, match="speculate"):
        parse_client_message('{"type":"open","ref":"a","options":{"speculate":1}}')


async def test_steps_dropped_reaches_the_sdk_result() -> None:
    """The result's ``steps_dropped`` extension is kept by ``parse_event``."""
    event = parse_event(
        {"type": "result", "session": "s", "index": 1, "executor": "beam",
         "ok": True, "elapsed_us": 3, "value": "1", "data": 1,
         "steps_dropped": 7}
    )  # fmt: skip
    assert isinstance(event, Result) and event.steps_dropped == 7


# -- cancel --------------------------------------------------------------------


async def test_cancel_kills_a_busy_loop_and_keeps_the_context(wire: Wire) -> None:
    """A loop that never yields ends as ``cancelled``; bindings survive."""
    session = await wire.open()
    await wire.block(session, "x = 5")
    await wire.send(type="eval", session=session, code=BUSY_LOOP)
    events = await wire.until(lambda e: e["type"] == "fragment")
    await wire.send(type="cancel", session=session)
    events += await wire.until(is_done(session))
    check_order(events)
    (result,) = results(events)
    assert result["index"] == 2 and result["ok"] is False
    assert result["error"]["kind"] == "cancelled"
    assert events[-1]["fragments"] == 1 and events[-1]["errors"] == 1
    follow_up = await value_of(wire, session, "x + 1")
    assert (follow_up["index"], follow_up["value"]) == (3, "6")


async def test_the_sandbox_denies_trapping_exits_before_anything_runs(
    wire: Wire,
) -> None:
    """A fragment that would trap exits and spawn children that trap them too
    is refused as ``denied``, naming ``Process.flag/2``, before it prints or
    starts anything.

    This is what the sandboxed shared node can show; that a cancel kills a
    loop which does trap exits, and every process it started, is checked in
    ExUnit with the sandbox off (``elixir_node/test/change_of_mind_test.exs``).
    """
    session = await wire.open()
    tag = uuid.uuid4().hex[:12]
    child, grandchild = f":bb_child_{tag}", f":bb_grandchild_{tag}"
    code = f"""(
  Process.flag(:trap_exit, true)
  holder = fn name ->
    fn ->
      Process.flag(:trap_exit, true)
      Process.register(self(), name)
      IO.puts("up #{{inspect(name)}}")
      Process.sleep(:infinity)
    end
  end
  spawn_link(holder.({child}))
  spawn(holder.({grandchild}))
  {BUSY_LOOP}
)"""
    events = await wire.block(session, code)
    check_order(events)
    assert by_type(events, "output") == []
    (result,) = results(events)
    assert result["index"] == 1 and result["ok"] is False
    assert result["error"]["kind"] == "denied"
    assert "Process.flag/2" in result["error"]["message"]
    assert result["error"]["line"] == 2
    assert events[-1]["fragments"] == 1 and events[-1]["errors"] == 1


async def test_cancel_drops_queued_fragments_and_the_pending_buffer(
    wire: Wire,
) -> None:
    """Queued fragments end as ``cancelled``; the unfinished text is gone."""
    session = await wire.open()
    text = "Process.sleep(:infinity)\n1\n2\n3 +"
    await wire.send(type="chunk", session=session, text=text)
    events = await wire.until(lambda e: e["type"] == "fragment" and e["index"] == 3)
    await wire.send(type="cancel", session=session)
    await wire.send(type="end", session=session)
    events += await wire.until(is_done(session))
    check_order(events)
    kinds = [(r["index"], r["error"]["kind"]) for r in results(events)]
    assert kinds == [(1, "cancelled"), (2, "cancelled"), (3, "cancelled")]
    assert events[-1]["fragments"] == 3 and events[-1]["errors"] == 3
    # "3 +" was dropped: it does not join the next block's text.
    follow_up = await value_of(wire, session, "4")
    assert (follow_up["index"], follow_up["value"]) == (4, "4")


async def test_cancel_with_nothing_running_changes_nothing(wire: Wire) -> None:
    """A cancel on an idle session sends nothing and the session goes on."""
    session = await wire.open()
    await wire.block(session, "y = 2")
    await wire.send(type="cancel", session=session)
    follow_up = await value_of(wire, session, "y")
    assert (follow_up["index"], follow_up["value"]) == (2, "2")


# -- rewind --------------------------------------------------------------------


async def rewound_session(wire: Wire) -> str:
    session = await wire.open()
    await wire.block(session, "a = 1\nb = 2\nalias String, as: S\nc = a + b")
    return session


async def rewind(wire: Wire, session: str, to: int) -> None:
    await wire.send(type="rewind", session=session, to=to)
    assert await wire.recv() == {"type": "rewound", "session": session, "to": to}


BOUND = "binding() |> Keyword.keys() |> Enum.sort()"


async def test_rewind_to_zero_gives_a_fresh_context(wire: Wire) -> None:
    """After ``rewind`` to 0 nothing is bound and numbering restarts at 1."""
    session = await rewound_session(wire)
    await rewind(wire, session, 0)
    result = await value_of(wire, session, BOUND)
    assert (result["index"], result["value"]) == (1, "[]")


async def test_rewind_to_the_middle_forgets_later_bindings_and_aliases(
    wire: Wire,
) -> None:
    """``rewind`` to 2 keeps ``a`` and ``b``, drops the alias and ``c``."""
    session = await rewound_session(wire)
    await rewind(wire, session, 2)
    result = await value_of(wire, session, BOUND)
    assert (result["index"], result["value"]) == (3, "[:a, :b]")
    aliased = await value_of(wire, session, 'S.upcase("x")')
    assert aliased["ok"] is False and aliased["index"] == 4


async def test_rewind_to_the_last_fragment_keeps_everything(wire: Wire) -> None:
    """Rewinding to the last fragment changes nothing but is acknowledged."""
    session = await rewound_session(wire)
    await rewind(wire, session, 4)
    result = await value_of(wire, session, 'S.duplicate("c", c)')
    assert (result["index"], result["value"]) == (5, '"ccc"')


async def test_rewind_beyond_the_last_fragment_is_an_error(wire: Wire) -> None:
    """``rewind`` past the history is a ``bad_request``; the context stays."""
    session = await rewound_session(wire)
    await wire.send(type="rewind", session=session, to=9)
    error = await wire.recv()
    assert error["type"] == "error" and error["code"] == "bad_request"
    assert error["session"] == session and "9" in error["message"]
    result = await value_of(wire, session, "c")
    assert (result["index"], result["value"]) == (5, "3")


async def test_rewind_while_a_fragment_runs_cancels_it_first(wire: Wire) -> None:
    """The running fragment gets ``cancelled`` before ``rewound`` arrives."""
    session = await rewound_session(wire)
    await wire.send(type="eval", session=session, code=BUSY_LOOP)
    await wire.until(lambda e: e["type"] == "fragment" and e["index"] == 5)
    await wire.send(type="rewind", session=session, to=1)
    events = await wire.until(lambda e: e["type"] == "rewound")
    kinds = [(e["type"], e.get("error", {}).get("kind")) for e in events]
    assert kinds == [("result", "cancelled"), ("done", None), ("rewound", None)]
    result = await value_of(wire, session, BOUND)
    assert (result["index"], result["value"]) == (2, "[:a]")


# -- fork ----------------------------------------------------------------------


async def test_fork_then_both_sessions_diverge(wire: Wire) -> None:
    """A fork starts from the parent's context after ``at``; each then goes
    its own way without the other seeing it."""
    parent = await wire.open()
    await wire.block(parent, "x = 1\nx = x + 10\nx = x + 100")
    await wire.send(type="fork", session=parent, at=2, ref="fork")
    opened = await wire.recv()
    assert opened["type"] == "opened" and opened["ref"] == "fork"
    assert opened["forked_from"] == parent and opened["at"] == 2
    child = opened["session"]
    assert child != parent

    assert (await value_of(wire, child, "x"))["value"] == "11"
    assert (await value_of(wire, child, "x = x * 2"))["value"] == "22"
    assert (await value_of(wire, parent, "x = x - 1"))["value"] == "110"
    assert (await value_of(wire, child, "x"))["value"] == "22"
    assert (await value_of(wire, parent, "x"))["value"] == "110"

    # Rewinding the parent to before the fork point leaves the child alone.
    await rewind(wire, parent, 1)
    assert (await value_of(wire, parent, "x"))["value"] == "1"
    assert (await value_of(wire, child, "x"))["value"] == "22"


async def test_fork_keeps_the_parents_options(wire: Wire) -> None:
    """A fork of a traced session traces too."""
    parent = await wire.open(trace=True)
    await wire.block(parent, "v = 3")
    await wire.send(type="fork", session=parent, at=1, ref="traced")
    child = (await wire.recv())["session"]
    events = await wire.block(child, "v |> Kernel.*(2)")
    assert [s["value"] for s in by_type(events, "step")] == ["3", "6"]


async def test_fork_at_an_unfinished_fragment_is_an_error(wire: Wire) -> None:
    """Forking past the history is a ``bad_request`` answering the fork's
    ``ref``; the parent goes on."""
    parent = await wire.open()
    await wire.send(type="fork", session=parent, at=5, ref="late")
    error = await wire.recv()
    assert error["type"] == "error" and error["code"] == "bad_request"
    assert error["ref"] == "late" and "5" in error["message"]
    assert "session" not in error
    assert (await value_of(wire, parent, "1 + 1"))["value"] == "2"


# -- live output ---------------------------------------------------------------


async def test_output_arrives_while_the_fragment_still_runs(wire: Wire) -> None:
    """Each line of a printing, sleeping loop arrives before the result, the
    first one well before it."""
    session = await wire.open()
    code = 'for i <- 1..3 do\n  IO.puts("tick #{i}")\n  Process.sleep(150)\nend'
    await wire.send(type="eval", session=session, code=code)
    arrivals: list[tuple[float, dict[str, Any]]] = []
    while not arrivals or arrivals[-1][1]["type"] != "done":
        event = await wire.recv()
        arrivals.append((time.perf_counter(), event))
    events = [e for _, e in arrivals]
    check_order(events)
    outputs = [(t, e) for t, e in arrivals if e["type"] == "output"]
    (result_at,) = [t for t, e in arrivals if e["type"] == "result"]
    assert "".join(e["text"] for _, e in outputs) == "tick 1\ntick 2\ntick 3\n"
    first_at, first = outputs[0]
    assert first["text"] == "tick 1\n"
    # Two more sleeps of 150 ms separate the first line from the result.
    assert result_at - first_at > 0.2


# -- step trace ----------------------------------------------------------------


async def test_trace_reports_block_expressions_and_pipeline_stages(
    wire: Wire,
) -> None:
    """Each expression of a top-level block and each pipeline stage is a
    step, in order with the output, on the fragment's line."""
    session = await wire.open(trace=True)
    code = '(IO.puts("hi"); y = 2)\n1..3 |> Enum.map(&(&1 * 2)) |> Enum.sum()'
    events = await wire.block(session, code)
    check_order(events)
    seen = [
        (e["type"], e["index"], e.get("line"), e.get("value", e.get("text")))
        for e in events
        if e["type"] in ("step", "output")
    ]
    assert seen == [
        ("output", 1, None, "hi\n"),
        ("step", 1, 1, ":ok"),
        ("step", 1, 1, "2"),
        ("step", 2, 2, "1..3"),
        ("step", 2, 2, "[2, 4, 6]"),
        ("step", 2, 2, "12"),
    ]
    assert [r["value"] for r in results(events)] == ["2", "12"]
    assert all("steps_dropped" not in r for r in results(events))


async def test_no_steps_without_trace(wire: Wire) -> None:
    """The same code in an untraced session sends no step at all."""
    session = await wire.open()
    code = '(IO.puts("hi"); y = 2)\n1..3 |> Enum.map(&(&1 * 2)) |> Enum.sum()'
    events = await wire.block(session, code)
    assert by_type(events, "step") == []
    assert [r["value"] for r in results(events)] == ["2", "12"]


async def test_trace_caps_the_steps_of_a_fragment(wire: Wire) -> None:
    """Past 1,000 steps the rest are counted in ``steps_dropped``."""
    session = await wire.open(trace=True)
    code = "(" + "; ".join(f"{i} * 2" for i in range(1, 1101)) + ")"
    events = await wire.block(session, code)
    assert len(by_type(events, "step")) == 1000
    (result,) = results(events)
    assert result["value"] == "2200" and result["steps_dropped"] == 100


# -- speculative evaluation ----------------------------------------------------


async def settle(wire: Wire, helper: str) -> None:
    """A round trip on another session of the same node, so that what the
    node was sent before has been acted on (a pacing aid, not a guarantee)."""
    await wire.block(helper, "0")


async def test_a_continued_speculative_run_leaves_no_trace(wire: Wire) -> None:
    """``x = IO.write(...)`` may run before ``|>`` continues it; only the
    continued fragment's output, result and binding are ever seen."""
    session, helper = await wire.open(ref="s"), await wire.open(ref="h")
    await wire.send(type="chunk", session=session, text='x = IO.write("spec")\n')
    await settle(wire, helper)
    continuation = '|> then(fn _ -> IO.write("final"); 2 end)\n'
    await wire.send(type="chunk", session=session, text=continuation)
    await wire.send(type="end", session=session)
    events = await wire.until(is_done(session))
    mine = [e for e in events if e.get("session") == session]
    check_order(mine)
    (fragment,) = by_type(mine, "fragment")
    assert fragment["code"] == 'x = IO.write("spec")\n' + continuation.rstrip("\n")
    assert "".join(o["text"] for o in by_type(mine, "output")) == "specfinal"
    assert [(r["index"], r["value"]) for r in results(mine)] == [(1, "2")]
    result = await value_of(wire, session, "x")
    assert (result["index"], result["value"]) == (2, "2")


PROGRAM = """\
words = ~w(pear fig apple fig kiwi)
counts = Enum.frequencies(words)
IO.puts("#{map_size(counts)} kinds")
total =
  counts
  |> Map.values()
  |> Enum.sum()
Map.fetch!(counts, "plum")
send(self(), :seen)
sorted = Enum.sort_by(counts, fn {_, n} -> -n end)
|> Enum.map(&elem(&1, 0))
IO.inspect(sorted, label: "by count")
String.upcase(hd(sorted))
"""


def comparable(events: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """Each fragment's events in order, and the block's ``done``, without
    session ids and times. Only the order within a fragment is part of the
    contract (how one fragment's events interleave with another's depends
    on timing), and adjacent outputs are joined, since how output is cut
    into events depends on timing too."""
    out: dict[Any, list[dict[str, Any]]] = {}
    for event in events:
        event = {k: v for k, v in event.items() if k not in ("session", "elapsed_us")}
        mine = out.setdefault(event.get("index", event["type"]), [])
        if event["type"] == "output" and mine and mine[-1]["type"] == "output":
            mine[-1]["text"] += event["text"]
        else:
            mine.append(event)
    return out


async def stream_program(wire: Wire, session: str, helper: str) -> list[Any]:
    """Stream PROGRAM in model tokens, settling after each line."""
    for token in tokens(PROGRAM):
        await wire.send(type="chunk", session=session, text=token)
        if token.endswith("\n"):
            await settle(wire, helper)
    await wire.send(type="end", session=session)
    await wire.until(is_done(session))
    mine = [e for e in wire.seen if e.get("session") == session]
    wire.seen.clear()
    return mine


async def test_speculation_changes_no_event_only_when_it_comes(
    wire: Wire,
) -> None:
    """The same token stream with and without ``speculate`` gives the same
    events, apart from session ids, times and how output is cut."""
    helper = await wire.open(ref="h")
    fast = await wire.open(ref="fast")
    plain = await wire.open(ref="plain", speculate=False)
    wire.seen.clear()
    with_speculation = await stream_program(wire, fast, helper)
    without = await stream_program(wire, plain, helper)
    check_order(with_speculation)
    assert comparable(with_speculation) == comparable(without)
    values = [r.get("value") for r in results(with_speculation)]
    assert values[-1] == '"FIG"' and len(values) == 9
