"""Statements read through the views they read, once the catalog has said what those are.

The text alone cannot tell a view from a table, so its analysis takes a view's columns as a
table's: plain columns of a relation no policy catalog lists. Yet a view's column may be a
customer's name, or a value computed from it (`CREATE VIEW v AS SELECT id, f(full_name) AS
k ...`), and `SELECT id FROM v WHERE k = 1` then searches names as surely as writing
`f(full_name) = 1` would. Given the definitions of the views a statement reads (and of the
views they read: custos/upstream/reach.py reads them as SQL whose every name is
schema-qualified), this analyses the statement again, the walk reading each view as the
subquery it is (walker.view_columns): its columns carry their base columns and whether they
are computed, its relations and functions count as read and called, and writes through it
write the base columns its columns come from.

Pure: no IO. Like the functions reached (reached.py) this changes decisions, so the result is
an analysis of its own (no `canonical`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from pglast.parser import ParseError, parse_sql_json

from custos.protocol import sqlstates
from custos.sql import budget
from custos.sql.analysis import analyze, analyze_within, too_complex
from custos.sql.facts import ALL_COLUMNS, Analysis, StatementFacts
from custos.sql.scope import Source
from custos.sql.walker import QUERY_NODE_TYPES, Node, only

UNREADABLE_VIEW = (
    "the definition of the view {view} could not be analysed, so what reading it reads is "
    "unknown and the statement is refused; tell the gateway's operators"
)


def through_views(
    analysis: Analysis,
    search_path: tuple[str, ...],
    definitions: Mapping[str, str],
    budget_seconds: float = budget.DEFAULT_SECONDS,
) -> Analysis:
    """The analysis of the same text, reading the views in `definitions` (relation -> its
    defining query) through them; the analysis itself when it reads none of them, and a
    refusal when that takes more than `budget_seconds`."""
    viewed = through_views_within(analysis, search_path, definitions, budget_seconds)
    return too_complex(budget_seconds) if viewed is None else viewed


def through_views_within(
    analysis: Analysis,
    search_path: tuple[str, ...],
    definitions: Mapping[str, str],
    budget_seconds: float,
) -> Analysis | None:
    """As through_views, but None when the budget runs out: a caller may try again with
    more, elsewhere (custos/sql/workers.py)."""
    if not definitions or analysis.error is not None:
        return analysis
    views: dict[str, Node] = {}
    for relation, sql in definitions.items():
        parsed = _query_of(sql)
        if parsed is None:
            message = UNREADABLE_VIEW.format(view=relation)
            return Analysis(
                (), analysis.texts, error=message, error_sqlstate=sqlstates.FEATURE_NOT_SUPPORTED
            )
        views[relation] = parsed
    text = statements_text(analysis)
    # The text was analysed before within the limit on its length: the views add none.
    limit = max(len(text), budget.MAX_STATEMENT_CHARS)
    return analyze_within(text, search_path, budget_seconds, limit, views)


def statements_text(analysis: Analysis) -> str:
    """The analysis' statements as one text (a newline before each `;` ends a trailing
    comment)."""
    return "\n;\n".join(analysis.texts)


def _query_of(sql: str) -> Node | None:
    """The parse tree of a view's defining query; None if it is not one."""
    try:
        statements: list[Node] = json.loads(parse_sql_json(sql)).get("stmts") or []
    except (ParseError, RecursionError, UnicodeEncodeError):
        return None
    if len(statements) != 1:
        return None
    node: Node = statements[0]["stmt"]
    return node if only(node)[0] in QUERY_NODE_TYPES else None


Lineage = Mapping[str, Mapping[str, frozenset[tuple[str, str]]]]
"""view -> its column -> the base columns (relation, column) that column comes from."""


def view_lineage(definitions: Mapping[str, str]) -> dict[str, dict[str, frozenset[Source]]]:
    """Each view's columns traced to base columns (read through the others given): for
    reads a statement makes without naming the view, such as a function body's."""
    lineage: dict[str, dict[str, frozenset[Source]]] = {}
    for view, sql in definitions.items():
        analysis = through_views(analyze(sql, ()), (), definitions)
        columns: dict[str, frozenset[Source]] = {}
        everything: set[Source] = set()
        for statement in analysis.statements[:1]:
            for output in statement.output_columns:
                if output.name is not None:
                    columns[output.name] = output.sources
                everything |= output.sources
        if analysis.error is not None or not analysis.statements:
            everything = {(view, ALL_COLUMNS)}  # unknown: the view's own name stands
        columns[ALL_COLUMNS] = frozenset(everything)
        lineage[view] = columns
    return lineage


def with_view_reads(analysis: Analysis, lineage: Lineage) -> Analysis:
    """The analysis reading, besides each view column it reads, the base columns that
    column comes from; itself when it reads no column of these views."""
    statements = tuple(_with_view_reads(statement, lineage) for statement in analysis.statements)
    if all(new is old for new, old in zip(statements, analysis.statements, strict=True)):
        return analysis
    return dataclasses.replace(analysis, statements=statements, canonical=None)


def _with_view_reads(statement: StatementFacts, lineage: Lineage) -> StatementFacts:
    added: set[Source] = set()
    for relation, names in statement.columns_read.items():
        columns = lineage.get(relation)
        if columns is None:
            continue
        for name in names:
            added |= columns.get(name, columns[ALL_COLUMNS])
    if not added:
        return statement
    read = {relation: set(names) for relation, names in statement.columns_read.items()}
    for relation, column in added:
        read.setdefault(relation, set()).add(column)
    # What function bodies read through a view, they read of its tables.
    function_reads = set(statement.function_reads)
    for relation, name in statement.function_reads:
        columns = lineage.get(relation)
        if columns is not None:
            function_reads |= columns.get(name, columns[ALL_COLUMNS])
    return dataclasses.replace(
        statement,
        relations_read=statement.relations_read | read.keys(),
        columns_read={relation: frozenset(names) for relation, names in read.items()},
        function_reads=frozenset(function_reads),
    )
