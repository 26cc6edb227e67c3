"""The functions a user-defined function's body calls.

Calling a function runs its body: a SQL or PL/pgSQL function that calls `lo_import` reads
a server file whoever calls it, and a trigger's function runs on every write. The body is
read from the catalog (custos/upstream/reach.py) and analysed here like a statement: a SQL
body's statements, and each query and expression of a PL/pgSQL body (pglast parses it as
the server would). What the gateway cannot see into counts as unknown, and the statement
that reaches it as dynamic: `EXECUTE` of a string, a body that does more than read (its
writes, NOTIFY, LOCK or SET are not carried to the statement), and bodies in other
languages but C (code a superuser installed, named by the call itself).

Pure: no IO.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pglast.parser import ParseError, parse_plpgsql_json

from custos.sql.analysis import analyze
from custos.sql.reached import CALLER, Reach

UNSEEN = Reach(unknown=True)

# Functions calling functions are followed this deep; deeper ones count as unseen.
BODY_DEPTH = 8

# Languages whose functions are the server's or an extension's compiled code: their names
# are what a rule matches.
_COMPILED_LANGUAGES = frozenset({"c", "internal"})

# Statements that read, or call what is carried by its name.
_READING = frozenset({"SelectStmt", "CallStmt"})

# PL/pgSQL statements that run SQL built at run time.
_DYNAMIC_STATEMENTS = frozenset({"PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"})

# How PL/pgSQL parses an expression's text (the server's RawParseMode).
_STATEMENT_MODE = 0
_ASSIGNMENT_MODES = frozenset({3, 4, 5})


def body_reach(language: str, body: str, search_path: tuple[str, ...] | None = None) -> Reach:
    """What calling a function of this language and body runs (as `read`) and reads, or
    UNSEEN.

    `body` is a SQL function's statements (its `RETURN expr` or `BEGIN ATOMIC ... END` in
    the standard form) or a PL/pgSQL function's whole definition (pg_get_functiondef).
    `search_path`: the function's own (`SET search_path`), if it sets one; else its
    unqualified names are the caller's (reached.CALLER)."""
    path = search_path if search_path is not None else (CALLER,)
    if language in _COMPILED_LANGUAGES:
        return Reach()
    if language == "sql":
        return _reach_of_texts([_sql_body(body)], path)
    if language == "plpgsql":
        try:
            tree = json.loads(parse_plpgsql_json(body))
        except (ParseError, ValueError):
            return UNSEEN
        texts: list[str] = []
        if not _plpgsql_texts(tree, texts):
            return UNSEEN
        return _reach_of_texts(texts, path)
    return UNSEEN


def bodies_reached(
    names: Iterable[str], bodies_of: Callable[[set[str]], Mapping[str, Reach] | None]
) -> dict[str, Reach] | None:
    """What the functions of these names run, and the functions those call in turn, down
    to BODY_DEPTH (deeper ones count as unseen). `bodies_of` gives what each of some names
    runs (a name absent runs nothing the gateway follows), or None while one is unread;
    then so does this."""
    found: dict[str, Reach] = {}
    seen: set[str] = set()
    pending = set(names)
    for _ in range(BODY_DEPTH):
        pending -= seen
        if not pending:
            return found
        bodies = bodies_of(pending)
        if bodies is None:
            return None
        seen |= pending
        found.update(bodies)
        pending = {name for body in bodies.values() for name in body.read}
    found.update({name: UNSEEN for name in pending - seen})
    return found


def _sql_body(body: str) -> str:
    stripped = body.strip()
    upper = stripped.upper()
    if upper.startswith("RETURN "):
        return "SELECT " + stripped[len("RETURN ") :]
    if upper.startswith("BEGIN ATOMIC") and upper.endswith("END"):
        return stripped[len("BEGIN ATOMIC") : -len("END")]
    return stripped


def _reach_of_texts(texts: list[str], search_path: tuple[str, ...]) -> Reach:
    """What the texts call and read, their unqualified names resolved in each schema of the
    path (which one the database finds is not known here)."""
    called: set[str] = set()
    relations: set[str] = set()
    columns: set[tuple[str, str]] = set()
    schemas = [schema for schema in search_path if schema != "pg_catalog"]
    for text, schema in ((text, schema) for text in texts for schema in schemas or ["public"]):
        analysis = analyze(text, (schema,))
        if analysis.error is not None:
            return UNSEEN
        for statement in analysis.statements:
            if statement.dynamic or statement.statement_type not in _READING:
                # What a body does besides reading (writes, NOTIFY, LOCK, SET...) is not
                # carried to the statement that calls it: it counts as unseen.
                return UNSEEN
            called |= statement.functions
            relations |= statement.relations_read
            for relation, names in statement.columns_read.items():
                columns.update((relation, name) for name in names)
    return Reach(frozenset(called), relations=frozenset(relations), columns=frozenset(columns))


def _plpgsql_texts(node: Any, texts: list[str]) -> bool:
    """Gathers the SQL of every query and expression; False at SQL built at run time."""
    if isinstance(node, list):
        return all(_plpgsql_texts(item, texts) for item in node)
    if not isinstance(node, dict):
        return True
    for key, value in node.items():
        if key in _DYNAMIC_STATEMENTS or key == "dynquery":
            return False
        if key == "PLpgSQL_expr":
            text = _expression_sql(value.get("query", ""), value.get("parseMode", 0))
            if text is None:
                return False
            texts.append(text)
        elif not _plpgsql_texts(value, texts):
            return False
    return True


def _expression_sql(query: str, mode: int) -> str | None:
    """An expression's text as a statement to analyse; None when it cannot be made one."""
    if mode == _STATEMENT_MODE:
        return query
    if mode in _ASSIGNMENT_MODES:
        # `target := value` (or `=`): the target may hold subscripts, which run too.
        target, separator, value = query.partition(":=")
        if not separator:
            target, separator, value = query.partition("=")
        if not separator:
            return None
        return f"SELECT {target}, {value}"
    return f"SELECT {query}"
