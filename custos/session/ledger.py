"""The ledger: what the database will answer, in the order it will answer it.

Every client message the database answers (or may skip) adds an entry when it is sent
upstream; every server message is attributed to the entry at the head. Entries are plain
tuples `(kind, payload)`: one in and one out per message is the whole cost of following a
statement no stage touches.

Kinds, what sends them, and what answers them:

- PARSE, BIND, CLOSE: Parse, Bind, Close; answered ParseComplete, BindComplete,
  CloseComplete.
- DESCRIBE: Describe of a statement or portal; [ParameterDescription] then RowDescription
  or NoData.
- EXECUTE: Execute; rows, then CommandComplete, EmptyQueryResponse or PortalSuspended; or
  a COPY.
- QUERY: a simple Query; per statement, rows or a COPY and a CommandComplete; then
  ReadyForQuery.
- SYNC, FUNCTION_CALL: Sync, FunctionCall; [FunctionCallResponse] then ReadyForQuery.
- COPY_END: CopyDone or CopyFail; nothing (it ends the COPY under way).
- OWN_CLOSE, OWN_PARSE, OWN_BIND, OWN_DESCRIBE: the gateway's refusal block, or its Describe
  of a portal a rewriter needs; their answers are cut out.
- REFUSAL: the block sent for a refused Parse or Bind; its error is swapped for the
  refusal's.
- REFUSED_QUERY: the block sent for a refused FunctionCall; the error, swapped, then
  ReadyForQuery.

Any entry may instead be answered by an ErrorResponse. After an error in the extended
protocol the database skips every message up to the next Sync; after one in a simple
Query it skips the rest of that query string.
"""

from __future__ import annotations

from typing import Any, Final

Entry = tuple[int, Any]

PARSE: Final = 1
BIND: Final = 2
DESCRIBE: Final = 3
EXECUTE: Final = 4
CLOSE: Final = 5
SYNC: Final = 6
QUERY: Final = 7
FUNCTION_CALL: Final = 8
COPY_END: Final = 9
OWN_PARSE: Final = 10
OWN_BIND: Final = 11
OWN_DESCRIBE: Final = 12
REFUSAL: Final = 13
REFUSED_QUERY: Final = 14
OWN_CLOSE: Final = 15

SYNC_POINTS: Final = frozenset({SYNC, QUERY, FUNCTION_CALL, REFUSED_QUERY})
"""Entries answered last by ReadyForQuery: each ends a segment."""

RUNS_SQL: Final = frozenset({EXECUTE, QUERY, FUNCTION_CALL})
"""Entries under which the database may be running a statement (what a cancel would hit)."""

NAMES: Final = {
    PARSE: "Parse",
    BIND: "Bind",
    DESCRIBE: "Describe",
    EXECUTE: "Execute",
    CLOSE: "Close",
    SYNC: "Sync",
    QUERY: "Query",
    FUNCTION_CALL: "FunctionCall",
    COPY_END: "CopyDone",
    OWN_PARSE: "the gateway's Parse",
    OWN_BIND: "the gateway's Bind",
    OWN_DESCRIBE: "the gateway's Describe",
    REFUSAL: "a refusal",
    REFUSED_QUERY: "a refused FunctionCall",
    OWN_CLOSE: "the gateway's Close",
}
