"""The database's answers: each server message attributed to the request it answers.

`Answers` keeps the ledger (ledger.py) of what was sent and follows the server's stream
message by message. It confirms the view's predictions (a ParseComplete makes the
statement exist, a CommandComplete applies what the statement did, ReadyForQuery settles
the transaction), passes each statement's rows and errors through its rewriter, swaps
the error of a refusal block for the refusal, and cuts out the answers to the gateway's
own messages.

The stream is never held back: a message goes on as soon as it is whole, and a row no
rewriter reads goes on even before it is (its bytes stream through). A message the session
must read whole and that arrives in pieces is gathered once, its pieces joined when the
last one arrives, never re-copied per chunk.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from custos.protocol.backend import command_tag, parameter_status, row_description
from custos.protocol.errors import ProtocolViolation
from custos.protocol.messages import ServerNotice, parse_notice
from custos.session import ledger as L
from custos.session.own_messages import answers_refusal, refusal_error
from custos.session.refusal import Refusal
from custos.session.stages import ResultRewriter, Status
from custos.session.statement import Statement
from custos.session.view import SessionView

_LENGTH = struct.Struct("!I")
_HEADER: Final = 5

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
_STATEMENT_TARGET: Final = ord("S")
_IDLE: Final = ord("I")

_ROW_OWNERS: Final = frozenset({L.EXECUTE, L.QUERY})

Handler = Callable[[bytes, int, int], bytes | None]


class LostTrack(Exception):
    """The database's answers do not match the ledger: the session cannot be followed."""


class HeldTooLarge(Exception):
    """A server message the session must read whole is larger than it may hold."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(
            f"the database sent a message of {length} bytes that the gateway must read whole"
            f" (a row it rewrites, an error, a description), more than its limit of {limit}"
            " bytes (limits.max_message_bytes); select less per row, or ask the operator to"
            " raise the limit"
        )


class Listener(Protocol):
    """What the session hears from its answers."""

    def finished(self, statement: Statement, status: Status, sqlstate: str | None) -> None: ...

    def notification(self, body: bytes) -> bytes | None: ...


class Answers:
    def __init__(
        self,
        view: SessionView,
        listener: Listener,
        max_held_message_bytes: int,
        transaction_status: int,
        *,
        keeps_tags: bool,
    ) -> None:
        self._view = view
        self._listener = listener
        self._max_held = max_held_message_bytes
        self._keeps_tags = keeps_tags  # someone hears outcomes: tags and bytes are counted
        self.ledger: deque[L.Entry] = deque()
        self.transaction_status = transaction_status
        self._discarding = False  # the database skips everything until the next Sync
        self.copy_in: Statement | None = None  # the COPY FROM STDIN under way
        self.copy_end_sent = False  # the client's CopyDone or CopyFail for it was sent
        self._copy_out = False
        self._rewriter: ResultRewriter | None = None  # of the result under way
        self._skip = 0  # bytes still to come of a message that streams through
        self._gathered: list[bytes] = []
        self._gather_need = 0
        self._gather_have = 0
        self._handlers: dict[int, Handler] = {
            _PARSE_COMPLETE: self._parse_complete,
            _BIND_COMPLETE: self._bind_complete,
            _CLOSE_COMPLETE: self._close_complete,
            _PARAMETER_DESCRIPTION: self._parameter_description,
            _ROW_DESCRIPTION: self._row_description,
            _NO_DATA: self._no_data,
            _DATA_ROW: self._data_row,
            _COMMAND_COMPLETE: self._command_complete,
            _EMPTY_QUERY: self._empty_query,
            _PORTAL_SUSPENDED: self._portal_suspended,
            _COPY_IN: self._copy_in_response,
            _COPY_OUT: self._copy_out_response,
            _COPY_BOTH: self._copy_in_response,
            _COPY_DATA: self._copy_data,
            _COPY_DONE: self._copy_done,
            _ERROR: self._error,
            _NOTICE: self._notice,
            _NOTIFICATION: self._notification,
            _PARAMETER_STATUS: self._parameter_status,
            _FUNCTION_RESULT: self._function_result,
            _READY: self._ready,
        }

    @property
    def at_boundary(self) -> bool:
        """Between two of the server's messages: where the gateway's own may go."""
        return self._skip == 0 and not self._gathered

    @property
    def discarding(self) -> bool:
        """The database skips what it is sent until the next Sync."""
        return self._discarding

    @property
    def busy(self) -> bool:
        """Whether the database may be running a statement (what a cancel would hit)."""
        return any(entry[0] in L.RUNS_SQL for entry in self.ledger)

    def lost(self) -> None:
        """Stops following: nothing more is attributed."""
        self._skip = 0
        self._gathered = []

    # --- what was sent ---------------------------------------------------------------------

    def expect(self, entries: list[L.Entry]) -> None:
        ledger = self.ledger
        if (
            not ledger
            and entries
            and entries[0][0] == L.EXECUTE
            and entries[0][1].rewriter is not None
            and not self._discarding
        ):
            self._execute_result_started(entries[0][1])
        for entry in entries:
            if self._discarding:
                if entry[0] == L.SYNC:
                    self._discarding = False
                    ledger.append(entry)
                else:
                    self._skipped(entry)
            else:
                ledger.append(entry)

    # --- the stream ------------------------------------------------------------------------

    def feed(self, data: bytes, out: list[bytes]) -> None:
        """Follows a chunk of the server's stream; what goes to the client is added to `out`."""
        size = len(data)
        position = kept_from = 0
        if self._skip:
            # The rest of a message that streams through: it goes on with what follows it.
            if self._skip >= size:
                self._skip -= size
                out.append(data)
                return
            position = self._skip
            self._skip = 0
        elif self._gathered:
            position = kept_from = self._continue_gathering(data, out)
            if position < 0:
                return
        ledger = self.ledger
        while position < size:
            if size - position < _HEADER:
                out.append(data[kept_from:position])
                self._start_gathering(data[position:], _HEADER)
                return
            message_type = data[position]
            length = _LENGTH.unpack_from(data, position + 1)[0]
            if length < 4:
                raise ProtocolViolation(f"the database sent an invalid message length {length}")
            end = position + 1 + length
            if message_type == _DATA_ROW and self._rewriter is None:
                if not ledger or ledger[0][0] not in _ROW_OWNERS:
                    raise LostTrack("the database sent a row no statement asked for")
                statement = ledger[0][1]
                statement.rows += 1
                if self._keeps_tags:
                    statement.answered_bytes += 1 + length
                if end > size:
                    self._skip = end - size
                    break
                position = end
                continue
            if end > size:
                if message_type == _COPY_DATA and self._rewriter is None and self._copy_out:
                    self._skip = end - size
                    break
                if length > self._max_held:
                    raise HeldTooLarge(length, self._max_held)
                out.append(data[kept_from:position])
                self._start_gathering(data[position:], end - position)
                return
            handler = self._handlers.get(message_type)
            if handler is None:
                raise LostTrack(f"the database sent message type {message_type} unexpectedly")
            if self._keeps_tags:
                self._count_bytes(1 + length)
            replacement = handler(data, position, end)
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

    def _start_gathering(self, first: bytes, need: int) -> None:
        self._gathered = [first]
        self._gather_have = len(first)
        self._gather_need = need

    def _continue_gathering(self, data: bytes, out: list[bytes]) -> int:
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
            # Only a header was cut: go on from it as if it had come whole.
            self.feed(whole + data[missing:], out)
            return -1
        message_type = whole[0]
        if self._keeps_tags:
            self._count_bytes(len(whole))
        if message_type == _DATA_ROW and self._rewriter is None:
            self._head_row()
            replacement = None
        else:
            handler = self._handlers.get(message_type)
            if handler is None:
                raise LostTrack(f"the database sent message type {message_type} unexpectedly")
            replacement = handler(whole, 0, len(whole))
        out.append(whole if replacement is None else replacement)
        return missing

    def _count_bytes(self, size: int) -> None:
        """Bytes of answers, counted to the request whose answers are under way."""
        ledger = self.ledger
        if ledger and ledger[0][0] in _ROW_OWNERS:
            ledger[0][1].answered_bytes += size

    def _head_row(self) -> Statement:
        ledger = self.ledger
        if not ledger or ledger[0][0] not in _ROW_OWNERS:
            raise LostTrack("the database sent a row no statement asked for")
        statement: Statement = ledger[0][1]
        statement.rows += 1
        return statement

    # --- the ledger --------------------------------------------------------------------------

    def _head(self) -> L.Entry:
        """The entry the next server message answers, past entries that get no answer."""
        ledger = self.ledger
        while ledger:
            entry = ledger[0]
            if entry[0] != L.COPY_END:
                return entry
            ledger.popleft()
        raise LostTrack("the database answered a message the gateway did not send")

    def _pop(self) -> None:
        ledger = self.ledger
        entry = ledger.popleft()
        if entry[0] in L.SYNC_POINTS:
            self._view.segment_confirmed()
        elif ledger and ledger[0][0] == L.EXECUTE and ledger[0][1].rewriter is not None:
            self._execute_result_started(ledger[0][1])

    def _skipped(self, entry: L.Entry) -> None:
        """The database skipped this message after an error."""
        kind, payload = entry
        if kind in L.SYNC_POINTS:
            self._view.segment_confirmed()
        if kind == L.EXECUTE or kind == L.QUERY:
            # Refused or not, the client heard nothing of it: the database skipped it.
            self._view.abandoned(payload)
            self._listener.finished(payload, Status.SKIPPED, None)

    def _discard_until_sync(self) -> None:
        ledger = self.ledger
        while ledger and ledger[0][0] != L.SYNC:
            self._skipped(ledger.popleft())
        if not ledger:
            self._discarding = True

    # --- answers to the extended protocol's messages -------------------------------------------

    def _parse_complete(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind == L.PARSE:
            self._pop()
            name, prepared = payload
            self._view.statements.confirmed[name] = prepared
            return None
        if kind == L.OWN_PARSE:
            self._pop()
            return b""
        raise LostTrack(f"ParseComplete answered {L.NAMES.get(kind)}")

    def _bind_complete(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind == L.BIND or kind == L.OWN_BIND:
            self._pop()
            name, portal = payload
            self._view.portals.confirmed[name] = portal
            return None if kind == L.BIND else b""
        raise LostTrack(f"BindComplete answered {L.NAMES.get(kind)}")

    def _close_complete(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind == L.OWN_CLOSE:
            self._pop()
            if payload is not None:
                self._view.statements.forget(payload)
            return b""
        if kind != L.CLOSE:
            raise LostTrack(f"CloseComplete answered {L.NAMES.get(kind)}")
        self._pop()
        target_kind, name = payload
        view = self._view
        if target_kind == _STATEMENT_TARGET:
            view.statements.forget(name)
        else:
            view.portals.forget(name)
        return None

    def _parameter_description(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind != L.DESCRIBE or payload[0] != _STATEMENT_TARGET:
            raise LostTrack(f"ParameterDescription answered {L.NAMES.get(kind)}")
        return None

    def _row_description(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind == L.QUERY:
            statement: Statement = payload
            rewriter = statement.rewriter
            if rewriter is None:
                return None
            statement.columns = row_description(data[start + 5 : end])
            self._rewriter = rewriter
            rewriter.result_started(statement, statement.index)
            replaced = rewriter.row_description(data[start + 5 : end])
            return None if replaced is None else framed(_ROW_DESCRIPTION, replaced)
        if kind == L.DESCRIBE or kind == L.OWN_DESCRIBE:
            self._described(kind, payload, data[start + 5 : end])
            self._pop()
            return b"" if kind == L.OWN_DESCRIBE else None
        raise LostTrack(f"RowDescription answered {L.NAMES.get(kind)}")

    def _no_data(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind == L.DESCRIBE or kind == L.OWN_DESCRIBE:
            self._described(kind, payload, b"")
            self._pop()
            return b"" if kind == L.OWN_DESCRIBE else None
        raise LostTrack(f"NoData answered {L.NAMES.get(kind)}")

    def _described(self, kind: int, payload: Any, body: bytes) -> None:
        """What a Describe said, kept on what the database holds under the name now."""
        target_kind, name = (ord("P"), payload) if kind == L.OWN_DESCRIBE else payload
        view = self._view
        found = (
            view.statements.confirmed.get(name)
            if target_kind == _STATEMENT_TARGET
            else view.portals.confirmed.get(name)
        )
        if found is not None:
            found.row_description = body

    # --- answers to requests that run SQL -------------------------------------------------------

    def _data_row(self, data: bytes, start: int, end: int) -> bytes | None:
        # Only rows a rewriter reads come here; the others are counted in the stream's loop.
        self._head_row()
        rewriter = self._rewriter
        assert rewriter is not None
        replaced = rewriter.data_row(data[start + 5 : end])
        return None if replaced is None else framed(_DATA_ROW, replaced)

    def _command_complete(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, statement = self._head()
        if kind != L.EXECUTE and kind != L.QUERY:
            raise LostTrack(f"CommandComplete answered {L.NAMES.get(kind)}")
        self._rewriter = None
        self._copy_out = False
        if self.copy_in is not None:
            self._copy_finished()
        if statement.effects is not None or self._keeps_tags:
            tag = command_tag(data[start + 5 : end])
            if statement.tags is None:
                statement.tags = [tag]
            else:
                statement.tags.append(tag)
            self._view.completed(statement, tag)
        else:
            statement.index += 1
        if kind == L.EXECUTE:
            self._pop()
            self._listener.finished(statement, Status.COMPLETED, None)
        return None

    def _empty_query(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, statement = self._head()
        if kind == L.EXECUTE:
            self._pop()
            self._listener.finished(statement, Status.COMPLETED, None)
        elif kind != L.QUERY:
            raise LostTrack(f"EmptyQueryResponse answered {L.NAMES.get(kind)}")
        return None

    def _portal_suspended(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, statement = self._head()
        if kind != L.EXECUTE:
            raise LostTrack(f"PortalSuspended answered {L.NAMES.get(kind)}")
        self._rewriter = None
        self._pop()
        self._listener.finished(statement, Status.SUSPENDED, None)
        return None

    def _execute_result_started(self, statement: Statement) -> None:
        """An Execute's answers come next: its rewriter learns the columns from the portal."""
        portal = statement.portal
        assert portal is not None
        statement.columns = portal.columns()
        self._start_result(statement)

    def _start_result(self, statement: Statement) -> None:
        rewriter = statement.rewriter
        if rewriter is not None:
            self._rewriter = rewriter
            # The encoding its answers come in: what the server last reported, which an
            # earlier segment may have changed since the statement was planned ("": not
            # known, a statement of its own segment may have).
            if statement.client_encoding:
                statement.client_encoding = self._view.lexical.client_encoding
            rewriter.result_started(statement, statement.index)

    # --- COPY ---------------------------------------------------------------------------------

    def _copy_in_response(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, statement = self._head()
        if kind != L.EXECUTE and kind != L.QUERY:
            raise LostTrack(f"CopyInResponse answered {L.NAMES.get(kind)}")
        self.copy_in = statement
        self.copy_end_sent = False
        # Syncs sent before the client's CopyDone are read, and ignored, during the COPY.
        kept: list[L.Entry] = []
        ledger = self.ledger
        head = ledger.popleft()
        while ledger and ledger[0][0] != L.COPY_END:
            entry = ledger.popleft()
            if entry[0] == L.SYNC:
                self._view.segment_confirmed()
            else:
                kept.append(entry)
        if ledger:
            self.copy_end_sent = True
        ledger.extendleft(reversed(kept))
        ledger.appendleft(head)
        if data[start] == _COPY_BOTH:
            self._copy_out = True
        self._start_result(statement)
        if self._rewriter is not None:
            self._rewriter.copy_started(data[start + 5 : end])
        return None

    def _copy_out_response(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, statement = self._head()
        if kind != L.EXECUTE and kind != L.QUERY:
            raise LostTrack(f"CopyOutResponse answered {L.NAMES.get(kind)}")
        self._copy_out = True
        self._start_result(statement)
        if self._rewriter is not None:
            self._rewriter.copy_started(data[start + 5 : end])
        return None

    def _copy_finished(self) -> None:
        """The COPY FROM STDIN under way ended: the client's CopyDone was its last word."""
        self.copy_in = None
        ledger = self.ledger
        for position, entry in enumerate(ledger):
            if entry[0] == L.COPY_END:
                del ledger[position]
                break

    def _copy_data(self, data: bytes, start: int, end: int) -> bytes | None:
        if not self._copy_out:
            raise LostTrack("the database sent COPY data outside a COPY")
        rewriter = self._rewriter
        if rewriter is None:
            return None
        replaced = rewriter.copy_data(data[start + 5 : end])
        if replaced is None:
            return None
        return framed(_COPY_DATA, replaced) if replaced else b""  # b"": nothing sent

    def _copy_done(self, data: bytes, start: int, end: int) -> bytes | None:
        if not self._copy_out:
            raise LostTrack("the database ended a COPY it had not begun")
        rewriter = self._rewriter
        last = None if rewriter is None else rewriter.copy_done()
        return None if not last else framed(_COPY_DATA, last) + data[start:end]

    # --- errors, notices, settings, ReadyForQuery ----------------------------------------------

    def _error(self, data: bytes, start: int, end: int) -> bytes | None:
        notice = parse_notice(data[start + 5 : end])
        if notice.severity in ("FATAL", "PANIC"):
            return None  # the database ends the session; the client hears why
        kind, payload = self._head()
        self._rewriter = None
        self._copy_out = False
        self.copy_in = None
        self._view.transaction_failed = True
        if kind == L.QUERY or kind == L.EXECUTE:
            return self._statement_failed(kind, payload, notice.sqlstate, data, start, end)
        if kind == L.REFUSAL or kind == L.REFUSED_QUERY:
            by_message = kind == L.REFUSAL
            replaced = answers_refusal(notice, payload, by_message=by_message)
            replacement = refusal_error(payload) if replaced else None
            if by_message:
                self._pop()
                self._discard_until_sync()
            return replacement
        if kind in L.SYNC_POINTS:
            return None  # a failed commit at Sync; ReadyForQuery follows
        if kind == L.OWN_PARSE:
            return self._refusal_block_failed(notice, data, start, end)
        if kind == L.OWN_DESCRIBE:
            # Asked for the columns of the portal the Execute behind it runs: its failure
            # is the Execute's (a failed transaction, or a portal that is gone).
            self._pop()
            kind, payload = self._head()
            if kind == L.EXECUTE:
                return self._statement_failed(kind, payload, notice.sqlstate, data, start, end)
        if kind == L.PARSE and payload[0] == b"":
            # The unnamed statement was dropped before the new one failed.
            self._view.statements.forget(b"")
        self._pop()
        self._discard_until_sync()
        return None

    def _refusal_block_failed(
        self, notice: ServerNotice, data: bytes, start: int, end: int
    ) -> bytes | None:
        """The refusal block did not get to run (a failed transaction): the refused message
        behind it fails with the database's error, or with the refusal's where PostgreSQL
        would have found that first."""
        ledger = self.ledger
        self._pop()
        if ledger and ledger[0][0] == L.OWN_BIND:
            self._pop()
        kind, payload = self._head()
        if kind == L.EXECUTE:
            return self._statement_failed(kind, payload, notice.sqlstate, data, start, end)
        if kind != L.REFUSAL:
            raise LostTrack(f"the refusal block came before {L.NAMES.get(kind)}")
        self._pop()
        self._discard_until_sync()
        return refusal_error(payload) if answers_refusal(notice, payload, by_message=True) else None

    def _statement_failed(
        self, kind: int, statement: Statement, sqlstate: str, data: bytes, start: int, end: int
    ) -> bytes | None:
        refusal: Refusal | None = statement.refusal
        if refusal is not None:
            notice = parse_notice(data[start + 5 : end])
            replaced = answers_refusal(notice, refusal, by_message=False)
            replacement = refusal_error(refusal) if replaced else None
            status = Status.REFUSED
        else:
            replacement = self._rewritten_fields(statement, data, start, end)
            status = Status.FAILED
        self._view.abandoned(statement)
        statement.sqlstate = sqlstate
        if kind == L.EXECUTE:
            self._pop()
            self._listener.finished(statement, status, sqlstate)
            self._discard_until_sync()
        else:
            statement.index = len(statement.effects or ())
        return replacement

    def _rewritten_fields(
        self, statement: Statement, data: bytes, start: int, end: int
    ) -> bytes | None:
        rewriter = statement.rewriter
        if rewriter is None:
            return None
        notice = parse_notice(data[start + 5 : end])
        fields = rewriter.fields(data[start], dict(notice.fields))
        if fields is None:
            return None
        body = b"".join(code.encode() + value.encode() + b"\x00" for code, value in fields.items())
        return framed(data[start], body + b"\x00")

    def _notice(self, data: bytes, start: int, end: int) -> bytes | None:
        ledger = self.ledger
        if ledger and ledger[0][0] in _ROW_OWNERS:
            return self._rewritten_fields(ledger[0][1], data, start, end)
        return None

    def _notification(self, data: bytes, start: int, end: int) -> bytes | None:
        replaced = self._listener.notification(data[start + 5 : end])
        return None if replaced is None else framed(_NOTIFICATION, replaced)

    def _parameter_status(self, data: bytes, start: int, end: int) -> bytes | None:
        name, value = parameter_status(data[start + 5 : end])
        self._view.reported(name, value)
        return None

    def _function_result(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, _ = self._head()
        if kind != L.FUNCTION_CALL:
            raise LostTrack(f"FunctionCallResponse answered {L.NAMES.get(kind)}")
        return None

    def _ready(self, data: bytes, start: int, end: int) -> bytes | None:
        kind, payload = self._head()
        if kind not in L.SYNC_POINTS:
            raise LostTrack(f"ReadyForQuery answered {L.NAMES.get(kind)}")
        self._pop()
        self._rewriter = None
        view = self._view
        if kind == L.QUERY:
            # A simple Query drops the unnamed prepared statement, as PostgreSQL does.
            view.statements.forget(b"")
            statement: Statement = payload
            if statement.refusal is not None:
                self._listener.finished(statement, Status.REFUSED, statement.refusal.sqlstate)
            elif statement.sqlstate is not None:
                self._listener.finished(statement, Status.FAILED, statement.sqlstate)
            else:
                self._listener.finished(statement, Status.COMPLETED, None)
        status = data[end - 1]
        self.transaction_status = status
        if status == _IDLE:
            view.end_transaction(committed=not view.transaction_failed)
        view.forget_predictions()
        return None


def framed(message_type: int, body: bytes) -> bytes:
    return bytes((message_type,)) + _LENGTH.pack(len(body) + 4) + body
