"""The seam later capabilities plug into: stages, their plans, result rewriters, outcomes.

A session passes every statement it is asked to run (a simple Query, an Execute of a
portal, a FETCH of a cursor) through its stages in order. Each stage plans it:

* `FORWARD`: nothing to do; the next stage plans it.
* `Refuse(refusal)`: the statement does not run; the client gets the refusal as an
  ordinary error, with PostgreSQL's own protocol and transaction states. Later stages do
  not plan it, but every stage hears its outcome.
* `WaitFor(awaitable, resume)`: the statement (and everything the client sent after it)
  waits until the awaitable settles; `resume` then gives this stage's plan. Statements
  that return the same awaitable wait on it together (one wait, however many statements:
  a group commit). A notice may tell the client meanwhile why it waits.
* `Rewrite(rewriter)`: the statement runs, and its answers pass through the rewriter.

Policy is the first stage; it puts its whole `Decision` on the statement for the stages
after it. Every stage may also hear how each statement finished (`finished`), if it asks to
(`hears_outcomes`): statements nobody listens to cost nothing more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from custos.session.refusal import Refusal
from custos.session.statement import Candidates, Statement


class Forward:
    """Plan: run the statement as it is, as far as this stage is concerned."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FORWARD"


FORWARD = Forward()


@dataclass(frozen=True, slots=True)
class Refuse:
    refusal: Refusal


@dataclass(frozen=True, slots=True)
class Settled:
    """How an awaitable a stage waited on ended: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class WaitFor:
    awaitable: Awaitable[object]
    resume: Callable[[Settled], Plan]
    # A NoticeResponse for the client while it waits (an approval's request id and link),
    # sent at the next boundary between the server's messages.
    notice: bytes | None = None


@dataclass(frozen=True, slots=True)
class Rewrite:
    rewriter: ResultRewriter


Plan = Forward | Refuse | WaitFor | Rewrite


@dataclass(frozen=True, slots=True)
class MaskedColumn:
    """How many values of one result column a rewriter masked (evidence; no values)."""

    statement_index: int  # which statement of the query string, from 0
    position: int  # the column's position in the result, from 0
    name: str  # as the result names it
    category: str  # what the column holds, as the catalog says (or `mixed`, `free_text`)
    method: str  # the mask method
    values: int  # values masked
    nulled: int  # of those, values that became NULL: their type has no masked form


@mypyc_attr(allow_interpreted_subclasses=True)
class ResultRewriter:
    """Sees, and may replace, the answers of one statement. Returning None keeps a message.

    `result_started` comes before the rows of each result (each statement of a simple query
    string, each Execute), with the columns' types and formats; `data_row` gets each
    DataRow's body. A COPY TO STDOUT's result starts with `copy_started` (the
    CopyOutResponse's body), then `copy_data` gets each CopyData's body (b"": nothing is
    sent), and `copy_done` may give the last data before the CopyDone. `fields` gets the
    fields of the statement's errors and notices (code letter to value). Bodies returned
    replace the originals.
    """

    def result_started(self, statement: Statement, index: int) -> None:
        return None

    def row_description(self, body: bytes) -> bytes | None:
        return None

    def data_row(self, body: bytes) -> bytes | None:
        return None

    def copy_started(self, body: bytes) -> None:
        return None

    def copy_data(self, body: bytes) -> bytes | None:
        return None

    def copy_done(self) -> bytes | None:
        return None

    def fields(self, message_type: int, fields: dict[str, str]) -> dict[str, str] | None:
        return None

    def masked(self) -> tuple[MaskedColumn, ...]:
        """The columns masked so far, with their counts."""
        return ()

    def statement_finished(self, statement: Statement) -> None:
        """The statement's last answer came (heard without any stage listening)."""
        return None


class Status(StrEnum):
    COMPLETED = "completed"  # the database ran it to its end (a failed commit is FAILED)
    SUSPENDED = "suspended"  # an Execute with a row limit stopped early; the portal remains
    FAILED = "failed"  # the database raised an error
    REFUSED = "refused"  # a stage refused it; the database never ran it
    WITHDRAWN = "withdrawn"  # cancelled or disconnected while it waited
    SKIPPED = "skipped"  # the database skipped it after an earlier error


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    tags: tuple[str, ...]  # CommandComplete tags, one per statement that completed
    rows: int  # DataRows the client received
    sqlstate: str | None  # of the error, if any (the refusal's, for a refused statement)
    bytes: int  # bytes of answers the client received
    duration_seconds: float  # from planning to the last answer
    masked: tuple[MaskedColumn, ...] = ()  # the result columns masked, and how many values


@mypyc_attr(allow_interpreted_subclasses=True)
class Stage:
    """A step every statement passes; subclasses override what they need."""

    hears_outcomes: ClassVar[bool] = False

    def plan(self, statement: Statement) -> Plan:
        return FORWARD

    def refuse_text(self, candidates: Candidates) -> Refusal | None:
        """A refusal for a text at its Parse, before the database sees it (its text would
        show in pg_stat_activity and the database's log), when the stage already knows it
        will refuse every Execute of it, whatever the Bind values; else None."""
        return None

    def after_chunk(self) -> None:
        """The session has planned every statement of what the client sent at once."""
        return None

    def finished(self, statement: Statement, outcome: Outcome) -> None:
        """How a statement ended; called only when `hears_outcomes` is true."""
        return None

    def notification(self, body: bytes) -> bytes | None:
        """A NotificationResponse's body (process id, channel, payload): another session's
        NOTIFY, delivered to this one. A body returned replaces it."""
        return None


def chained(first: ResultRewriter | None, second: ResultRewriter) -> ResultRewriter:
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

    def copy_started(self, body: bytes) -> None:
        self._first.copy_started(body)
        self._second.copy_started(body)

    def copy_data(self, body: bytes) -> bytes | None:
        changed = self._first.copy_data(body)
        again = self._second.copy_data(body if changed is None else changed)
        return changed if again is None else again

    def copy_done(self) -> bytes | None:
        # What the first holds back goes through the second, then what the second holds.
        first = self._first.copy_done()
        through = None if first is None else self._second.copy_data(first)
        last = self._second.copy_done()
        pieces = [piece for piece in (first if through is None else through, last) if piece]
        return b"".join(pieces) if pieces else None

    def fields(self, message_type: int, fields: dict[str, str]) -> dict[str, str] | None:
        changed = self._first.fields(message_type, fields)
        again = self._second.fields(message_type, fields if changed is None else changed)
        return changed if again is None else again

    def masked(self) -> tuple[MaskedColumn, ...]:
        return self._first.masked() + self._second.masked()

    def statement_finished(self, statement: Statement) -> None:
        self._first.statement_finished(statement)
        self._second.statement_finished(statement)
