"""What a session knows about one statement it runs, and the named objects behind it.

`Prepared` is a prepared statement (protocol Parse or SQL PREPARE), `Portal` a portal
(protocol Bind or SQL DECLARE): they share PostgreSQL's namespaces, so `EXECUTE` reaches a
Parse'd statement and `FETCH` a Bind'ed portal. `Statement` is one request to run SQL:
a simple Query (one or more statements), an Execute of a portal, or a FETCH or MOVE of
a cursor, decided on the SQL the portal holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from custos.protocol.backend import Column, row_description
from custos.protocol.frontend import Bind, bind_message
from custos.sql.facts import Analysis, ParameterRef

if TYPE_CHECKING:
    from custos.policy.engine import Decision
    from custos.session.effects import Effect
    from custos.session.refusal import Refusal
    from custos.session.stages import ResultRewriter

Candidates = tuple[tuple[Analysis, tuple[str, ...]], ...]
"""A text analysed once per schema its unqualified names may resolve to, most often one."""

NO_PARAMETERS: tuple[str | None, ...] = ()


def uses_parameters(candidates: Candidates) -> bool:
    """Whether any fact policy reads holds a parameter: a LIMIT $n or a pattern $n."""
    for analysis, _ in candidates:
        for statement in analysis.statements:
            if isinstance(statement.limit, ParameterRef):
                return True
            if any(isinstance(match.pattern, ParameterRef) for match in statement.pattern_matches):
                return True
    return False


class Prepared:
    """A prepared statement: its analysis, and what the database said it looks like."""

    __slots__ = (
        "candidates",
        "described",
        "parameter_types",
        "refusal",
        "row_description",
        "runs_before",
        "text",
        "uses_parameters",
    )

    def __init__(
        self,
        candidates: Candidates,
        parameter_types: tuple[int, ...] = (),
        refusal: Refusal | None = None,
        text: bytes | None = None,
    ) -> None:
        self.candidates = candidates
        # Its text as the Parse sent it (the analysis may be that of another text of its
        # shape); None for one prepared in SQL.
        self.text = text
        self.parameter_types = parameter_types
        self.uses_parameters = uses_parameters(candidates)
        # Running it raises this instead: the gateway's refusal took the statement's place.
        self.refusal = refusal
        # From a Describe of the statement: its RowDescription's body, b"" for a statement
        # that returns no rows (NoData); None until described. Decoded only when read.
        self.row_description: bytes | None = None
        self.described = False  # a Describe of it was sent: its answer will say
        # How many messages that may run SQL the session had taken when it was parsed.
        self.runs_before = 0


class Portal:
    """A portal: a prepared statement bound to parameters, or a cursor DECLAREd in SQL."""

    __slots__ = ("_bind", "bind_body", "described", "holdable", "prepared", "row_description")

    def __init__(
        self, prepared: Prepared, bind_body: bytes = b"", *, holdable: bool = False
    ) -> None:
        self.prepared = prepared
        self.bind_body = bind_body
        self.holdable = holdable  # a WITH HOLD cursor outlives its transaction
        # From a Describe of the portal: its RowDescription's body (formats included), b""
        # when it returns no rows; None until described.
        self.row_description: bytes | None = None
        self.described = False  # a Describe of it was sent: its answer will say
        self._bind: Bind | None = None

    @property
    def bind(self) -> Bind | None:
        if self._bind is None and self.bind_body:
            self._bind = bind_message(self.bind_body)
        return self._bind

    def parameters(self) -> tuple[str | None, ...]:
        """The Bind values as text, where policy reads them; () when it reads none."""
        if not self.prepared.uses_parameters:
            return NO_PARAMETERS
        bind = self.bind
        return NO_PARAMETERS if bind is None else bind.texts(self.prepared.parameter_types)

    def columns(self) -> tuple[Column, ...] | None:
        """The result's columns with their formats, if a Describe said what they are."""
        if self.row_description is not None:
            return row_description(self.row_description) if self.row_description else ()
        described = self.prepared.row_description
        if described is None:
            return None
        bind = self.bind
        columns = row_description(described) if described else ()
        if bind is None:
            return columns
        return tuple(
            column.with_format(bind.format_of(index)) for index, column in enumerate(columns)
        )


class Statement:
    """One request to run SQL, from the moment it is planned to its last answer."""

    __slots__ = (
        "answered_bytes",
        "approval_id",
        "candidates",
        "client_encoding",
        "columns",
        "decided",
        "decision",
        "effects",
        "finished",
        "index",
        "max_rows",
        "number",
        "parameters",
        "portal",
        "portal_name",
        "refusal",
        "rewriter",
        "rows",
        "segment",
        "sqlstate",
        "started_at",
        "tags",
        "text",
    )

    def __init__(
        self,
        number: int,
        candidates: Candidates,
        parameters: tuple[str | None, ...] = NO_PARAMETERS,
        *,
        portal_name: bytes | None = None,
        portal: Portal | None = None,
        max_rows: int = 0,
    ) -> None:
        self.number = number  # in the session, from 1
        self.candidates = candidates
        self.parameters = parameters
        self.portal_name = portal_name  # the portal an Execute runs; None for a simple Query
        self.portal = portal
        self.max_rows = max_rows
        # Set by stages: policy's decision, a refusal in place of the statement, a rewriter.
        self.decision: Decision | None = None
        # The analysis the decision was drawn from: the first candidate's, read through
        # what its relations reach (views, functions, `*` expanded); None until decided.
        self.decided: Analysis | None = None
        self.refusal: Refusal | None = None
        self.rewriter: ResultRewriter | None = None
        # Answers: which statement of the query string they belong to, and the current
        # result's columns, when known.
        self.index = 0
        self.columns: tuple[Column, ...] | None = None
        self.started_at = 0.0
        self.segment = 0  # the segment it was taken in
        self.sqlstate: str | None = None  # of the error that ended it
        self.finished = False
        self.rows = 0
        self.answered_bytes = 0
        self.tags: list[str] | None = None  # CommandComplete tags, once there is one
        # The text it runs as the client sent it: a Query's string, an Execute's Parse (its
        # analysis may be that of another text of its shape); None when not known.
        self.text: bytes | None = None
        # The client encoding its answers come in, as far as the session knows ("": not
        # known, a statement before it in its segment may change it unseen).
        self.client_encoding = "UTF8"
        # What each of its statements does to the session once the database completes it
        # (see machine.py), by position in the query string; None when nothing.
        self.effects: list[tuple[Effect, ...]] | None = None
        # The approval it ran under, if a person approved it (custos/approvals/stage.py).
        self.approval_id: str | None = None

    @property
    def analysis(self) -> Analysis:
        """The analysis under the first candidate search path; none for a statement refused
        before it was read (its text did not parse, or could not be decoded)."""
        candidates = self.candidates
        return candidates[0][0] if candidates else _UNREAD

    def __repr__(self) -> str:
        texts = self.analysis.texts
        if texts:
            return f"<Statement {self.number} {texts[0][:40]!r}>"
        refusal = self.refusal
        shown = f"refused {refusal.sqlstate}" if refusal is not None else "unread"
        return f"<Statement {self.number} {shown}>"


_UNREAD = Analysis(statements=(), error="refused before it was read")
