"""Statements as policy decides them: with the functions their relations, operators and
casts reach.

One per gateway, over its catalog (custos/upstream/columns.py). The first statement to
touch a relation waits while the catalog is read; later ones find it, and the analysis
with what it reaches is remembered by the analysis it was made from, so that the decision
point's own memo finds the same object again. Both are forgotten when the catalog's entries
expire or a schema change runs through the gateway.
"""

from __future__ import annotations

from collections import OrderedDict

from custos.protocol import sqlstates
from custos.session.refusal import Refusal
from custos.session.statement import Candidates
from custos.sql.bodies import BODY_DEPTH, bodies_reached
from custos.sql.facts import HEAVY_BYTES, Analysis, analysis_bytes
from custos.sql.reached import (
    Reach,
    called_functions,
    cast_types,
    reached_relations,
    used_operators,
    with_function_bodies,
    with_reached_functions,
)
from custos.upstream.columns import ColumnCatalog

CATALOG_UNREADABLE = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "the gateway could not read from the database's catalog which functions this statement's"
    " tables and views run (view definitions, defaults, checks, triggers), so it refuses it",
    "try again shortly; if it persists, tell the gateway's operators",
)

_LONG = 1e9  # seconds: no limit of its own

# analysis -> (that analysis, it with what it reaches, catalog generation, valid until)
_Remembered = tuple[Analysis, Analysis, int, float]


class FunctionReach:
    def __init__(self, catalog: ColumnCatalog, memo_entries: int = 10_000) -> None:
        self._catalog = catalog
        self._memo_entries = memo_entries
        self._memo: OrderedDict[int, _Remembered] = OrderedDict()

    def applied(self, candidates: Candidates) -> Candidates | None:
        """The candidates with what their relations reach; None until the catalog is read."""
        if len(candidates) == 1:  # the common case, kept short
            analysis, path = candidates[0]
            reached = self._applied(analysis)
            if reached is None or reached is analysis:
                return None if reached is None else candidates
            return ((reached, path),)
        applied: list[tuple[Analysis, tuple[str, ...]]] = []
        for analysis, path in candidates:
            reached = self._applied(analysis)
            if reached is None:
                return None
            applied.append((reached, path))
        return tuple(applied)

    async def load(self, candidates: Candidates) -> None:
        """Reads what the candidates' relations reach, and the bodies of the functions they
        call and reach; raises ColumnsUnavailable."""
        relations: set[str] = set()
        operators: set[str] = set()
        types: set[str] = set()
        for analysis, _ in candidates:
            relations |= reached_relations(analysis)
            operators |= used_operators(analysis)
            types |= cast_types(analysis)
        catalog = self._catalog
        await catalog.load(relations)
        await catalog.load_behind("operator", operators)
        await catalog.load_behind("type", types)
        names: set[str] = set()
        for analysis, _ in candidates:
            reached = self._reached(analysis.canonical or analysis)
            if reached is not None:
                names |= called_functions(reached[0])
        # Each walk over the bodies read so far names the next level still unread.
        for _ in range(BODY_DEPTH):
            unread: set[str] = set()
            if self._bodies(frozenset(names), unread) is not None:
                return
            await catalog.load_behind("function", unread)

    def _applied(self, analysis: Analysis) -> Analysis | None:
        # The relations, and so what they reach, are the same for every text of a shape.
        base = analysis.canonical or analysis
        catalog = self._catalog
        remembered = self._memo.get(id(base))
        if remembered is not None:
            known, reached, generation, until = remembered
            if known is base and generation == catalog.generation and catalog.now() < until:
                return analysis if reached is base else reached
        found = self._reached(base)
        if found is None:
            return None
        reached, until = found
        bodies = self._bodies(called_functions(reached))
        if bodies is None:
            return None
        reached = with_function_bodies(reached, bodies[0])
        until = min(until, bodies[1])
        if analysis_bytes(base) > HEAVY_BYTES:
            return analysis if reached is base else reached  # not kept (facts.HEAVY_BYTES)
        self._memo[id(base)] = (base, reached, catalog.generation, until)
        if len(self._memo) > self._memo_entries:
            self._memo.popitem(last=False)
        return analysis if reached is base else reached

    def _reached(self, base: Analysis) -> tuple[Analysis, float] | None:
        """The analysis with what its relations, operators and casts reach, and until when
        that holds; None while the catalog has not been read for it."""
        catalog = self._catalog
        found = catalog.reach(reached_relations(base))
        operators = catalog.behind("operator", used_operators(base))
        types = catalog.behind("type", cast_types(base))
        if found is None or operators is None or types is None:
            return None
        reach, until = found
        until = min(until, operators[1], types[1])
        return with_reached_functions(base, reach, operators[0], types[0]), until

    def _bodies(
        self, names: frozenset[str], unread: set[str] | None = None
    ) -> tuple[dict[str, Reach], float] | None:
        """What the functions of these names run, and the functions those call (see
        bodies_reached), and until when that holds; None while a body is unread (its name
        then added to `unread`, if given)."""
        catalog = self._catalog
        until = catalog.now() + _LONG

        def bodies_of(pending: set[str]) -> dict[str, Reach] | None:
            nonlocal until
            bodies = catalog.behind("function", pending)
            if bodies is None:
                if unread is not None:
                    unread.update(pending)
                return None
            until = min(until, bodies[1])
            return bodies[0]

        found = bodies_reached(names, bodies_of)
        return None if found is None else (found, until)
