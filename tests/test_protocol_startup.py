"""Startup packets and the messages the gateway writes itself."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from custos.protocol import codes, messages
from custos.protocol.errors import ProtocolViolation
from custos.protocol.startup import (
    CancelRequest,
    GSSEncRequest,
    SSLRequest,
    StartupDecoder,
    StartupMessage,
)


def packet(code: int, body: bytes = b"") -> bytes:
    return struct.pack("!Ii", len(body) + 8, code) + body


def decode_all(data: bytes, step: int | None = None) -> list[object]:
    decoder = StartupDecoder()
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    found = []
    for piece in pieces:
        decoder.feed(piece)
        while (item := decoder.next_packet()) is not None:
            found.append(item)
    return found


parameter_names = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=20,
)
parameter_values = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    max_size=40,
)


@given(st.dictionaries(parameter_names, parameter_values, max_size=8), st.integers(1, 7))
def test_startup_message_round_trips_whole_and_in_pieces(parameters, step):
    data = messages.startup_message(parameters)
    for found in (decode_all(data), decode_all(data, step)):
        assert found == [StartupMessage(3, 0, parameters)]


def test_the_sequence_of_a_tls_client_decodes_in_order():
    data = (
        packet(codes.GSSENC_REQUEST_CODE)
        + packet(codes.SSL_REQUEST_CODE)
        + messages.startup_message({"user": "agent", "application_name": "psql"})
    )
    assert decode_all(data, 1) == [
        GSSEncRequest(),
        SSLRequest(),
        StartupMessage(3, 0, {"user": "agent", "application_name": "psql"}),
    ]


def test_cancel_request_carries_its_key():
    data = messages.cancel_request(1234, -99)
    assert decode_all(data) == [CancelRequest(1234, -99)]


def test_protocol_options_are_listed():
    data = messages.startup_message({"user": "a", "_pq_.feature": "on"})
    (startup,) = decode_all(data)
    assert startup.protocol_options == ["_pq_.feature"]


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (struct.pack("!I", 4), "invalid startup packet length"),
        (struct.pack("!I", 10_001), "invalid startup packet length"),
        (struct.pack("!I", 0xFFFF_FFFF), "invalid startup packet length"),
        (packet(codes.SSL_REQUEST_CODE, b"xx"), "SSLRequest must be 8 bytes"),
        (packet(codes.CANCEL_REQUEST_CODE, b"1234"), "CancelRequest must be 16 bytes"),
        (packet(2 << 16, b"\x00"), "unsupported frontend protocol 2.0"),
        (packet(codes.PROTOCOL_3_0, b"user\x00agent"), "must end with a NUL"),
        (packet(codes.PROTOCOL_3_0, b"user\x00\x00"), "without a value"),
        (packet(codes.PROTOCOL_3_0, b"\x00x\x00\x00"), "empty parameter name"),
        (packet(codes.PROTOCOL_3_0, b"user\x00\xff\x00\x00"), "valid UTF-8"),
    ],
)
def test_malformed_startup_packets_are_refused_clearly(data, complaint):
    with pytest.raises(ProtocolViolation, match=complaint):
        decode_all(data)


def test_an_http_request_is_not_mistaken_for_a_client():
    with pytest.raises(ProtocolViolation, match="is this a PostgreSQL client"):
        decode_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


@given(st.binary(max_size=64))
def test_garbage_either_decodes_waits_or_raises_the_codec_error(garbage):
    with contextlib.suppress(ProtocolViolation):
        decode_all(garbage)


def test_error_response_round_trips_through_the_notice_parser():
    data = messages.error_response("42501", "denied", detail="why", hint="what next")
    assert data[:1] == b"E"
    notice = messages.parse_notice(data[5:])
    assert (notice.sqlstate, notice.message, notice.severity) == ("42501", "denied", "ERROR")
    assert notice.fields["D"] == "why"
    assert notice.fields["H"] == "what next"


def test_password_message_must_be_one_terminated_string():
    assert messages.password_message_text(b"token\x00") == "token"
    for bad in (b"token", b"a\x00b\x00", b"\xff\x00"):
        with pytest.raises(ProtocolViolation):
            messages.password_message_text(bad)


def test_strings_with_nul_cannot_be_encoded():
    with pytest.raises(ValueError, match="NUL"):
        messages.startup_message({"user": "a\x00b"})
