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

import secrets
import struct

from custos.protocol import sqlstates
from custos.protocol.frontend import encode_query
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

# The block's prepared statement has a name no client will use, so that the client's own
# unnamed statement stays as it was. It is closed first, in case an earlier refusal left it,
# and again once the session is idle (REFUSAL_CLEANUP), so pg_prepared_statements never
# shows it to a statement of the client's.
_REFUSAL_STATEMENT = f"custos_refusal_{secrets.token_hex(8)}".encode()
_INT16 = struct.Struct("!h")


def _message(message_type: bytes, body: bytes) -> bytes:
    return message_type + struct.pack("!I", len(body) + 4) + body


_CLOSE_REFUSAL_STATEMENT = _message(b"C", b"S" + _REFUSAL_STATEMENT + b"\x00")

REFUSAL_EXECUTION = (
    _CLOSE_REFUSAL_STATEMENT
    + _message(b"P", _REFUSAL_STATEMENT + b"\x00" + _REFUSAL_BLOCK.encode() + b"\x00\x00\x00")
    + _message(b"B", b"\x00" + _REFUSAL_STATEMENT + b"\x00" + _INT16.pack(0) * 3)
    + _message(b"E", b"\x00" + b"\x00" * 4)
)
"""Sent instead of a refused Parse, Bind or Execute: Close, Parse, Bind and Execute of the
block (the unnamed portal, which the error's rollback ends anyway), answered CloseComplete,
ParseComplete, BindComplete and the error."""

REFUSAL_EXECUTION_DROPPING_UNNAMED = _message(b"C", b"S\x00") + REFUSAL_EXECUTION
"""Sent instead of a refused Parse of the unnamed statement: PostgreSQL drops the unnamed
statement before it parses the new text, so a Parse that fails leaves none."""

REFUSAL_CLEANUP = _CLOSE_REFUSAL_STATEMENT + _message(b"H", b"")
"""Close of the block's statement and a Flush, answered CloseComplete at once."""


# In a failed transaction PostgreSQL still parses a statement's text, and looks up the
# statement a Bind names and the portal an Execute names, before it answers 25P02.
_FOUND_BEFORE_THE_ABORT_CHECK = frozenset(
    {sqlstates.SYNTAX_ERROR, sqlstates.INVALID_SQL_STATEMENT_NAME, sqlstates.INVALID_CURSOR_NAME}
)


def answers_refusal(notice: ServerNotice, refusal: Refusal, *, by_message: bool) -> bool:
    """Whether the database's error stands for the refusal, and the client gets the refusal's.

    It does when it is the refusal block's own error, or when a failed transaction stopped the
    block before it ran but PostgreSQL would have found the refused statement's fault first:
    a syntax error always, a missing statement or portal when a protocol message (Bind,
    Execute) named it, not SQL's EXECUTE or FETCH, which PostgreSQL checks after. Policy's
    refusals are kept too: `ROLLBACK; SELECT ...` would have ended the failed transaction
    before the refused statement, and its reason is what the client needs to hear.
    """
    fields = notice.fields
    code = fields.get("C")
    if code == sqlstates.RAISE_EXCEPTION:
        return fields.get("M") == REFUSAL_MESSAGE
    if code != sqlstates.IN_FAILED_SQL_TRANSACTION:
        return False
    if refusal.sqlstate == sqlstates.INSUFFICIENT_PRIVILEGE:
        return True  # policy's refusal says more than 25P02, whatever the string began with
    if by_message:
        return refusal.sqlstate in _FOUND_BEFORE_THE_ABORT_CHECK
    return refusal.sqlstate == sqlstates.SYNTAX_ERROR


def refusal_error(refusal: Refusal) -> bytes:
    """The ErrorResponse the client gets for a refusal."""
    return error_response(
        refusal.sqlstate, refusal.message, hint=refusal.hint, position=refusal.position
    )
