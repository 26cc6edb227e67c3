"""Decoding the client messages policy reads, and the refusal the database raises for us."""

from __future__ import annotations

import contextlib
import struct

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from custos.protocol import frontend
from custos.protocol.errors import ProtocolViolation
from custos.protocol.framing import MessageFramer
from custos.session.own_messages import REFUSAL_EXECUTION, REFUSAL_MESSAGE, REFUSAL_QUERY


def cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def bind_body(portal: str, statement: str, formats: list[int], values: list[bytes | None]) -> bytes:
    body = cstring(portal) + cstring(statement)
    body += struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return body + struct.pack("!h", 0)


def test_query_parse_execute_describe_and_close_decode():
    assert frontend.query_bytes(cstring("SELECT 1")) == b"SELECT 1"
    parse = cstring("s1") + cstring("SELECT $1") + struct.pack("!hi", 1, 23)
    assert frontend.parse_message(parse) == frontend.Parse(b"s1", b"SELECT $1", (23,))
    assert frontend.execute_message(cstring("p") + struct.pack("!i", 5)) == (b"p", 5)
    bind = cstring("portal") + cstring("statement") + struct.pack("!hh", 0, 0)
    assert frontend.names(bind, 2, "Bind") == (b"portal", b"statement")
    assert frontend.target(b"S" + cstring("s1"), "Close") == (ord("S"), b"s1")
    assert frontend.target(b"P" + cstring(""), "Describe") == (ord("P"), b"")


def test_names_stay_bytes_in_any_encoding():
    body = b"\xff\xfe" + b"\x00" + b"s" + b"\x00"
    assert frontend.names(body, 2, "Bind") == (b"\xff\xfe", b"s")


def test_bind_gives_text_values_and_reads_plain_binary_types():
    body = bind_body("p", "s", [0, 1, 0], [b"42", b"\x00\x00\x00\x2a", None])
    bind = frontend.bind_message(body)
    assert (bind.portal, bind.statement) == (b"p", b"s")
    assert bind.texts() == ("42", None, None)
    assert bind.texts((0, 23, 0)) == ("42", "42", None)
    one_format = frontend.bind_message(bind_body("", "", [1], [b"x", b"\xff\xff"]))
    assert one_format.texts((25, 21)) == ("x", "-1")
    assert one_format.texts((1700, 20)) == (None, None)
    no_formats = bind_body("", "", [], [b"x"])
    assert frontend.bind_message(no_formats).texts() == ("x",)


def test_bind_result_formats_apply_per_column():
    body = cstring("") + cstring("") + struct.pack("!hh", 0, 0) + struct.pack("!hhh", 2, 1, 0)
    bind = frontend.bind_message(body)
    assert [bind.format_of(column) for column in range(3)] == [1, 0, 0]
    single = frontend.bind_message(cstring("") + cstring("") + struct.pack("!hhhh", 0, 0, 1, 1))
    assert [single.format_of(column) for column in range(3)] == [1, 1, 1]


@pytest.mark.parametrize(
    ("decoder", "body"),
    [
        (frontend.query_bytes, b"SELECT 1"),
        (frontend.query_bytes, b"SELECT 1\x00extra"),
        (frontend.parse_message, cstring("s") + cstring("q") + struct.pack("!h", 2)),
        (frontend.bind_message, bind_body("", "", [0, 0], [b"x"])),
        (frontend.bind_message, cstring("") + cstring("") + struct.pack("!hhi", 0, 1, 10) + b"x"),
        (lambda body: frontend.names(body, 2, "Bind"), cstring("p")),
        (frontend.execute_message, cstring("p")),
        (frontend.execute_message, cstring("p") + b"\x00" * 5),
        (lambda body: frontend.target(body, "Close"), b"X" + cstring("s")),
        (lambda body: frontend.target(body, "Close"), b"S" + b"s"),
        (lambda body: frontend.target(body, "Describe"), b"S" + cstring("a") + cstring("b")),
    ],
)
def test_malformed_bodies_are_protocol_violations(decoder, body):
    with pytest.raises(ProtocolViolation):
        decoder(body)


@given(st.binary(max_size=80))
def test_decoders_raise_only_their_own_error_on_garbage(garbage):
    for decoder in (
        frontend.query_bytes,
        frontend.parse_message,
        frontend.bind_message,
        frontend.execute_message,
        lambda body: frontend.names(body, 2, "Bind"),
        lambda body: frontend.target(body, "Close"),
    ):
        with contextlib.suppress(ProtocolViolation):
            decoder(garbage)


def test_the_refusal_block_frames_as_four_messages_with_nothing_of_the_statement():
    chunk, spans = MessageFramer(1 << 16).feed(REFUSAL_EXECUTION)
    assert [chr(kind) for kind, _, _ in spans] == ["C", "P", "B", "E"]
    assert b"RAISE EXCEPTION" in chunk


def test_the_database_raises_the_refusal_blocks_own_error(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        with pytest.raises(psycopg.errors.RaiseException) as raised:
            connection.execute(REFUSAL_QUERY[5:-1])
        assert raised.value.diag.message_primary == REFUSAL_MESSAGE
