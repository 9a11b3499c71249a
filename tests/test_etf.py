"""The ETF codec and the bridge framing, checked against a real OTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from beambridge import etf
from beambridge.errors import CodecError
from beambridge.etf import Atom

# A failing eval must not leave erl_crash.dump in the work tree.
NO_DUMP = dict(os.environ, ERL_CRASH_DUMP_SECONDS="0")


def otp_encode(expr: str) -> bytes:
    """``term_to_binary`` of an Erlang expression, by the local ``erl``."""
    code = f'io:format("~w", [binary_to_list(term_to_binary({expr}))]), halt().'
    out = subprocess.run(
        ["erl", "-noshell", "-eval", code],
        capture_output=True,
        text=True,
        check=True,
        env=NO_DUMP,
    ).stdout
    return bytes(int(x) for x in out.strip("[]\n").split(","))


def otp_decode(data: bytes, atoms: str) -> str:
    """What ``binary_to_term(.., [safe])`` makes of ``data``, printed by erl;
    ``atoms`` lists the atoms the node would already know."""
    code = (
        f'_ = [{atoms}], io:format("~p", [binary_to_term(list_to_binary({list(data)}), [safe])]),'
        " halt()."
    )
    return subprocess.run(
        ["erl", "-noshell", "-eval", code],
        capture_output=True,
        text=True,
        check=True,
        env=NO_DUMP,
    ).stdout


needs_erl = pytest.mark.skipif(shutil.which("erl") is None, reason="needs OTP's erl")


@needs_erl
def test_decodes_a_node_event_encoded_by_otp() -> None:
    """A map with atom keys, binaries, nil and booleans decodes JSON-ready."""
    data = otp_encode(
        '#{type => result, session => <<"s1">>, index => 3, ok => true,'
        ' value => <<"2">>, data => [1, 2.5, <<"é"/utf8>>, nil, false,'
        ' #{<<"k">> => 1 bsl 70}]}'
    )
    event = etf.decode(data)
    assert event == {
        "type": "result",
        "session": "s1",
        "index": 3,
        "ok": True,
        "value": "2",
        "data": [1, 2.5, "é", None, False, {"k": 2**70}],
    }
    assert isinstance(event["type"], Atom)


@needs_erl
def test_encoded_messages_decode_safely_in_otp() -> None:
    """A frame the gateway sends is read by OTP as the intended map."""
    msg = etf.message(
        "open",
        session="s1",
        options={Atom("on_error"): Atom("halt"), Atom("trace"): True},
    )
    printed = otp_decode(
        etf.encode(msg), "type, open, session, options, on_error, halt, trace"
    )
    for part in ("type => open", '<<"s1">>', "on_error => halt", "trace => true"):
        assert part in printed


def test_round_trip_keeps_types() -> None:
    """Atoms stay atoms, strings become binaries and come back as str."""
    term = etf.message("chunk", session="abc", text="x = 1\n", n=-5, big=2**40)
    assert etf.decode(etf.encode(term)) == {
        "type": "chunk",
        "session": "abc",
        "text": "x = 1\n",
        "n": -5,
        "big": 2**40,
    }


def test_invalid_utf8_in_a_binary_is_replaced_not_fatal() -> None:
    """Stray bytes in node text become U+FFFD instead of losing the frame."""
    payload = bytes([131, 109, 0, 0, 0, 2, 255, 97])
    assert etf.decode(payload) == "\ufffda"


def test_garbage_payload_raises_codec_error() -> None:
    """A payload that is not ETF raises the codec's own error."""
    with pytest.raises(CodecError):
        etf.decode(b"\x00\x01\x02")


def test_frame_reader_reassembles_split_and_merged_frames() -> None:
    """Frames cut at any byte and glued together come out whole, in order."""
    frames = [
        etf.frame(etf.message("chunk", session="s", text=str(i) * i)) for i in range(20)
    ]
    stream = b"".join(frames)
    for step in (1, 3, 7, len(stream)):
        reader = etf.FrameReader()
        payloads = []
        for at in range(0, len(stream), step):
            payloads += reader.feed(stream[at : at + step])
        assert [etf.decode(p)["text"] for p in payloads] == [
            str(i) * i for i in range(20)
        ]


def test_frame_reader_refuses_an_oversized_length() -> None:
    """A length prefix over the limit breaks the stream with CodecError."""
    reader = etf.FrameReader(max_bytes=16)
    with pytest.raises(CodecError):
        reader.feed((17).to_bytes(4, "big") + b"x")


GATEWAY_SENDS = {
    "hello", "open", "chunk", "end", "eval", "cancel", "rewind", "fork", "close", "ping",
}  # fmt: skip


def _vectors() -> list[dict[str, str]]:
    """The records of ``protocol/vectors/bridge.txt`` (shared with the node)."""
    text = (
        Path(__file__).resolve().parent.parent / "protocol/vectors/bridge.txt"
    ).read_text()
    records = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1)
            for line in block.splitlines()
            if not line.startswith("#")
        )
        if "hex" in fields:
            records.append(fields)
    return records


def _from_tagged(value: Any) -> Any:
    """The vectors' tagged JSON as the decoder's Python terms."""
    if isinstance(value, dict) and "atom" in value:
        return {"nil": None, "true": True, "false": False}.get(
            value["atom"], Atom(value["atom"])
        )
    if isinstance(value, dict) and "map" in value:
        return {_from_tagged(k): _from_tagged(v) for k, v in value["map"]}
    if isinstance(value, list):
        return [_from_tagged(item) for item in value]
    return value


@pytest.mark.parametrize("record", _vectors(), ids=lambda r: r["name"])
def test_bridge_vectors_decode_and_round_trip(record: dict[str, str]) -> None:
    """Each shared vector decodes to its meaning, atoms as atoms, and what
    the gateway sends round-trips through our encoder (erlpack cannot encode
    integers beyond 64 bits, which only the node sends)."""
    expected = _from_tagged(json.loads(record["json"]))
    decoded = etf.decode(bytes.fromhex(record["hex"]))
    assert decoded == expected
    if isinstance(expected, dict):
        for key in decoded:
            assert isinstance(key, Atom)
        assert isinstance(decoded[Atom("type")], Atom)
    if decoded.get("type") in GATEWAY_SENDS:
        assert etf.decode(etf.encode(expected)) == expected
