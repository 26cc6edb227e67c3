"""How the gateway refuses a statement: the database itself raises the error.

Instead of the refused statement, the gateway sends a `DO` block that raises
the gateway's error. The database then answers exactly as it would for any
failing statement: in order with everything pipelined before it, with the
transaction aborted if one is open, and (in extended protocol) discarding
what follows until Sync. The client sees the same protocol states as for a
real error; no state has to be emulated.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    """An error for the client, in words it can act on.

    Policy's refusals never hold data values. A syntax error quotes the token it failed at,
    as PostgreSQL would, and goes only to the client that sent it (never to a log).
    """

    sqlstate: str
    message: str
    hint: str | None = None
    position: int | None = None  # 1-based character position in the statement, as PostgreSQL


def refusal_sql(refusal: Refusal) -> str:
    """A DO block that raises `refusal` with its SQLSTATE, message and hint."""
    parts = [
        f"ERRCODE = '{_sqlstate(refusal.sqlstate)}'",
        f"MESSAGE = {_dollar_quoted(refusal.message)}",
    ]
    if refusal.hint:
        parts.append(f"HINT = {_dollar_quoted(refusal.hint)}")
    body = f"BEGIN RAISE EXCEPTION USING {', '.join(parts)}; END"
    return f"DO {_dollar_quoted(body)}"


def _sqlstate(code: str) -> str:
    if len(code) != 5 or not code.isalnum() or not code.isascii():
        raise ValueError(f"not a SQLSTATE: {code!r}")
    return code.upper()


def _dollar_quoted(text: str) -> str:
    while True:
        tag = f"$c{secrets.token_hex(4)}$"
        if tag not in text:
            return f"{tag}{text}{tag}"
