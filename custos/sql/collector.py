"""The facts of one statement as the walk gathers them, frozen into StatementFacts at the end."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from custos.sql import exposure
from custos.sql.facts import (
    OutputColumn,
    ParameterRef,
    PatternMatch,
    StatementFacts,
    StatementKind,
    ValueCopy,
)
from custos.sql.names import Resolver
from custos.sql.scope import Col, Source

K = StatementKind
KIND_PRIORITY: tuple[StatementKind, ...] = (
    K.DO,
    K.GRANT,
    K.DDL,
    K.MERGE,
    K.DELETE,
    K.UPDATE,
    K.INSERT,
    K.COPY_FROM,
    K.CALL,
    K.COPY_TO,
    K.SET,
    K.OTHER,
    K.TRANSACTION,
    K.SELECT,
)
"""Most consequential first: a statement's `kind` is the first of these among its kinds."""


class SearchPathCall:
    """A set_config('search_path', ...) call: only a plain top-level one changes the path."""

    __slots__ = ("call", "local", "path")

    def __init__(self, call: Any, path: tuple[str, ...] | None, local: bool | None) -> None:
        self.call = call  # the FuncCall node, compared by identity
        self.path = path  # None: not a literal we can read
        self.local = local


class Collector:
    __slots__ = (
        "calls_with_columns",
        "cast_types",
        "closes",
        "collects_rows",
        "columns_read",
        "columns_written",
        "compared",
        "copies",
        "copy_destination",
        "deallocates",
        "declares",
        "dynamic",
        "executes",
        "explain_only",
        "fetches",
        "field_names",
        "functions",
        "holdable",
        "kinds",
        "limit",
        "new_search_path",
        "operators",
        "output_columns",
        "patterns",
        "prepares",
        "relations_read",
        "relations_written",
        "resolver",
        "search_path_calls",
        "search_path_local",
        "sets_role",
        "statement_type",
        "transaction",
        "views",
        "without_where",
    )

    def __init__(
        self, statement_type: str, resolver: Resolver, views: Mapping[str, Any] | None = None
    ) -> None:
        self.statement_type = statement_type
        self.resolver = resolver
        # relation -> the parse tree of its definition, for the views the catalog has
        # described (custos/sql/views.py): the walk reads them as the subqueries they are.
        self.views: Mapping[str, Any] = views or {}
        self.kinds: set[StatementKind] = set()
        self.relations_read: set[str] = set()
        self.relations_written: set[str] = set()
        self.columns_read: dict[str, set[str]] = {}
        self.columns_written: dict[str, set[str]] = {}
        self.functions: set[str] = set()
        self.operators: set[str] = set()
        self.cast_types: set[str] = set()
        self.calls_with_columns: dict[tuple[str, frozenset[Source]], None] = {}
        self.field_names: set[tuple[str, str]] = set()
        self.compared: set[Source] = set()
        self.patterns: dict[PatternMatch, None] = {}
        self.without_where = False
        self.limit: int | ParameterRef | None = None
        self.copy_destination: str | None = None
        self.dynamic = False
        # Rows gathered into one value (a collecting aggregate, ARRAY(SELECT ...), a recursive
        # WITH): the LIMIT does not bound the rows read.
        self.collects_rows = False
        self.new_search_path: tuple[str, ...] | None = None
        self.search_path_local = False
        self.search_path_calls: list[SearchPathCall] = []
        self.sets_role = False
        self.prepares: str | None = None
        self.executes: str | None = None
        self.deallocates: str | None = None
        self.declares: str | None = None
        self.holdable = False
        self.closes: str | None = None
        self.fetches: str | None = None
        self.transaction: str | None = None
        self.explain_only = False
        self.output_columns: list[Col] = []
        self.copies: dict[ValueCopy, None] = {}

    def read(self, sources: Iterable[Source]) -> None:
        for relation, column in sources:
            self.relations_read.add(relation)
            columns = self.columns_read.get(relation)
            if columns is None:
                self.columns_read[relation] = {column}
            else:
                columns.add(column)

    def write(self, relation: str, columns: Collection[str] = ()) -> None:
        self.relations_written.add(relation)
        if columns:
            self.columns_written.setdefault(relation, set()).update(columns)

    def copy(
        self, relation: str | None, column: str, sources: Iterable[Source], unseen: bool = False
    ) -> None:
        """The statement stores values of these sources in the column (see ValueCopy)."""
        self.copies[ValueCopy(relation, column, frozenset(sources), unseen)] = None

    def facts(self) -> StatementFacts:
        kinds = self.kinds or {K.OTHER}
        kind = next(k for k in KIND_PRIORITY if k in kinds)
        relations_read = set(self.relations_read)
        if exposure.reads_other_sessions_statements(self.functions):
            relations_read.add(exposure.ACTIVITY_RELATION)
        return StatementFacts(
            kind=kind,
            kinds=frozenset(kinds),
            relations_read=frozenset(relations_read),
            relations_written=frozenset(self.relations_written),
            columns_read={r: frozenset(c) for r, c in self.columns_read.items()},
            columns_written={r: frozenset(c) for r, c in self.columns_written.items()},
            functions=frozenset(self.functions),
            operators=frozenset(self.operators),
            cast_types=frozenset(self.cast_types),
            update_or_delete_without_where=self.without_where,
            pattern_matches=tuple(self.patterns),
            limit=self.limit,
            copy_destination=self.copy_destination,
            dynamic=self.dynamic,
            new_search_path=self.new_search_path,
            prepares=self.prepares,
            executes=self.executes,
            deallocates=self.deallocates,
            declares=self.declares,
            holdable=self.holdable,
            closes=self.closes,
            fetches=self.fetches,
            transaction=self.transaction,
            explain_only=self.explain_only,
            sets_role=self.sets_role,
            search_path_local=self.search_path_local,
            output_columns=tuple(
                OutputColumn(c.name, c.sources, c.expandable, c.opaque, c.json)
                for c in self.output_columns
            ),
            statement_type=self.statement_type,
            reads_statistics=exposure.reads_statistics(relations_read, self.functions),
            collects_rows=self.collects_rows,
            calls_with_columns=tuple(self.calls_with_columns),
            field_names=frozenset(self.field_names),
            compared=frozenset(self.compared),
            copies=tuple(self.copies),
        )
