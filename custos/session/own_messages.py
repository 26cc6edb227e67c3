"""What the gateway sends the database in place of a statement it refuses, and the error the
client gets instead of the database's.

A refused statement is replaced by a DO block that raises an error, so the database answers
exactly as for any failing statement: in order with everything pipelined before it, with
an open transaction aborted, and (in the extended protocol) skipping what follows until
Sync. The block's text is a constant: nothing of the refused statement reaches the
database, its logs or pg_stat_activity. The session swaps the block's error for the
refusal's own, which carries the SQLSTATE, message, hint and position the client sees.
"""

from __future__ import annotations

from custos.protocol import sqlstates
from custos.protocol.frontend import encode_query, encode_unnamed_execution
from custos.protocol.messages import ServerNotice, error_response
from custos.session.refusal import Refusal

REFUSAL_MESSAGE = "statement refused by the custos gateway"
_REFUSAL_BLOCK = (
    "DO $custos$BEGIN RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = "
    f"'{REFUSAL_MESSAGE}'; END$custos$"
)

REFUSAL_QUERY = encode_query(_REFUSAL_BLOCK)
"""Sent instead of a refused simple Query (or FunctionCall): answered by an error, then
ReadyForQuery."""

REFUSAL_EXECUTION = encode_unnamed_execution(_REFUSAL_BLOCK)
"""Sent instead of a refused Parse, Bind or Execute: Parse, Bind and Execute of the block as
the unnamed statement and portal, answered ParseComplete, BindComplete and the error."""


def is_refusal_error(notice: ServerNotice) -> bool:
    """Whether an error is the refusal block's own, not one the database raised before it."""
    fields = notice.fields
    return fields.get("C") == sqlstates.RAISE_EXCEPTION and fields.get("M") == REFUSAL_MESSAGE


def refusal_error(refusal: Refusal) -> bytes:
    """The ErrorResponse the client gets for a refusal."""
    return error_response(
        refusal.sqlstate, refusal.message, hint=refusal.hint, position=refusal.position
    )
