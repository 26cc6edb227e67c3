"""Decoders for the client messages the gateway reads to decide on statements,
and encoders for the ones it sends upstream in their place.

Bodies are the bytes after the 5-byte header, as `MessageFramer` spans give them.
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
    statement: str
    query: str
    parameter_types: tuple[int, ...] = ()  # type OIDs the client declared; 0 = unspecified


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    values: tuple[bytes | None, ...]
    binary: tuple[bool, ...]  # per value: sent in binary format

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


@dataclass(frozen=True, slots=True)
class Close:
    kind: str  # "S" statement or "P" portal
    name: str


class _Reader:
    __slots__ = ("_body", "_position", "_what")

    def __init__(self, body: bytes, what: str) -> None:
        self._body = body
        self._position = 0
        self._what = what

    def cstring(self) -> str:
        end = self._body.find(b"\x00", self._position)
        if end < 0:
            raise ProtocolViolation(f"malformed {self._what} message: unterminated string")
        raw = self._body[self._position : end]
        self._position = end + 1
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ProtocolViolation(f"{self._what} message is not valid UTF-8") from None

    def int16(self) -> int:
        value: int = self._unpack(_INT16, 2)
        return value

    def int32(self) -> int:
        value: int = self._unpack(_INT32, 4)
        return value

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


_UNNAMED = {1: b"\x00", 2: b"\x00\x00"}
_UNNAMED_NAMES = {1: ("",), 2: ("", "")}


def leading_names(body: bytes, count: int, what: str) -> tuple[str, ...]:
    """The first `count` NUL-terminated strings of a body, without decoding the rest.

    Bind starts with portal and statement names, Execute with the portal's:
    enough to follow the session without reading the parameter values.
    """
    if body.startswith(_UNNAMED[count]):
        return _UNNAMED_NAMES[count]  # most clients use the unnamed statement and portal
    parts = body.split(b"\x00", count)
    if len(parts) <= count:
        raise ProtocolViolation(f"malformed {what} message: unterminated string")
    try:
        return tuple(part.decode() for part in parts[:count])
    except UnicodeDecodeError:
        raise ProtocolViolation(f"{what} message is not valid UTF-8") from None


def query_text(body: bytes) -> str:
    """The SQL of a simple Query message."""
    if body.find(b"\x00") == len(body) - 1:
        try:
            return body[:-1].decode()
        except UnicodeDecodeError:
            pass  # the reader says why
    reader = _Reader(body, "Query")
    text = reader.cstring()
    reader.finish()
    return text


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
    for _ in range(reader.int16()):
        reader.int16()
    reader.finish()
    return Bind(portal, statement, tuple(values), tuple(binary))


def close_message(body: bytes) -> Close:
    reader = _Reader(body, "Close")
    kind = reader.raw(1).decode(errors="replace")
    name = reader.cstring()
    reader.finish()
    if kind not in ("S", "P"):
        raise ProtocolViolation("Close message must name a statement (S) or a portal (P)")
    return Close(kind, name)


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
