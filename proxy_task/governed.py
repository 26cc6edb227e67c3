"""A session under policy: every statement is decided before it reaches the database.

A refused statement is replaced by a statement that makes the database raise
the gateway's error (see custos/session/refusal.py), so protocol and
transaction states stay exactly PostgreSQL's own. In the extended protocol
the replacement is a Parse/Bind/Execute of the unnamed statement; its
ParseComplete and BindComplete are not the client's, so they are cut out of
the database's answer. Responses are matched to requests by counting: the
database answers in order, and an error makes it skip everything up to the
next Sync.

A decision that is not ready at once (the policy Lambda) holds the client's
later messages, in order, until it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from custos.protocol import codes
from custos.protocol.errors import ProtocolViolation
from custos.protocol.framing import Span
from custos.protocol.frontend import (
    close_message,
    encode_query,
    encode_unnamed_execution,
    query_text,
)
from custos.protocol.messages import WHERE, error_response_with_fields, parse_notice
from custos.session.gate import StatementGate, Verdict
from custos.session.refusal import Refusal, refusal_sql
from proxy_task.session import Session

if TYPE_CHECKING:
    from custos.identity.principal import Principal
    from proxy_task.gateway import Gateway

log = logging.getLogger("custos.session")

_PARSE_COMPLETE = ord("1")
_BIND_COMPLETE = ord("2")
_REFUSAL_CONTEXT = "PL/pgSQL function inline_code_block line 1 at RAISE"
_FUNCTION_CALL_REFUSAL = Refusal(
    "42501",
    "fast-path function calls are not allowed through the gateway",
    "call the function in a SQL statement, where policy can see it",
)


@dataclass(slots=True)
class _Segment:
    """The client's messages up to one sync point, and which answers to cut out.

    Only a segment with a refusal in it is kept for its answers; a clean one is queued
    as None, and its counters start over for the next.
    """

    parses: int = 0
    binds: int = 0
    parses_answered: int = 0
    binds_answered: int = 0
    dropped_parses: set[int] = field(default_factory=set)
    dropped_binds: set[int] = field(default_factory=set)
    refusals: int = 0


def _without_refusal_context(body: bytes) -> bytes | None:
    """The gateway's refusal without the PL/pgSQL context line the DO block adds.

    None when the error is not the refusal: another error happened first.
    """
    notice = parse_notice(body)
    if notice.fields.get(WHERE) != _REFUSAL_CONTEXT:
        return None
    return error_response_with_fields(
        {code: value for code, value in notice.fields.items() if code != WHERE}
    )


# While a refusal's answers are on their way, ParseComplete and BindComplete may be the
# gateway's own to cut out, and errors may carry the refusal's context line. Otherwise the
# session follows the server's stream as lightly as a bare one.
_EDITED_ANSWERS = frozenset(
    {codes.READY_FOR_QUERY, _PARSE_COMPLETE, _BIND_COMPLETE, codes.ERROR_RESPONSE}
)
_PLAIN_ANSWERS = frozenset({codes.READY_FOR_QUERY})
# The client's messages that change what the gate knows or need a verdict; the rest
# (Describe, Flush, COPY data) pass as they are.
_FOLLOWED = frozenset(
    {
        codes.EXECUTE,
        codes.BIND,
        codes.PARSE,
        codes.QUERY,
        codes.CLOSE,
        codes.SYNC,
        codes.FUNCTION_CALL,
    }
)


class GovernedSession(Session):
    # PostgreSQL's errors are far smaller than the cap.
    _upstream_wanted = _PLAIN_ANSWERS
    _upstream_wanted_max_bytes = 16 << 20

    __slots__ = ("_backlog", "_edited_in_flight", "_gate", "_holding", "_open", "_segments")

    def __init__(
        self,
        gateway: Gateway,
        principal: Principal,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        cancel_key: tuple[int, int],
        transaction_status: bytes,
        gate: StatementGate,
    ) -> None:
        super().__init__(gateway, principal, client, upstream, cancel_key, transaction_status)
        self._gate = gate
        self._open = _Segment()
        self._segments: deque[_Segment | None] = deque()
        self._edited_in_flight = 0  # segments with a refusal whose answers are yet to come
        self._backlog: deque[tuple[bytes, list[Span], int]] = deque()
        self._holding: asyncio.Future[Verdict] | None = None

    @property
    def idle(self) -> bool:
        return (
            not self._segments
            and self._holding is None
            and self._transaction_status == b"I"
            and self._editor.at_boundary
            and self._framer.buffered == 0
        )

    def _relay_client(self, chunk: bytes, spans: list[Span]) -> None:
        if self._holding is not None:
            self._backlog.append((chunk, spans, 0))
            return
        self._process(chunk, spans, 0)

    def _process(self, chunk: bytes, spans: list[Span], first: int) -> None:
        """Decides on each message from `spans[first]` on and forwards the result."""
        outgoing: list[bytes] = []
        run_start = spans[first][1]
        for index in range(first, len(spans)):
            message_type, start, end = spans[index]
            if message_type not in _FOLLOWED:
                if message_type == codes.TERMINATE:
                    self._upstream.write(b"".join(outgoing) + chunk[run_start:end])
                    self.close()
                    return
                continue
            try:
                verdict = self._verdict_for(message_type, chunk, start, end)
            except ProtocolViolation as violation:
                self._upstream.write(b"".join(outgoing) + chunk[run_start:start])
                self.close(violation.sqlstate, violation.message)
                return
            if verdict is None:
                continue
            outgoing.append(chunk[run_start:start])
            run_start = end
            if isinstance(verdict, Refusal):
                outgoing.append(self._replacement(message_type, verdict))
                continue
            ahead = b"".join(outgoing)
            if ahead:
                self._upstream.write(ahead)
            self._hold(verdict, message_type, chunk, spans, index)
            return
        outgoing.append(chunk[run_start : spans[-1][2]])
        self._upstream.write(b"".join(outgoing))

    def _verdict_for(
        self, message_type: int, chunk: bytes, start: int, end: int
    ) -> Verdict | Awaitable[Verdict]:
        """Follows the message in the session's state; a verdict where one is due."""
        if message_type == codes.EXECUTE:
            return self._gate.on_execute(
                chunk[start + 5 : end], self._settled_outside_transaction is False
            )
        if message_type == codes.BIND:
            self._open.binds += 1
            self._gate.on_bind(chunk[start + 5 : end])
        elif message_type == codes.PARSE:
            self._open.parses += 1
            self._gate.on_parse(chunk[start + 5 : end])
        elif message_type == codes.QUERY:
            uncertain = self._settled_outside_transaction is False
            self._close_segment()
            return self._gate.on_query(query_text(chunk[start + 5 : end]), uncertain)
        elif message_type == codes.CLOSE:
            self._gate.on_close(close_message(chunk[start + 5 : end]))
        elif message_type == codes.SYNC:
            self._close_segment()
        elif message_type == codes.FUNCTION_CALL:
            self._close_segment()
            return _FUNCTION_CALL_REFUSAL
        return None

    @property
    def _settled_outside_transaction(self) -> bool:
        """Idle outside a transaction with nothing pipelined ahead: a SET here will stick."""
        return self._transaction_status == b"I" and not self._segments

    def _close_segment(self) -> None:
        segment = self._open
        if segment.refusals:
            self._segments.append(segment)
            self._open = _Segment()
        else:
            self._segments.append(None)
            segment.parses = segment.binds = 0

    def _replacement(self, message_type: int, refusal: Refusal) -> bytes:
        """What the database gets instead of a refused message."""
        log.info(
            "statement refused role=%s subject=%s sqlstate=%s",
            self.principal.role,
            self.principal.subject,
            refusal.sqlstate,
        )
        sql = refusal_sql(refusal)
        if message_type in (codes.QUERY, codes.FUNCTION_CALL):
            # The message closed its segment already.
            closed = self._segments[-1]
            if closed is None:
                closed = self._segments[-1] = _Segment()
                self._edited_in_flight += 1
            closed.refusals += 1
            return encode_query(sql)
        segment = self._open
        if not segment.refusals:
            self._edited_in_flight += 1
        segment.refusals += 1
        segment.parses += 1
        segment.binds += 1
        segment.dropped_parses.add(segment.parses)
        segment.dropped_binds.add(segment.binds)
        return encode_unnamed_execution(sql)

    def _hold(
        self,
        pending: Awaitable[Verdict],
        message_type: int,
        chunk: bytes,
        spans: list[Span],
        index: int,
    ) -> None:
        """Waits for a decision; later messages queue behind it, in order."""
        self._client.pause_reading()
        self._backlog.appendleft((chunk, spans, index + 1))
        _, start, end = spans[index]
        held = chunk[start:end]
        decision = asyncio.ensure_future(pending)
        self._holding = decision
        decision.add_done_callback(lambda done: self._release(done, message_type, held))

    def _release(self, decision: asyncio.Future[Verdict], message_type: int, held: bytes) -> None:
        """Sends the held message, or its refusal, then what queued behind it."""
        if decision.cancelled():
            return
        try:
            verdict = decision.result()
        except Exception:
            log.exception("the decision point failed; refusing the statement")
            verdict = Refusal(
                "42501",
                "the gateway could not reach its policy decision point, so it refuses the"
                " statement",
                "try again shortly",
            )
        if self._closed:
            return
        self._holding = None
        self._upstream.write(held if verdict is None else self._replacement(message_type, verdict))
        while self._backlog and self._holding is None and not self._closed:
            chunk, spans, first = self._backlog.popleft()
            if first < len(spans):
                self._process(chunk, spans, first)
        if self._holding is None and not self._closed:
            self._client.resume_reading()

    def from_upstream(self, data: bytes) -> None:
        self.bytes_from_upstream += len(data)
        editor = self._editor
        editing = self._edited_in_flight > 0
        editor.wanted = _EDITED_ANSWERS if editing else _PLAIN_ANSWERS
        try:
            chunk, spans = editor.feed(data)
        except ProtocolViolation as violation:
            self._upstream_lost_track(violation)
            return
        if not spans:
            if chunk:
                self._client.write(chunk)
            return
        if editing:
            chunk = self._edited(chunk, spans)
        else:
            for _, start, end in spans:  # ReadyForQuery, nothing else
                self._transaction_status = chunk[start + 5 : end]
                if self._segments:
                    self._segments.popleft()
        self._client.write(chunk)
        if self._draining and self.idle:
            self.close("57P01", "the gateway is shutting down; reconnect to continue")

    def _edited(self, chunk: bytes, spans: list[Span]) -> bytes:
        """The server's answers with the gateway's own cut out, following the sync points."""
        outgoing: list[bytes] = []
        kept_from = 0
        for message_type, start, end in spans:
            if message_type == codes.READY_FOR_QUERY:
                self._transaction_status = chunk[start + 5 : end]
                if self._segments and self._segments.popleft() is not None:
                    self._edited_in_flight -= 1
                continue
            segment = self._segments[0] if self._segments else self._open
            if segment is None or (not segment.dropped_parses and not segment.refusals):
                continue  # a clean segment, followed closely only because one behind is not
            if message_type == codes.ERROR_RESPONSE:
                if segment.refusals:
                    replacement = _without_refusal_context(chunk[start + 5 : end])
                    if replacement is not None:
                        segment.refusals -= 1
                        outgoing.append(chunk[kept_from:start])
                        outgoing.append(replacement)
                        kept_from = end
                continue
            if message_type == _PARSE_COMPLETE:
                segment.parses_answered += 1
                drop = segment.parses_answered in segment.dropped_parses
            else:
                segment.binds_answered += 1
                drop = segment.binds_answered in segment.dropped_binds
            if drop:
                outgoing.append(chunk[kept_from:start])
                kept_from = end
        outgoing.append(chunk[kept_from:])
        return b"".join(outgoing)

    def close(self, sqlstate: str | None = None, message: str | None = None) -> None:
        if self._holding is not None:
            self._holding.cancel()
            self._holding = None
        super().close(sqlstate, message)
