"""`custos policy ...`: validate, explain, diff and the JSON Schema of policy documents."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import psycopg
import yaml

from custos.policy.engine import Decision, DecisionRequest, PolicyEngine
from custos.policy.models import Effect, PolicyDocument, json_schema_text
from custos.policy.source import PolicyError, load_policy
from custos.sql.bodies import bodies_reached, body_reach
from custos.sql.expansion import expand_all_columns, relations_with_all_columns
from custos.sql.facts import ALL_COLUMNS, Analysis
from custos.sql.reached import (
    NOTHING_REACHED,
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
from custos.sql.views import through_views
from custos.upstream.columns import askable, columns_from_rows, columns_query
from custos.upstream.reach import (
    EMPTY_SEARCH_PATH,
    asked_about,
    behind_from_rows,
    bodies_from_rows,
    bodies_query,
    functions_called,
    operators_query,
    reach_from_rows,
    reach_query,
    types_query,
    views_from_rows,
)

_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_DEFAULT_SEARCH_PATH = ("public",)


def add_policy_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Registers `policy` and its subcommands on the main CLI's subparsers."""
    policy = subparsers.add_parser("policy", help="validate, explain and compare policy documents")
    commands = policy.add_subparsers(required=True, metavar="SUBCOMMAND")

    validate = commands.add_parser("validate", help="check a policy document")
    validate.add_argument("file", type=Path, metavar="FILE")
    validate.set_defaults(command=validate_command)

    explain = commands.add_parser(
        "explain", help="show how a policy decides a statement for a role, and why"
    )
    explain.add_argument("file", type=Path, metavar="FILE")
    explain.add_argument("--role", required=True, help="the role the statement runs as")
    explain.add_argument(
        "--search-path",
        default=",".join(_DEFAULT_SEARCH_PATH),
        help="comma-separated schemas for unqualified names (default: public)",
    )
    explain.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="VALUE",
        help="a bind parameter's value in text form; repeat for $1, $2, ...",
    )
    explain.add_argument("--json", action="store_true", help="print the decision as JSON")
    explain.add_argument(
        "--upstream",
        metavar="DSN",
        help="a PostgreSQL DSN to read the columns a `*` stands for from, to list them"
        " (text output; one read-only catalog query)",
    )
    explain.add_argument("sql", metavar="SQL")
    explain.set_defaults(command=explain_command)

    diff = commands.add_parser(
        "diff", help="show the decisions that change from one policy to another"
    )
    diff.add_argument("old", type=Path, metavar="OLD")
    diff.add_argument("new", type=Path, metavar="NEW")
    diff.add_argument(
        "--corpus",
        type=Path,
        metavar="FILE",
        help="YAML list of {role, sql, search_path?, params?} (default: every role of NEW "
        "with representative statements over NEW's catalog)",
    )
    diff.set_defaults(command=diff_command)

    schema = commands.add_parser("schema", help="print the policy document's JSON Schema")
    schema.set_defaults(command=schema_command)


# --- validate -----------------------------------------------------------------------------


def validate_command(arguments: argparse.Namespace) -> int:
    document = _load(arguments.file)
    if document is None:
        return 1
    engine = PolicyEngine(document)
    print(
        f"valid: {len(document.roles)} roles, {len(document.rules)} rules, version {engine.version}"
    )
    return 0


# --- explain ------------------------------------------------------------------------------


def explain_command(arguments: argparse.Namespace) -> int:
    document = _load(arguments.file)
    if document is None:
        return 2
    engine = PolicyEngine(document)
    search_path = _split_path(arguments.search_path)
    analysis = _analyze(arguments.sql, search_path)
    columns: dict[str, tuple[str, ...]] = {}
    if arguments.upstream is not None:
        # Decided as the gateway decides: with what the statement reaches through the
        # database's catalog (expansion of `*` only adds to the facts shown).
        try:
            columns = read_columns(arguments.upstream, relations_with_all_columns(analysis))
            analysis = read_reach(arguments.upstream, analysis, search_path)
        except (psycopg.Error, ValueError) as error:
            print(
                f"custos policy explain: cannot read the catalog from --upstream: {error}",
                "check the DSN, or leave out --upstream to explain without the database",
                sep="\n",
                file=sys.stderr,
            )
            return 2
    decision = engine.decide(DecisionRequest(arguments.role, analysis, tuple(arguments.param)))
    expanded = expand_all_columns(analysis, columns)
    if arguments.json:
        print(json.dumps({**decision.as_dict(), "columns": _columns_as_dict(expanded)}, indent=2))
    else:
        _print_decision(decision, expanded, sys.stdout)
    return 0


def _columns_as_dict(analysis: Analysis) -> dict[str, object]:
    """The columns read and written per relation, and each result column with its sources."""
    return {
        "read": _merged(s.columns_read for s in analysis.statements),
        "written": _merged(s.columns_written for s in analysis.statements),
        "results": [
            [
                {
                    "name": column.name,
                    "sources": [f"{relation}.{name}" for relation, name in sorted(column.sources)],
                }
                for column in statement.output_columns
            ]
            for statement in analysis.statements
            if statement.output_columns
        ],
    }


def _merged(used: Iterable[Mapping[str, frozenset[str]]]) -> dict[str, list[str]]:
    """relation -> columns, for every statement together, relations and columns in order."""
    relations: dict[str, set[str]] = {}
    for columns in used:
        for relation, names in columns.items():
            relations.setdefault(relation, set()).update(names)
    return {relation: _ordered(names) for relation, names in sorted(relations.items())}


def _ordered(names: Iterable[str]) -> list[str]:
    """Column names sorted, `*` (every column) first."""
    return sorted(names, key=lambda name: (name != ALL_COLUMNS, name))


def read_columns(dsn: str, relations: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The columns of those `relations` that exist, read from the database at `dsn`."""
    asked = {relation for relation in relations if askable(relation)}
    if not asked:
        return {}
    with psycopg.connect(dsn, autocommit=True, application_name="custos-explain") as connection:
        rows = connection.execute(columns_query(asked)).fetchall()
    return columns_from_rows(rows)


def read_reach(dsn: str, analysis: Analysis, search_path: tuple[str, ...]) -> Analysis:
    """The analysis read through its views, with what its relations, operators and casts
    reach, read from the database at `dsn` as the gateway reads them
    (custos/upstream/reach.py, custos/session/reached.py)."""
    with psycopg.connect(dsn, autocommit=True, application_name="custos-explain") as connection:
        connection.execute(EMPTY_SEARCH_PATH)

        def rows(query: str) -> list[tuple[str | None, ...]]:
            return list(connection.execute(query).fetchall())

        reach: dict[str, Reach] = {}
        definitions: dict[str, str] = {}
        viewed = analysis
        # Each round reads the relations that the views read so far are found to read.
        for _ in range(4):
            relations = [
                relation
                for relation in reached_relations(viewed)
                if askable(relation) and asked_about(relation) and relation not in reach
            ]
            found = rows(reach_query(relations)) if relations else []
            reach |= reach_from_rows(found, functions_called)
            reach |= {relation: NOTHING_REACHED for relation in relations if relation not in reach}
            views = {
                view: definition
                for closure in views_from_rows(found).values()
                for view, definition in closure.items()
                if view not in definitions
            }
            if not views:
                break
            definitions |= views
            viewed = through_views(analysis, search_path, definitions)
        viewed = with_field_calls(viewed, read_columns(dsn, field_relations(viewed)))
        operators, types = used_operators(viewed), cast_types(viewed)
        behind = (
            behind_from_rows(rows(operators_query(operators)), functions_called)
            if operators
            else {}
        )
        casts = behind_from_rows(rows(types_query(types)), functions_called) if types else {}
        reached = with_reached_functions(viewed, reach, behind, casts)
        # The bodies of the functions called, and of those they call, as the gateway reads
        # them (custos/session/reached.py).
        bodies = bodies_reached(
            called_functions(reached),
            lambda pending: bodies_from_rows(rows(bodies_query(pending)), body_reach),
        )
    return with_function_bodies(reached, bodies or {}, search_path)


def _print_decision(decision: Decision, analysis: Analysis, out: TextIO) -> None:
    facts = decision.facts
    lines = [
        f"decision:        {decision.effect}",
        f"deciding rule:   {decision.deciding_rule or '(none)'}",
        f"message:         {decision.message}",
        f"rules fired:     {_listed(decision.rules)}",
        "facts:",
        f"  statements:          {facts.statements}",
        f"  statement types:     {_listed(s.statement_type for s in analysis.statements)}",
        f"  kinds:               {_listed(facts.kinds)}",
        f"  relations read:      {_listed(facts.relations_read)}",
        f"  relations written:   {_listed(facts.relations_written)}",
        f"  columns read:        {_columns_used(s.columns_read for s in analysis.statements)}",
        f"  columns written:     {_columns_used(s.columns_written for s in analysis.statements)}",
        f"  categories read:     {_listed(facts.categories_read)}",
        f"  categories written:  {_listed(facts.categories_written)}",
        f"  functions:           {_listed(facts.functions)}",
        f"  risks:               {_listed(facts.risks)}",
        *_result_columns(analysis),
        *_masked_columns(decision),
    ]
    if decision.approval is not None:
        approval = decision.approval
        retry = (
            f", an approved retry runs within {approval.grant_for_seconds}s"
            if approval.mode == "retry" and approval.grant_for_seconds is not None
            else ""
        )
        lines.append(
            f"approval:        {approval.approvals} of group {approval.group}, "
            f"{approval.mode} mode, expires after {approval.expires_seconds}s{retry}"
            f" (rule {approval.rule})"
        )
    for mask in decision.masks:
        lines.append(
            f"mask:            {', '.join(sorted(mask.categories))} by {mask.method} "
            f"(rule {mask.rule})"
        )
    lines.append(f"policy version:  {decision.policy_version}")
    out.write("\n".join(lines) + "\n")


def _columns_used(used: Iterable[Mapping[str, frozenset[str]]]) -> str:
    """relation: columns, for every statement together; `*` (every column) first."""
    merged = _merged(used)
    return "; ".join(f"{relation}: {', '.join(names)}" for relation, names in merged.items()) or "-"


def _result_columns(analysis: Analysis) -> list[str]:
    """Each result column and the table columns its values come from (a `*`: unknown width)."""
    lines = []
    returning = [s for s in analysis.statements if s.output_columns]
    for number, statement in enumerate(returning, start=1):
        title = "result columns:" if len(returning) == 1 else f"result columns ({number}):"
        lines.append(title)
        for column in statement.output_columns:
            sources = ", ".join(f"{relation}.{name}" for relation, name in sorted(column.sources))
            lines.append(
                f"  {ALL_COLUMNS if column.name is None else column.name:<19} {sources or '-'}"
            )
    return lines


def _masked_columns(decision: Decision) -> list[str]:
    """The result columns a masked decision masks, by position, and how."""
    lines = []
    for number, masks in enumerate(decision.column_masks, start=1):
        for mask in masks:
            where = f"{mask.position + 1}" + (" on" if mask.name is None else f" ({mask.name})")
            lines.append(
                f"  column {where}: {mask.category}, {mask.method} (rule {mask.rule})"
                + (f" [statement {number}]" if len(decision.column_masks) > 1 else "")
            )
            if mask.json is not None:
                keys = ", ".join(
                    f"{key.key} ({key.category}, {key.method})" for key in mask.json.masked
                )
                lines.append(f"    JSON keys masked: {keys or '-'}; the others as they are")
    return ["masked columns:", *lines] if lines else []


# --- diff ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CorpusEntry:
    role: str
    sql: str
    search_path: tuple[str, ...] = _DEFAULT_SEARCH_PATH
    params: tuple[str | None, ...] = ()


def diff_command(arguments: argparse.Namespace) -> int:
    old_document = _load(arguments.old)
    new_document = _load(arguments.new)
    if old_document is None or new_document is None:
        return 2
    if arguments.corpus is not None:
        try:
            corpus = read_corpus(arguments.corpus)
        except ValueError as error:
            print(f"custos policy diff: {error}", file=sys.stderr)
            return 2
    else:
        corpus = default_corpus(old_document, new_document)
    old, new = PolicyEngine(old_document), PolicyEngine(new_document)
    analyses: dict[tuple[str, tuple[str, ...]], Analysis] = {}
    changed = 0
    for entry in corpus:
        key = (entry.sql, entry.search_path)
        analysis = analyses.get(key)
        if analysis is None:
            analysis = analyses[key] = _analyze(entry.sql, entry.search_path)
        request = DecisionRequest(entry.role, analysis, entry.params)
        before, after = old.decide(request), new.decide(request)
        if _outcome(before) == _outcome(after):
            continue
        changed += 1
        print(f"role {entry.role}: {_one_line(entry.sql)}")
        print(f"  {_summary(before)} -> {_summary(after)}")
    print(
        f"{changed} of {len(corpus)} decisions change "
        f"(policy {old.version[:12]} -> {new.version[:12]})"
    )
    return 1 if changed else 0


def read_corpus(path: Path) -> list[CorpusEntry]:
    """A corpus file: a YAML list of {role, sql, search_path?, params?} (other keys ignored)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"cannot read corpus {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"corpus {path} is not valid YAML: {error}") from None
    if not isinstance(data, list):
        raise ValueError(f"corpus {path} must be a list of {{role, sql}} entries")
    entries = []
    for number, item in enumerate(data):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("role"), str)
            or not isinstance(item.get("sql"), str)
        ):
            raise ValueError(f"corpus {path}, entry {number}: needs a role and an sql string")
        search_path = item.get("search_path", list(_DEFAULT_SEARCH_PATH))
        params = item.get("params", [])
        if not isinstance(search_path, list) or not isinstance(params, list):
            raise ValueError(f"corpus {path}, entry {number}: search_path and params are lists")
        entries.append(
            CorpusEntry(
                role=item["role"],
                sql=item["sql"],
                search_path=tuple(str(schema) for schema in search_path),
                params=tuple(None if value is None else str(value) for value in params),
            )
        )
    return entries


def default_corpus(old: PolicyDocument, new: PolicyDocument) -> list[CorpusEntry]:
    """Every role of NEW (or, without roles, those the rules name) x representative SQL."""
    roles = [role.name for role in new.roles] or sorted(
        {
            glob
            for document in (old, new)
            for rule in document.rules
            for glob in rule.match.roles or ()
            if not any(character in glob for character in "*?[")
        }
    )
    tables = list(dict.fromkeys([*new.catalog, *old.catalog]))
    statements = [*representative_statements(new, tables), *_GENERAL_STATEMENTS]
    return [CorpusEntry(role, sql) for role in roles for sql in statements]


def representative_statements(document: PolicyDocument, tables: Iterable[str]) -> list[str]:
    """Statements an agent might send against each catalog table, benign and risky.

    They are only analysed and decided, never executed.
    """
    statements = []
    for relation in tables:
        table = document.catalog.get(relation)
        columns = [*table.columns, *([table.subject] if table.subject else [])] if table else []
        names = {"table": _qualified(relation), "column": _quoted(columns[0]) if columns else ""}
        for template in _TABLE_STATEMENTS:
            if names["column"] or "{column}" not in template:
                statements.append(template.format_map(names))
    return statements


_TABLE_STATEMENTS = (
    "SELECT * FROM {table} LIMIT 10",
    "SELECT * FROM {table}",
    "SELECT {column} FROM {table} WHERE {column} LIKE '%a' LIMIT 10",
    "UPDATE {table} SET {column} = {column} WHERE {column} IS NULL",
    "DELETE FROM {table}",
    "COPY {table} TO STDOUT",
    "DROP TABLE {table}",
)
_GENERAL_STATEMENTS = (
    "SELECT 1",
    "BEGIN",
    "SET search_path TO public",
    "SET ROLE postgres",
    "SHOW search_path",
    "SELECT pg_read_file('/etc/hostname')",
    "COPY (SELECT 1) TO PROGRAM 'true'",
    "DO $$ BEGIN END $$",
    "CREATE TABLE public.custos_diff_probe (id int)",
    "SELECT 1; SELECT 2",
)


def _outcome(decision: Decision) -> tuple[object, ...]:
    return (decision.effect, decision.deciding_rule, _masked(decision))


def _summary(decision: Decision) -> str:
    text = f"{decision.effect} ({decision.deciding_rule or 'no rule'})"
    masked = _masked(decision)
    if masked:
        text += f" masking {', '.join(masked)}"
    return text


def _masked(decision: Decision) -> tuple[str, ...]:
    """The categories masked when the statement runs; a denied one never runs."""
    if decision.effect is Effect.DENY:
        return ()
    return tuple(sorted({c for mask in decision.masks for c in mask.categories}))


def _one_line(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= 120 else text[:117] + "..."


# --- schema -------------------------------------------------------------------------------


def schema_command(arguments: argparse.Namespace) -> int:
    sys.stdout.write(json_schema_text())
    return 0


# --- shared -------------------------------------------------------------------------------


def _load(path: Path) -> PolicyDocument | None:
    """The document, or None after printing why it cannot be used."""
    try:
        return load_policy(path)
    except PolicyError as error:
        print(f"invalid policy {error.origin}:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _analyze(sql: str, search_path: tuple[str, ...]) -> Analysis:
    from custos.sql.analysis import analyze

    return analyze(sql, search_path)


def _split_path(text: str) -> tuple[str, ...]:
    return tuple(schema.strip() for schema in text.split(",") if schema.strip())


def _listed(values: Iterable[str]) -> str:
    items = [value for value in values if value]
    return ", ".join(items) if items else "-"


def _qualified(relation: str) -> str:
    return ".".join(_quoted(part) for part in relation.split(".", 1))


def _quoted(identifier: str) -> str:
    if _PLAIN_IDENTIFIER.fullmatch(identifier):
        return identifier
    return '"' + identifier.replace('"', '""') + '"'
