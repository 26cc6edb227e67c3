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
from custos.session.refusal import Refusal, refusal_sql


def cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def bind_body(portal: str, statement: str, formats: list[int], values: list[bytes | None]) -> bytes:
    body = cstring(portal) + cstring(statement)
    body += struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return body + struct.pack("!h", 0)


def test_query_parse_execute_and_close_decode():
    assert frontend.query_text(cstring("SELECT 1")) == "SELECT 1"
    parse = cstring("s1") + cstring("SELECT $1") + struct.pack("!hi", 1, 23)
    assert frontend.parse_message(parse) == frontend.Parse("s1", "SELECT $1", (23,))
    execute = cstring("p") + struct.pack("!i", 0)
    assert frontend.leading_names(execute, 1, "Execute") == ("p",)
    bind = cstring("portal") + cstring("statement") + struct.pack("!hh", 0, 0)
    assert frontend.leading_names(bind, 2, "Bind") == ("portal", "statement")
    assert frontend.close_message(b"S" + cstring("s1")) == frontend.Close("S", "s1")


def test_bind_gives_text_values_and_reads_plain_binary_types():
    body = bind_body("p", "s", [0, 1, 0], [b"42", b"\x00\x00\x00\x2a", None])
    bind = frontend.bind_message(body)
    assert (bind.portal, bind.statement) == ("p", "s")
    assert bind.texts() == ("42", None, None)
    assert bind.texts((0, 23, 0)) == ("42", "42", None)
    one_format = frontend.bind_message(bind_body("", "", [1], [b"x", b"\xff\xff"]))
    assert one_format.texts((25, 21)) == ("x", "-1")
    assert one_format.texts((1700, 20)) == (None, None)
    no_formats = bind_body("", "", [], [b"x"])
    assert frontend.bind_message(no_formats).texts() == ("x",)


@pytest.mark.parametrize(
    ("decoder", "body"),
    [
        (frontend.query_text, b"SELECT 1"),
        (frontend.query_text, b"SELECT 1\x00extra"),
        (frontend.parse_message, cstring("s") + cstring("q") + struct.pack("!h", 2)),
        (frontend.bind_message, bind_body("", "", [0, 0], [b"x"])),
        (frontend.bind_message, cstring("") + cstring("") + struct.pack("!hhi", 0, 1, 10) + b"x"),
        (lambda body: frontend.leading_names(body, 2, "Bind"), cstring("p")),
        (lambda body: frontend.leading_names(body, 1, "Execute"), b"\xff\x00"),
        (frontend.close_message, b"X" + cstring("s")),
        (frontend.query_text, b"\xff\xfe\x00"),
    ],
)
def test_malformed_bodies_are_protocol_violations(decoder, body):
    with pytest.raises(ProtocolViolation):
        decoder(body)


@given(st.binary(max_size=80))
def test_decoders_raise_only_their_own_error_on_garbage(garbage):
    for decoder in (
        frontend.query_text,
        frontend.parse_message,
        frontend.bind_message,
        lambda body: frontend.leading_names(body, 2, "Bind"),
        frontend.close_message,
    ):
        with contextlib.suppress(ProtocolViolation):
            decoder(garbage)


def test_replacement_execution_frames_as_three_messages():
    data = frontend.encode_unnamed_execution("SELECT 1")
    chunk, spans = MessageFramer(1 << 16).feed(data)
    assert [chr(kind) for kind, _, _ in spans] == ["P", "B", "E"]
    assert frontend.parse_message(chunk[spans[0][1] + 5 : spans[0][2]]).query == "SELECT 1"


HOSTILE_TEXTS = [
    "plain words",
    "it's $$ dollar $$ quoted $c$ and $tag$",
    "back\\slash and 'quotes' and \"double\"",
    "unicode: naïve ✓ 漢字",
    "END; DROP TABLE crm.customers; --",
]


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_the_database_raises_exactly_the_refusal(pg_dsn, text):
    refusal = Refusal("42501", f"refused: {text}", f"hint: {text}")
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
            connection.execute(refusal_sql(refusal))
        assert raised.value.diag.message_primary == refusal.message
        assert raised.value.diag.message_hint == refusal.hint
        assert connection.execute("SELECT to_regclass('crm.customers')").fetchone() is not None


def test_refusal_needs_a_valid_sqlstate():
    with pytest.raises(ValueError, match="SQLSTATE"):
        refusal_sql(Refusal("4250'", "x"))
