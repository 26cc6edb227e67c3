"""The bare transparent relay, sans-IO: no policy, no stages, as near a byte forwarder as can be.

It has the session machine's events and actions, so one network adapter carries either. It
frames the client's stream (a client message must be whole and within the size limit, and
Terminate ends the session) and follows the server's only as far as ReadyForQuery, to know
when the session is idle and where its message boundaries fall, so that the gateway's own
FATAL at shutdown never lands inside a row.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable

from custos.protocol import codes, sqlstates
from custos.protocol.errors import ProtocolViolation
from custos.protocol.framing import MessageFramer
from custos.protocol.messages import error_response
from custos.session.actions import (
    FORWARD_CANCEL,
    PAUSE_CLIENT,
    PAUSE_SERVER,
    RESUME_CLIENT,
    RESUME_SERVER,
    Action,
    CloseSession,
    SendToClient,
    SendToServer,
)
from custos.session.stages import Settled

_LENGTH = struct.Struct("!I")
_HEADER = 5
_READY = codes.READY_FOR_QUERY
_IDLE = ord("I")
# Messages after which the database answers with exactly one ReadyForQuery.
_SYNC_POINTS = frozenset({codes.QUERY, codes.SYNC, codes.FUNCTION_CALL})


class RelayMachine:
    __slots__ = (
        "_closed",
        "_closing",
        "_draining",
        "_framer",
        "_held",
        "_own_pending",
        "_pending_sync_points",
        "_skip",
        "_transaction_status",
    )

    def __init__(self, max_message_bytes: int, transaction_status: bytes = b"I") -> None:
        self._framer = MessageFramer(max_message_bytes)
        self._pending_sync_points = 0
        self._transaction_status = transaction_status[0]
        self._skip = 0  # bytes of a message that streams through
        self._held = b""  # a header, or a ReadyForQuery, cut at the end of a chunk
        self._own_pending: list[bytes] = []
        self._closing: str | None = None
        self._closed = False
        self._draining = False

    @property
    def idle(self) -> bool:
        return (
            self._pending_sync_points == 0
            and self._transaction_status == _IDLE
            and self._at_boundary
            and self._framer.buffered == 0
        )

    @property
    def _at_boundary(self) -> bool:
        return self._skip == 0 and not self._held

    def client_data(self, data: bytes) -> list[Action]:
        if self._closed or self._closing is not None:
            return []
        try:
            chunk, spans = self._framer.feed(data)
        except ProtocolViolation as violation:
            return self._fail(violation.sqlstate, violation.message)
        if not spans:
            return []
        terminating = False
        for message_type, _, _ in spans:
            if message_type in _SYNC_POINTS:
                self._pending_sync_points += 1
            elif message_type == codes.TERMINATE:
                terminating = True
        if terminating:
            self._closed = True
            return [SendToServer(chunk), CloseSession("client ended the session")]
        return [SendToServer(chunk)]

    def server_data(self, data: bytes) -> list[Action]:
        if self._closed:
            return []
        if self._held:
            data = self._held + data  # at most a header or a ReadyForQuery: a few bytes
            self._held = b""
        size = len(data)
        position = 0
        if self._skip:
            if self._skip >= size:
                self._skip -= size
                return [SendToClient(data)]
            position = self._skip
            self._skip = 0
        while position < size:
            if size - position < _HEADER:
                self._held = data[position:]
                data = data[:position]
                break
            message_type = data[position]
            length = _LENGTH.unpack_from(data, position + 1)[0]
            if length < 4:
                return self._lost_track(f"the database sent an invalid message length {length}")
            end = position + 1 + length
            if end > size:
                if message_type == _READY:
                    self._held = data[position:]
                    data = data[:position]
                else:
                    self._skip = end - size
                break
            if message_type == _READY:
                self._pending_sync_points = max(0, self._pending_sync_points - 1)
                self._transaction_status = data[end - 1]
            position = end
        actions: list[Action] = [SendToClient(data)] if data else []
        if self._at_boundary:
            if self._own_pending:
                actions.append(SendToClient(b"".join(self._own_pending)))
                self._own_pending.clear()
            if self._closing is not None:
                self._closed = True
                actions.append(CloseSession(self._closing))
            elif self._draining and self.idle:
                actions.extend(self._shutting_down())
        return actions

    def settled(self, awaitable: Awaitable[object], outcome: Settled) -> list[Action]:
        return []

    def cancel_requested(self) -> list[Action]:
        return [] if self._closed else [FORWARD_CANCEL]

    def client_lost(self) -> list[Action]:
        return self._end("client ended the session")

    def server_lost(self) -> list[Action]:
        return self._end("database closed the connection")

    def close(self, sqlstate: str, message: str) -> list[Action]:
        return self._fail(sqlstate, message)

    def drain(self) -> list[Action]:
        self._draining = True
        return self._shutting_down() if self.idle and not self._closed else []

    def client_write_paused(self, paused: bool) -> list[Action]:
        return [PAUSE_SERVER if paused else RESUME_SERVER]

    def server_write_paused(self, paused: bool) -> list[Action]:
        return [PAUSE_CLIENT if paused else RESUME_CLIENT]

    def _shutting_down(self) -> list[Action]:
        return self._fail(
            sqlstates.ADMIN_SHUTDOWN, "the gateway is shutting down; reconnect to continue"
        )

    def _fail(self, sqlstate: str, message: str) -> list[Action]:
        if self._closed or self._closing is not None:
            return []
        self._own_pending.append(error_response(sqlstate, message, severity="FATAL"))
        self._closing = message
        if not self._at_boundary:
            return []
        self._closed = True
        pending = b"".join(self._own_pending)
        self._own_pending.clear()
        return [SendToClient(pending), CloseSession(message)]

    def _lost_track(self, reason: str) -> list[Action]:
        self._skip = 0
        self._held = b""
        return self._fail(
            sqlstates.PROTOCOL_VIOLATION,
            f"the gateway lost track of the database's messages ({reason}); reconnect",
        )

    def _end(self, reason: str) -> list[Action]:
        if self._closed:
            return []
        self._closed = True
        return [CloseSession(reason)]
