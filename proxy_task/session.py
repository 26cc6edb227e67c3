"""One authenticated session: relays messages between client and database.

The hot path: a client chunk is cut into whole messages (the gateway must
see each statement whole before it may act on it) and forwarded with one
write; a database chunk is forwarded as it arrives while the editor follows
message boundaries to know when the session is idle. Flow control couples
the two sides so a slow reader pauses the writer and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from custos.identity.principal import Principal
from custos.protocol import codes
from custos.protocol.errors import ProtocolViolation
from custos.protocol.framing import BackendEditor, MessageFramer, Span
from custos.protocol.messages import error_response, terminate

if TYPE_CHECKING:
    from proxy_task.gateway import Gateway

log = logging.getLogger("custos.session")

# Messages after which the database answers with exactly one ReadyForQuery.
_SYNC_POINTS = frozenset({codes.QUERY, codes.SYNC, codes.FUNCTION_CALL})


class Session:
    # The server's messages the session reads whole; everything else streams through.
    _upstream_wanted: frozenset[int] = frozenset({codes.READY_FOR_QUERY})
    _upstream_wanted_max_bytes = 1 << 10

    __slots__ = (
        "_client",
        "_closed",
        "_draining",
        "_editor",
        "_framer",
        "_gateway",
        "_opened_at",
        "_pending_sync_points",
        "_transaction_status",
        "_upstream",
        "bytes_from_client",
        "bytes_from_upstream",
        "cancel_key",
        "principal",
    )

    def __init__(
        self,
        gateway: Gateway,
        principal: Principal,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        cancel_key: tuple[int, int],
        transaction_status: bytes,
    ) -> None:
        self._gateway = gateway
        self.principal = principal
        self._client = client
        self._upstream = upstream
        self.cancel_key = cancel_key
        self._framer = MessageFramer(gateway.config.limits.max_message_bytes)
        self._editor = BackendEditor(self._upstream_wanted, self._upstream_wanted_max_bytes)
        self._pending_sync_points = 0
        self._transaction_status = transaction_status
        self._draining = False
        self._closed = False
        self._opened_at = time.monotonic()
        self.bytes_from_client = 0
        self.bytes_from_upstream = 0

    @property
    def idle(self) -> bool:
        """Outside any transaction with no statement under way."""
        return (
            self._pending_sync_points == 0
            and self._transaction_status == b"I"
            and self._editor.at_boundary
            and self._framer.buffered == 0
        )

    def from_client(self, data: bytes) -> None:
        self.bytes_from_client += len(data)
        try:
            chunk, spans = self._framer.feed(data)
        except ProtocolViolation as violation:
            self.close(violation.sqlstate, violation.message)
            return
        if spans:
            self._relay_client(chunk, spans)

    def _relay_client(self, chunk: bytes, spans: list[Span]) -> None:
        """Forwards whole client messages; a governed session decides on them first."""
        terminating = False
        for message_type, _, _ in spans:
            if message_type in _SYNC_POINTS:
                self._pending_sync_points += 1
            elif message_type == codes.TERMINATE:
                terminating = True
        self._upstream.write(chunk)
        if terminating:
            self.close()

    def from_upstream(self, data: bytes) -> None:
        self.bytes_from_upstream += len(data)
        try:
            chunk, spans = self._editor.feed(data)
        except ProtocolViolation as violation:
            self._upstream_lost_track(violation)
            return
        if chunk:
            self._client.write(chunk)
        if spans:
            self._pending_sync_points = max(0, self._pending_sync_points - len(spans))
            self._transaction_status = chunk[spans[-1][2] - 1 : spans[-1][2]]
            if self._draining and self.idle:
                self._close_for_shutdown()

    def _upstream_lost_track(self, violation: ProtocolViolation) -> None:
        log.error("closing session: %s", violation.message)
        self.close("08006", "the gateway lost track of the database's messages; reconnect")

    def pause_upstream(self) -> None:
        """The client reads slower than the database writes: stop reading the database."""
        self._upstream.pause_reading()

    def resume_upstream(self) -> None:
        if not self._closed:
            self._upstream.resume_reading()

    def pause_client(self) -> None:
        """The database reads slower than the client writes: stop reading the client."""
        self._client.pause_reading()

    def resume_client(self) -> None:
        if not self._closed:
            self._client.resume_reading()

    def drain(self) -> None:
        """Closes the session at its next idle moment, for a graceful shutdown."""
        self._draining = True
        if self.idle:
            self._close_for_shutdown()

    def _close_for_shutdown(self) -> None:
        self.close("57P01", "the gateway is shutting down; reconnect to continue")

    def client_lost(self, error: Exception | None) -> None:
        if not self._closed:
            self.close()

    def upstream_lost(self, error: Exception | None) -> None:
        if not self._closed:
            # The database's own FATAL message, if it sent one, was forwarded already.
            self._closed = True
            self._client.close()
            self._finish("database closed the connection")

    def close(self, sqlstate: str | None = None, message: str | None = None) -> None:
        """Ends the session; with a message, tells the client why first."""
        if self._closed:
            return
        self._closed = True
        if sqlstate is not None and message is not None:
            self._client.write(error_response(sqlstate, message, severity="FATAL"))
        self._client.close()
        if not self._upstream.is_closing():
            self._upstream.write(terminate())
            self._upstream.close()
        self._finish(message or "client ended the session")

    def _finish(self, reason: str) -> None:
        self._gateway.session_closed(self)
        log.info(
            "session closed role=%s subject=%s client=%s seconds=%.3f bytes_in=%d bytes_out=%d"
            " reason=%s",
            self.principal.role,
            self.principal.subject,
            self.principal.client_address,
            time.monotonic() - self._opened_at,
            self.bytes_from_client,
            self.bytes_from_upstream,
            reason,
        )
