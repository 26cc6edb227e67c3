"""Statements as policy decides them: read through the views they read (custos/sql/views.py),
with the functions their relations, operators and casts reach.

One per gateway, over its catalog (custos/upstream/columns.py). The first statement to
touch a relation waits while the catalog is read; later ones find it, and the analysis
with what it reaches is remembered by the analysis it was made from, so that the decision
point's own memo finds the same object again. Both are forgotten when the catalog's entries
expire or a schema change runs through the gateway.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from typing import Protocol

from custos.protocol import sqlstates
from custos.session.refusal import Refusal
from custos.session.statement import Candidates
from custos.session.texts import INLINE_CHARS, INLINE_SECONDS
from custos.sql.bodies import BODY_DEPTH, bodies_reached
from custos.sql.expansion import expand_all_columns, relations_with_all_columns
from custos.sql.facts import HEAVY_BYTES, Analysis, analysis_bytes
from custos.sql.reached import (
    Reach,
    called_functions,
    cast_types,
    field_relations,
    reached_relations,
    used_operators,
    with_field_calls,
    with_function_bodies,
    with_reached_functions,
)
from custos.sql.views import (
    through_views,
    through_views_within,
    view_lineage,
    with_view_reads,
)
from custos.upstream.columns import ColumnCatalog

CATALOG_UNREADABLE = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "the gateway could not read from the database's catalog which functions this statement's"
    " tables and views run (view definitions, defaults, checks, triggers), so it refuses it",
    "try again shortly; if it persists, tell the gateway's operators",
)

_LONG = 1e9  # seconds: no limit of its own

# Views read views: each round reads the definitions of those found in the last (the
# catalog's query follows them 16 deep at once, so one more round is rarely needed).
_VIEW_ROUNDS = 4

_TOO_DEEP = Analysis(
    (),
    error="the statement reads views nested too deeply to follow; read the tables they read,"
    " or ask a DBA for a flatter view",
    error_sqlstate=sqlstates.STATEMENT_TOO_COMPLEX,
)

# analysis -> (that analysis, it with what it reaches, catalog generation, valid until)
_Remembered = tuple[Analysis, Analysis, int, float]


class ViewWorkers(Protocol):
    """Where a statement is read through its views off the event loop (sql/workers.py)."""

    def through_views(
        self, analysis: Analysis, search_path: tuple[str, ...], definitions: Mapping[str, str]
    ) -> Awaitable[Analysis]: ...


def _read_through_here(
    base: Analysis, path: tuple[str, ...], definitions: dict[str, str]
) -> Analysis | None:
    """The analysis read through the views, if that is quick enough for the event loop."""
    if sum(map(len, base.texts)) > INLINE_CHARS:
        return None
    return through_views_within(base, path, definitions, INLINE_SECONDS)


async def _read_through(
    workers: ViewWorkers | None,
    base: Analysis,
    path: tuple[str, ...],
    definitions: dict[str, str],
) -> Analysis:
    if workers is None:
        return through_views(base, path, definitions)
    return await workers.through_views(base, path, definitions)


class FunctionReach:
    def __init__(self, catalog: ColumnCatalog, memo_entries: int = 10_000) -> None:
        self._catalog = catalog
        self._memo_entries = memo_entries
        self._memo: OrderedDict[int, _Remembered] = OrderedDict()
        # analysis -> (that analysis, the views read through, it read through them)
        self._viewed: OrderedDict[int, tuple[Analysis, dict[str, str], Analysis]] = OrderedDict()

    def applied(
        self, candidates: Candidates, absent_since: float | None = None
    ) -> Candidates | None:
        """The candidates read through their views, with what their relations reach; None
        until the catalog is read. A relation the catalog found absent counts as read only
        where found so at or after `absent_since` (the start of this statement's own load:
        it may have been created since an earlier one)."""
        if len(candidates) == 1:  # the common case, kept short
            analysis, path = candidates[0]
            reached = self._applied(analysis, path, absent_since)
            if reached is None or reached is analysis:
                return None if reached is None else candidates
            return ((reached, path),)
        applied: list[tuple[Analysis, tuple[str, ...]]] = []
        for analysis, path in candidates:
            reached = self._applied(analysis, path, absent_since)
            if reached is None:
                return None
            applied.append((reached, path))
        return tuple(applied)

    async def load(
        self,
        candidates: Candidates,
        workers: ViewWorkers | None = None,
        absent_since: float | None = None,
    ) -> None:
        """Reads the views the candidates read, what their relations reach, and the bodies
        of the functions they call and reach; raises ColumnsUnavailable. A statement whose
        reading through its views would hold the event loop is read through them by
        `workers`, when given. Relations found absent before `absent_since` are read again."""
        catalog = self._catalog
        # Each round reads the relations the views read so far are found to read, or reads
        # a statement through the views found.
        for _ in range(2 * _VIEW_ROUNDS):
            relations: set[str] = set()
            operators: set[str] = set()
            types: set[str] = set()
            complete = True
            for analysis, path in candidates:
                base = analysis.canonical or analysis
                viewed, _, known, pending = self._through_views(base, path, absent_since)
                complete &= known
                if pending is not None:
                    self._remember_viewed(
                        base, pending, await _read_through(workers, base, path, pending)
                    )
                    continue
                relations |= reached_relations(base) | reached_relations(viewed)
                operators |= used_operators(viewed)
                types |= cast_types(viewed)
            await catalog.load(relations, absent_since)
            await catalog.load_behind("operator", operators, absent_since)
            await catalog.load_behind("type", types, absent_since)
            if complete:
                break
        # Then the bodies of the functions called, level by level, and the relations only
        # those bodies read, and what reading those runs, until nothing is left unread.
        for _ in range(BODY_DEPTH + _VIEW_ROUNDS):
            relations = set()
            functions: set[str] = set()
            for analysis, path in candidates:
                base = analysis.canonical or analysis
                self._assembled(base, path, absent_since, relations, functions)
            if not relations and not functions:
                return
            await catalog.load(relations, absent_since)
            await catalog.load_behind("function", functions, absent_since)

    def now(self) -> float:
        """The catalog's clock: `absent_since` is read from it."""
        return self._catalog.now()

    def _applied(
        self, analysis: Analysis, path: tuple[str, ...], absent_since: float | None
    ) -> Analysis | None:
        # The relations, and so what they reach, are the same for every text of a shape.
        base = analysis.canonical or analysis
        catalog = self._catalog
        remembered = self._memo.get(id(base))
        if remembered is not None:
            known, reached, generation, until = remembered
            if known is base and generation == catalog.generation and catalog.now() < until:
                return _own(analysis, reached, base)
        assembled = self._assembled(base, path, absent_since)
        if assembled is None:
            return None
        reached, until = assembled
        if analysis_bytes(base) > HEAVY_BYTES:
            return _own(analysis, reached, base)  # not kept (facts.HEAVY_BYTES)
        self._memo[id(base)] = (base, reached, catalog.generation, until)
        if len(self._memo) > self._memo_entries:
            self._memo.popitem(last=False)
        return _own(analysis, reached, base)

    def _assembled(
        self,
        base: Analysis,
        path: tuple[str, ...],
        absent_since: float | None,
        unread_relations: set[str] | None = None,
        unread_functions: set[str] | None = None,
    ) -> tuple[Analysis, float] | None:
        """The analysis read through its views, with what it reaches and what the bodies
        of the functions it calls run and read, and until when that holds; None while the
        catalog has not been read for it (what is missing then added to the sets given)."""
        viewed, viewed_until, complete, _ = self._through_views(base, path, absent_since)
        if not complete:
            return None
        found = self._reached(viewed, absent_since)
        if found is None:
            return None
        reached, until = found
        until = min(until, viewed_until)
        seen = reached_relations(viewed)
        catalog = self._catalog
        for _ in range(_VIEW_ROUNDS):
            bodies = self._bodies(called_functions(reached), absent_since, unread_functions)
            if bodies is None:
                return None
            reached = with_function_bodies(reached, bodies[0], path)
            until = min(until, bodies[1])
            # Relations only function bodies read: their views' columns are traced to
            # base columns, and what reading them runs counts as run (its bodies next).
            extra = reached_relations(reached) - seen
            if not extra:
                return self._expanded(reached), until
            views = catalog.views(extra, absent_since)
            reach = catalog.reach(extra, absent_since)
            if views is None or reach is None:
                if unread_relations is not None:
                    unread_relations |= extra
                return None
            reached = with_view_reads(reached, view_lineage(views[0]))
            reached = with_reached_functions(reached, reach[0])
            until = min(until, views[1], reach[1])
            seen |= extra
        return _TOO_DEEP, until

    def _expanded(self, analysis: Analysis) -> Analysis:
        """The analysis with each `*` standing for its relation's columns, as the catalog
        lists them: masking then names result columns by position (and checks them
        against the result's own, custos/masking/rewriter.py)."""
        columns = self._catalog.known(relations_with_all_columns(analysis))
        expanded = expand_all_columns(analysis, columns)
        # A decision of its own: the masked columns are named by position.
        return analysis if expanded is analysis else replace(expanded, canonical=None)

    def _through_views(
        self, base: Analysis, path: tuple[str, ...], absent_since: float | None
    ) -> tuple[Analysis, float, bool, dict[str, str] | None]:
        """The analysis read through the views the catalog has described so far (see
        custos/sql/views.py), until when that holds, whether it is complete (every relation
        it reads read from the catalog, so none is a view not yet read through), and the
        views to read it through that would take too long here (None: none)."""
        catalog = self._catalog
        until = catalog.now() + _LONG
        definitions: dict[str, str] = {}
        analysis = base
        for _ in range(_VIEW_ROUNDS):
            found = catalog.views(reached_relations(analysis), absent_since)
            if found is None:
                return analysis, until, False, None
            views, fresh_until = found
            until = min(until, fresh_until)
            if views.keys() <= definitions.keys():
                return analysis, until, True, None
            definitions |= views
            viewed = self._viewed_before(base, definitions)
            if viewed is None:
                viewed = _read_through_here(base, path, definitions)
                if viewed is None:
                    return analysis, until, False, definitions
                self._remember_viewed(base, definitions, viewed)
            analysis = viewed
        return _TOO_DEEP, until, True, None

    def _viewed_before(self, base: Analysis, definitions: dict[str, str]) -> Analysis | None:
        remembered = self._viewed.get(id(base))
        if remembered is not None and remembered[0] is base and remembered[1] == definitions:
            return remembered[2]
        return None

    def _remember_viewed(
        self, base: Analysis, definitions: dict[str, str], viewed: Analysis
    ) -> None:
        if analysis_bytes(base) > HEAVY_BYTES:
            return  # not kept (facts.HEAVY_BYTES)
        self._viewed[id(base)] = (base, dict(definitions), viewed)
        if len(self._viewed) > self._memo_entries:
            self._viewed.popitem(last=False)

    def _reached(self, base: Analysis, absent_since: float | None) -> tuple[Analysis, float] | None:
        """The analysis with the functions its `q.name`s call, what its relations, operators
        and casts reach, and until when that holds; None while the catalog has not been
        read for it."""
        catalog = self._catalog
        found = catalog.reach(reached_relations(base), absent_since)
        operators = catalog.behind("operator", used_operators(base), absent_since)
        types = catalog.behind("type", cast_types(base), absent_since)
        if found is None or operators is None or types is None:
            return None
        reach, until = found
        until = min(until, operators[1], types[1])
        called = with_field_calls(base, catalog.known(field_relations(base)))
        return with_reached_functions(called, reach, operators[0], types[0]), until

    def _bodies(
        self, names: frozenset[str], absent_since: float | None, unread: set[str] | None = None
    ) -> tuple[dict[str, Reach], float] | None:
        """What the functions of these names run, and the functions those call (see
        bodies_reached), and until when that holds; None while a body is unread (its name
        then added to `unread`, if given)."""
        catalog = self._catalog
        until = catalog.now() + _LONG

        def bodies_of(pending: set[str]) -> dict[str, Reach] | None:
            nonlocal until
            bodies = catalog.behind("function", pending, absent_since)
            if bodies is None:
                if unread is not None:
                    unread.update(pending)
                return None
            until = min(until, bodies[1])
            return bodies[0]

        found = bodies_reached(names, bodies_of)
        return None if found is None else (found, until)


def _own(analysis: Analysis, reached: Analysis, base: Analysis) -> Analysis:
    """What a text reaches, with the text's own statement texts. The first text of its
    shape was read, and a later stage that reads the text itself (a COPY's options, which
    a shape leaves out) must read this one."""
    if reached is base:
        return analysis
    if analysis is base:
        return reached
    return replace(reached, texts=analysis.texts)
