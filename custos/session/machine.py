"""The session machine: one governed session, sans-IO.

Events go in (`client_data`, `server_data`, `settled`, `cancel_requested`, `client_lost`,
`server_lost`, `close`, `drain`, the write-buffer signals); each returns the actions the
network adapter must carry out (actions.py). No socket, no event loop and no clock other
than the one given is touched here, so every behaviour is testable by playbooks: events in,
exact actions out.

How a client message travels:

1. **Intake**, in the client's order. The machine follows the message in its view of the
   session (view.py), and every request to run SQL (a Query, an Execute, a FETCH) becomes
   a `Statement` that the stages plan (stages.py). A message whose meaning depends on
   answers the database has not given yet (a portal bound in an earlier segment, text the
   session's settings could make read differently) stops intake until they arrive.
2. **Outbox**, in the same order. A statement a stage holds waits there with everything
   sent after it; the client is paused meanwhile. Statements ready at once go straight
   through, in one write per chunk.
3. **Ledger** (ledger.py, answers.py): what was sent, awaiting the database's answers.
   Every server message is attributed to the request it answers; the view changes only on
   those answers.

The gateway's own messages (refusals aside, which replace the database's error in place)
reach the client only between two of the server's messages.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from custos.protocol import codes, sqlstates
from custos.protocol.errors import ProtocolViolation
from custos.protocol.framing import MessageFramer, Span
from custos.protocol.frontend import (
    encode_describe_portal,
    execute_message,
    names,
    parse_message,
    target,
)
from custos.protocol.messages import error_response
from custos.session import ledger as L
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
    StartWait,
)
from custos.session.answers import Answers, HeldTooLarge, LostTrack
from custos.session.lexical import LexicalRefusal, LexicalSettings, lexically_sensitive
from custos.session.own_messages import (
    REFUSAL_CLEANUP,
    REFUSAL_EXECUTION,
    REFUSAL_EXECUTION_DROPPING_UNNAMED,
    REFUSAL_QUERY,
)
from custos.session.refusal import Refusal, analysis_refusal
from custos.session.resolution import resolve, runs_another
from custos.session.stages import (
    FORWARD,
    Outcome,
    Plan,
    Refuse,
    Rewrite,
    Settled,
    Stage,
    Status,
    WaitFor,
    chained,
)
from custos.session.statement import Candidates, Portal, Prepared, Statement
from custos.session.texts import TextAnalyser
from custos.session.view import NAME_BYTES, UNCONFIRMED, SessionView, Unconfirmed, sql_name
from custos.sql.cache import estimated_bytes

log = logging.getLogger("custos.session")

_PARSE_MEMO_ENTRIES: Final = 2048
# The memo keeps Parse bodies: at most this many bytes of them, none longer than the second
# (a client that sends each statement once gains nothing from it).
_PARSE_MEMO_BYTES: Final = 1 << 20
_PARSE_MEMO_MAX_BODY: Final = 16 << 10
MAX_CANDIDATE_SCHEMAS: Final = 32
"""A statement is analysed once per schema the search path may hold, up to this many."""
_UNQUALIFIED: Final = "custos_unqualified_names"
_UNQUALIFIED_PREFIX: Final = _UNQUALIFIED + "."
_CANCELED: Final = "canceling statement due to user request"
_ANALYSIS_FAILED: Final = Refusal(
    sqlstates.INTERNAL_ERROR,
    "the gateway's analysis worker stopped while analysing this statement, so it refuses it",
    "try again; if it persists, tell the gateway's operators",
)
_STAGE_FAILED: Final = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "the gateway could not decide on this statement, so it refuses it",
    "try again shortly; if it persists, tell the gateway's operators",
)
_FUNCTION_CALL_REFUSAL: Final = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "fast-path function calls are not allowed through the gateway",
    "call the function in a SQL statement, where policy can see it",
)
_UNSAFE_DESCRIBE: Final = Refusal(
    sqlstates.FEATURE_NOT_SUPPORTED,
    "the gateway does not describe a FETCH or MOVE once other statements have run since it"
    " was parsed, nor an EXECUTE of one: PostgreSQL 15 crashes describing one whose cursor has"
    " been closed",
    "describe it right after its Parse (as drivers do), or execute it without a Describe",
)
_LEXICAL_PIPELINE: Final = Refusal(
    sqlstates.FEATURE_NOT_SUPPORTED,
    "text with a backslash or characters outside ASCII cannot follow another statement in"
    " the same pipeline segment: that statement (or a function or trigger it runs) may"
    " change client_encoding or standard_conforming_strings, which the server reports only"
    " at Sync; send Sync between them",
)


class SessionState(Enum):
    """Where a session is; the rest of its state is its view and its ledger."""

    RELAYING = "relaying"  # statements flow as they come
    HOLDING = "holding"  # a statement waits (on a stage, or on the database's answers)
    CLOSING = "closing"  # ends at the next boundary between the server's messages
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_message_bytes: int = 64 << 20  # one client message
    max_held_message_bytes: int = 64 << 20  # one server message the session reads whole
    max_ledger_entries: int = 100_000  # answers outstanding before the client is paused
    # Client bytes held behind a waiting statement before the client is paused. Below it the
    # client is still read, so that a disconnect or Terminate withdraws what waits at once.
    max_held_client_bytes: int = 1 << 20
    # What a session's prepared statements may hold, by an estimate of their analyses.
    max_prepared_bytes: int = 16 << 20


class _Block:
    """Intake must wait for the database's answers before it can read this message."""

    __slots__ = ()


_BLOCK: Final = _Block()


def _analysis_bytes(prepared: Prepared) -> int:
    return sum(estimated_bytes("", analysis) for analysis, _ in prepared.candidates)


_VALUE_BYTES: Final = re.compile(rb"['$0-9]")


def _may_hold_values(query: bytes) -> bool:
    """Whether a text may carry values: a string constant (quoted, E'', U&'' or dollar
    quoted) or a number (a birth date as 19741022). The database shows a Parse's text in
    pg_stat_activity and its log, so a text policy refuses whatever the Bind values is
    refused at its Parse when it may carry some; one without is decided at its Execute, like
    every other."""
    return _VALUE_BYTES.search(query) is not None


class _Item:
    """Client messages in the outbox: ready bytes, or a statement its stages hold."""

    __slots__ = ("data", "entries", "held", "statement", "via")

    def __init__(
        self,
        data: bytes | None,
        entries: list[L.Entry],
        statement: Statement | None = None,
        held: bytes = b"",
        via: int = 0,
    ) -> None:
        self.data = data  # None while the statement waits
        self.entries = entries
        self.statement = statement
        self.held = held  # the statement's own message, sent if it is let through
        self.via = via  # QUERY or EXECUTE: how the statement reached us


_Taken = _Item | _Block | None
"""What intake makes of one client message: None when it goes on as it is (its ledger
entries gathered), an _Item to send or hold in its place, or _BLOCK."""


class SessionMachine:
    def __init__(
        self,
        *,
        stages: Sequence[Stage],
        analyser: TextAnalyser,
        search_path: Sequence[str],
        lexical: LexicalSettings,
        limits: SessionLimits,
        transaction_status: bytes = b"I",
        clock: Callable[[], float] = time.monotonic,
        log_context: str = "",
        login: str = "",
    ) -> None:
        self._stages = tuple(stages)
        self._listeners = tuple(stage for stage in stages if stage.hears_outcomes)
        self._notification_stages = tuple(
            stage for stage in stages if type(stage).notification is not Stage.notification
        )
        self._chunk_listeners = tuple(
            stage for stage in stages if type(stage).after_chunk is not Stage.after_chunk
        )
        self._analyser = analyser
        self._limits = limits
        self._clock = clock
        self._log_context = log_context  # who the session is, for log lines
        self._framer = MessageFramer(limits.max_message_bytes)
        self._state = SessionState.RELAYING
        # `login`: the database user the gateway logs in as, what "$user" in a path names.
        self._view = SessionView(search_path, lexical, login)
        self._answers = Answers(
            self._view,
            self,
            limits.max_held_message_bytes,
            transaction_status[0],
            keeps_tags=bool(self._listeners),
        )
        self._parse_memo: dict[tuple[bytes, tuple[str, ...], int], tuple[bytes, Prepared, bool]]
        self._parse_memo = {}
        self._parse_memo_bytes = 0
        # Prepared statement names taken in, and about the bytes each holds (_room_for).
        self._prepared_weights: dict[tuple[bool, bytes], int] = {}
        self._prepared_bytes = 0
        self._numbers = 0
        # Intake.
        self._run_entries: list[L.Entry] = []
        self._backlog: deque[tuple[bytes, list[Span], int]] = deque()
        self._intake_blocked = False
        self._terminating = False
        # Outbox and waits.
        self._outbox: deque[_Item] = deque()
        self._waits: dict[int, list[tuple[_Item, int, Callable[[Settled], Plan]]]] = {}
        self._refusal_statement_left = False  # a refusal block's statement may remain
        # Messages taken that may run SQL, end a transaction or close a portal (Query,
        # Execute, FunctionCall, Sync, Close): what a cursor's fate depends on since a FETCH
        # was parsed.
        self._runs_taken = 0
        # A worker's analysis of the text intake stopped at, under way or ready (by text
        # and schemas): the message is read again once it is ready.
        self._analysis_under_way: tuple[tuple[str, tuple[str, ...]], Awaitable[object]] | None
        self._analysis_under_way = None
        self._analysis_ready: tuple[tuple[str, tuple[str, ...]], Candidates | Refusal] | None
        self._analysis_ready = None
        self._confirmed_seen = 0  # the view's confirmed segments, when last acted on
        # The end.
        self._own_pending: list[bytes] = []
        self._closing_reason: str | None = None
        self._draining = False
        # Flow control: why the client is not read, and whether the server's reads are paused.
        self._client_pauses: set[str] = set()
        self._server_paused = False
        # Actions of the event being handled: writes gathered, then waits and pauses.
        self._actions: list[Action] = []
        self._controls: list[Action] = []
        self._to_server: list[bytes] = []
        self._to_client: list[bytes] = []

    # --- what the session is -----------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def idle(self) -> bool:
        """Outside any transaction, nothing outstanding: a moment to end the session."""
        return (
            not self._answers.ledger
            and not self._outbox
            and not self._backlog
            and self._answers.transaction_status == ord("I")
            and self._framer.buffered == 0
            and self._answers.at_boundary
        )

    @property
    def transaction_status(self) -> str:
        return chr(self._answers.transaction_status)

    @property
    def prepared_statements(self) -> dict[bytes, Prepared]:
        """The prepared statements the database has confirmed, by name."""
        return dict(self._view.statements.confirmed)

    @property
    def portals(self) -> dict[bytes, Portal]:
        """The portals and cursors the database has confirmed, by name."""
        return dict(self._view.portals.confirmed)

    @property
    def search_path_schemas(self) -> tuple[str, ...]:
        return self._view.path.schemas()

    @property
    def lexical(self) -> LexicalSettings:
        return self._view.lexical

    # --- events --------------------------------------------------------------------------

    def client_data(self, data: bytes) -> list[Action]:
        if self._state is SessionState.CLOSED or self._closing_reason is not None:
            return []
        try:
            chunk, spans = self._framer.feed(data)
        except ProtocolViolation as violation:
            self._fail(violation.sqlstate, violation.message)
            return self._take_actions()
        if spans:
            if self._intake_blocked or self._backlog:
                self._backlog.append((chunk, spans, 0))
                self._holding_changed()
            else:
                self._intake(chunk, spans, 0)
                self._after_intake()
        return self._take_actions()

    def server_data(self, data: bytes) -> list[Action]:
        if self._state is SessionState.CLOSED:
            return []
        try:
            self._answers.feed(data, self._to_client)
        except (ProtocolViolation, LostTrack) as lost:
            self._lost_track(str(lost))
        except HeldTooLarge as too_large:
            log.warning("closing session: %s", too_large)
            self._answers.lost()
            self._fail(sqlstates.PROGRAM_LIMIT_EXCEEDED, str(too_large))
        else:
            self._after_server()
        return self._take_actions()

    def settled(self, awaitable: Awaitable[object], outcome: Settled) -> list[Action]:
        """An awaitable of a StartWait settled."""
        if self._state is SessionState.CLOSED:
            return []
        under_way = self._analysis_under_way
        if under_way is not None and under_way[1] is awaitable:
            self._analysis_settled(under_way[0], outcome)
            return self._take_actions()
        waiting = self._waits.pop(id(awaitable), [])
        for item, stage_index, resume in waiting:
            statement = item.statement
            if statement is None or item.data is not None:
                continue  # withdrawn meanwhile
            try:
                plan = resume(outcome)
            except Exception:
                log.exception("a stage failed to plan a statement; refusing it")
                plan = Refuse(_STAGE_FAILED)
            waiting_again = self._run_stages(statement, stage_index, plan)
            if waiting_again is None:
                self._settle_item(item)
            else:
                self._wait(item, *waiting_again)
        self._flush_outbox()
        self._resume_if_clear()
        return self._take_actions()

    def cancel_requested(self) -> list[Action]:
        """A CancelRequest with this session's key arrived."""
        if self._state is SessionState.CLOSED:
            return []
        waiting = next((item for item in self._outbox if item.data is None), None)
        under_way = self._analysis_under_way
        if waiting is not None and not self._answers.busy:
            # PostgreSQL would cancel the statement it runs: the gateway's is the waiting one.
            self._withdraw(waiting, Refusal(sqlstates.QUERY_CANCELED, _CANCELED))
            self._flush_outbox()
            self._resume_if_clear()
        elif under_way is not None and not self._answers.busy:
            # Its worker goes on (within its budget); what it finds is no longer waited for.
            self._read_again(under_way[0], Refusal(sqlstates.QUERY_CANCELED, _CANCELED))
        else:
            self._act(FORWARD_CANCEL)
        return self._take_actions()

    def client_lost(self) -> list[Action]:
        if self._state is not SessionState.CLOSED:
            self._finish_session("client ended the session")
        return self._take_actions()

    def server_lost(self) -> list[Action]:
        if self._state is not SessionState.CLOSED:
            # The database's own FATAL message, if it sent one, was forwarded already.
            self._finish_session("database closed the connection")
        return self._take_actions()

    def close(self, sqlstate: str, message: str) -> list[Action]:
        """Ends the session, telling the client why between two of the server's messages."""
        if self._state is not SessionState.CLOSED:
            self._fail(sqlstate, message)
        return self._take_actions()

    def drain(self) -> list[Action]:
        """Closes the session at its next idle moment (graceful shutdown)."""
        self._draining = True
        self._close_if_drained()
        return self._take_actions()

    def client_write_paused(self, paused: bool) -> list[Action]:
        """The client reads slower than the database answers: stop reading the database."""
        if paused != self._server_paused and self._state is not SessionState.CLOSED:
            self._server_paused = paused
            self._act(PAUSE_SERVER if paused else RESUME_SERVER)
        return self._take_actions()

    def server_write_paused(self, paused: bool) -> list[Action]:
        """The database reads slower than the client sends: stop reading the client."""
        self._pause_client("backpressure", paused)
        return self._take_actions()

    # --- how statements finished (answers.Listener) --------------------------------------

    def notification(self, body: bytes) -> bytes | None:
        replaced: bytes | None = None
        for stage in self._notification_stages:
            changed = stage.notification(body if replaced is None else replaced)
            if changed is not None:
                replaced = changed
        return replaced

    def finished(self, statement: Statement, status: Status, sqlstate: str | None) -> None:
        if statement.finished:
            return
        statement.finished = True
        rewriter = statement.rewriter
        if rewriter is not None:
            try:
                rewriter.statement_finished(statement)
            except Exception:
                log.exception("a result rewriter failed to hear its statement finish")
        if not self._listeners:
            return
        outcome = Outcome(
            status=status,
            tags=tuple(statement.tags or ()),
            rows=statement.rows,
            sqlstate=sqlstate or (statement.refusal.sqlstate if statement.refusal else None),
            bytes=statement.answered_bytes,
            duration_seconds=self._clock() - statement.started_at,
            masked=() if statement.rewriter is None else statement.rewriter.masked(),
        )
        for stage in self._listeners:
            try:
                stage.finished(statement, outcome)
            except Exception:
                log.exception("a stage failed to hear how a statement finished")

    def _segments_confirmed(self) -> None:
        """The database answered (or skipped) sync points: what waited on them may go on."""
        answers = self._answers
        if self._refusal_statement_left and not answers.ledger and not answers.discarding:
            self._refusal_statement_left = False
            self._send(REFUSAL_CLEANUP, [(L.OWN_CLOSE, None)])
        if self._intake_blocked:
            self._intake_blocked = False
            self._resume_if_clear()

    # --- intake --------------------------------------------------------------------------

    def _intake(self, chunk: bytes, spans: list[Span], first: int) -> None:
        """Follows and plans each message from `spans[first]`, in order, and sends or queues it."""
        run_start = spans[first][1]
        self._run_entries = []
        for index in range(first, len(spans)):
            message_type, start, end = spans[index]
            try:
                taken = self._take_in(message_type, chunk, start, end)
            except ProtocolViolation as violation:
                self._enqueue(chunk, run_start, start)
                self._fail(violation.sqlstate, violation.message)
                return
            if taken is None:
                if self._terminating:
                    # Nothing more will be read: what still waits is withdrawn, the rest goes.
                    self._enqueue(chunk, run_start, end)
                    self._finish_session("client ended the session")
                    return
                continue
            self._enqueue(chunk, run_start, start)
            if isinstance(taken, _Block):
                self._backlog.appendleft((chunk, spans, index))
                self._intake_blocked = True
                return
            self._outbox.append(taken)
            run_start = end
        self._enqueue(chunk, run_start, spans[-1][2])

    def _enqueue(self, chunk: bytes, start: int, end: int) -> None:
        """Client bytes (with the entries gathered for them) go out, or queue behind a wait."""
        if start == end:
            return
        data = chunk[start:end]
        entries = self._run_entries
        self._run_entries = []
        if start:
            # A Sync's entry holds where it ends: in the chunk so far, in these bytes from now.
            entries = [(L.SYNC, e[1] - start) if e[0] == L.SYNC else e for e in entries]
        if self._outbox:
            self._outbox.append(_Item(data, entries))
        else:
            self._send(data, entries)

    def _after_intake(self) -> None:
        for stage in self._chunk_listeners:
            stage.after_chunk()
        if self._outbox:
            self._flush_outbox()
        if self._outbox or self._backlog or self._state is SessionState.HOLDING:
            self._resume_if_clear()

    def _take_in(self, message_type: int, chunk: bytes, start: int, end: int) -> _Taken:
        if message_type == codes.QUERY:
            taken = self._take_query(chunk, start, end)
            if taken is not _BLOCK:
                self._runs_taken += 1
            return taken
        if message_type == codes.PARSE:
            return self._take_parse(chunk[start + 5 : end])
        if message_type == codes.BIND:
            return self._take_bind(chunk[start + 5 : end])
        if message_type == codes.EXECUTE:
            taken = self._take_execute(chunk, start, end)
            if taken is not _BLOCK:
                self._runs_taken += 1
            return taken
        if message_type == codes.SYNC:
            self._runs_taken += 1
            answers = self._answers
            if answers.copy_in is not None and not answers.copy_end_sent:
                return None  # the database ignores Sync during COPY FROM STDIN
            self._run_entries.append((L.SYNC, end))
            self._view.end_segment()
            return None
        if message_type == codes.DESCRIBE:
            return self._take_describe(chunk[start + 5 : end])
        if message_type == codes.CLOSE:
            return self._take_close(chunk[start + 5 : end])
        if message_type == codes.COPY_DONE or message_type == codes.COPY_FAIL:
            self._run_entries.append((L.COPY_END, None))
            if self._answers.copy_in is not None:
                self._answers.copy_end_sent = True
            return None
        if message_type == codes.FUNCTION_CALL:
            self._runs_taken += 1
            self._view.end_segment()
            self._log_refusal(_FUNCTION_CALL_REFUSAL)
            return _Item(REFUSAL_QUERY, [(L.REFUSED_QUERY, _FUNCTION_CALL_REFUSAL)])
        if message_type == codes.TERMINATE:
            self._terminating = True
        return None  # Flush and CopyData: nothing is answered for them

    def _take_query(self, chunk: bytes, start: int, end: int) -> _Taken:
        text_end = end - 1
        if chunk.find(b"\x00", start + 5) != text_end:
            raise ProtocolViolation("malformed Query message: the text must end with its only NUL")
        read = self._read_text(chunk[start + 5 : text_end])
        if isinstance(read, _Block):
            return _BLOCK
        resolved = read if isinstance(read, Refusal) else resolve(read, self._view)
        if isinstance(resolved, Unconfirmed):
            return _BLOCK
        statement = self._new_statement(read if isinstance(read, tuple) else (), ())
        statement.text = chunk[start + 5 : text_end]
        statement.client_encoding = self._answers_encoding()
        if isinstance(resolved, Refusal):
            statement.refusal = resolved
        else:
            statement.candidates = resolved
        taken = self._statement_item(statement, chunk, start, end, L.QUERY)
        self._view.end_segment()
        return taken

    def _take_parse(self, body: bytes) -> _Taken:
        view = self._view
        # Clients send the same Parse again and again: its reading is kept by its bytes.
        key = (body, view.path.schemas(), view.lexical_version)
        known = self._parse_memo.get(key)
        if known is None:
            parse = parse_message(body)
            read = self._read_text(parse.query)
            if isinstance(read, _Block):
                return _BLOCK
            if isinstance(read, Refusal):
                return self._refused_parse(parse.statement, read)
            name_read = self._name(parse.statement)
            if not isinstance(name_read, bytes):
                return self._not_taken(name_read)
            name = name_read
            if _may_hold_values(parse.query):
                for stage in self._stages:
                    refused = stage.refuse_text(read)
                    if refused is not None:
                        return self._refused_parse(name, refused)
            prepared = Prepared(read, parse.parameter_types, text=parse.query)
            prepared.runs_before = self._runs_taken
            if not read[0][0].session_effects and len(body) <= _PARSE_MEMO_MAX_BODY:
                if (
                    len(self._parse_memo) >= _PARSE_MEMO_ENTRIES
                    or self._parse_memo_bytes + len(body) > _PARSE_MEMO_BYTES
                ):
                    self._parse_memo.clear()
                    self._parse_memo_bytes = 0
                sensitive = lexically_sensitive(parse.query) or not parse.statement.isascii()
                self._parse_memo[key] = (name, prepared, sensitive)
                self._parse_memo_bytes += len(body)
        else:
            name, prepared, sensitive = known
            if sensitive:
                gate = self._lexical_gate()
                if isinstance(gate, _Block):
                    return _BLOCK
                if gate is not None:
                    return self._refused_parse(name, gate)
        if name and not self._room_for(name, 2 * len(body) + _analysis_bytes(prepared)):
            return self._refused_parse(name, self._too_many_prepared())
        view.statements.predict(name, prepared, view.segment)
        self._run_entries.append((L.PARSE, (name, prepared)))
        return None

    def _room_for(self, name: bytes, weight: int, portal: bool = False) -> bool:
        """Whether the session may hold one more prepared statement (or portal) of about
        `weight` bytes under `name`; counts it if so. What a session holds stays in the
        gateway's memory for as long as the session lasts, so it is bounded in bytes."""
        weights = self._prepared_weights
        key = (portal, name)
        limit = self._limits.max_prepared_bytes
        if self._prepared_bytes - weights.get(key, 0) + weight > limit:
            # Some may have been closed or deallocated since: count those still held.
            view = self._view
            gone = [
                known
                for known in weights
                if not (view.portals if known[0] else view.statements).holds(known[1])
            ]
            for known in gone:
                del weights[known]
            self._prepared_bytes = sum(weights.values())
            if self._prepared_bytes - weights.get(key, 0) + weight > limit:
                return False
        self._prepared_bytes += weight - weights.get(key, 0)
        weights[key] = weight
        return True

    def _too_many_prepared(self) -> Refusal:
        limit = self._limits.max_prepared_bytes >> 20
        return Refusal(
            sqlstates.PROGRAM_LIMIT_EXCEEDED,
            f"this session's prepared statements and portals would take more than the {limit}"
            " MiB the gateway keeps for one session (limits.max_prepared_bytes_per_session);"
            " close some (Close, DEALLOCATE, or end the transaction) before making more",
        )

    def _room_for_prepares(self, statement: Statement) -> bool:
        """Whether a PREPARE or DECLARE in SQL fits what the session holds (see _room_for)."""
        analysis = statement.analysis
        if not analysis.session_effects:
            return True
        for facts, text in zip(analysis.statements, analysis.texts, strict=False):
            name = facts.prepares if facts.prepares is not None else facts.declares
            if name is None:
                continue
            weight = 2 * len(text) + estimated_bytes(text, analysis)
            if not self._room_for(sql_name(name), weight, portal=facts.prepares is None):
                return False
        return True

    def _take_bind(self, body: bytes) -> _Taken:
        view = self._view
        portal_name, statement_name = names(body, 2, "Bind")
        name = self._name(statement_name)
        key = self._name(portal_name)
        if not isinstance(name, bytes):
            return self._not_taken(name)
        if not isinstance(key, bytes):
            return self._not_taken(key)
        prepared = view.statements.lookup(name, view.segment, view.confirmed_segments)
        if prepared is UNCONFIRMED:
            return _BLOCK
        if not isinstance(prepared, Prepared):
            missing = (
                f'prepared statement "{_shown(name)}" does not exist'
                if name
                else "unnamed prepared statement does not exist"
            )
            return self._refused_message(Refusal(sqlstates.INVALID_SQL_STATEMENT_NAME, missing))
        # The unnamed portal is replaced by the next Bind and gone at the Sync: not counted.
        if key and not self._room_for(key, 256 + 2 * len(body), portal=True):
            return self._refused_message(self._too_many_prepared())
        portal = Portal(prepared, body)
        view.portals.predict(key, portal, view.segment)
        self._run_entries.append((L.BIND, (key, portal)))
        return None

    def _take_execute(self, chunk: bytes, start: int, end: int) -> _Taken:
        view = self._view
        portal_name, max_rows = execute_message(chunk[start + 5 : end])
        key = self._name(portal_name)
        if not isinstance(key, bytes):
            return self._not_taken(key)
        portal = view.portals.lookup(key, view.segment, view.confirmed_segments)
        if portal is UNCONFIRMED:
            return _BLOCK
        if not isinstance(portal, Portal):
            return self._refused_message(
                Refusal(sqlstates.INVALID_CURSOR_NAME, f'portal "{_shown(key)}" does not exist')
            )
        prepared = portal.prepared
        resolved: Candidates | Refusal | Unconfirmed
        if prepared.refusal is not None:
            resolved = prepared.refusal
        else:
            resolved = resolve(prepared.candidates, self._view)
            if isinstance(resolved, Unconfirmed):
                return _BLOCK
        encoding = self._answers_encoding()
        # Whatever it runs (a function, a trigger) may change how later text reads, and the
        # server reports that only at the end of the segment.
        view.segment_lexical_change = True
        statement = self._new_statement(prepared.candidates, portal.parameters())
        statement.text = prepared.text
        statement.client_encoding = encoding
        statement.portal_name = key
        statement.portal = portal
        statement.max_rows = max_rows
        if isinstance(resolved, Refusal):
            statement.refusal = resolved
        else:
            statement.candidates = resolved
        return self._statement_item(statement, chunk, start, end, L.EXECUTE)

    def _take_describe(self, body: bytes) -> _Taken:
        view = self._view
        kind, raw_name = target(body, "Describe")
        name = self._name(raw_name)
        if not isinstance(name, bytes):
            return self._not_taken(name)
        # Its answer reaches a later Execute's rewriter: no Describe of the gateway's is needed.
        described: Prepared | Portal | Unconfirmed | None
        if kind == ord("S"):
            described = view.statements.lookup(name, view.segment, view.confirmed_segments)
        else:
            described = view.portals.lookup(name, view.segment, view.confirmed_segments)
        if described is UNCONFIRMED:
            return _BLOCK  # it may be a FETCH (below): known once the database has answered
        if isinstance(described, (Prepared, Portal)):
            prepared = described.prepared if isinstance(described, Portal) else described
            unsafe = self._describing_may_crash(prepared)
            if unsafe is None:
                return _BLOCK
            if unsafe:
                return self._refused_message(_UNSAFE_DESCRIBE)
            described.described = True
        self._run_entries.append((L.DESCRIBE, (kind, name)))
        return None

    def _describing_may_crash(self, prepared: Prepared) -> bool | None:
        """Whether describing the statement may crash the server; None: not known yet.

        PostgreSQL 15 crashes (restarting every session) describing a FETCH or MOVE whose
        cursor was closed after the statement was parsed, which the gateway cannot always
        see (a function, a DO block, a savepoint's rollback may close it). A FETCH is safe
        to describe while nothing has run since its Parse, as drivers do (Parse, Bind,
        Describe, Execute); an EXECUTE of a FETCH, or a FETCH of a portal that holds one,
        never is.
        """
        candidates = prepared.candidates
        if not runs_another(candidates):
            return False
        view = self._view
        for statement in candidates[0][0].statements:
            held: Prepared | Portal | Unconfirmed | None = None
            if statement.fetches is not None:
                if prepared.runs_before != self._runs_taken:
                    return True
                held = view.portals.lookup(
                    sql_name(statement.fetches), view.segment, view.confirmed_segments
                )
            elif statement.executes is not None:
                held = view.statements.lookup(
                    sql_name(statement.executes), view.segment, view.confirmed_segments
                )
            if isinstance(held, Unconfirmed):
                return None
            if held is not None:
                target = held.prepared if isinstance(held, Portal) else held
                if runs_another(target.candidates):
                    return True
        return False

    def _take_close(self, body: bytes) -> _Taken:
        view = self._view
        kind, raw_name = target(body, "Close")
        name = self._name(raw_name)
        if not isinstance(name, bytes):
            return self._not_taken(name)
        if kind == ord("S"):
            view.statements.predict(name, None, view.segment)
        else:
            view.portals.predict(name, None, view.segment)
            self._runs_taken += 1  # it may close a cursor a FETCH was parsed against
        self._run_entries.append((L.CLOSE, (kind, name)))
        return None

    def _name(self, raw: bytes) -> bytes | Refusal | _Block:
        """A statement or portal name as the database keys it.

        ASCII names are the bytes themselves (PostgreSQL keys the first 63). Others are
        followed only in UTF-8, where the database compares the bytes as sent: in another
        encoding its conversion may make two byte strings one name, and which conversion
        applies may still be changing.
        """
        if raw.isascii():
            return raw[:NAME_BYTES]
        gate = self._lexical_gate()
        if gate is not None:
            return gate
        lexical = self._view.lexical
        encoding = lexical.client_encoding
        if encoding == "SQL_ASCII":
            encoding = lexical.server_encoding
        if encoding != "UTF8":
            return Refusal(
                sqlstates.FEATURE_NOT_SUPPORTED,
                f"statement and portal names outside ASCII are refused in client_encoding"
                f" {lexical.client_encoding}: the gateway could not tell them apart as the"
                " database does; use ASCII names, or client_encoding UTF8",
            )
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return Refusal(
                sqlstates.CHARACTER_NOT_IN_REPERTOIRE,
                "a statement or portal name is not valid UTF-8, the session's client_encoding",
            )
        return raw[:NAME_BYTES]

    def _not_taken(self, outcome: Refusal | _Block) -> _Taken:
        return _BLOCK if isinstance(outcome, _Block) else self._refused_message(outcome)

    def _answers_encoding(self) -> str:
        """The client encoding a statement taken now is answered in; "" where a statement
        sent before it in this segment may change it unseen (the server reports settings
        only at the segment's end)."""
        view = self._view
        return "" if view.segment_lexical_change else view.lexical.client_encoding

    def _lexical_gate(self) -> Refusal | _Block | None:
        """For text that could read differently under other settings: whether it can be read."""
        view = self._view
        if view.segment > view.confirmed_segments:
            return _BLOCK  # earlier segments may change how the server reads it
        if view.segment_lexical_change:
            return _LEXICAL_PIPELINE
        return None

    def _read_text(self, text: bytes) -> Candidates | Refusal | _Block:
        """The text's analysis candidates, read as the server will read it."""
        if not text.isascii() or text.find(b"\\") >= 0:
            gate = self._lexical_gate()
            if gate is not None:
                return gate
        try:
            sql = self._view.lexical.decode(text)
        except LexicalRefusal as refusal:
            return Refusal(refusal.sqlstate, refusal.message)
        schemas = self._view.path.schemas()
        long_path = len(schemas) > MAX_CANDIDATE_SCHEMAS
        read = self._analysed(sql, (_UNQUALIFIED,) if long_path else schemas)
        if not isinstance(read, tuple):
            return read
        first = read[0][0]
        if first.error is not None:
            return analysis_refusal(first.error, first.error_sqlstate, sql)
        return self._under_long_path(read, schemas) if long_path else read

    def _analysed(self, sql: str, schemas: tuple[str, ...]) -> Candidates | Refusal | _Block:
        """The analyser's candidates, or _BLOCK while a worker analyses the text: intake
        reads the message again once it has (analysis_settled)."""
        key = (sql, schemas)
        ready = self._analysis_ready
        if ready is not None and ready[0] == key:
            self._analysis_ready = None
            return ready[1]
        under_way = self._analysis_under_way
        if under_way is not None and under_way[0] == key:
            return _BLOCK  # the database answered meanwhile: the worker has not
        outcome = self._analyser.candidates(sql, schemas)
        if isinstance(outcome, tuple):
            return outcome
        self._analysis_under_way = (key, outcome)
        self._controls.append(StartWait(outcome))
        return _BLOCK

    def _analysis_settled(self, key: tuple[str, tuple[str, ...]], outcome: Settled) -> None:
        sql, schemas = key
        value = outcome.value
        read: Candidates | Refusal
        if outcome.error is None and isinstance(value, tuple) and value:
            read = self._analyser.kept(sql, schemas, value)
        else:
            # The text stays out of the log: only what went wrong, and for whom.
            log.warning(
                "%sthe analysis worker failed (%s); refusing the statement",
                self._log_context,
                type(outcome.error).__name__,
            )
            read = _ANALYSIS_FAILED
        self._read_again(key, read)

    def _read_again(self, key: tuple[str, tuple[str, ...]], read: Candidates | Refusal) -> None:
        """The message intake stopped at is read again, with this for its text."""
        self._analysis_under_way = None
        self._analysis_ready = (key, read)
        self._intake_blocked = False
        self._resume_if_clear()

    def _under_long_path(self, read: Candidates, schemas: tuple[str, ...]) -> Candidates | Refusal:
        """A statement under a search path of too many schemas to analyse it once for each.

        It is analysed once, with unqualified names put in a schema of their own: a statement
        that names no table without its schema reads alike under any path, and goes on.
        """
        ((analysis, _),) = read
        for facts in analysis.statements:
            for relation in facts.relations_read | facts.relations_written:
                if relation.startswith(_UNQUALIFIED_PREFIX):
                    return Refusal(
                        sqlstates.PROGRAM_LIMIT_EXCEEDED,
                        f"the search path holds {len(schemas)} schemas, more than the"
                        f" {MAX_CANDIDATE_SCHEMAS} the gateway resolves a table name against;"
                        " write schema.table, or set a shorter search_path",
                    )
        return ((analysis, schemas[:1]),)

    def _new_statement(
        self, candidates: Candidates, parameters: tuple[str | None, ...]
    ) -> Statement:
        self._numbers += 1
        statement = Statement(self._numbers, candidates, parameters)
        statement.segment = self._view.segment
        if self._listeners:
            statement.started_at = self._clock()
        return statement

    # --- planning ------------------------------------------------------------------------

    def _statement_item(
        self, statement: Statement, chunk: bytes, start: int, end: int, via: int
    ) -> _Item | None:
        """Plans a statement; None when it goes on at once with its message as it is."""
        if statement.refusal is None and not self._room_for_prepares(statement):
            statement.refusal = self._too_many_prepared()
        if statement.refusal is None:
            self._view.predict(statement)
            waiting = self._run_stages(statement, -1, FORWARD)
            if waiting is not None:
                item = _Item(None, [], statement, chunk[start:end], via)
                self._wait(item, *waiting)
                return item
            if _goes_as_it_is(statement, via) and not self._outbox:
                self._run_entries.append((via, statement))
                return None
        item = _Item(None, [], statement, chunk[start:end], via)
        self._settle_item(item)
        return item

    def _run_stages(
        self, statement: Statement, stage_index: int, plan: Plan
    ) -> tuple[int, WaitFor] | None:
        """Applies a stage's plan, then lets the next stages plan; where it waits, if it does."""
        stages = self._stages
        while True:
            if plan is not FORWARD:
                if isinstance(plan, Rewrite):
                    statement.rewriter = chained(statement.rewriter, plan.rewriter)
                elif isinstance(plan, Refuse):
                    statement.refusal = plan.refusal
                    return None
                elif isinstance(plan, WaitFor):
                    return stage_index, plan
            stage_index += 1
            if stage_index >= len(stages):
                return None
            try:
                plan = stages[stage_index].plan(statement)
            except Exception:
                log.exception("a stage failed to plan a statement; refusing it")
                plan = Refuse(_STAGE_FAILED)

    def _wait(self, item: _Item, stage_index: int, plan: WaitFor) -> None:
        if plan.notice is not None:
            self._own_pending.append(plan.notice)
            if self._answers.at_boundary:
                self._to_client.extend(self._own_pending)
                self._own_pending.clear()
        key = id(plan.awaitable)
        waiting = self._waits.get(key)
        if waiting is None:
            self._waits[key] = waiting = []
            self._controls.append(StartWait(plan.awaitable))
        waiting.append((item, stage_index, plan.resume))

    def _settle_item(self, item: _Item) -> None:
        """The statement's plan is complete: the bytes and entries that go upstream for it."""
        statement = item.statement
        assert statement is not None
        if self._needs_own_describe(statement):
            portal = statement.portal
            assert portal is not None
            if self._describing_may_crash(portal.prepared) is not False:
                statement.refusal = _UNSAFE_DESCRIBE
        refusal = statement.refusal
        if refusal is not None:
            self._log_refusal(refusal)
            if item.via == L.EXECUTE:
                item.data, item.entries = self._refused_execution(
                    refusal, (L.EXECUTE, statement), statement.segment
                )
            else:
                item.data, item.entries = REFUSAL_QUERY, [(L.QUERY, statement)]
            return
        entries: list[L.Entry] = [(item.via, statement)]
        data = item.held
        if self._needs_own_describe(statement):
            # The rewriter must know the columns: ask the database, and cut its answer out.
            assert statement.portal_name is not None
            data = encode_describe_portal(statement.portal_name) + data
            entries.insert(0, (L.OWN_DESCRIBE, statement.portal_name))
        item.entries = entries
        item.data = data

    @staticmethod
    def _needs_own_describe(statement: Statement) -> bool:
        """Whether a rewriter will need the columns of a portal nobody has described."""
        portal = statement.portal
        return (
            statement.rewriter is not None
            and statement.refusal is None
            and portal is not None
            and statement.portal_name is not None
            and not portal.described
            and not portal.prepared.described
        )

    def _log_refusal(self, refusal: Refusal) -> None:
        # The refusal's text stays out: a syntax error quotes the statement.
        log.info("statement refused %s sqlstate=%s", self._log_context, refusal.sqlstate)

    def _refused_message(self, refusal: Refusal) -> _Item:
        """A Parse or Bind refused before it reaches the database."""
        self._log_refusal(refusal)
        data, entries = self._refused_execution(refusal, (L.REFUSAL, refusal), self._view.segment)
        return _Item(data, entries)

    def _refused_parse(self, name: bytes, refusal: Refusal) -> _Item:
        """A refused Parse; one of the unnamed statement drops it, as PostgreSQL does before
        it parses the new text."""
        item = self._refused_message(refusal)
        if name == b"":
            view = self._view
            view.statements.predict(b"", None, view.segment)
            assert item.entries is not None
            item.data = REFUSAL_EXECUTION_DROPPING_UNNAMED
            item.entries.insert(0, (L.OWN_CLOSE, b""))
        return item

    def _refused_execution(
        self, refusal: Refusal, last: L.Entry, segment: int
    ) -> tuple[bytes, list[L.Entry]]:
        # The block runs in the unnamed portal, as the database will know.
        portal = Portal(Prepared((), refusal=refusal))
        self._view.portals.predict(b"", portal, segment)
        entries: list[L.Entry] = [(L.OWN_CLOSE, None), (L.OWN_PARSE, None)]
        entries += [(L.OWN_BIND, (b"", portal)), last]
        return REFUSAL_EXECUTION, entries

    def _withdraw(self, item: _Item, refusal: Refusal) -> None:
        """A waiting statement never runs: its stages' waits no longer concern it."""
        statement = item.statement
        assert statement is not None
        for waiting in self._waits.values():
            waiting[:] = [entry for entry in waiting if entry[0] is not item]
        statement.refusal = refusal
        self._settle_item(item)
        self.finished(statement, Status.WITHDRAWN, refusal.sqlstate)

    def _withdraw_all(self) -> None:
        for item in self._outbox:
            if item.statement is not None and item.data is None:
                self.finished(item.statement, Status.WITHDRAWN, sqlstates.QUERY_CANCELED)
        self._outbox.clear()
        self._waits.clear()

    def _flush_outbox(self) -> None:
        outbox = self._outbox
        while outbox and outbox[0].data is not None:
            item = outbox.popleft()
            if item.data:
                self._send(item.data, item.entries)

    def _resume_if_clear(self) -> None:
        """Once nothing waits, what queued meanwhile is taken in."""
        while (
            self._backlog
            and not self._intake_blocked
            and self._state is not SessionState.CLOSED
            and not self._waiting()
        ):
            chunk, spans, first = self._backlog.popleft()
            self._intake(chunk, spans, first)
            for stage in self._chunk_listeners:
                stage.after_chunk()
            self._flush_outbox()
        self._holding_changed()

    def _waiting(self) -> bool:
        return any(item.data is None for item in self._outbox)

    def _holding_changed(self) -> None:
        """The state after a wait began or ended; the client is paused only past a limit."""
        if self._state is SessionState.CLOSED or self._state is SessionState.CLOSING:
            return
        holding = self._intake_blocked or self._waiting()
        self._state = SessionState.HOLDING if holding else SessionState.RELAYING
        held = 0
        if holding:
            held = sum(len(item.data or item.held) for item in self._outbox)
            held += sum(len(chunk) for chunk, _, _ in self._backlog)
        self._pause_client("holding", held > self._limits.max_held_client_bytes)

    def _send(self, data: bytes, entries: list[L.Entry]) -> None:
        if data is REFUSAL_EXECUTION or data is REFUSAL_EXECUTION_DROPPING_UNNAMED:
            self._refusal_statement_left = True
        elif self._refusal_statement_left:
            data, entries = self._with_cleanup(data, entries)
        self._to_server.append(data)
        answers = self._answers
        answers.expect(entries)
        if len(answers.ledger) > self._limits.max_ledger_entries:
            self._pause_client("ledger", True)
        elif "ledger" in self._client_pauses:
            self._pause_client("ledger", False)

    def _with_cleanup(self, data: bytes, entries: list[L.Entry]) -> tuple[bytes, list[L.Entry]]:
        """The bytes with the refusal block's statement closed right after their first Sync,
        before any later statement of the client's can see it."""
        for position, (kind, payload) in enumerate(entries):
            if kind == L.SYNC and isinstance(payload, int):
                self._refusal_statement_left = False
                cleanup: list[L.Entry] = [(L.OWN_CLOSE, None)]
                entries = entries[: position + 1] + cleanup + entries[position + 1 :]
                return data[:payload] + REFUSAL_CLEANUP + data[payload:], entries
        return data, entries

    # --- flow control and the end --------------------------------------------------------

    def _pause_client(self, reason: str, paused: bool) -> None:
        pauses = self._client_pauses
        was_paused = bool(pauses)
        if paused:
            pauses.add(reason)
        else:
            pauses.discard(reason)
        if self._state is SessionState.CLOSED or self._state is SessionState.CLOSING:
            return
        if bool(pauses) != was_paused:
            self._controls.append(PAUSE_CLIENT if pauses else RESUME_CLIENT)

    def _after_server(self) -> None:
        if not self._answers.at_boundary:
            return
        if self._own_pending:
            self._to_client.extend(self._own_pending)
            self._own_pending.clear()
        if self._closing_reason is not None:
            self._finish_session(self._closing_reason)
        elif self._draining:
            self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self._draining and self.idle and self._state is not SessionState.CLOSED:
            self._fail(
                sqlstates.ADMIN_SHUTDOWN, "the gateway is shutting down; reconnect to continue"
            )

    def _fail(self, sqlstate: str, message: str) -> None:
        """Closes with a FATAL error for the client, at the next message boundary."""
        if self._closing_reason is not None or self._state is SessionState.CLOSED:
            return
        self._own_pending.append(error_response(sqlstate, message, severity="FATAL"))
        self._closing_reason = message
        self._state = SessionState.CLOSING
        self._withdraw_all()
        self._after_server()

    def _lost_track(self, reason: str) -> None:
        log.error("closing session: %s", reason)
        self._answers.lost()
        self._closing_reason = None
        self._own_pending.clear()
        self._fail(
            sqlstates.PROTOCOL_VIOLATION,
            "the gateway lost track of the database's answers and must end this session;"
            " reconnect, and report this to the gateway's operators",
        )

    def _finish_session(self, reason: str) -> None:
        if self._state is SessionState.CLOSED:
            return
        self._withdraw_all()
        if self._own_pending and self._answers.at_boundary:
            self._to_client.extend(self._own_pending)
        self._own_pending.clear()
        self._state = SessionState.CLOSED
        self._act(CloseSession(reason))

    def _act(self, action: Action) -> None:
        """Adds an action after the writes, waits and pauses gathered so far."""
        self._flush()
        self._actions.append(action)

    def _flush(self) -> None:
        """Moves the writes gathered so far, then the waits and pauses, into the actions."""
        to_server = self._to_server
        if to_server:
            data = to_server[0] if len(to_server) == 1 else b"".join(to_server)
            to_server.clear()
            self._actions.append(SendToServer(data))
        to_client = self._to_client
        if to_client:
            data = to_client[0] if len(to_client) == 1 else b"".join(to_client)
            to_client.clear()
            if data:
                self._actions.append(SendToClient(data))
        if self._controls:
            self._actions.extend(self._controls)
            self._controls.clear()

    def _take_actions(self) -> list[Action]:
        # Sync points may be answered by the server, or skipped as the client's messages are
        # sent after an error: either way, what waited on them may now go on.
        while self._confirmed_seen != self._view.confirmed_segments:
            self._confirmed_seen = self._view.confirmed_segments
            if self._state is not SessionState.CLOSED:
                self._segments_confirmed()
        self._flush()
        actions = self._actions
        self._actions = []
        return actions


def _goes_as_it_is(statement: Statement, via: int) -> bool:
    """Whether a planned statement's message goes upstream unchanged.

    A function of its own: the stages may have refused it since the caller last looked.
    """
    return statement.refusal is None and (statement.rewriter is None or via == L.QUERY)


def _shown(name: bytes) -> str:
    return name.decode("utf-8", errors="replace")
