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
3. **Ledger** (ledger.py): what was sent, awaiting the database's answers. Every server
   message is attributed to the entry at its head; the view changes only on those answers.

The gateway's own messages (refusals aside, which replace the database's error in place)
reach the client only between two of the server's messages.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from custos.protocol import codes, sqlstates
from custos.protocol.backend import command_tag, parameter_status, row_description
from custos.protocol.errors import ProtocolViolation
from custos.protocol.framing import MessageFramer, Span
from custos.protocol.frontend import (
    encode_describe_portal,
    execute_message,
    names,
    parse_message,
    query_bytes,
    target,
)
from custos.protocol.messages import error_response, parse_notice
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
from custos.session.lexical import LexicalRefusal, LexicalSettings, lexically_sensitive
from custos.session.own_messages import (
    REFUSAL_CLEANUP,
    REFUSAL_EXECUTION,
    REFUSAL_QUERY,
    is_refusal_error,
    refusal_error,
)
from custos.session.refusal import Refusal
from custos.session.stages import (
    FORWARD,
    Outcome,
    Plan,
    Refuse,
    ResultRewriter,
    Rewrite,
    Settled,
    Stage,
    Status,
    WaitFor,
)
from custos.session.statement import Candidates, Effect, Portal, Prepared, Statement
from custos.session.texts import TextAnalyser
from custos.session.view import UNCONFIRMED, Namespace, SearchPathView, _PathChange
from custos.sql.facts import Analysis, StatementFacts, StatementKind

log = logging.getLogger("custos.session")

_LENGTH = struct.Struct("!I")
_HEADER = 5

# Server message types.
_PARSE_COMPLETE: Final = ord("1")
_BIND_COMPLETE: Final = ord("2")
_CLOSE_COMPLETE: Final = ord("3")
_NOTIFICATION: Final = ord("A")
_COMMAND_COMPLETE: Final = ord("C")
_DATA_ROW: Final = ord("D")
_ERROR: Final = ord("E")
_COPY_IN: Final = ord("G")
_COPY_OUT: Final = ord("H")
_EMPTY_QUERY: Final = ord("I")
_NOTICE: Final = ord("N")
_PARAMETER_STATUS: Final = ord("S")
_ROW_DESCRIPTION: Final = ord("T")
_FUNCTION_RESULT: Final = ord("V")
_COPY_BOTH: Final = ord("W")
_READY: Final = ord("Z")
_COPY_DATA: Final = ord("d")
_COPY_DONE: Final = ord("c")
_NO_DATA: Final = ord("n")
_PORTAL_SUSPENDED: Final = ord("s")
_PARAMETER_DESCRIPTION: Final = ord("t")

_IDLE: Final = ord("I")

_LEXICAL_CHANGERS = frozenset({StatementKind.SET, StatementKind.DO, StatementKind.CALL})


class SessionState(Enum):
    """Where a session is; the rest of its state (view, ledger) is in `SessionMachine`."""

    RELAYING = "relaying"  # statements flow as they come
    HOLDING = "holding"  # a statement waits (on a stage, or on the database's answers)
    CLOSING = "closing"  # ends at the next boundary between the server's messages
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_message_bytes: int = 64 << 20  # one client message
    max_held_message_bytes: int = 64 << 20  # one server message the session reads whole
    max_ledger_entries: int = 100_000  # answers outstanding before the client is paused


class _Block:
    """Intake must wait for the database's answers before it can read this message."""

    __slots__ = ()


_BLOCK: Final = _Block()


class _LostTrack(Exception):
    """The database's answers do not match the ledger: the session cannot be followed."""


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
        self.held = held  # the statement's own message(s), sent if it is let through
        self.via = via  # QUERY or EXECUTE: how the statement reached us


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
    ) -> None:
        self._stages = tuple(stages)
        self._log_context = log_context  # who the session is, for log lines
        self._listeners = tuple(stage for stage in stages if stage.hears_outcomes)
        self._chunk_listeners = tuple(
            stage for stage in stages if type(stage).after_chunk is not Stage.after_chunk
        )
        self._analyser = analyser
        self._limits = limits
        self._clock = clock
        self._framer = MessageFramer(limits.max_message_bytes)
        self._state = SessionState.RELAYING
        # The view: named objects, the search path, the lexical settings.
        self._statements: Namespace[Prepared] = Namespace()
        self._portals: Namespace[Portal] = Namespace(every_segment_touches=True)
        self._path = SearchPathView(tuple(search_path))
        self._lexical = lexical
        self._parse_memo: dict[tuple[bytes, tuple[str, ...], LexicalSettings], Prepared] = {}
        # Intake.
        self._segment = 0  # sync points taken in so far
        self._segment_lexical_change = False  # a statement in it may change lexical settings
        self._numbers = 0
        self._run_entries: list[L.Entry] = []
        self._backlog: deque[tuple[bytes, list[Span], int]] = deque()
        self._intake_blocked = False
        self._terminating = False
        # Outbox and waits.
        self._outbox: deque[_Item] = deque()
        self._waits: dict[int, list[tuple[_Item, int, Callable[[Settled], Plan]]]] = {}
        self._awaitables: dict[int, Awaitable[object]] = {}
        # Ledger and the server's stream.
        self._ledger: deque[L.Entry] = deque()
        self._confirmed_segments = 0
        self._discarding = False
        self._transaction_status = transaction_status[0]
        self._transaction_failed = False
        self._refusal_statement_left = False  # a refusal block's statement may remain
        self._copy_in: Statement | None = None
        self._copy_end_sent = False
        self._copy_out = False
        self._rewriter: ResultRewriter | None = None
        self._skip = 0
        self._gathered: list[bytes] = []
        self._gather_need = 0
        self._gather_have = 0
        self._own_pending: list[bytes] = []
        self._closing_reason: str | None = None
        self._draining = False
        # Flow control: why the client is not read, and whether the server's reads are paused.
        self._client_pauses: set[str] = set()
        self._server_paused = False
        # Actions of the event being handled.
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
            not self._ledger
            and not self._outbox
            and not self._backlog
            and self._transaction_status == _IDLE
            and self._framer.buffered == 0
            and self._at_boundary
        )

    @property
    def transaction_status(self) -> str:
        return chr(self._transaction_status)

    @property
    def prepared_statements(self) -> dict[bytes, Prepared]:
        """The prepared statements the database has confirmed, by name."""
        return dict(self._statements.confirmed)

    @property
    def portals(self) -> dict[bytes, Portal]:
        """The portals and cursors the database has confirmed, by name."""
        return dict(self._portals.confirmed)

    @property
    def search_path_schemas(self) -> tuple[str, ...]:
        return self._path.schemas()

    @property
    def lexical(self) -> LexicalSettings:
        return self._lexical

    @property
    def _at_boundary(self) -> bool:
        return self._skip == 0 and not self._gathered

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
            else:
                self._intake(chunk, spans, 0)
                self._after_intake()
        return self._take_actions()

    def server_data(self, data: bytes) -> list[Action]:
        if self._state is SessionState.CLOSED:
            return []
        try:
            self._follow_server(data)
        except ProtocolViolation as violation:
            self._lost_track(violation.message)
        except _LostTrack as lost:
            self._lost_track(str(lost))
        return self._take_actions()

    def settled(self, awaitable: Awaitable[object], outcome: Settled) -> list[Action]:
        """An awaitable of a StartWait settled."""
        waiting = self._waits.pop(id(awaitable), [])
        self._awaitables.pop(id(awaitable), None)
        if self._state is SessionState.CLOSED:
            return []
        for item, stage_index, resume in waiting:
            statement = item.statement
            if statement is None or item.data is not None:
                continue  # withdrawn meanwhile
            try:
                plan = resume(outcome)
            except Exception:
                log.exception("a stage failed to plan a statement; refusing it")
                plan = Refuse(_STAGE_FAILED)
            self._continue_plan(item, stage_index, plan)
        self._flush_outbox()
        self._resume_if_clear()
        return self._take_actions()

    def cancel_requested(self) -> list[Action]:
        """A CancelRequest with this session's key arrived."""
        if self._state is SessionState.CLOSED:
            return []
        waiting = next((item for item in self._outbox if item.data is None), None)
        if waiting is not None and not self._database_busy():
            self._withdraw(waiting, Refusal(sqlstates.QUERY_CANCELED, _CANCELED))
            self._flush_outbox()
            self._resume_if_clear()
        else:
            self._act(FORWARD_CANCEL)
        return self._take_actions()

    def client_lost(self) -> list[Action]:
        if self._state is SessionState.CLOSED:
            return []
        self._withdraw_all()
        self._finish_session("client ended the session")
        return self._take_actions()

    def server_lost(self) -> list[Action]:
        if self._state is SessionState.CLOSED:
            return []
        self._withdraw_all()
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

    # --- intake --------------------------------------------------------------------------

    def _intake(self, chunk: bytes, spans: list[Span], first: int) -> None:
        """Follows and plans each message from `spans[first]`, in order, and sends or queues it."""
        run_start = spans[first][1]
        self._run_entries = []
        for index in range(first, len(spans)):
            message_type, start, end = spans[index]
            try:
                result = self._take_in(message_type, chunk, start, end)
            except ProtocolViolation as violation:
                self._enqueue(chunk[run_start:start])
                self._fail(violation.sqlstate, violation.message)
                return
            if result is None and not self._terminating:
                continue
            if result is _BLOCK:
                self._enqueue(chunk[run_start:start])
                self._backlog.appendleft((chunk, spans, index))
                self._intake_blocked = True
                self._pause_client("confirmation", True)
                return
            if result is not None:
                assert isinstance(result, _Item)
                self._enqueue(chunk[run_start:start])
                self._outbox.append(result)
                run_start = end
            if self._terminating:
                # Nothing more will be read: what still waits is withdrawn, the rest goes.
                self._enqueue(chunk[run_start:end])
                self._withdraw_all()
                self._finish_session("client ended the session")
                return
        self._enqueue(chunk[run_start : spans[-1][2]])

    def _enqueue(self, data: bytes) -> None:
        """Client bytes (with the entries gathered for them) go out, or queue behind a wait."""
        entries = self._run_entries
        self._run_entries = []
        if not data:
            if entries:  # a message that needs no bytes of its own does not exist
                raise AssertionError("ledger entries without bytes")
            return
        if self._outbox:
            self._outbox.append(_Item(data, entries))
        else:
            self._send(data, entries)

    def _after_intake(self) -> None:
        for stage in self._chunk_listeners:
            stage.after_chunk()
        self._flush_outbox()
        self._resume_if_clear()

    def _take_in(self, message_type: int, chunk: bytes, start: int, end: int) -> Any:
        """One client message: None when it goes on as it is (with its ledger entries in
        `_run_entries`), an _Item to send or hold in its place, or _BLOCK."""
        if message_type == codes.QUERY:
            return self._take_query(chunk[start + 5 : end], chunk[start:end])
        if message_type == codes.PARSE:
            return self._take_parse(chunk[start + 5 : end])
        if message_type == codes.BIND:
            return self._take_bind(chunk[start + 5 : end])
        if message_type == codes.EXECUTE:
            return self._take_execute(chunk[start + 5 : end], chunk[start:end])
        if message_type == codes.SYNC:
            if self._copy_in is not None and not self._copy_end_sent:
                return None  # the database ignores Sync during COPY FROM STDIN
            self._run_entries.append((L.SYNC, None))
            self._end_segment()
            return None
        if message_type == codes.DESCRIBE:
            return self._take_describe(chunk[start + 5 : end])
        if message_type == codes.CLOSE:
            return self._take_close(chunk[start + 5 : end])
        if message_type in (codes.COPY_DONE, codes.COPY_FAIL):
            self._run_entries.append((L.COPY_END, None))
            if self._copy_in is not None:
                self._copy_end_sent = True
            return None
        if message_type == codes.FUNCTION_CALL:
            self._end_segment()
            return _Item(REFUSAL_QUERY, [(L.REFUSED_QUERY, _FUNCTION_CALL_REFUSAL)])
        if message_type == codes.TERMINATE:
            self._terminating = True
        return None  # Flush and CopyData: nothing is answered for them

    def _end_segment(self) -> None:
        self._segment += 1
        self._segment_lexical_change = False

    def _take_query(self, body: bytes, message: bytes) -> _Block | _Item | None:
        read = self._read_text(query_bytes(body))
        if read is _BLOCK:
            return _BLOCK
        resolved = read if isinstance(read, Refusal) else self._resolve(read)
        if resolved is _BLOCK:
            return _BLOCK
        statement = self._new_statement(read if isinstance(read, tuple) else (), ())
        if isinstance(resolved, Refusal):
            statement.refusal = resolved
        else:
            statement.candidates = resolved
        item = self._statement_item(statement, message, L.QUERY)
        self._end_segment()
        return item

    def _take_parse(self, body: bytes) -> _Block | _Item | None:
        parse = parse_message(body)
        key = (body, self._schemas(), self._lexical)
        prepared = self._parse_memo.get(key)
        if prepared is None or lexically_sensitive(parse.query):
            read = self._read_text(parse.query)
            if read is _BLOCK:
                return _BLOCK
            if isinstance(read, Refusal):
                return self._refused_message(read)
            if prepared is None:
                prepared = Prepared(read, parse.parameter_types)
                if not read[0][0].session_effects:
                    if len(self._parse_memo) >= _PARSE_MEMO_ENTRIES:
                        self._parse_memo.clear()
                    self._parse_memo[key] = prepared
        name = self._name_key(parse.statement)
        self._statements.predict(name, prepared, self._segment)
        self._run_entries.append((L.PARSE, (name, prepared)))
        return None

    def _take_bind(self, body: bytes) -> _Block | _Item | None:
        portal_name, statement_name = names(body, 2, "Bind")
        name = self._name_key(statement_name)
        prepared = self._statements.lookup(name, self._segment, self._confirmed_segments)
        if prepared is UNCONFIRMED:
            return _BLOCK
        if prepared is None:
            return self._refused_message(
                Refusal(
                    sqlstates.INVALID_SQL_STATEMENT_NAME,
                    f'prepared statement "{_shown(name)}" does not exist',
                )
            )
        assert isinstance(prepared, Prepared)
        portal = Portal(prepared, body)
        key = self._name_key(portal_name)
        self._portals.predict(key, portal, self._segment)
        self._run_entries.append((L.BIND, (key, portal)))
        return None

    def _take_execute(self, body: bytes, message: bytes) -> _Block | _Item | None:
        portal_name, max_rows = execute_message(body)
        key = self._name_key(portal_name)
        portal = self._portals.lookup(key, self._segment, self._confirmed_segments)
        if portal is UNCONFIRMED:
            return _BLOCK
        if portal is None:
            return self._refused_message(
                Refusal(sqlstates.INVALID_CURSOR_NAME, f'portal "{_shown(key)}" does not exist')
            )
        assert isinstance(portal, Portal)
        prepared = portal.prepared
        resolved: Candidates | Refusal | _Block
        if prepared.refusal is not None:
            resolved = prepared.refusal
        else:
            resolved = self._resolve(prepared.candidates)
            if resolved is _BLOCK:
                return _BLOCK
        statement = self._new_statement(prepared.candidates, portal.parameters())
        statement.portal_name = key
        statement.portal = portal
        statement.max_rows = max_rows
        if isinstance(resolved, Refusal):
            statement.refusal = resolved
        else:
            statement.candidates = resolved
        return self._statement_item(statement, message, L.EXECUTE)

    def _take_describe(self, body: bytes) -> None:
        kind, raw_name = target(body, "Describe")
        name = self._name_key(raw_name)
        # Its answer reaches a later Execute's rewriter: no Describe of the gateway's is needed.
        namespace: Namespace[Any] = self._statements if kind == ord("S") else self._portals
        described = namespace.lookup(name, self._segment, self._confirmed_segments)
        if isinstance(described, (Prepared, Portal)):
            described.described = True
        self._run_entries.append((L.DESCRIBE, (kind, name)))

    def _take_close(self, body: bytes) -> None:
        kind, raw_name = target(body, "Close")
        name = self._name_key(raw_name)
        namespace = self._statements if kind == ord("S") else self._portals
        namespace.predict(name, None, self._segment)  # type: ignore[attr-defined]
        self._run_entries.append((L.CLOSE, (kind, name)))

    def _read_text(self, text: bytes) -> Candidates | Refusal | _Block:
        """The text's analysis candidates, read as the server will read it."""
        if lexically_sensitive(text):
            if self._segment > self._confirmed_segments:
                return _BLOCK  # earlier segments may change how the server reads it
            if self._segment_lexical_change:
                return Refusal(
                    sqlstates.FEATURE_NOT_SUPPORTED,
                    "a statement with a backslash or characters outside ASCII cannot follow"
                    " a statement that may change client_encoding or"
                    " standard_conforming_strings in the same pipeline segment;"
                    " send Sync between them",
                )
        try:
            sql = self._lexical.decode(text)
        except LexicalRefusal as refusal:
            return Refusal(refusal.sqlstate, refusal.message)
        candidates = self._analyser.candidates(sql, self._schemas())
        error = candidates[0][0].error
        if error is not None:
            return _syntax_refusal(error, sql)
        return candidates

    def _schemas(self) -> tuple[str, ...]:
        # Every path the session may have when this runs: SETs under way count, until the
        # database's answers settle them (an error, a ROLLBACK, SET LOCAL outside a block).
        return self._path.schemas()

    def _name_key(self, raw: bytes) -> bytes:
        """A protocol name as the server compares it: in its encoding, cut to 63 bytes."""
        if not raw.isascii():
            try:
                raw = self._lexical.decode(raw).encode()
            except LexicalRefusal:
                pass
        return raw[:_NAME_BYTES]

    def _new_statement(
        self, candidates: Candidates, parameters: tuple[str | None, ...]
    ) -> Statement:
        self._numbers += 1
        statement = Statement(self._numbers, candidates, parameters)
        statement.segment = self._segment
        statement.started_at = self._clock()
        return statement

    def _resolve(self, candidates: Candidates) -> Candidates | Refusal | _Block:
        """The candidates with each EXECUTE, FETCH or MOVE replaced by the statement it runs.

        Earlier statements of the same string count: `PREPARE s AS ...; EXECUTE s`.
        """
        first = candidates[0][0]
        if not any(s.executes is not None or s.fetches is not None for s in first.statements):
            return candidates
        resolved: list[tuple[Analysis, tuple[str, ...]]] = []
        for analysis, path in candidates:
            facts: list[StatementFacts] = []
            texts: list[str] = []
            local_statements: dict[bytes, Candidates | None] = {}
            local_portals: dict[bytes, Candidates | None] = {}
            for position, statement in enumerate(analysis.statements):
                text = analysis.texts[position] if position < len(analysis.texts) else ""
                if statement.prepares is not None:
                    local_statements[_sql_name(statement.prepares)] = _single(
                        analysis, position, path
                    )
                if statement.deallocates is not None:
                    _forget(local_statements, statement.deallocates)
                if statement.declares is not None:
                    local_portals[_sql_name(statement.declares)] = _single(
                        analysis, position, path
                    )
                if statement.closes is not None:
                    _forget(local_portals, statement.closes)
                if statement.executes is not None:
                    found = self._run_target(
                        statement.executes, local_statements, self._statements, "statement"
                    )
                elif statement.fetches is not None:
                    found = self._run_target(statement.fetches, local_portals, self._portals, "cursor")
                else:
                    facts.append(statement)
                    texts.append(text)
                    continue
                if isinstance(found, (Refusal, _Block)):
                    return found
                for candidate, _ in found:
                    facts.extend(candidate.statements)
                    texts.extend(candidate.texts)
            # A new analysis, not a shared one: it must not be decided as its canonical.
            resolved.append((Analysis(tuple(facts), tuple(texts)), path))
        return tuple(resolved)

    def _run_target(
        self,
        name: str,
        local: dict[bytes, Candidates | None],
        namespace: Namespace[Any],
        what: str,
    ) -> Candidates | Refusal | _Block:
        key = _sql_name(name)
        if key in local:
            found: Any = local[key]
        else:
            found = namespace.lookup(key, self._segment, self._confirmed_segments)
            if found is UNCONFIRMED:
                return _BLOCK
            if isinstance(found, Portal):
                found = found.prepared
            if isinstance(found, Prepared):
                if found.refusal is not None:
                    return found.refusal
                found = found.candidates
        if found is None:
            if what == "statement":
                return Refusal(
                    sqlstates.INVALID_SQL_STATEMENT_NAME,
                    f'prepared statement "{_shown(key)}" does not exist',
                )
            return Refusal(sqlstates.INVALID_CURSOR_NAME, f'cursor "{_shown(key)}" does not exist')
        resolved: Candidates = found
        return resolved

    # --- planning ------------------------------------------------------------------------

    def _statement_item(self, statement: Statement, message: bytes, via: int) -> _Item | None:
        """Plans a statement; None when it goes on at once with its message as it is."""
        item = _Item(None, [], statement, message, via)
        if statement.refusal is None:
            self._predict_effects(statement)
            self._continue_plan(item, -1, FORWARD)
        else:
            self._settle_item(item)
        if item.data is None:
            self._pause_client("waiting", True)
            return item
        if item.data is message and not self._outbox:
            self._run_entries.extend(item.entries)
            return None
        return item

    def _continue_plan(self, item: _Item, stage_index: int, plan: Plan) -> None:
        """Applies a stage's plan, then lets the next stages plan, until one waits."""
        statement = item.statement
        assert statement is not None
        stages = self._stages
        while True:
            if plan is not FORWARD:
                if type(plan) is Rewrite:
                    statement.rewriter = _chained(statement.rewriter, plan.rewriter)
                elif type(plan) is Refuse:
                    statement.refusal = plan.refusal
                    break
                elif type(plan) is WaitFor:
                    self._wait(item, stage_index, plan)
                    return
            stage_index += 1
            if stage_index >= len(stages):
                break
            try:
                plan = stages[stage_index].plan(statement)
            except Exception:
                log.exception("a stage failed to plan a statement; refusing it")
                plan = Refuse(_STAGE_FAILED)
        self._settle_item(item)

    def _wait(self, item: _Item, stage_index: int, plan: WaitFor) -> None:
        key = id(plan.awaitable)
        waiting = self._waits.get(key)
        if waiting is None:
            self._waits[key] = waiting = []
            self._awaitables[key] = plan.awaitable
            self._control(StartWait(plan.awaitable))
        waiting.append((item, stage_index, plan.resume))

    def _settle_item(self, item: _Item) -> None:
        """The statement's plan is complete: the bytes and entries that go upstream for it."""
        statement = item.statement
        assert statement is not None
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
        if statement.rewriter is not None and item.via == L.EXECUTE:
            portal = statement.portal
            assert portal is not None and statement.portal_name is not None
            if not portal.described and not portal.prepared.described:
                # The rewriter must know the columns: ask the database, and cut its answer out.
                data = encode_describe_portal(statement.portal_name) + data
                entries.insert(0, (L.OWN_DESCRIBE, statement.portal_name))
        item.entries = entries
        item.data = data

    def _log_refusal(self, refusal: Refusal) -> None:
        # The refusal's text stays out: a syntax error quotes the statement.
        log.info("statement refused %s sqlstate=%s", self._log_context, refusal.sqlstate)

    def _refused_message(self, refusal: Refusal) -> _Item:
        """A Parse or Bind refused before it reaches the database."""
        self._log_refusal(refusal)
        data, entries = self._refused_execution(refusal, (L.REFUSAL, refusal), self._segment)
        return _Item(data, entries)

    def _refused_execution(
        self, refusal: Refusal, last: L.Entry, segment: int
    ) -> tuple[bytes, list[L.Entry]]:
        # The block runs in the unnamed portal, as the database will know.
        portal = Portal(Prepared((), refusal=refusal))
        self._portals.predict(b"", portal, segment)
        entries: list[L.Entry] = [(L.OWN_CLOSE, None), (L.OWN_PARSE, None), (L.OWN_BIND, portal)]
        entries.append(last)
        return REFUSAL_EXECUTION, entries

    def _withdraw(self, item: _Item, refusal: Refusal) -> None:
        """A waiting statement never runs: its stages' waits no longer concern it."""
        statement = item.statement
        assert statement is not None
        for waiting in self._waits.values():
            waiting[:] = [entry for entry in waiting if entry[0] is not item]
        statement.refusal = refusal
        self._settle_item(item)
        self._finish(statement, Status.WITHDRAWN, refusal.sqlstate)
        statement.refusal = refusal

    def _withdraw_all(self) -> None:
        for item in self._outbox:
            if item.statement is not None and item.data is None:
                self._finish(item.statement, Status.WITHDRAWN, sqlstates.QUERY_CANCELED)
        self._outbox.clear()
        self._waits.clear()
        self._awaitables.clear()

    def _flush_outbox(self) -> None:
        outbox = self._outbox
        while outbox and outbox[0].data is not None:
            item = outbox.popleft()
            if item.data:
                self._send(item.data, item.entries)

    def _resume_if_clear(self) -> None:
        """Once nothing waits, the client is read again and what queued is taken in."""
        if any(item.data is None for item in self._outbox):
            return
        self._pause_client("waiting", False)
        while self._backlog and not self._intake_blocked and self._state is not SessionState.CLOSED:
            chunk, spans, first = self._backlog.popleft()
            self._intake(chunk, spans, first)
            if self._state is SessionState.CLOSED:
                return
            for stage in self._chunk_listeners:
                stage.after_chunk()
            self._flush_outbox()
            if any(item.data is None for item in self._outbox):
                return

    # --- what running statements do to the session ---------------------------------------

    def _predict_effects(self, statement: Statement) -> None:
        analysis = statement.candidates[0][0] if statement.candidates else None
        if analysis is None:
            return
        if not self._segment_lexical_change and any(map(_may_change_lexing, analysis.statements)):
            self._segment_lexical_change = True
        if not analysis.session_effects:
            return
        segment = self._segment
        effects: list[tuple[Effect, ...]] = []
        for position, facts in enumerate(analysis.statements):
            found: list[Effect] = []
            if facts.prepares is not None:
                key = _sql_name(facts.prepares)
                prepared = Prepared(_single(analysis, position, statement.candidates[0][1]))
                self._statements.predict(key, prepared, segment)
                found.append(("prepare", key, prepared))
            if facts.deallocates is not None:
                found.append(self._predict_forget(self._statements, facts.deallocates, "deallocate"))
            if facts.declares is not None:
                key = _sql_name(facts.declares)
                cursor = Prepared(_single(analysis, position, statement.candidates[0][1]))
                portal = Portal(cursor, holdable=facts.holdable)
                self._portals.predict(key, portal, segment)
                found.append(("declare", key, portal))
            if facts.closes is not None:
                found.append(self._predict_forget(self._portals, facts.closes, "close"))
            if facts.new_search_path is not None:
                record = self._path.change(facts.new_search_path, facts.search_path_local)
                found.append(("path", record))
            if facts.transaction is not None:
                found.append(("transaction", facts.transaction))
            effects.append(tuple(found))
        statement.effects = effects

    def _predict_forget(self, namespace: Namespace[Any], name: str, what: str) -> Effect:
        if name == "*":
            namespace.predict_cleared(self._segment)
            return (what, None)
        key = _sql_name(name)
        namespace.predict(key, None, self._segment)
        return (what, key)

    def _completed(self, statement: Statement, tag: str) -> None:
        """A statement of the request completed: what it did to the session is now true."""
        effects = statement.effects
        position = statement.index
        statement.tags.append(tag)
        statement.index += 1
        if effects is None or position >= len(effects):
            return
        for effect in effects[position]:
            what = effect[0]
            if what == "prepare":
                self._statements.confirmed[effect[1]] = effect[2]  # type: ignore[index]
            elif what == "deallocate":
                _confirm_forget(self._statements.confirmed, effect[1])
            elif what == "declare":
                self._portals.confirmed[effect[1]] = effect[2]  # type: ignore[index]
            elif what == "close":
                _confirm_forget(self._portals.confirmed, effect[1])
            elif what == "path":
                record = effect[1]
                assert isinstance(record, _PathChange)
                record.done = True
            elif what == "transaction":
                self._transaction_statement(str(effect[1]), tag)

    def _transaction_statement(self, action: str, tag: str) -> None:
        if action in ("commit", "prepare", "rollback"):
            committed = action != "rollback" and not tag.startswith("ROLLBACK")
            self._end_transaction(committed)
        elif action == "rollback_to":
            self._path.rolled_back_to_savepoint = True

    def _end_transaction(self, committed: bool) -> None:
        self._path.transaction_ended(committed)
        confirmed = self._portals.confirmed
        if confirmed:
            self._portals.confirmed = {k: v for k, v in confirmed.items() if v.holdable}
        self._transaction_failed = False

    def _abandoned(self, statement: Statement) -> None:
        """The rest of a request will not run: its SETs never happen."""
        effects = statement.effects
        if effects is None:
            return
        for position in range(statement.index, len(effects)):
            for effect in effects[position]:
                if effect[0] == "path":
                    record = effect[1]
                    assert isinstance(record, _PathChange)
                    self._path.drop(record)

    # --- the ledger ----------------------------------------------------------------------

    def _send(self, data: bytes, entries: list[L.Entry]) -> None:
        self._to_server.append(data)
        ledger = self._ledger
        if not ledger and entries and entries[0][0] == L.EXECUTE and not self._discarding:
            if entries[0][1].rewriter is not None:
                self._execute_result_started(entries[0][1])
        if data is REFUSAL_EXECUTION:
            self._refusal_statement_left = True
        for entry in entries:
            if self._discarding:
                if entry[0] == L.SYNC:
                    self._discarding = False
                    ledger.append(entry)
                else:
                    self._skipped(entry)
            else:
                ledger.append(entry)
        if len(ledger) > self._limits.max_ledger_entries:
            self._pause_client("ledger", True)

    def _head(self) -> L.Entry:
        """The entry the next server message answers, past entries that get no answer."""
        ledger = self._ledger
        while ledger:
            entry = ledger[0]
            if entry[0] != L.COPY_END:
                return entry
            ledger.popleft()
        raise _LostTrack("the database answered a message the gateway did not send")

    def _pop(self) -> None:
        ledger = self._ledger
        entry = ledger.popleft()
        if entry[0] in L.SYNC_POINTS:
            self._confirmed_segments += 1
        elif ledger and ledger[0][0] == L.EXECUTE and ledger[0][1].rewriter is not None:
            self._execute_result_started(ledger[0][1])
        if self._client_pauses and len(self._ledger) <= self._limits.max_ledger_entries // 2:
            self._pause_client("ledger", False)

    def _skipped(self, entry: L.Entry) -> None:
        """The database skipped this message after an error."""
        kind, payload = entry
        if kind in L.SYNC_POINTS:
            self._confirmed_segments += 1
        if kind == L.EXECUTE or kind == L.QUERY:
            self._abandoned(payload)
            status = Status.REFUSED if payload.refusal is not None else Status.SKIPPED
            self._finish(payload, status, None)
        elif kind == L.OWN_DESCRIBE:
            return

    def _discard_until_sync(self) -> None:
        ledger = self._ledger
        while ledger and ledger[0][0] != L.SYNC:
            self._skipped(ledger.popleft())
        if not ledger:
            self._discarding = True

    # --- the server's stream -------------------------------------------------------------

    def _follow_server(self, data: bytes) -> None:
        size = len(data)
        position = kept_from = 0
        out = self._to_client
        if self._skip:
            # The rest of a message that streams through: it goes on with what follows it.
            if self._skip >= size:
                self._skip -= size
                out.append(data)
                self._after_server()
                return
            position = self._skip
            self._skip = 0
        elif self._gathered:
            position = kept_from = self._continue_gathering(data)
            if position < 0:
                return
        limit = self._limits.max_held_message_bytes
        while position < size:
            if size - position < _HEADER:
                out.append(data[kept_from:position])
                self._start_gathering(data[position:], _HEADER)
                self._after_server()
                return
            message_type = data[position]
            length = _LENGTH.unpack_from(data, position + 1)[0]
            if length < 4:
                raise ProtocolViolation(f"the database sent an invalid message length {length}")
            end = position + 1 + length
            if message_type == _DATA_ROW and self._rewriter is None:
                if self._head_kind() not in _ROW_OWNERS:
                    raise _LostTrack("the database sent a row no statement asked for")
                self._count_row(end - position)
                if end > size:
                    self._skip = end - size
                    break
                position = end
                continue
            if end > size:
                if message_type == _COPY_DATA and self._rewriter is None and self._copy_out:
                    self._skip = end - size
                    break
                if length > limit:
                    raise _LostTrack(
                        f"the database sent a message of {length} bytes, more than the"
                        f" {limit} the gateway holds whole (limits.max_held_message_bytes)"
                    )
                out.append(data[kept_from:position])
                self._start_gathering(data[position:], end - position)
                self._after_server()
                return
            replacement = self._server_message(message_type, data, position, end)
            if replacement is not None:
                out.append(data[kept_from:position])
                if replacement:
                    out.append(replacement)
                kept_from = end
            position = end
        if kept_from == 0:
            out.append(data)
        elif kept_from < size:
            out.append(data[kept_from:])
        self._after_server()

    def _start_gathering(self, first: bytes, need: int) -> None:
        self._gathered = [first]
        self._gather_have = len(first)
        self._gather_need = need

    def _continue_gathering(self, data: bytes) -> int:
        """Adds to a message cut across chunks; the position in `data` after it, or -1."""
        missing = self._gather_need - self._gather_have
        if len(data) < missing:
            self._gathered.append(data)
            self._gather_have += len(data)
            return -1
        self._gathered.append(data[:missing])
        whole = b"".join(self._gathered)
        self._gathered = []
        if self._gather_need == _HEADER:
            # Only the header was cut: go on from it as if it had come whole.
            self._follow_server(whole + data[missing:])
            return -1
        message_type = whole[0]
        replacement = (
            self._count_row(len(whole))
            if message_type == _DATA_ROW and self._rewriter is None
            else self._server_message(message_type, whole, 0, len(whole))
        )
        self._to_client.append(whole if replacement is None else replacement)
        return missing

    def _after_server(self) -> None:
        if self._at_boundary:
            if self._own_pending:
                self._to_client.extend(self._own_pending)
                self._own_pending.clear()
            if self._closing_reason is not None:
                self._finish_session(self._closing_reason)
                return
            self._close_if_drained()

    def _count_row(self, size: int) -> None:
        statement = self._ledger[0][1]
        statement.rows += 1
        statement.answered_bytes += size

    def _head_kind(self) -> int:
        ledger = self._ledger
        return ledger[0][0] if ledger else 0

    def _server_message(self, message_type: int, data: bytes, start: int, end: int) -> bytes | None:
        """Attributes one whole server message; its replacement, or None to keep it."""
        handler = self._handlers.get(message_type)
        if handler is None:
            raise _LostTrack(f"the database sent message type {message_type!r} unexpectedly")
        return handler(self, data, start, end)

    def _parse_complete(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind == L.PARSE:
            self._pop()
            name, prepared = payload
            self._statements.confirmed[name] = prepared
            return None
        if kind == L.OWN_PARSE:
            self._pop()
            return b""
        raise _LostTrack(f"ParseComplete answered {L.NAMES.get(kind)}")

    def _bind_complete(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind == L.BIND:
            self._pop()
            name, portal = payload
            self._portals.confirmed[name] = portal
            return None
        if kind == L.OWN_BIND:
            self._pop()
            self._portals.confirmed[b""] = payload
            return b""
        raise _LostTrack(f"BindComplete answered {L.NAMES.get(kind)}")

    def _close_complete(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind == L.OWN_CLOSE:
            self._pop()
            return b""
        if kind != L.CLOSE:
            raise _LostTrack(f"CloseComplete answered {L.NAMES.get(kind)}")
        self._pop()
        target_kind, name = payload
        namespace = self._statements if target_kind == ord("S") else self._portals
        namespace.confirmed.pop(name, None)  # type: ignore[attr-defined]
        return None

    def _parameter_description(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind != L.DESCRIBE or payload[0] != ord("S"):
            raise _LostTrack(f"ParameterDescription answered {L.NAMES.get(kind)}")
        return None

    def _row_description(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind == L.QUERY:
            statement: Statement = payload
            statement.answered_bytes += end - start
            rewriter = statement.rewriter
            if rewriter is not None:
                statement.columns = row_description(data[start + 5 : end])
                self._rewriter = rewriter
                rewriter.result_started(statement, statement.index)
                replaced = rewriter.row_description(data[start + 5 : end])
                if replaced is not None:
                    return _framed(_ROW_DESCRIPTION, replaced)
            return None
        if kind == L.DESCRIBE or kind == L.OWN_DESCRIBE:
            self._described(kind, payload, data[start + 5 : end])
            self._pop()
            return b"" if kind == L.OWN_DESCRIBE else None
        raise _LostTrack(f"RowDescription answered {L.NAMES.get(kind)}")

    def _no_data(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind == L.DESCRIBE or kind == L.OWN_DESCRIBE:
            self._described(kind, payload, None)
            self._pop()
            return b"" if kind == L.OWN_DESCRIBE else None
        raise _LostTrack(f"NoData answered {L.NAMES.get(kind)}")

    def _described(self, kind: int, payload: Any, body: bytes | None) -> None:
        """What a Describe said, kept on what the database holds under the name now."""
        if kind == L.OWN_DESCRIBE:
            target_kind, name = ord("P"), payload
        else:
            target_kind, name = payload
        if target_kind == ord("S"):
            prepared = self._statements.confirmed.get(name)
            if prepared is not None:
                prepared.row_description = row_description(body) if body else ()
        else:
            portal = self._portals.confirmed.get(name)
            if portal is not None:
                portal.columns = row_description(body) if body else ()

    def _data_row(self, data: bytes, start: int, end: int) -> bytes | None:
        # Only rows a rewriter reads come here; the others are counted in the stream's loop.
        if self._head_kind() not in _ROW_OWNERS:
            raise _LostTrack("the database sent a row no statement asked for")
        self._count_row(end - start)
        rewriter = self._rewriter
        assert rewriter is not None
        replaced = rewriter.data_row(data[start + 5 : end])
        return None if replaced is None else _framed(_DATA_ROW, replaced)

    def _command_complete(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, statement = self._head()
        if kind != L.EXECUTE and kind != L.QUERY:
            raise _LostTrack(f"CommandComplete answered {L.NAMES.get(kind)}")
        statement.answered_bytes += end - start
        self._rewriter = None
        self._copy_out = False
        if self._copy_in is not None:
            self._copy_finished()
        if kind == L.QUERY:
            if statement.effects is None:
                statement.tags.append(command_tag(data[start + 5 : end]))
                statement.index += 1
            else:
                self._completed(statement, command_tag(data[start + 5 : end]))
            return None
        self._pop()
        self._completed(statement, command_tag(data[start + 5 : end]))
        self._finish(statement, Status.COMPLETED, None)
        return None

    def _empty_query(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, statement = self._head()
        if kind == L.EXECUTE:
            self._pop()
            self._finish(statement, Status.COMPLETED, None)
        elif kind != L.QUERY:
            raise _LostTrack(f"EmptyQueryResponse answered {L.NAMES.get(kind)}")
        return None

    def _portal_suspended(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, statement = self._head()
        if kind != L.EXECUTE:
            raise _LostTrack(f"PortalSuspended answered {L.NAMES.get(kind)}")
        self._rewriter = None
        self._pop()
        self._finish(statement, Status.SUSPENDED, None)
        return None

    def _copy_in_response(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, statement = self._head()
        if kind != L.EXECUTE and kind != L.QUERY:
            raise _LostTrack(f"CopyInResponse answered {L.NAMES.get(kind)}")
        self._copy_in = statement
        self._copy_end_sent = False
        # Syncs sent before the client's CopyDone are read, and ignored, during the COPY.
        kept: list[L.Entry] = []
        ledger = self._ledger
        head = ledger.popleft()
        while ledger and ledger[0][0] != L.COPY_END:
            entry = ledger.popleft()
            if entry[0] == L.SYNC:
                self._confirmed_segments += 1
            else:
                kept.append(entry)
        if ledger:
            self._copy_end_sent = True
        ledger.extendleft(reversed(kept))
        ledger.appendleft(head)
        if data[start] == _COPY_BOTH:
            self._copy_out = True
        self._start_result(statement)
        return None

    def _copy_out_response(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, statement = self._head()
        if kind != L.EXECUTE and kind != L.QUERY:
            raise _LostTrack(f"CopyOutResponse answered {L.NAMES.get(kind)}")
        self._copy_out = True
        self._start_result(statement)
        return None

    def _execute_result_started(self, statement: Statement) -> None:
        """An Execute's answers come next: its rewriter learns the columns from the portal."""
        portal = statement.portal
        assert portal is not None
        columns = portal.columns
        if columns is None and portal.prepared.row_description is not None:
            columns = portal.columns_from(portal.prepared.row_description)
        statement.columns = columns
        self._start_result(statement)

    def _start_result(self, statement: Statement) -> None:
        rewriter = statement.rewriter
        if rewriter is not None:
            self._rewriter = rewriter
            rewriter.result_started(statement, statement.index)

    def _copy_finished(self) -> None:
        """The COPY FROM STDIN under way ended: the client's CopyDone was its last word."""
        self._copy_in = None
        ledger = self._ledger
        for position, entry in enumerate(ledger):
            if entry[0] == L.COPY_END:
                del ledger[position]
                break

    def _copy_data(self, data: bytes, start: int, end: int) -> bytes | None:
        if not self._copy_out:
            raise _LostTrack("the database sent COPY data outside a COPY")
        kind, statement = self._head()
        statement.answered_bytes += end - start
        rewriter = self._rewriter
        if rewriter is None:
            return None
        replaced = rewriter.copy_data(data[start + 5 : end])
        return None if replaced is None else _framed(_COPY_DATA, replaced)

    def _copy_done(self, data: bytes, start: int, end: int) -> bytes | None:
        if not self._copy_out:
            raise _LostTrack("the database ended a COPY it had not begun")
        return None

    def _error(self, data: bytes, start: int, end: int) -> bytes | None:
        notice = parse_notice(data[start + 5 : end])
        if notice.severity in ("FATAL", "PANIC"):
            return None  # the database ends the session; the client hears why
        kind, payload = self._head()
        self._rewriter = None
        self._copy_out = False
        if self._copy_in is not None:
            self._copy_in = None
        self._transaction_failed = True
        replacement: bytes | None = None
        if kind == L.QUERY or kind == L.EXECUTE:
            statement: Statement = payload
            refusal = statement.refusal
            if refusal is not None:
                if is_refusal_error(notice):
                    replacement = refusal_error(refusal)
                status = Status.REFUSED
            else:
                replacement = self._rewritten_fields(statement, data, start, end)
                status = Status.FAILED
            self._abandoned(statement)
            statement.sqlstate = notice.sqlstate
            if kind == L.EXECUTE:
                self._pop()
                self._finish(statement, status, notice.sqlstate)
                self._discard_until_sync()
            else:
                statement.index = len(statement.effects or ())
            return replacement
        if kind == L.REFUSAL or kind == L.REFUSED_QUERY:
            if is_refusal_error(notice):
                replacement = refusal_error(payload)
            if kind == L.REFUSAL:
                self._pop()
                self._discard_until_sync()
            return replacement
        if kind in L.SYNC_POINTS:
            return None  # a failed commit at Sync; ReadyForQuery follows
        if kind == L.PARSE and payload[0] == b"":
            self._statements.confirmed.pop(b"", None)  # dropped before the new one failed
        self._pop()
        self._discard_until_sync()
        return None

    def _rewritten_fields(self, statement: Statement, data: bytes, start: int, end: int) -> bytes | None:
        rewriter = statement.rewriter
        if rewriter is None:
            return None
        notice = parse_notice(data[start + 5 : end])
        fields = rewriter.fields(data[start], dict(notice.fields))
        if fields is None:
            return None
        body = b"".join(code.encode() + value.encode() + b"\x00" for code, value in fields.items())
        return _framed(data[start], body + b"\x00")

    def _notice(self, data: bytes, start: int, end: int) -> bytes | None:
        ledger = self._ledger
        if ledger and ledger[0][0] in _ROW_OWNERS:
            return self._rewritten_fields(ledger[0][1], data, start, end)
        return None

    def _pass(self, data: bytes, start: int, end: int) -> bytes | None:
        return None

    def _parameter_status(self, data: bytes, start: int, end: int) -> bytes | None:
        name, value = parameter_status(data[start + 5 : end])
        self._lexical = self._lexical.updated(name, value)
        return None

    def _function_result(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, _ = self._head()
        if kind != L.FUNCTION_CALL:
            raise _LostTrack(f"FunctionCallResponse answered {L.NAMES.get(kind)}")
        return None

    def _ready(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind not in L.SYNC_POINTS:
            raise _LostTrack(f"ReadyForQuery answered {L.NAMES.get(kind)}")
        self._pop()
        self._rewriter = None
        status = data[end - 1]
        if kind == L.QUERY:
            statement: Statement = payload
            if statement.refusal is not None:
                self._finish(statement, Status.REFUSED, statement.refusal.sqlstate)
            elif statement.sqlstate is not None:
                self._finish(statement, Status.FAILED, statement.sqlstate)
            else:
                self._finish(statement, Status.COMPLETED, None)
        self._transaction_status = status
        if status == _IDLE:
            self._end_transaction(committed=not self._transaction_failed)
        self._statements.forget_predictions(self._confirmed_segments)
        self._portals.forget_predictions(self._confirmed_segments)
        if self._refusal_statement_left and not self._ledger:
            self._refusal_statement_left = False
            self._send(REFUSAL_CLEANUP, [(L.OWN_CLOSE, None)])
        if self._intake_blocked:
            self._intake_blocked = False
            self._pause_client("confirmation", False)
            self._resume_if_clear()
        return None

    _handlers: dict[int, Callable[[SessionMachine, bytes, int, int], bytes | None]] = {
        _PARSE_COMPLETE: _parse_complete,
        _BIND_COMPLETE: _bind_complete,
        _CLOSE_COMPLETE: _close_complete,
        _PARAMETER_DESCRIPTION: _parameter_description,
        _ROW_DESCRIPTION: _row_description,
        _NO_DATA: _no_data,
        _DATA_ROW: _data_row,
        _COMMAND_COMPLETE: _command_complete,
        _EMPTY_QUERY: _empty_query,
        _PORTAL_SUSPENDED: _portal_suspended,
        _COPY_IN: _copy_in_response,
        _COPY_OUT: _copy_out_response,
        _COPY_BOTH: _copy_in_response,
        _COPY_DATA: _copy_data,
        _COPY_DONE: _copy_done,
        _ERROR: _error,
        _NOTICE: _notice,
        _NOTIFICATION: _pass,
        _PARAMETER_STATUS: _parameter_status,
        _FUNCTION_RESULT: _function_result,
        _READY: _ready,
    }

    # --- outcomes, flow control, the end -------------------------------------------------

    def _finish(self, statement: Statement, status: Status, sqlstate: str | None) -> None:
        if statement.finished:
            return
        statement.finished = True
        if not self._listeners:
            return
        outcome = Outcome(
            status=status,
            tags=tuple(statement.tags),
            rows=statement.rows,
            sqlstate=sqlstate or (statement.refusal.sqlstate if statement.refusal else None),
            bytes=statement.answered_bytes,
            duration_seconds=self._clock() - statement.started_at,
        )
        for stage in self._listeners:
            try:
                stage.finished(statement, outcome)
            except Exception:
                log.exception("a stage failed to hear how a statement finished")

    def _database_busy(self) -> bool:
        return any(entry[0] in L.RUNS_SQL for entry in self._ledger)

    def _pause_client(self, reason: str, paused: bool) -> None:
        pauses = self._client_pauses
        was_paused = bool(pauses)
        if paused:
            pauses.add(reason)
        else:
            pauses.discard(reason)
        if bool(pauses) != was_paused and self._state is not SessionState.CLOSED:
            self._control(PAUSE_CLIENT if pauses else RESUME_CLIENT)
        if self._state is not SessionState.CLOSED and self._state is not SessionState.CLOSING:
            holding = "waiting" in pauses or "confirmation" in pauses
            self._state = SessionState.HOLDING if holding else SessionState.RELAYING

    def _close_if_drained(self) -> None:
        if self._draining and self.idle and self._state is not SessionState.CLOSED:
            self._fail(sqlstates.ADMIN_SHUTDOWN, "the gateway is shutting down; reconnect to continue")

    def _fail(self, sqlstate: str, message: str) -> None:
        """Closes with a FATAL error for the client, at the next message boundary."""
        if self._closing_reason is not None or self._state is SessionState.CLOSED:
            return
        self._own_pending.append(error_response(sqlstate, message, severity="FATAL"))
        self._closing_reason = message
        self._state = SessionState.CLOSING
        self._withdraw_all()
        if self._at_boundary:
            self._after_server()

    def _lost_track(self, reason: str) -> None:
        log.error("closing session: %s", reason)
        self._skip = 0
        self._gathered = []
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
        if self._own_pending and self._at_boundary:
            self._to_client.extend(self._own_pending)
        self._own_pending.clear()
        self._state = SessionState.CLOSED
        self._flush_sends()
        self._act(CloseSession(reason))

    def _flush_sends(self) -> None:
        """Moves the writes gathered so far, then the waits and pauses, into the actions."""
        if self._to_server:
            data = self._to_server[0] if len(self._to_server) == 1 else b"".join(self._to_server)
            self._to_server.clear()
            self._actions.append(SendToServer(data))
        if self._to_client:
            data = self._to_client[0] if len(self._to_client) == 1 else b"".join(self._to_client)
            self._to_client.clear()
            if data:
                self._actions.append(SendToClient(data))
        if self._controls:
            self._actions.extend(self._controls)
            self._controls.clear()

    def _act(self, action: Action) -> None:
        """Adds an action after the writes gathered so far, keeping their order."""
        self._flush_sends()
        self._actions.append(action)

    def _control(self, action: Action) -> None:
        """Adds a wait or a pause: it goes after the writes of the whole event."""
        self._controls.append(action)

    def _take_actions(self) -> list[Action]:
        self._flush_sends()
        actions = self._actions
        self._actions = []
        return actions


_ROW_OWNERS = frozenset({L.EXECUTE, L.QUERY})
# PostgreSQL keeps statement and portal names in NAMEDATALEN-byte keys: longer names that
# agree on their first 63 bytes are one name.
_NAME_BYTES = 63
_PARSE_MEMO_ENTRIES = 2048
_CANCELED = "canceling statement due to user request"
_STAGE_FAILED = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "the gateway could not decide on this statement, so it refuses it",
    "try again shortly; if it persists, tell the gateway's operators",
)
_FUNCTION_CALL_REFUSAL = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "fast-path function calls are not allowed through the gateway",
    "call the function in a SQL statement, where policy can see it",
)


def _may_change_lexing(facts: StatementFacts) -> bool:
    """Whether a statement may change client_encoding or standard_conforming_strings."""
    return (
        not facts.kinds.isdisjoint(_LEXICAL_CHANGERS)
        or facts.dynamic
        or "set_config" in facts.functions
        or facts.statement_type == "DiscardStmt"
    )


def _framed(message_type: int, body: bytes) -> bytes:
    return bytes((message_type,)) + _LENGTH.pack(len(body) + 4) + body


def _single(analysis: Analysis, position: int, path: tuple[str, ...]) -> Candidates:
    """One statement of a string, as a prepared statement's (or cursor's) candidates."""
    return ((Analysis((analysis.statements[position],), analysis.texts[position : position + 1]), path),)


def _forget(local: dict[bytes, Candidates | None], name: str) -> None:
    if name == "*":
        for key in local:
            local[key] = None
        return
    local[_sql_name(name)] = None


def _sql_name(name: str) -> bytes:
    return name.encode()[:_NAME_BYTES]


def _confirm_forget(confirmed: dict[bytes, Any], key: object) -> None:
    if key is None:
        confirmed.clear()
    else:
        confirmed.pop(key, None)


def _shown(name: bytes) -> str:
    return name.decode("utf-8", errors="replace")


def _syntax_refusal(error: str, sql: str) -> Refusal:
    """PostgreSQL's own answer to text its parser rejects: 42601, message and position."""
    message, _, where = error.rpartition(", at index ")
    if not message or not where.isdigit():
        message, where = error, ""
    if message.endswith("at end of input"):
        # PostgreSQL points just past the last character, whitespace included.
        return Refusal(sqlstates.SYNTAX_ERROR, message, position=len(sql) + 1)
    if not where:
        return Refusal(sqlstates.SYNTAX_ERROR, message)
    # The analysis reports a byte offset into the UTF-8 text; PostgreSQL counts characters.
    position = len(sql.encode()[: int(where)].decode(errors="ignore")) + 1
    return Refusal(sqlstates.SYNTAX_ERROR, message, position=position)


def _chained(first: ResultRewriter | None, second: ResultRewriter) -> ResultRewriter:
    if first is None:
        return second
    return _Chain(first, second)


class _Chain(ResultRewriter):
    """Two stages' rewriters, the earlier stage's first."""

    def __init__(self, first: ResultRewriter, second: ResultRewriter) -> None:
        self._first = first
        self._second = second

    def result_started(self, statement: Statement, index: int) -> None:
        self._first.result_started(statement, index)
        self._second.result_started(statement, index)

    def row_description(self, body: bytes) -> bytes | None:
        changed = self._first.row_description(body)
        again = self._second.row_description(body if changed is None else changed)
        return changed if again is None else again

    def data_row(self, body: bytes) -> bytes | None:
        changed = self._first.data_row(body)
        again = self._second.data_row(body if changed is None else changed)
        return changed if again is None else again

    def copy_data(self, body: bytes) -> bytes | None:
        changed = self._first.copy_data(body)
        again = self._second.copy_data(body if changed is None else changed)
        return changed if again is None else again

    def fields(self, message_type: int, fields: dict[str, str]) -> dict[str, str] | None:
        changed = self._first.fields(message_type, fields)
        again = self._second.fields(message_type, fields if changed is None else changed)
        return changed if again is None else again
