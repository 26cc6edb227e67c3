"""The database's row estimate for a statement awaiting approval (`estimate_rows: true`).

Approvers judge "UPDATE ... WHERE" better knowing it touches 3 rows, or 300,000. The
estimate is the planner's: the statement is prepared and EXPLAINed (never run) on a side
connection of the gateway's own, inside a READ ONLY transaction with a short statement
timeout, under the session's search path, then the connection is closed. Only a text that
is exactly one statement of a kind EXPLAIN takes is asked about: the text goes into a
PREPARE, so a second statement in it must never reach the database this way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence

from pglast.parser import split

from proxy_task.upstream import SideConnection

_EXPLAINABLE = ("select", "insert", "update", "delete", "merge", "values", "with", "table")
_NAME = "custos_row_estimate"
MAX_PARAMETER_CHARS = 8192  # a larger value is not sent to the planner to estimate by
# Side connections asking at once, gateway-wide: a burst of requests cannot exhaust the
# database's connection slots.
_AT_ONCE = asyncio.Semaphore(2)


def row_estimator(
    connect: Callable[[], Awaitable[SideConnection]],
) -> Callable[[str, tuple[str | None, ...], Sequence[str]], Awaitable[int | None]]:
    async def estimate(
        text: str, parameters: tuple[str | None, ...], search_path: Sequence[str]
    ) -> int | None:
        if not _one_explainable_statement(text) or any(
            value is not None and len(value) > MAX_PARAMETER_CHARS for value in parameters
        ):
            return None
        async with _AT_ONCE:
            return await _estimated(connect, text, parameters, search_path)

    return estimate


async def _estimated(
    connect: Callable[[], Awaitable[SideConnection]],
    text: str,
    parameters: tuple[str | None, ...],
    search_path: Sequence[str],
) -> int | None:
    connection = await connect()
    try:
        await connection.query("BEGIN READ ONLY")
        await connection.query("SET LOCAL statement_timeout = '2s'")
        await connection.query("SET LOCAL standard_conforming_strings = on")
        path = ", ".join(_identifier(schema) for schema in search_path) or "''"
        await connection.query(f"SET LOCAL search_path = {path}")
        await connection.query(f"PREPARE {_NAME} AS {text}")
        arguments = ", ".join(_literal(value) for value in parameters)
        execute = f"EXECUTE {_NAME}({arguments})" if parameters else f"EXECUTE {_NAME}"
        rows = await connection.query(f"EXPLAIN (FORMAT JSON) {execute}")
    finally:
        connection.close()
    return _planned_rows(rows)


def _one_explainable_statement(text: str) -> bool:
    try:
        statements = split(text)
    except Exception:  # pglast raises its own error types for unreadable text
        return False
    if len(statements) != 1:
        return False
    first = statements[0].lstrip().lower()
    return first.startswith(_EXPLAINABLE)


def _planned_rows(rows: list[tuple[str | None, ...]]) -> int | None:
    if not rows or not rows[0] or rows[0][0] is None:
        return None
    plan = json.loads(rows[0][0])[0]["Plan"]
    # A write's own node plans no rows unless it returns some: its input's are the ones.
    while plan.get("Node Type") == "ModifyTable" and plan.get("Plans"):
        plan = plan["Plans"][0]
    return int(plan.get("Plan Rows", 0))


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str | None) -> str:
    if value is None:
        return "NULL"
    # standard_conforming_strings is on (set above): only '' needs escaping.
    return "'" + value.replace("'", "''") + "'"
