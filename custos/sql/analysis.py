"""Entry point: analyse a query string into the facts policy decides on.

    analysis = analyze("SELECT email FROM customers", search_path=("crm", "public"))
    analysis.error            # None, or why the text could not be analysed: deny it
    analysis.statements[0]    # StatementFacts: kind, relations, columns, risks...
    analysis.texts[0]         # that statement's own text

Fail closed: a text that does not parse (or that we cannot analyse) gives no statements and an
error; a construct the analysis cannot see into gives dynamic=True or kind OTHER.

Decisions worth knowing:
- A multi-statement string is analysed statement by statement; a SET search_path (or a plain
  `SELECT set_config('search_path', ...)`) changes how the statements after it resolve.
  new_search_path () means "reset to the default"; the statements after it then resolve with
  PostgreSQL's default ("$user", public), i.e. to public.
- `kind` is the most consequential of `kinds` (collector.KIND_PRIORITY): an upsert is UPDATE,
  a MERGE stays MERGE whatever its actions, `SELECT set_config(...)` is SET.
- EXECUTE name is kind OTHER with `executes` set: the session substitutes the facts it kept
  from the PREPARE. DECLARE CURSOR has its query's facts; FETCH / CLOSE are kind OTHER.
- columns_read holds only relations with a column read: `SELECT count(*) FROM t` reads t
  (relations_read) but no column of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence

from pglast.parser import ParseError, parse_sql_json

from custos.protocol import sqlstates
from custos.sql import budget
from custos.sql.facts import Analysis, StatementFacts, analysis_bytes
from custos.sql.names import Resolver
from custos.sql.search_path import PathTracker
from custos.sql.statements import statement_facts
from custos.sql.walker import Node

NUL_ERROR = (
    "the statement text contains a NUL character, which PostgreSQL does not accept; "
    "remove it and send the statement again"
)
ENCODING_ERROR = (
    "the statement text is not valid Unicode (it holds a lone surrogate); send it as UTF-8 text"
)
DEPTH_ERROR = "the statement is nested too deeply to analyse; simplify it and send it again"


def analyze(
    sql: str,
    search_path: Sequence[str] = ("public",),
    budget_seconds: float = budget.DEFAULT_SECONDS,
    max_chars: int = budget.MAX_STATEMENT_CHARS,
) -> Analysis:
    """The facts of the query string; an error instead when it cannot be analysed, is longer
    than `max_chars`, or is not analysed within `budget_seconds` (see budget.py)."""
    analysis = analyze_within(sql, search_path, budget_seconds, max_chars)
    return too_complex(budget_seconds) if analysis is None else analysis


def analyze_within(
    sql: str,
    search_path: Sequence[str],
    budget_seconds: float,
    max_chars: int,
    views: Mapping[str, Node] | None = None,
) -> Analysis | None:
    """As analyze, but None when the budget runs out: a caller may try again with more.
    `views`: the parsed definitions of views to read through (custos/sql/views.py)."""
    if isinstance(search_path, str):
        # A lone string is a sequence of one-letter schemas: a caller's mistake, not the SQL's.
        raise TypeError("search_path is a sequence of schema names, not a string")
    # PostgreSQL's parser stops at a NUL, so text after one would go unseen by us.
    if "\x00" in sql:
        return Analysis((), error=NUL_ERROR)
    if len(sql) > max_chars:
        too_long = budget.TOO_LONG.format(chars=len(sql), limit=max_chars)
        return Analysis((), error=too_long, error_sqlstate=sqlstates.STATEMENT_TOO_COMPLEX)
    budget.start(budget_seconds)
    try:
        analysis = _analyze(sql, search_path, views)
    except budget.BudgetExceeded:
        return None
    finally:
        budget.stop()
    weight = analysis_bytes(analysis)
    if weight > budget.MAX_ANALYSIS_BYTES:
        too_heavy = budget.TOO_HEAVY.format(mib=weight >> 20, limit=budget.MAX_ANALYSIS_BYTES >> 20)
        return Analysis((), error=too_heavy, error_sqlstate=sqlstates.STATEMENT_TOO_COMPLEX)
    return analysis


AnalyseOne = Callable[[str, tuple[str, ...], float], Analysis | None]
"""Analyses a text under one search path within a number of seconds (None: not within)."""


def under_each_schema(
    sql: str, schemas: tuple[str, ...], budget_seconds: float, analyse_one: AnalyseOne
) -> tuple[Analysis, ...] | None:
    """The text's analysis once per schema, in order, all within one budget (None: not within).

    One budget for them all: each analysis has its own, and a text built to take nearly all
    of it would otherwise cost it once per schema. An error ends it with that analysis alone:
    the text is refused whatever the schema, and the others would only spend the budget.
    """
    deadline = time.monotonic() + budget_seconds
    analyses: list[Analysis] = []
    for schema in schemas:
        remaining = deadline - time.monotonic()
        analysis = analyse_one(sql, (schema,), remaining) if remaining > 0 else None
        if analysis is None:
            return None
        if analysis.error is not None:
            return (analysis,)
        analyses.append(analysis)
    return tuple(analyses)


def analyze_each(
    sql: str, schemas: tuple[str, ...], budget_seconds: float, max_chars: int
) -> tuple[Analysis, ...]:
    """under_each_schema without a cache, as a worker process runs it (see workers.py)."""

    def analyse_one(text: str, path: tuple[str, ...], seconds: float) -> Analysis | None:
        return analyze_within(text, path, seconds, max_chars)

    analyses = under_each_schema(sql, schemas, budget_seconds, analyse_one)
    return (too_complex(budget_seconds),) if analyses is None else analyses


def too_complex(budget_seconds: float = budget.DEFAULT_SECONDS) -> Analysis:
    """The analysis of a text that cost more than its budget: refused, saying so."""
    message = budget.TOO_COMPLEX.format(seconds=budget_seconds)
    return Analysis((), error=message, error_sqlstate=sqlstates.STATEMENT_TOO_COMPLEX)


def _analyze(
    sql: str, search_path: Sequence[str], views: Mapping[str, Node] | None = None
) -> Analysis:
    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError as error:
        return Analysis((), error=str(error))
    except UnicodeEncodeError:
        return Analysis((), error=ENCODING_ERROR)
    except RecursionError:
        return Analysis((), error=DEPTH_ERROR, error_sqlstate=sqlstates.STATEMENT_TOO_COMPLEX)
    source = None if sql.isascii() else sql.encode()
    tracker = PathTracker(tuple(search_path))
    statements: list[StatementFacts] = []
    texts: list[str] = []
    try:
        for raw in tree.get("stmts") or ():
            node = raw["stmt"]
            facts = statement_facts(node, Resolver(tracker.current), views)
            tracker.apply(facts, node)
            statements.append(facts)
            texts.append(_text(sql, source, raw))
    except RecursionError:
        return Analysis((), error=DEPTH_ERROR, error_sqlstate=sqlstates.STATEMENT_TOO_COMPLEX)
    except budget.BudgetExceeded:
        raise
    except budget.TooManyColumns as too_many:
        return Analysis((), error=str(too_many), error_sqlstate=sqlstates.TOO_MANY_COLUMNS)
    except Exception as error:
        # A parse tree shape the walk does not expect must refuse the statement, not crash the
        # session; the message names only the exception type, never the statement's text.
        return Analysis(
            (),
            error=f"the statement could not be analysed ({type(error).__name__}); it is "
            "refused: rewrite it or report this to the gateway's operators",
        )
    return Analysis(tuple(statements), tuple(texts))


def _text(sql: str, source: bytes | None, raw: dict[str, int]) -> str:
    # Locations are byte offsets into the UTF-8 text; a length of 0 runs to the end.
    start = raw.get("stmt_location", 0)
    length = raw.get("stmt_len", 0)
    if source is None:
        return (sql[start : start + length] if length else sql[start:]).strip()
    piece = source[start : start + length] if length else source[start:]
    return piece.decode().strip()
