"""Name scopes of a query and how column references resolve in them.

We never know a base table's columns, so a base relation offers every name (it "possibly" has
the column); a subquery, CTE or VALUES list offers exactly the names of its output (it
"definitely" has them, or not). A reference resolves as PostgreSQL resolves it, innermost query
level first, except that where PostgreSQL would need the catalog to choose we take every
candidate: an unqualified name matches every base relation of its level and, unless a definite
match settles it, those of the enclosing levels too (a subquery can read an outer table's column
by its bare name). Reads are over-approximated; that is the safe side for policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from custos.sql import budget
from custos.sql.facts import ALL_COLUMNS, JsonShape
from custos.sql.risks import ROW_FUNCTIONS

UNCERTAIN = "?column?"
"""The name of an output column whose name the walk does not know: it may be any name."""

Source = tuple[str, str]
"""(schema-qualified relation, column); column ALL_COLUMNS means any column of it."""

NO_SOURCES: frozenset[Source] = frozenset()


class Col(NamedTuple):
    """An output column of a FROM item or query, with the base columns its values come from.

    name None: columns of unknown number and names. A `*` over base relations passes their
    columns through, so its column `x` is column x of those relations; an opaque one (a
    function's result) may carry anything of its sources under any name.
    """

    name: str | None
    sources: frozenset[Source]
    opaque: bool = False
    # See OutputColumn.expandable: name None standing for exactly one relation's columns.
    expandable: bool = False
    # Its name is the walk's reading of PostgreSQL's naming rules, not an alias: an outer
    # reference by another name may mean it too.
    guessed: bool = False
    # A JSON object built with known keys (only where the SELECT list builds it).
    json: JsonShape | None = None


def _as_named(column: Col, name: str) -> set[Source]:
    if column.opaque:
        return set(column.sources)
    return {(rel, name if col == ALL_COLUMNS else col) for rel, col in column.sources}


def base_columns(relation: str) -> list[Col]:
    return [Col(None, frozenset({(relation, ALL_COLUMNS)}), expandable=True)]


def unexpandable(columns: list[Col]) -> list[Col]:
    """The columns, none of them standing any longer for exactly one relation's columns."""
    return [
        column._replace(expandable=False) if column.expandable else column for column in columns
    ]


def sources_of(columns: Iterable[Col]) -> frozenset[Source]:
    """Every source the columns' values may come from."""
    return frozenset().union(*(column.sources for column in columns))


def renamed(columns: list[Col], names: list[str]) -> list[Col]:
    """Apply alias column names (`AS x(a, b)`) to the leading columns."""
    if not names:
        return columns
    result: list[Col] = []
    pending = iter(names)
    for index, column in enumerate(columns):
        if column.name is None:
            # The expansion's width is unknown: every remaining alias may be any of its
            # columns, or any column after it.
            rest = columns[index:]
            sources = sources_of(rest)
            opaque = any(later.opaque for later in rest)
            result.extend(Col(name, sources, opaque) for name in pending)
            # Some of its columns now go by the alias names, and no one knows how many.
            result.extend(unexpandable(columns[index:]))
            return result
        new_name = next(pending, None)
        result.append(column if new_name is None else Col(new_name, column.sources, column.opaque))
    return result


class Rte:
    """A FROM item as queries see it: the name it goes by and its columns."""

    __slots__ = (
        "aliased",
        "columns",
        "expands",
        "merged",
        "plain_relation",
        "refname",
        "relation",
        "touched",
        "view",
    )

    def __init__(
        self,
        refname: str | None,
        columns: list[Col],
        relation: str | None = None,
        *,
        aliased: bool = False,
        expands: bool = True,
        view: str | None = None,
    ) -> None:
        self.refname = refname
        self.columns = columns
        self.relation = relation  # set for a base relation
        # Set for a view read through its definition: its columns are the definition's.
        self.view = view
        self.aliased = aliased  # an aliased relation cannot be named schema.table
        self.expands = expands  # False: not part of `*` (RETURNING's old / new)
        self.touched = 0  # references resolved to it, to see whether a WHERE uses the target
        # Joined by USING or NATURAL: an unqualified `*` lists the join columns once, first.
        self.merged = False
        # A base relation without alias column names: any name is that column of it.
        self.plain_relation = relation if len(columns) == 1 else None

    def lookup(self, name: str) -> tuple[bool, set[Source]] | None:
        """(definite, sources) when this item may have a column `name`, else None."""
        if self.plain_relation is not None:
            return False, {(self.plain_relation, name)}
        named: set[Source] | None = None
        unnamed: set[Source] | None = None
        for column in self.columns:
            if column.name == name:
                named = set(column.sources) if named is None else named | column.sources
            elif column.name is None or column.name == UNCERTAIN or column.guessed:
                # A column of unknown names, or one whose name the walk could not tell or
                # guessed (PostgreSQL may call it `name`): possibly the one named.
                found = _as_named(column, name) if column.name is None else set(column.sources)
                unnamed = found if unnamed is None else unnamed | found
        if named is not None:
            return True, named
        if unnamed is not None:
            return False, unnamed
        return None

    def whole_row(self) -> set[Source]:
        sources: set[Source] = set()
        for column in self.columns:
            sources |= column.sources
        return sources


class Scope:
    """One query level: its FROM items, its CTEs, and the enclosing level."""

    __slots__ = ("ctes", "parent", "rtes")

    def __init__(
        self,
        parent: Scope | None,
        rtes: list[Rte] | None = None,
        ctes: dict[str, list[Col]] | None = None,
    ) -> None:
        self.parent = parent
        self.rtes: list[Rte] = [] if rtes is None else rtes
        self.ctes: dict[str, list[Col]] = {} if ctes is None else ctes

    def find_cte(self, name: str) -> list[Col] | None:
        scope: Scope | None = self
        while scope is not None:
            found = scope.ctes.get(name)
            if found is not None:
                return found
            scope = scope.parent
        return None

    def find_rte(self, refname: str) -> Rte | None:
        scope: Scope | None = self
        while scope is not None:
            for rte in scope.rtes:
                if rte.refname == refname:
                    return rte
            scope = scope.parent
        return None


def resolve_name(scope: Scope | None, name: str) -> set[Source]:
    """An unqualified column reference (or a whole-row reference to a FROM item's name)."""
    sources: set[Source] = set()
    level = scope
    while level is not None:
        definite: list[tuple[Rte, set[Source]]] = []
        possible: list[tuple[Rte, set[Source]]] = []
        budget.spend(len(level.rtes))
        for rte in level.rtes:
            hit = rte.lookup(name)
            if hit is not None:
                (definite if hit[0] else possible).append((rte, hit[1]))
        for rte, found in definite or possible:
            rte.touched += 1
            sources |= found
            budget.spend(len(found))  # a column's lineage is copied: thousands of entries
        if definite:
            return sources
        level = level.parent
    # PostgreSQL takes a bare FROM item name as a whole-row reference when no column has it.
    named = scope.find_rte(name) if scope is not None else None
    if named is not None:
        named.touched += 1
        sources |= named.whole_row()
    return sources


def resolve_qualified(scope: Scope | None, qualifier: str, name: str) -> set[Source]:
    """`q.name`: a column of the FROM item q, or else field `name` of a composite column q.

    Where q has no column `name`, or `name` is a function that takes any row, PostgreSQL
    may read it as the call name(q) (field notation), which receives the whole row.
    """
    rte = scope.find_rte(qualifier) if scope is not None else None
    if rte is None:
        return resolve_name(scope, qualifier)
    rte.touched += 1
    hit = rte.lookup(name)
    if hit is None or name in ROW_FUNCTIONS:
        return rte.whole_row() if hit is None else hit[1] | rte.whole_row()
    return hit[1]


def resolve_schema_qualified(
    scope: Scope | None, schema: str, table: str, name: str, relation: str
) -> set[Source]:
    """`schema.table.name` (relation: the two qualified), or else `q.composite.field`."""
    level = scope
    while level is not None:
        for rte in level.rtes:
            named = rte.relation == relation or rte.view == relation
            if named and rte.refname == table and not rte.aliased:
                rte.touched += 1
                hit = rte.lookup(name)
                return set() if hit is None else hit[1]
        level = level.parent
    return resolve_qualified(scope, schema, table)
