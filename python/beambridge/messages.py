"""The websocket protocol's messages, as frozen dataclasses.

Client messages are parsed and validated here, before the gateway turns them
into bridge frames; events are what the gateway sends back and what the SDK
hands to its caller. ``protocol/schema/`` holds the same shapes as JSON
Schema, and the tests check every emitted event against it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Union

from .errors import ProtocolError

__all__ = [
    "Cancel",
    "Chunk",
    "ClientMessage",
    "Close",
    "Closed",
    "Done",
    "End",
    "Error",
    "ErrorInfo",
    "Eval",
    "Event",
    "Fork",
    "Fragment",
    "Open",
    "Opened",
    "Output",
    "Result",
    "Rewind",
    "Rewound",
    "Step",
    "UnknownEvent",
    "encode_client_message",
    "event_dict",
    "parse_client_message",
    "parse_event",
]

ON_ERROR = ("continue", "halt")
EXECUTORS = ("beam", "compiled")
LIMIT_KEYS = ("timeout_ms", "max_heap_bytes", "max_output_bytes", "max_result_bytes")
# Integers travel to the node as ETF; keep them to a signed 64-bit range.
MAX_INT = 2**63 - 1
MAX_SESSION_BYTES = 128


# -- client → gateway -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Open:
    ref: str
    options: dict[str, Any] = field(default_factory=dict)
    type: str = "open"


@dataclass(frozen=True, slots=True)
class Chunk:
    session: str
    text: str
    type: str = "chunk"


@dataclass(frozen=True, slots=True)
class End:
    session: str
    type: str = "end"


@dataclass(frozen=True, slots=True)
class Eval:
    session: str
    code: str
    type: str = "eval"


@dataclass(frozen=True, slots=True)
class Cancel:
    session: str
    type: str = "cancel"


@dataclass(frozen=True, slots=True)
class Rewind:
    session: str
    to: int
    type: str = "rewind"


@dataclass(frozen=True, slots=True)
class Fork:
    session: str
    at: int
    ref: str
    type: str = "fork"


@dataclass(frozen=True, slots=True)
class Close:
    session: str
    type: str = "close"


ClientMessage = Union[Open, Chunk, End, Eval, Cancel, Rewind, Fork, Close]

_CLIENT_TYPES: dict[str, type] = {
    "open": Open,
    "chunk": Chunk,
    "end": End,
    "eval": Eval,
    "cancel": Cancel,
    "rewind": Rewind,
    "fork": Fork,
    "close": Close,
}


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Parse one websocket message; raise :class:`ProtocolError` if invalid."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_request", f"not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "a message must be a JSON object")

    # An empty ref is not echoed: the event schema's refs are non-empty.
    ref = obj.get("ref") if isinstance(obj.get("ref"), str) and obj["ref"] else None
    session = obj.get("session") if isinstance(obj.get("session"), str) else None
    type_ = obj.get("type")
    if not isinstance(type_, str):
        raise ProtocolError(
            "bad_request", "missing string field 'type'", ref=ref, session=session
        )
    cls = _CLIENT_TYPES.get(type_)
    if cls is None:
        raise ProtocolError(
            "bad_request", f"unknown message type {type_!r}", ref=ref, session=session
        )

    values = {}
    for f in fields(cls):
        if f.name == "type":
            continue
        if f.name not in obj:
            if f.name == "options":
                continue
            raise ProtocolError(
                "bad_request",
                f"{type_}: missing field {f.name!r}",
                ref=ref,
                session=session,
            )
        values[f.name] = _check_field(type_, f.name, obj[f.name], ref, session)
    return cls(**values)


def _check_field(
    type_: str, name: str, value: Any, ref: str | None, session: str | None
) -> Any:
    def bad(expected: str) -> ProtocolError:
        return ProtocolError(
            "bad_request",
            f"{type_}: field {name!r} must be {expected}",
            ref=ref,
            session=session,
        )

    if name in ("session", "ref"):
        if not isinstance(value, str) or not value:
            raise bad("a non-empty string")
        if name == "session" and len(value.encode()) > MAX_SESSION_BYTES:
            raise bad(f"at most {MAX_SESSION_BYTES} bytes")
        return value
    if name in ("text", "code"):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if name in ("to", "at"):
        if not _is_int(value) or not 0 <= value <= MAX_INT:
            raise bad("an integer ≥ 0")
        return value
    if name == "options":
        return _check_options(value, bad)
    raise AssertionError(f"no check for field {name}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_options(value: Any, bad: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad("an object")
    if value.get("on_error", "continue") not in ON_ERROR:
        raise bad("an object whose 'on_error' is 'continue' or 'halt'")
    for flag in ("trace", "speculate"):
        if not isinstance(value.get(flag, False), bool):
            raise bad(f"an object whose {flag!r} is a boolean")
    executors = value.get("executors", ["beam"])
    if (
        not isinstance(executors, list)
        or not executors
        or executors[0] != "beam"
        or any(e not in EXECUTORS for e in executors)
        or len(set(executors)) != len(executors)
    ):
        raise bad('an object whose \'executors\' is ["beam"] or ["beam","compiled"]')
    limits = value.get("limits", {})
    if not isinstance(limits, dict) or any(
        key not in LIMIT_KEYS or not _is_int(v) or not 0 < v <= MAX_INT
        for key, v in limits.items()
    ):
        raise bad(
            "an object whose 'limits' holds positive integers for "
            + ", ".join(LIMIT_KEYS)
        )
    return value


def encode_client_message(message: ClientMessage) -> str:
    """Serialise a client message (the SDK's side of the wire)."""
    obj = asdict(message)
    if isinstance(message, Open) and not message.options:
        del obj["options"]
    return json.dumps(obj)


# -- gateway → client -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    ref: str | None
    session: str
    forked_from: str | None = None
    at: int | None = None
    type: str = "opened"


@dataclass(frozen=True, slots=True)
class Fragment:
    session: str
    index: int
    code: str
    line: int
    type: str = "fragment"


@dataclass(frozen=True, slots=True)
class Output:
    session: str
    index: int
    text: str
    type: str = "output"


@dataclass(frozen=True, slots=True)
class Step:
    session: str
    index: int
    line: int | None
    value: str
    type: str = "step"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    kind: str
    message: str
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Result:
    session: str
    index: int
    ok: bool
    elapsed_us: int
    executor: str = "beam"
    value: str | None = None
    data: Any = None
    error: ErrorInfo | None = None
    agrees: bool | None = None
    # Under trace: step events beyond the node's cap, counted but not sent.
    steps_dropped: int | None = None
    # Compiled results: how many tokens the compiled model decoded.
    trace_tokens: int | None = None
    type: str = "result"


@dataclass(frozen=True, slots=True)
class Done:
    session: str
    fragments: int
    errors: int
    type: str = "done"


@dataclass(frozen=True, slots=True)
class Rewound:
    session: str
    to: int
    type: str = "rewound"


@dataclass(frozen=True, slots=True)
class Closed:
    session: str
    type: str = "closed"


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    ref: str | None = None
    session: str | None = None
    type: str = "error"


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """An event type this SDK does not know (the protocol may grow)."""

    type: str
    fields: dict[str, Any]
    session: str | None = None


Event = Union[
    Opened, Fragment, Output, Step, Result, Done, Rewound, Closed, Error, UnknownEvent
]

_EVENT_TYPES: dict[str, type] = {
    "opened": Opened,
    "fragment": Fragment,
    "output": Output,
    "step": Step,
    "result": Result,
    "done": Done,
    "rewound": Rewound,
    "closed": Closed,
    "error": Error,
}


def parse_event(obj: dict[str, Any]) -> Event:
    """Build the typed event for a decoded JSON object; unknown fields are kept
    out, unknown types become :class:`UnknownEvent`."""
    cls = _EVENT_TYPES.get(obj.get("type", ""))
    if cls is None:
        return UnknownEvent(str(obj.get("type")), dict(obj), obj.get("session"))
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in obj.items() if k in known}
    if cls is Result and isinstance(values.get("error"), dict):
        err = values["error"]
        values["error"] = ErrorInfo(
            str(err.get("kind")), str(err.get("message")), err.get("line")
        )
    return cls(**values)


def event_dict(event: Event) -> dict[str, Any]:
    """The JSON object of an event the gateway makes itself (``None`` fields
    that the contract leaves out are dropped)."""
    obj = asdict(event)
    optional = (
        "ref",
        "session",
        "forked_from",
        "at",
        "agrees",
        "steps_dropped",
        "trace_tokens",
    )
    for key in optional:
        if obj.get(key, 0) is None:
            del obj[key]
    if isinstance(event, Result):
        if event.ok:
            obj.pop("error", None)
        else:
            obj.pop("value", None)
            obj.pop("data", None)
    return obj
