"""Decoders for the server's messages that a session reads: descriptions, tags, settings.

Bodies are the bytes after the 5-byte header. These run only where a stage or the
session's view needs them, never on the relay's fast path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from custos.protocol.errors import ProtocolViolation

_INT16 = struct.Struct("!h")
_FIELD = struct.Struct("!IhIhih")  # table OID, column number, type OID, size, modifier, format
_FIELD_BYTES = _FIELD.size

TEXT_FORMAT = 0
BINARY_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a result, as RowDescription describes it."""

    name: bytes  # in the client's encoding, as the server sent it
    table_oid: int  # 0 when the column is not a table's column
    column_number: int  # the column's attnum in that table, else 0
    type_oid: int
    type_size: int
    type_modifier: int
    format: int  # 0 text, 1 binary

    def with_format(self, format_code: int) -> Column:
        if format_code == self.format:
            return self
        return Column(
            self.name,
            self.table_oid,
            self.column_number,
            self.type_oid,
            self.type_size,
            self.type_modifier,
            format_code,
        )


def row_description(body: bytes) -> tuple[Column, ...]:
    if len(body) < 2:
        raise ProtocolViolation("the database sent a truncated RowDescription")
    (count,) = _INT16.unpack_from(body)
    columns: list[Column] = []
    position = 2
    for _ in range(count):
        end = body.find(b"\x00", position)
        if end < 0 or end + 1 + _FIELD_BYTES > len(body):
            raise ProtocolViolation("the database sent a truncated RowDescription")
        fields = _FIELD.unpack_from(body, end + 1)
        columns.append(Column(body[position:end], *fields))
        position = end + 1 + _FIELD_BYTES
    if position != len(body):
        raise ProtocolViolation("the database sent a malformed RowDescription")
    return tuple(columns)


def parameter_description(body: bytes) -> tuple[int, ...]:
    """The parameter type OIDs of a ParameterDescription."""
    if len(body) < 2:
        raise ProtocolViolation("the database sent a truncated ParameterDescription")
    (count,) = _INT16.unpack_from(body)
    if len(body) != 2 + 4 * count:
        raise ProtocolViolation("the database sent a malformed ParameterDescription")
    return struct.unpack_from(f"!{count}I", body, 2)


def command_tag(body: bytes) -> str:
    """The tag of a CommandComplete ("SELECT 3", "INSERT 0 1", "COMMIT")."""
    return body.rstrip(b"\x00").decode("ascii", errors="replace")


def rows_in_tag(tag: str) -> int | None:
    """The row count a tag reports, for the commands that report one."""
    number = tag.rpartition(" ")[2]
    return int(number) if number.isdigit() else None


def parameter_status(body: bytes) -> tuple[str, str]:
    """(name, value) of a ParameterStatus."""
    parts = body.split(b"\x00")
    if len(parts) != 3 or parts[2]:
        raise ProtocolViolation("the database sent a malformed ParameterStatus")
    return parts[0].decode("ascii", errors="replace"), parts[1].decode("utf-8", errors="replace")
