"""Athena SQL over the local audit store: the auditors' named queries run here unchanged.

The tables `custos_audit.events` and `custos_audit.subject_access` are DuckDB views over
the store's JSON Lines segments (plain or gzipped), with the columns the pydantic models
give (so an empty store still has them), `time` as text (as Athena reads it: queries
compare times through `from_iso8601_timestamp`), and the partitions `dt` and `hour` as
text. sqlglot translates the Trino dialect Athena speaks into DuckDB's; the one construct
it leaves as is, Trino's `UNNEST(rows) AS t(a, b, ...)` that spreads an array of rows
into columns, is rewritten here into DuckDB's recursive unnest.
"""

from __future__ import annotations

import threading
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

import duckdb
import sqlglot
from pydantic import BaseModel
from sqlglot import exp

from custos.audit.events import AuditEvent, SubjectAccess
from custos.audit.local import EVENTS, SUBJECT_ACCESS, segments

SCHEMA = "custos_audit"
QUERIES = Path(__file__).parent / "queries"
PARTITIONS = {"dt": "VARCHAR", "hour": "VARCHAR"}
_MODELS: dict[str, type[BaseModel]] = {EVENTS: AuditEvent, SUBJECT_ACCESS: SubjectAccess}


class AuditQueryError(Exception):
    """A query that cannot run; the message says why, and what to do."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True, slots=True)
class NamedQuery:
    """One file of `queries/`: its header and its SQL, as the CDK app publishes it."""

    name: str
    description: str
    parameters: str
    sql: str


def named_queries() -> dict[str, NamedQuery]:
    found: dict[str, NamedQuery] = {}
    for path in sorted(QUERIES.glob("*.sql")):
        text = path.read_text()
        header: dict[str, str] = {}
        for line in text.splitlines():
            if not line.startswith("-- "):
                break  # the header is the comment lines the file opens with
            key, _, value = line.removeprefix("-- ").partition(":")
            header[key.strip()] = value.strip()
        query = NamedQuery(
            header["name"], header["description"], header.get("parameters", ""), text
        )
        found[query.name] = query
    return found


def duckdb_type(annotation: Any) -> str:
    """The DuckDB type of a model field, as Athena's table declares it."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (present,) = [arm for arm in typing.get_args(annotation) if arm is not type(None)]
        return duckdb_type(present)
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return f"{duckdb_type(typing.get_args(annotation)[0])}[]"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"MAP({duckdb_type(key)}, {duckdb_type(value)})"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"STRUCT({_column_list(annotation)})"
    if annotation is bool:
        return "BOOLEAN"
    if annotation is int:
        return "BIGINT"
    if annotation is float:
        return "DOUBLE"
    if annotation in (str, datetime) or (
        isinstance(annotation, type) and issubclass(annotation, Enum)
    ):
        return "VARCHAR"
    raise TypeError(f"no DuckDB type for {annotation!r}")


def _column_list(model: type[BaseModel]) -> str:
    return ", ".join(f'"{name}" {duckdb_type(field.annotation)}' for name, field in _fields(model))


def _fields(model: type[BaseModel]) -> list[tuple[str, Any]]:
    return list(model.model_fields.items())


QUERY_TIMEOUT_SECONDS = 300.0
"""How long an auditor's query may run."""


def sql_literal(text: str) -> str:
    """A string as an SQL literal: DuckDB's table functions take no parameters."""
    return "'" + text.replace("'", "''") + "'"


def open_archive(root: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the store's tables in the schema `custos_audit`, read into
    memory, and no access to anything else."""
    if not root.is_dir():
        raise AuditQueryError(
            f"no audit store at {root}: give --dir the directory the gateway writes"
            " (audit.dir in its config, or `custos serve --audit DIR`)"
        )
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute(f"CREATE SCHEMA {SCHEMA}")
    for table, model in _MODELS.items():
        files = segments(root, table)  # as the store writes them: verify names the rest
        columns = {name: duckdb_type(field.annotation) for name, field in _fields(model)}
        if not files:
            declared = ", ".join(
                f'"{name}" {kind}' for name, kind in {**columns, **PARTITIONS}.items()
            )
            connection.execute(f"CREATE TABLE {SCHEMA}.{table} ({declared})")
            continue
        file_list = "[" + ", ".join(sql_literal(str(path)) for path in files) + "]"
        column_map = "{" + ", ".join(
            f"{sql_literal(n)}: {sql_literal(k)}" for n, k in columns.items()
        )
        hive_types = "{" + ", ".join(
            f"{sql_literal(n)}: {sql_literal(k)}" for n, k in PARTITIONS.items()
        )
        connection.execute(
            # Every value in the text below is a literal made by sql_literal.
            f"CREATE TABLE {SCHEMA}.{table} AS SELECT * FROM read_json({file_list},"  # noqa: S608
            f" format = 'newline_delimited', hive_partitioning = true,"
            f" union_by_name = true, columns = {column_map}}},"
            f" hive_types = {hive_types}}})"
        )
    # The archive is read in: the auditor's SQL reads it and nothing else, no file
    # (read_text('/etc/...')), no extension, and cannot turn that back on.
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


def translate(sql: str) -> str:
    """Athena's SQL (Trino's dialect) as DuckDB runs it."""
    try:
        statements = sqlglot.parse(sql, read="athena")
    except sqlglot.errors.ParseError as error:
        raise AuditQueryError(f"the query is not SQL Athena reads: {error}") from None
    statements = [statement for statement in statements if statement is not None]
    if len(statements) != 1:
        raise AuditQueryError(f"give one query, not {len(statements)}")
    (statement,) = statements
    if not isinstance(statement, exp.Query):
        raise AuditQueryError("the audit trail is read-only here: give a SELECT (or WITH) query")
    return statement.transform(_spread_rows).sql(dialect="duckdb")


def _spread_rows(node: exp.Expression) -> exp.Expression:
    """`UNNEST(rows) AS t(a, b, c)` in Trino spreads each row into the columns named;
    DuckDB does that with a recursive unnest in a lateral subquery."""
    if not isinstance(node, exp.Unnest) or len(node.expressions) != 1:
        return node
    alias = node.args.get("alias")
    if not isinstance(alias, exp.TableAlias) or len(alias.columns) < 2:
        return node
    (array,) = node.expressions
    spread = exp.Anonymous(
        this="UNNEST",
        expressions=[
            array.copy(),
            exp.Kwarg(this=exp.var("recursive"), expression=exp.true()),
        ],
    )
    return exp.Subquery(this=exp.select(spread), alias=alias.copy())


def run_query(
    root: Path,
    sql: str,
    parameters: Sequence[str] = (),
    timeout_seconds: float = QUERY_TIMEOUT_SECONDS,
) -> QueryResult:
    """Runs one Athena query over the store, with `?` bound to the parameters in order;
    stopped after `timeout_seconds` (a recursive query need never end)."""
    translated = translate(sql)
    connection = open_archive(root)
    deadline = threading.Timer(timeout_seconds, connection.interrupt)
    deadline.start()
    try:
        cursor = connection.execute(translated, list(parameters))
        columns = tuple(column[0] for column in cursor.description or ())
        return QueryResult(columns, cursor.fetchall())
    except duckdb.InterruptException:
        raise AuditQueryError(
            f"the query ran longer than {timeout_seconds:g} s and was stopped; narrow it, or"
            " give --timeout more"
        ) from None
    except duckdb.Error as error:
        raise AuditQueryError(
            f"the query failed: {error}\nas DuckDB ran it:\n{translated}"
        ) from None
    finally:
        deadline.cancel()
        connection.close()
