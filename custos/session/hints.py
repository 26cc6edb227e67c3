"""What a session's refusals say about `*`, and when the columns behind it are forgotten.

A refused `SELECT *` is most often fixed by naming fewer columns, which an agent cannot do
without knowing them. So the hint of a policy refusal names the columns of each relation the
statement read with `*` (column names are schema, not personal data):

    crm.customers has columns id, full_name, email, ...: select only the columns the task
    needs instead of *; decided by rule agents-no-bulk-export of policy version 3f2a...

Columns already known are named at once; otherwise the refusal waits up to a couple of seconds
for the database to list them, and goes out as it was if it cannot.

A schema change the gateway lets through (DDL, or a DO block or procedure that may run some)
forgets every known column list. Inside a transaction its effect is not visible to the
gateway's own connection until COMMIT, so the lists are forgotten again when the session next
ends a transaction.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Iterable, Mapping

from pglast.keywords import RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

from custos.protocol import sqlstates
from custos.session.refusal import Refusal
from custos.sql.facts import ALL_COLUMNS, Analysis, StatementKind
from custos.sql.names import split_qualified
from custos.upstream.columns import ColumnCatalog

log = logging.getLogger("custos.session")

HINT_TIMEOUT_SECONDS = 2.0
# A wider table is named in part: the hint has to stay readable.
_COLUMNS_NAMED = 40
_POLICY_REFUSAL = sqlstates.INSUFFICIENT_PRIVILEGE
_SCHEMA_CHANGES = frozenset({StatementKind.DDL, StatementKind.DO, StatementKind.CALL})
_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")
_NEEDS_QUOTES = frozenset(RESERVED_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS)


class StarHints:
    """One session's use of the gateway's column catalog."""

    def __init__(self, columns: ColumnCatalog, timeout_seconds: float = HINT_TIMEOUT_SECONDS):
        self._columns = columns
        self._timeout = timeout_seconds
        self._change_maybe_uncommitted = False

    def after_allowed(self, analysis: Analysis) -> None:
        """A statement was let through: forget the columns if it may change them."""
        for statement in analysis.statements:
            if not statement.kinds.isdisjoint(_SCHEMA_CHANGES):
                self._columns.invalidate()
                self._change_maybe_uncommitted = True
            elif self._change_maybe_uncommitted and StatementKind.TRANSACTION in statement.kinds:
                self._columns.invalidate()
                self._change_maybe_uncommitted = False

    def on_refusal(
        self, refusal: Refusal, analyses: Iterable[Analysis]
    ) -> Refusal | Awaitable[Refusal]:
        """The refusal, with the columns behind its `*` named when there is one."""
        if refusal.sqlstate != _POLICY_REFUSAL:
            return refusal
        relations = _read_with_star(analyses)
        if not relations:
            return refusal
        if not self._columns.missing(relations):
            return with_columns(refusal, self._columns.known(relations))
        # A task, so that a session closing first cancels it cleanly.
        return asyncio.ensure_future(self._when_loaded(refusal, relations))

    async def _when_loaded(self, refusal: Refusal, relations: frozenset[str]) -> Refusal:
        try:
            async with asyncio.timeout(self._timeout):
                columns = await self._columns.load(relations)
        except TimeoutError:
            log.warning("refusal sent without its columns: the database did not list them in time")
            return refusal
        except Exception as error:
            log.warning("refusal sent without its columns: %s", error)
            return refusal
        return with_columns(refusal, columns)


def with_columns(refusal: Refusal, columns: Mapping[str, tuple[str, ...]]) -> Refusal:
    """The refusal with a hint naming `columns`; itself when there are none to name."""
    listed = [
        f"{_relation(relation)} has columns {_names(names)}"
        for relation, names in sorted(columns.items())
        if names
    ]
    if not listed:
        return refusal
    hint = "; ".join(listed) + ": select only the columns the task needs instead of *"
    if refusal.hint:
        hint += f"; {refusal.hint}"
    return Refusal(refusal.sqlstate, refusal.message, hint)


def _read_with_star(analyses: Iterable[Analysis]) -> frozenset[str]:
    return frozenset(
        relation
        for analysis in analyses
        for statement in analysis.statements
        for relation, names in statement.columns_read.items()
        if ALL_COLUMNS in names
    )


def _names(columns: tuple[str, ...]) -> str:
    named = ", ".join(_identifier(column) for column in columns[:_COLUMNS_NAMED])
    rest = len(columns) - _COLUMNS_NAMED
    return f"{named} and {rest} more" if rest > 0 else named


def _relation(relation: str) -> str:
    parts = split_qualified(relation)
    return relation if parts is None else ".".join(_identifier(part) for part in parts)


def _identifier(name: str) -> str:
    """The name as it can be pasted into a select list."""
    if _PLAIN_IDENTIFIER.fullmatch(name) and name not in _NEEDS_QUOTES:
        return name
    return '"' + name.replace('"', '""') + '"'
