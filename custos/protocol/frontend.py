"""Decoders for the client messages a session reads, and encoders for the ones it sends
upstream in their place.

Bodies are the bytes after the 5-byte header, as `MessageFramer` spans give them.
Statement and portal names stay bytes: the database compares them as bytes, in whatever
encoding the client uses, so the gateway never needs to decode them. Query text stays
bytes here too; the session decodes it in the client's encoding (see session/lexical.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from custos.protocol.errors import ProtocolViolation

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Parse:
    statement: bytes
    query: bytes  # in the client's encoding
    parameter_types: tuple[int, ...] = ()  # type OIDs the client declared; 0 = unspecified


@dataclass(frozen=True, slots=True)
class Bind:
    portal: bytes
    statement: bytes
    values: tuple[bytes | None, ...]
    binary: tuple[bool, ...]  # per value: sent in binary format
    result_formats: tuple[int, ...] = ()  # none: all text; one: all alike; else per column

    def texts(self, parameter_types: tuple[int, ...] = ()) -> tuple[str | None, ...]:
        """The values as text, for policy's risk conditions.

        Binary values are read for the few types whose encoding is plain
        (integers, booleans, text); any other binary value, and NULL, is None:
        policy treats an unknown value as the riskier one.
        """
        texts: list[str | None] = []
        for index, value in enumerate(self.values):
            if value is None:
                texts.append(None)
            elif not self.binary[index]:
                texts.append(value.decode(errors="replace"))
            else:
                oid = parameter_types[index] if index < len(parameter_types) else 0
                texts.append(_binary_as_text(oid, value))
        return tuple(texts)

    def format_of(self, column: int) -> int:
        formats = self.result_formats
        if not formats:
            return 0
        if len(formats) == 1:
            return formats[0]
        return formats[column] if column < len(formats) else 0


_INTEGER_OIDS = {20: 8, 21: 2, 23: 4}
_TEXT_OIDS = {25, 1043, 19}
_BOOL_OID = 16


def _binary_as_text(oid: int, value: bytes) -> str | None:
    if oid in _INTEGER_OIDS and len(value) == _INTEGER_OIDS[oid]:
        return str(int.from_bytes(value, "big", signed=True))
    if oid in _TEXT_OIDS:
        return value.decode(errors="replace")
    if oid == _BOOL_OID and len(value) == 1:
        return "true" if value != b"\x00" else "false"
    return None


class _Reader:
    __slots__ = ("_body", "_position", "_what")

    def __init__(self, body: bytes, what: str) -> None:
        self._body = body
        self._position = 0
        self._what = what

    def cstring(self) -> bytes:
        end = self._body.find(b"\x00", self._position)
        if end < 0:
            raise ProtocolViolation(f"malformed {self._what} message: unterminated string")
        raw = self._body[self._position : end]
        self._position = end + 1
        return raw

    def int16(self) -> int:
        return self._unpack(_INT16, 2)

    def int32(self) -> int:
        return self._unpack(_INT32, 4)

    def raw(self, length: int) -> bytes:
        if length < 0 or self._position + length > len(self._body):
            raise ProtocolViolation(f"malformed {self._what} message: truncated value")
        value = self._body[self._position : self._position + length]
        self._position += length
        return value

    def _unpack(self, shape: struct.Struct, size: int) -> int:
        if self._position + size > len(self._body):
            raise ProtocolViolation(f"malformed {self._what} message: truncated")
        (value,) = shape.unpack_from(self._body, self._position)
        self._position += size
        return int(value)

    def finish(self) -> None:
        if self._position != len(self._body):
            raise ProtocolViolation(f"malformed {self._what} message: trailing bytes")


def query_bytes(body: bytes) -> bytes:
    """The SQL of a simple Query message, undecoded."""
    if body.find(b"\x00") != len(body) - 1:
        raise ProtocolViolation("malformed Query message: the text must end with its only NUL")
    return body[:-1]


def parse_message(body: bytes) -> Parse:
    reader = _Reader(body, "Parse")
    statement = reader.cstring()
    query = reader.cstring()
    # OIDs are unsigned on the wire.
    types = tuple(reader.int32() & 0xFFFFFFFF for _ in range(reader.int16()))
    reader.finish()
    return Parse(statement, query, types)


def bind_message(body: bytes) -> Bind:
    reader = _Reader(body, "Bind")
    portal = reader.cstring()
    statement = reader.cstring()
    format_count = reader.int16()
    formats = [reader.int16() for _ in range(format_count)]
    parameter_count = reader.int16()
    if format_count not in (0, 1, parameter_count):
        raise ProtocolViolation(
            f"Bind message has {format_count} parameter formats for {parameter_count} parameters"
        )
    values: list[bytes | None] = []
    binary: list[bool] = []
    for index in range(parameter_count):
        length = reader.int32()
        values.append(None if length == -1 else reader.raw(length))
        binary.append(bool(formats[0] if format_count == 1 else formats[index] if formats else 0))
    result_formats = tuple(reader.int16() for _ in range(reader.int16()))
    reader.finish()
    return Bind(portal, statement, tuple(values), tuple(binary), result_formats)


def names(body: bytes, count: int, what: str) -> tuple[bytes, ...]:
    """The first `count` NUL-terminated names of a body, without reading the rest.

    Bind starts with portal and statement names, Execute with the portal's:
    enough to follow the session without decoding parameter values.
    """
    if body.startswith(b"\x00\x00"):
        return (b"", b"")[:count]  # most clients use the unnamed statement and portal
    parts = body.split(b"\x00", count)
    if len(parts) <= count:
        raise ProtocolViolation(f"malformed {what} message: unterminated name")
    return tuple(parts[:count])


def target(body: bytes, what: str) -> tuple[int, bytes]:
    """The (kind, name) of a Describe or Close: kind is ord("S") or ord("P")."""
    if len(body) < 2 or body[-1] != 0 or body.find(b"\x00", 1) != len(body) - 1:
        raise ProtocolViolation(f"malformed {what} message")
    kind = body[0]
    if kind not in _TARGET_KINDS:
        raise ProtocolViolation(f"{what} message must name a statement (S) or a portal (P)")
    return kind, body[1:-1]


_TARGET_KINDS = frozenset(b"SP")


def execute_message(body: bytes) -> tuple[bytes, int]:
    """The portal name and row limit (0: all rows) of an Execute."""
    end = body.find(b"\x00")
    if end < 0 or len(body) != end + 5:
        raise ProtocolViolation("malformed Execute message")
    return body[:end], _INT32.unpack_from(body, end + 1)[0]


def _message(message_type: bytes, body: bytes) -> bytes:
    return message_type + _UINT32.pack(len(body) + 4) + body


def encode_query(sql: str) -> bytes:
    return _message(b"Q", sql.encode() + b"\x00")


def encode_unnamed_execution(sql: str) -> bytes:
    """Parse, Bind and Execute of `sql` as the unnamed statement and portal, without Sync."""
    parse = _message(b"P", b"\x00" + sql.encode() + b"\x00" + _INT16.pack(0))
    bind = _message(b"B", b"\x00\x00" + _INT16.pack(0) + _INT16.pack(0) + _INT16.pack(0))
    execute = _message(b"E", b"\x00" + _INT32.pack(0))
    return parse + bind + execute


def encode_describe_portal(name: bytes) -> bytes:
    return _message(b"D", b"P" + name + b"\x00")
