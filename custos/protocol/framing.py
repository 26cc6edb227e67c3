"""Message framing for the client's PostgreSQL stream after startup, sans-IO.

`MessageFramer` cuts a stream into whole messages. The gateway needs every client message
whole before it may decide about it, so it buffers a message until it is complete, up to a
cap. (The server's stream is followed without being held back: session/answers.py.)

Every message is a type byte and an Int32 length that counts itself but not the type byte.
"""

from __future__ import annotations

import struct
from collections.abc import Collection

from custos.protocol import sqlstates
from custos.protocol.codes import FRONTEND_TYPES
from custos.protocol.errors import ProtocolViolation

_LENGTH = struct.Struct("!I")
_HEADER_BYTES = 5

Span = tuple[int, int, int]
"""A message inside a buffer: (type byte, start offset, end offset)."""


class MessageFramer:
    """Cuts a client's byte stream into whole, well-formed messages.

    `feed` returns the complete messages received so far as one contiguous
    `bytes` (so the fast path can forward it with a single write) and their
    spans. A partial message is kept until the rest arrives; once its length
    is known it is gathered in one buffer, so a large message costs one copy,
    not one per chunk.
    """

    __slots__ = ("_allowed_types", "_max_message_bytes", "_need", "_pending")

    def __init__(
        self,
        max_message_bytes: int,
        allowed_types: Collection[int] = FRONTEND_TYPES,
    ) -> None:
        self._max_message_bytes = max_message_bytes
        self._allowed_types = frozenset(allowed_types)
        self._pending = bytearray()
        self._need = 0

    @property
    def buffered(self) -> int:
        """Bytes held back because their message is not complete yet."""
        return len(self._pending)

    def feed(self, data: bytes) -> tuple[bytes, list[Span]]:
        if self._pending:
            self._pending += data
            if len(self._pending) < self._need:
                return b"", []
            data = bytes(self._pending)
            self._pending = bytearray()
        spans: list[Span] = []
        size = len(data)
        position = 0
        need = _HEADER_BYTES
        allowed = self._allowed_types
        limit = self._max_message_bytes
        while size - position >= _HEADER_BYTES:
            message_type = data[position]
            length = _LENGTH.unpack_from(data, position + 1)[0]
            if message_type not in allowed:
                raise ProtocolViolation(
                    f"invalid frontend message type {message_type} ({chr(message_type)!r})"
                )
            if length < 4:
                raise ProtocolViolation(f"invalid message length {length}: must be at least 4")
            if length > limit:
                raise ProtocolViolation(
                    f"message of {length} bytes exceeds the gateway's limit of {limit} bytes;"
                    " send smaller statements or parameters, or ask the operator to raise"
                    " limits.max_message_bytes",
                    sqlstate=sqlstates.PROGRAM_LIMIT_EXCEEDED,
                )
            end = position + 1 + length
            if end > size:
                need = 1 + length
                break
            spans.append((message_type, position, end))
            position = end
        if position < size:
            self._pending = bytearray(memoryview(data)[position:])
            self._need = need
            return data[:position], spans
        return data, spans
