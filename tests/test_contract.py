"""The websocket contract end to end, against the shared embedded node."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest

from .conftest import HEALTH_SCHEMA, Wire, by_type

pytestmark = pytest.mark.asyncio(loop_scope="session")


def check_order(events: list[dict[str, Any]]) -> None:
    """CONTRACT.md ordering: fragment i first, results in order, done last."""
    announced: set[int] = set()
    last_result = 0
    for position, event in enumerate(events):
        if event["type"] == "fragment":
            announced.add(event["index"])
        elif event["type"] in ("output", "step", "result"):
            assert event["index"] in announced, f"{event} before its fragment"
        if event["type"] == "result":
            assert event["index"] > last_result, "results out of order"
            last_result = event["index"]
        if event["type"] == "done":
            assert position == len(events) - 1


async def test_open_echoes_ref_and_names_a_session(wire: Wire) -> None:
    """``open`` answers ``opened`` with the client's ref and a session id."""
    await wire.send(type="open", ref="my-ref")
    opened = await wire.recv()
    assert opened["type"] == "opened" and opened["ref"] == "my-ref"
    assert isinstance(opened["session"], str) and opened["session"]


async def test_chunks_then_end_commit_fragments_with_exact_code_and_lines(
    wire: Wire,
) -> None:
    """Chunks cut anywhere yield each fragment's exact text, line and result."""
    session = await wire.open()
    code = 'x = 1 + 1\n\ny =\n  x * 10\nIO.puts("y is #{y}")\ny - 1\n'
    for at in range(0, len(code), 3):
        await wire.send(type="chunk", session=session, text=code[at : at + 3])
    await wire.send(type="end", session=session)
    events = await wire.until(lambda e: e["type"] == "done")
    check_order(events)
    fragments = by_type(events, "fragment")
    assert [(f["index"], f["code"], f["line"]) for f in fragments] == [
        (1, "x = 1 + 1", 1),
        (2, "y =\n  x * 10", 3),
        (3, 'IO.puts("y is #{y}")', 5),
        (4, "y - 1", 6),
    ]
    results = by_type(events, "result")
    assert [r["value"] for r in results] == ["2", "20", ":ok", "19"]
    assert all(r["executor"] == "beam" and r["ok"] for r in results)
    assert all(isinstance(r["elapsed_us"], int) for r in results)
    assert "".join(o["text"] for o in by_type(events, "output")) == "y is 20\n"
    assert events[-1] == {
        "type": "done",
        "session": session,
        "fragments": 4,
        "errors": 0,
    }


async def test_eval_is_chunk_then_end_and_context_lives_across_blocks(
    wire: Wire,
) -> None:
    """``eval`` runs a whole block; bindings persist into the next block."""
    session = await wire.open()
    first = await wire.block(session, "a = [1, 2, 3]")
    assert by_type(first, "result")[0]["data"] == [1, 2, 3]
    second = await wire.block(
        session, "a |> Enum.map(fn x -> x * 2 end)\n|> Enum.sum()"
    )
    (fragment,) = by_type(second, "fragment")
    assert fragment["index"] == 2 and fragment["line"] == 1
    assert by_type(second, "result")[0]["value"] == "12"
    assert second[-1]["fragments"] == 1


@pytest.mark.parametrize(
    "code,data",
    [
        ("42", 42),
        ("-7 * 1_000_000_000_000", -7_000_000_000_000),
        ("2.5", 2.5),
        ('"héllo"', "héllo"),
        ("true", True),
        ("false", False),
        ("nil", None),
        ("[1, [2, nil]]", [1, [2, None]]),
        ('%{"a" => 1, b: [true]}', {"a": 1, "b": [True]}),
        ("{1, 2}", None),
        (":atom", None),
        ("self()", None),
    ],
)
async def test_result_data_is_the_value_as_json_when_it_maps_cleanly(
    wire: Wire, code: str, data: Any
) -> None:
    """``data`` converts JSON-shaped values and is null for the rest."""
    session = await wire.open()
    (result,) = by_type(await wire.block(session, code), "result")
    assert result["ok"] is True
    assert result["data"] == data
    assert isinstance(result["value"], str) and result["value"]


async def test_done_counts_fragments_and_errors_and_later_text_still_runs(
    wire: Wire,
) -> None:
    """An exception and a syntax error fail their fragments; the rest runs."""
    session = await wire.open()
    events = await wire.block(session, "a = 1\n1 / 0\nb = )\nc = a + 1\n")
    check_order(events)
    results = by_type(events, "result")
    assert [r["ok"] for r in results] == [True, False, False, True]
    assert results[1]["error"]["kind"] == "ArithmeticError"
    assert results[2]["error"]["kind"] == "SyntaxError"
    assert results[3]["value"] == "2"
    assert events[-1]["fragments"] == 4 and events[-1]["errors"] == 2


async def test_on_error_halt_skips_the_rest_of_the_block(wire: Wire) -> None:
    """Under ``on_error: halt`` fragments after a failure are ``skipped``."""
    session = await wire.open(on_error="halt")
    events = await wire.block(session, '1\nraise "boom"\n3\n4')
    kinds = [r.get("error", {}).get("kind") for r in by_type(events, "result")]
    assert kinds == [None, "RuntimeError", "skipped", "skipped"]
    assert events[-1]["errors"] == 3


async def test_many_sessions_on_one_connection_are_isolated(wire: Wire) -> None:
    """Twenty sessions share a connection; each keeps its own bindings."""
    sessions = [await wire.open(ref=f"r{i}") for i in range(20)]
    for i, session in enumerate(sessions):
        await wire.send(type="eval", session=session, code=f"n = {i}")
    for session in sessions:
        await wire.send(type="eval", session=session, code="n * 100")
    events = await wire.until(
        lambda e: e["type"] == "done" and len(by_type(wire.seen, "done")) == 40
    )
    for i, session in enumerate(sessions):
        mine = [e for e in events if e.get("session") == session]
        check_order(mine[:3])
        values = [r["value"] for r in by_type(mine, "result")]
        assert values == [str(i), str(i * 100)]


async def test_several_connections_work_at_once(connect_wire: Any) -> None:
    """Five connections evaluate concurrently and each gets its own results."""
    wires = [await connect_wire() for _ in range(5)]

    async def work(w: Wire, i: int) -> str:
        session = await w.open()
        events = await w.block(session, f"Enum.sum(1..{i})")
        return by_type(events, "result")[0]["value"]

    values = await asyncio.gather(*(work(w, i) for i, w in enumerate(wires, 1)))
    assert values == [str(sum(range(1, i + 1))) for i in range(1, 6)]


async def test_close_answers_closed_and_forgets_the_session(wire: Wire) -> None:
    """After ``closed`` the session id is unknown."""
    session = await wire.open()
    await wire.send(type="close", session=session)
    assert await wire.recv() == {"type": "closed", "session": session}
    await wire.send(type="eval", session=session, code="1")
    error = await wire.recv()
    assert error["type"] == "error" and error["code"] == "unknown_session"
    assert error["session"] == session


async def test_rewind_restores_an_earlier_context(wire: Wire) -> None:
    """``rewind`` to fragment 1 forgets what fragment 2 bound."""
    session = await wire.open()
    await wire.block(session, "a = 1\nb = 2")
    await wire.send(type="rewind", session=session, to=1)
    assert await wire.recv() == {"type": "rewound", "session": session, "to": 1}
    results = by_type(await wire.block(session, "a\nb"), "result")
    assert results[0]["value"] == "1"
    assert results[1]["ok"] is False


async def test_fork_copies_the_context_into_a_new_session(wire: Wire) -> None:
    """A fork sees the parent's bindings up to ``at``; the parent goes on."""
    parent = await wire.open()
    await wire.block(parent, "a = 1\na = 2")
    await wire.send(type="fork", session=parent, at=1, ref="f")
    opened = await wire.recv()
    assert opened["type"] == "opened" and opened["ref"] == "f"
    assert opened["forked_from"] == parent and opened["at"] == 1
    child = opened["session"]
    assert by_type(await wire.block(child, "a"), "result")[0]["value"] == "1"
    assert by_type(await wire.block(parent, "a"), "result")[0]["value"] == "2"


async def test_a_session_may_lower_the_result_size(wire: Wire) -> None:
    """With ``max_result_bytes``, a long value's text is cut there with ``…``
    and data that would not fit is null; short values are whole."""
    session = await wire.open(limits={"max_result_bytes": 40})
    events = await wire.block(session, 'String.duplicate("ab", 100)\n%{"k" => [1, 2]}')
    long, short = by_type(events, "result")
    assert long["value"] == '"' + "ab" * 19 + "a…"
    assert long["data"] is None
    assert (short["value"], short["data"]) == ('%{"k" => [1, 2]}', {"k": [1, 2]})


async def test_cancel_kills_the_running_fragment(wire: Wire) -> None:
    """A cancelled long evaluation ends with kind ``cancelled`` and ``done``."""
    session = await wire.open(limits={"timeout_ms": 30_000})
    await wire.send(
        type="eval", session=session, code="receive do\nafter 20_000 -> :late\nend"
    )
    await wire.until(lambda e: e["type"] == "fragment")
    await wire.send(type="cancel", session=session)
    events = await wire.until(lambda e: e["type"] == "done", timeout=5)
    (result,) = by_type(events, "result")
    assert result["ok"] is False and result["error"]["kind"] == "cancelled"
    assert by_type(await wire.block(session, "1 + 1"), "result")[0]["value"] == "2"


async def test_disconnect_closes_the_clients_sessions_on_the_node(
    gateway: Any, connect_wire: Any
) -> None:
    """When a client goes away, the node closes its sessions."""
    link = gateway.pool.links[0]
    w = await connect_wire()
    opened = {await w.open(ref=str(i)) for i in range(3)}
    assert opened <= set(link.sessions)
    await w.ws.close()
    async with asyncio.timeout(5):
        while opened & set(link.sessions):
            await asyncio.sleep(0.01)  # polling routes the node's replies remove


async def test_healthz_and_metrics_answer_on_the_gateway_port(gateway: Any) -> None:
    """``/healthz`` is 200 JSON naming the node; ``/metrics`` is Prometheus text."""
    base = f"http://127.0.0.1:{gateway.port}"
    health = await asyncio.to_thread(_get, base + "/healthz")
    assert health[0] == 200
    body = json.loads(health[1])
    HEALTH_SCHEMA.validate(body)
    assert body["status"] == "ok" and len(body["nodes"]) == 1
    status, text = await asyncio.to_thread(_get, base + "/metrics")
    assert status == 200
    for name in (
        "beambridge_connections",
        "beambridge_sessions",
        "beambridge_fragments_total",
        "beambridge_errors_total",
        "beambridge_fragment_latency_seconds_bucket",
    ):
        assert name in text


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
