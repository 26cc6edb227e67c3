"""`*` replaced by the columns it stands for, once the database has said what they are.

The analysis alone cannot know a table's columns, so `SELECT *`, `t.*`, a whole-row reference
and an INSERT without a column list read or write ALL_COLUMNS. Given the relations' columns
(custos/upstream/columns.py reads them from the database), this fills them in:

- columns_read / columns_written gain the concrete columns and KEEP the ALL_COLUMNS marker.
  Policy goes on treating it as "every column the catalog classifies", so a column list that
  has gone stale (a column added since it was read) can never narrow what a decision counts.
- an output column that stands for exactly one relation's columns becomes one output column
  per column, in place and in order; those that do not (a USING join's `*`, alias column
  names, a set operation) stay as they are, since a wrong count would misplace every column
  after them.

Pure: no IO. Relations the mapping does not hold are left as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from custos.sql.facts import ALL_COLUMNS, Analysis, OutputColumn, StatementFacts

Columns = Mapping[str, tuple[str, ...]]
"""relation ("schema.name", as the facts spell it) -> its columns in table order."""


def relations_with_all_columns(analysis: Analysis) -> frozenset[str]:
    """The relations some `*` of the analysis stands for every column of."""
    found: set[str] = set()
    for statement in analysis.statements:
        for used in (statement.columns_read, statement.columns_written):
            found.update(relation for relation, names in used.items() if ALL_COLUMNS in names)
        for output in statement.output_columns:
            found.update(relation for relation, name in output.sources if name == ALL_COLUMNS)
    return frozenset(found)


def expand_all_columns(analysis: Analysis, columns: Columns) -> Analysis:
    """The analysis with `*` expanded for the relations in `columns`; itself if none applies.

    The result keeps the original's canonical analysis (or the original itself), so that a
    decision remembered for it is found again: expansion only adds what a `*` already meant.
    """
    statements = tuple(_expanded(statement, columns) for statement in analysis.statements)
    if all(new is old for new, old in zip(statements, analysis.statements, strict=True)):
        return analysis
    return dataclasses.replace(
        analysis, statements=statements, canonical=analysis.canonical or analysis
    )


def _expanded(statement: StatementFacts, columns: Columns) -> StatementFacts:
    read = _with_columns(statement.columns_read, columns)
    written = _with_columns(statement.columns_written, columns)
    output = _expanded_output(statement.output_columns, columns)
    if read is None and written is None and output is None:
        return statement
    return dataclasses.replace(
        statement,
        columns_read=statement.columns_read if read is None else read,
        columns_written=statement.columns_written if written is None else written,
        output_columns=statement.output_columns if output is None else output,
    )


def _with_columns(
    used: dict[str, frozenset[str]], columns: Columns
) -> dict[str, frozenset[str]] | None:
    changed: dict[str, frozenset[str]] = {}
    for relation, names in used.items():
        known = columns.get(relation)
        if known is not None and ALL_COLUMNS in names and not names.issuperset(known):
            changed[relation] = names.union(known)
    return {**used, **changed} if changed else None


def _expanded_output(
    outputs: tuple[OutputColumn, ...], columns: Columns
) -> tuple[OutputColumn, ...] | None:
    result: list[OutputColumn] = []
    changed = False
    for output in outputs:
        relation = _whole_relation(output)
        known = columns.get(relation) if relation is not None else None
        if relation is None or known is None:
            result.append(output)
            continue
        result.extend(OutputColumn(name, frozenset({(relation, name)})) for name in known)
        changed = True
    return tuple(result) if changed else None


def _whole_relation(output: OutputColumn) -> str | None:
    """The relation whose every column, in order, `output` stands for; None if it does not."""
    if output.name is not None or not output.expandable or len(output.sources) != 1:
        return None
    ((relation, name),) = output.sources
    return relation if name == ALL_COLUMNS else None
