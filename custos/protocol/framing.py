"""Message framing for the PostgreSQL stream after startup.

Two framers, both sans-IO:

* `MessageFramer` cuts a stream into whole messages. The gateway needs every
  client message whole before it may decide about it, so this one buffers a
  message until it is complete, up to a cap.
* `BackendScanner` follows message boundaries in the server's stream without
  holding it back: the caller forwards each chunk as it arrives, and the
  scanner hands out only the few small messages the session must read.

Every message is a type byte and an Int32 length that counts itself but not
the type byte.
"""

from __future__ import annotations

import struct
from collections.abc import Collection

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
                    sqlstate="54000",
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


class BackendScanner:
    """Tracks message boundaries in the server's stream, which passes on unchanged.

    Messages whose type is in `wanted` are returned whole (type, body); all
    others are skipped without being copied, however large. Wanted messages
    must be small: they are gathered in memory up to `max_wanted_bytes`.
    """

    __slots__ = ("_max_wanted_bytes", "_partial", "_partial_need", "_skip", "_wanted")

    def __init__(self, wanted: Collection[int], max_wanted_bytes: int = 1 << 20) -> None:
        self._wanted = frozenset(wanted)
        self._max_wanted_bytes = max_wanted_bytes
        self._skip = 0
        self._partial = bytearray()
        self._partial_need = 0

    @property
    def at_boundary(self) -> bool:
        """True when the bytes fed so far end exactly at a message boundary."""
        return self._skip == 0 and not self._partial

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        found: list[tuple[int, bytes]] = []
        size = len(data)
        position = 0
        if self._skip:
            if self._skip >= size:
                self._skip -= size
                return found
            position = self._skip
            self._skip = 0
        if self._partial:
            position = self._complete_partial(data, position, found)
        wanted = self._wanted
        while position < size:
            if size - position < _HEADER_BYTES:
                self._partial = bytearray(memoryview(data)[position:])
                self._partial_need = _HEADER_BYTES
                break
            message_type = data[position]
            length = _LENGTH.unpack_from(data, position + 1)[0]
            if length < 4:
                raise ProtocolViolation(f"server sent an invalid message length {length}")
            end = position + 1 + length
            if message_type in wanted:
                self._check_wanted_size(length)
                if end > size:
                    self._partial = bytearray(memoryview(data)[position:])
                    self._partial_need = 1 + length
                    break
                found.append((message_type, data[position + _HEADER_BYTES : end]))
            elif end > size:
                self._skip = end - size
                break
            position = end
        return found

    def _complete_partial(self, data: bytes, position: int, found: list[tuple[int, bytes]]) -> int:
        """Continues a message whose header or wanted body began in an earlier chunk."""
        partial = self._partial
        take = min(self._partial_need - len(partial), len(data) - position)
        partial += memoryview(data)[position : position + take]
        position += take
        if len(partial) < self._partial_need:
            return position
        if self._partial_need == _HEADER_BYTES:
            message_type = partial[0]
            length: int = _LENGTH.unpack_from(partial, 1)[0]
            if length < 4:
                raise ProtocolViolation(f"server sent an invalid message length {length}")
            if message_type in self._wanted:
                self._check_wanted_size(length)
                if length > 4:
                    self._partial_need = 1 + length
                    return self._complete_partial(data, position, found)
                found.append((message_type, b""))
                self._partial = bytearray()
                return position
            self._partial = bytearray()
            remaining_body = length - 4
            available = len(data) - position
            if remaining_body > available:
                self._skip = remaining_body - available
                return len(data)
            return position + remaining_body
        found.append((partial[0], bytes(partial[_HEADER_BYTES:])))
        self._partial = bytearray()
        return position

    def _check_wanted_size(self, length: int) -> None:
        if length > self._max_wanted_bytes:
            raise ProtocolViolation(
                f"server sent a control message of {length} bytes,"
                f" more than the {self._max_wanted_bytes} the gateway accepts"
            )


class BackendEditor:
    """Follows the server's stream and finds wanted messages, whole, with their positions.

    Like `BackendScanner`, everything else streams through unbuffered; unlike
    it, a wanted message (or a header) cut off at the end of a chunk is held
    back until it is complete, so the caller can drop or keep it whole.
    `feed` returns the bytes that may go on now and the spans of the wanted
    messages inside them.
    """

    __slots__ = ("_held", "_max_wanted_bytes", "_skip", "_wanted")

    def __init__(self, wanted: Collection[int], max_wanted_bytes: int = 1 << 20) -> None:
        self._wanted = frozenset(wanted)
        self._max_wanted_bytes = max_wanted_bytes
        self._skip = 0
        self._held = b""

    @property
    def at_boundary(self) -> bool:
        return self._skip == 0 and not self._held

    def feed(self, data: bytes) -> tuple[bytes, list[Span]]:
        if self._held:
            data = self._held + data
            self._held = b""
        spans: list[Span] = []
        size = len(data)
        position = 0
        if self._skip:
            if self._skip >= size:
                self._skip -= size
                return data, spans
            position = self._skip
            self._skip = 0
        wanted = self._wanted
        while position < size:
            if size - position < _HEADER_BYTES:
                self._held = data[position:]
                return data[:position], spans
            message_type = data[position]
            length = _LENGTH.unpack_from(data, position + 1)[0]
            if length < 4:
                raise ProtocolViolation(f"server sent an invalid message length {length}")
            end = position + 1 + length
            if message_type in wanted:
                if length > self._max_wanted_bytes:
                    raise ProtocolViolation(
                        f"server sent a control message of {length} bytes,"
                        f" more than the {self._max_wanted_bytes} the gateway accepts"
                    )
                if end > size:
                    self._held = data[position:]
                    return data[:position], spans
                spans.append((message_type, position, end))
            elif end > size:
                self._skip = end - size
                break
            position = end
        return data, spans
