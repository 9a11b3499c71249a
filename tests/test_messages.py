"""Validation of client messages, and agreement with the JSON Schemas."""

from __future__ import annotations

import json

import pytest
from beambridge.errors import ProtocolError
from beambridge.messages import (
    Chunk,
    Done,
    Error,
    ErrorInfo,
    Eval,
    Fork,
    Open,
    Opened,
    Result,
    Rewind,
    encode_client_message,
    event_dict,
    parse_client_message,
    parse_event,
)
from beambridge.metrics import Metrics
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import CLIENT_SCHEMA, check_event

VALID = [
    {"type": "open", "ref": "a"},
    {"type": "open", "ref": "a", "options": {"on_error": "halt", "trace": True}},
    {"type": "open", "ref": "a", "options": {"limits": {"timeout_ms": 100}}},
    {"type": "chunk", "session": "s", "text": ""},
    {"type": "end", "session": "s"},
    {"type": "eval", "session": "s", "code": "1"},
    {"type": "cancel", "session": "s"},
    {"type": "rewind", "session": "s", "to": 0},
    {"type": "fork", "session": "s", "at": 2, "ref": "b"},
    {"type": "close", "session": "s"},
]

INVALID = [
    ("[1]", "JSON object"),
    ("{", "not valid JSON"),
    ('{"ref": "a"}', "'type'"),
    ('{"type": "launch"}', "unknown message type"),
    ('{"type": "chunk", "session": "s"}', "missing field 'text'"),
    ('{"type": "chunk", "session": 5, "text": "x"}', "'session' must be"),
    ('{"type": "chunk", "session": "s", "text": 1}', "'text' must be a string"),
    ('{"type": "rewind", "session": "s", "to": -1}', "'to' must be an integer"),
    ('{"type": "rewind", "session": "s", "to": true}', "'to' must be an integer"),
    ('{"type": "rewind", "session": "s", "to": "2"}', "'to' must be an integer"),
    ('{"type": "open", "ref": "a", "options": []}', "'options' must be"),
    ('{"type": "open", "ref": "a", "options": {"on_error": "stop"}}', "on_error"),
    ('{"type": "open", "ref": "a", "options": {"trace": 1}}', "trace"),
    (
        '{"type": "open", "ref": "a", "options": {"executors": ["compiled"]}}',
        "executors",
    ),
    (
        '{"type": "open", "ref": "a", "options": {"limits": {"timeout_ms": 0}}}',
        "limits",
    ),
    ('{"type": "open", "ref": "a", "options": {"limits": {"cpu": 1}}}', "limits"),
]


@pytest.mark.parametrize("obj", VALID, ids=lambda o: o["type"])
def test_valid_messages_parse_and_match_the_schema(obj: dict) -> None:
    """Every message kind parses and the schema accepts it too."""
    msg = parse_client_message(json.dumps(obj))
    assert msg.type == obj["type"]
    CLIENT_SCHEMA.validate(obj)
    assert json.loads(encode_client_message(msg)) == obj


@pytest.mark.parametrize("raw,words", INVALID)
def test_invalid_messages_are_bad_requests_naming_the_problem(
    raw: str, words: str
) -> None:
    """Each malformed message raises bad_request with a message that says why."""
    with pytest.raises(ProtocolError) as info:
        parse_client_message(raw)
    assert info.value.code == "bad_request"
    assert words in info.value.message


def test_invalid_message_errors_keep_ref_and_session() -> None:
    """A bad message that names a ref or session gets them back in the error."""
    with pytest.raises(ProtocolError) as info:
        parse_client_message('{"type": "chunk", "session": "s9"}')
    assert info.value.session == "s9"
    with pytest.raises(ProtocolError) as info:
        parse_client_message('{"type": "open", "ref": "r9", "options": 3}')
    assert info.value.ref == "r9"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(
            ["type", "ref", "session", "text", "code", "to", "at", "options"]
        ),
        st.one_of(
            st.sampled_from(
                ["open", "chunk", "end", "eval", "rewind", "fork", "close"]
            ),
            st.integers(-3, 3),
            st.text(max_size=3),
            st.booleans(),
            st.none(),
            st.just({}),
        ),
    )
)
def test_parser_and_schema_agree_on_arbitrary_objects(obj: dict) -> None:
    """The gateway accepts a message exactly when client.json does."""
    try:
        parse_client_message(json.dumps(obj))
        accepted = True
    except ProtocolError:
        accepted = False
    assert accepted == CLIENT_SCHEMA.is_valid(obj)


def test_gateway_made_events_match_the_schema() -> None:
    """Events the gateway builds itself validate against event.json."""
    down = Result("s", 3, False, 120, error=ErrorInfo("node_down", "gone"))
    for event in (
        down,
        Done("s", 3, 1),
        Error("unknown_session", "no such session", session="s"),
        Error("bad_request", "bad", ref="r"),
        Opened("r", "s"),
    ):
        obj = check_event(event_dict(event))
        assert parse_event(obj) == event


def test_parse_event_types_results_and_keeps_unknown_types() -> None:
    """Results get a typed error; new event types are not dropped."""
    event = parse_event(
        {
            "type": "result",
            "session": "s",
            "index": 1,
            "ok": False,
            "elapsed_us": 5,
            "executor": "beam",
            "error": {"kind": "SyntaxError", "message": "m", "line": 2},
        }
    )
    assert isinstance(event, Result) and event.error == ErrorInfo("SyntaxError", "m", 2)
    other = parse_event({"type": "progress", "session": "s", "pct": 5})
    assert other.type == "progress" and other.fields["pct"] == 5


def test_dataclasses_are_frozen() -> None:
    """Wire messages cannot be changed after they are made."""
    msg = Chunk("s", "x")
    with pytest.raises(AttributeError):
        msg.text = "y"  # type: ignore[misc]
    assert Eval("s", "1") == Eval("s", "1")
    assert (
        Fork("s", 1, "r").at == 1 and Rewind("s", 0).to == 0 and Open("r").options == {}
    )


def test_metrics_render_a_cumulative_histogram() -> None:
    """The latency histogram's buckets are cumulative and end at the count."""
    metrics = Metrics()
    for seconds in (0.00005, 0.0003, 0.003, 20.0):
        metrics.observe_latency(seconds)
    metrics.errors_total["ArithmeticError"] += 2
    text = metrics.render()
    assert 'beambridge_fragment_latency_seconds_bucket{le="0.0001"} 1' in text
    assert 'beambridge_fragment_latency_seconds_bucket{le="0.0005"} 2' in text
    assert 'beambridge_fragment_latency_seconds_bucket{le="10.0"} 3' in text
    assert 'beambridge_fragment_latency_seconds_bucket{le="+Inf"} 4' in text
    assert "beambridge_fragment_latency_seconds_count 4" in text
    assert 'beambridge_errors_total{kind="ArithmeticError"} 2' in text


def test_asyncapi_names_every_schema_message_and_its_refs_resolve() -> None:
    """asyncapi.yaml covers each message of the schemas and points at real defs."""
    import yaml

    from .conftest import ROOT, SCHEMA_DIR

    doc = yaml.safe_load((ROOT / "protocol" / "asyncapi.yaml").read_text())
    messages = doc["components"]["messages"]
    schemas = {
        name: json.loads((SCHEMA_DIR / name).read_text())
        for name in ("client.json", "event.json")
    }
    expected = set(schemas["client.json"]["$defs"]) | set(
        schemas["event.json"]["$defs"]
    )
    assert set(messages) == expected
    for message in messages.values():
        file, _, pointer = message["payload"]["schema"]["$ref"].partition("#")
        name = pointer.rsplit("/", 1)[1]
        assert name in schemas[file.split("/")[-1]]["$defs"]
