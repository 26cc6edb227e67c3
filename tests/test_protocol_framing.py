"""The sans-IO framers: whole, byte by byte, split anywhere, and with bad input."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.protocol import codes
from custos.protocol.errors import ProtocolViolation
from custos.protocol.framing import MessageFramer


def message(message_type: int, body: bytes) -> bytes:
    return bytes([message_type]) + struct.pack("!I", len(body) + 4) + body


frontend_messages = st.lists(
    st.tuples(st.sampled_from(sorted(codes.FRONTEND_TYPES)), st.binary(max_size=300)),
    max_size=12,
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, previous = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[previous:point])
        previous = point
    return pieces


def frame_all(framer: MessageFramer, pieces: list[bytes]) -> list[bytes]:
    found = []
    for piece in pieces:
        chunk, spans = framer.feed(piece)
        assert b"".join(chunk[start:end] for _, start, end in spans) == chunk
        found.extend(chunk[start:end] for _, start, end in spans)
    return found


@settings(max_examples=300)
@given(frontend_messages, st.lists(st.integers(0, 10_000), max_size=8))
def test_framer_returns_each_message_whole_however_the_stream_is_split(messages, cuts):
    expected = [message(kind, body) for kind, body in messages]
    stream = b"".join(expected)
    assert frame_all(MessageFramer(1 << 20), [stream]) == expected
    assert frame_all(MessageFramer(1 << 20), split_at(stream, cuts)) == expected
    framer = MessageFramer(1 << 20)
    assert frame_all(framer, [stream[i : i + 1] for i in range(len(stream))]) == expected
    assert framer.buffered == 0


@given(frontend_messages, st.binary(min_size=1, max_size=4))
def test_framer_keeps_a_trailing_partial_header(messages, trailing):
    stream = b"".join(message(kind, body) for kind, body in messages)
    framer = MessageFramer(1 << 20)
    found = frame_all(framer, [stream + trailing[:4]])
    assert len(found) == len(messages)
    assert framer.buffered == len(trailing[:4])


def test_framer_rejects_an_unknown_message_type():
    with pytest.raises(ProtocolViolation, match="invalid frontend message type"):
        MessageFramer(1024).feed(message(ord("z"), b""))


@pytest.mark.parametrize("length", [0, 1, 3])
def test_framer_rejects_a_length_below_four(length):
    with pytest.raises(ProtocolViolation, match="invalid message length"):
        MessageFramer(1024).feed(b"Q" + struct.pack("!I", length))


def test_framer_rejects_an_oversized_message_before_buffering_it():
    framer = MessageFramer(1024)
    with pytest.raises(ProtocolViolation, match="exceeds the gateway's limit") as raised:
        framer.feed(b"Q" + struct.pack("!I", 0x7FFF_FFFF))
    assert raised.value.sqlstate == "54000"
    assert framer.buffered == 0


def test_framer_gathers_a_large_message_sent_in_many_chunks():
    body = bytes(range(256)) * 4000 + b"\x00"
    stream = message(codes.QUERY, body)
    framer = MessageFramer(1 << 22)
    pieces = [stream[i : i + 1000] for i in range(0, len(stream), 1000)]
    assert frame_all(framer, pieces) == [stream]


@given(st.binary(max_size=200))
def test_framer_on_garbage_either_frames_or_raises_its_own_error(garbage):
    framer = MessageFramer(1 << 16)
    with contextlib.suppress(ProtocolViolation):
        frame_all(framer, [garbage])
