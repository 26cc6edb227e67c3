"""What the gateway tells a client whose statement does not run (see own_messages.py for how)."""

from __future__ import annotations

from dataclasses import dataclass

from custos.protocol import sqlstates


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


def syntax_refusal(error: str, sql: str) -> Refusal:
    """PostgreSQL's own answer to text its parser rejects: 42601, message and position."""
    message, _, where = error.rpartition(", at index ")
    if not message or not where.isdigit():
        message, where = error, ""
    if message.endswith("at end of input"):
        # PostgreSQL points just past the last character, whitespace included.
        return Refusal(sqlstates.SYNTAX_ERROR, message, position=len(sql) + 1)
    if not where:
        return Refusal(sqlstates.SYNTAX_ERROR, message)
    # The analysis reports a byte offset into the UTF-8 text; PostgreSQL counts characters.
    position = len(sql.encode()[: int(where)].decode(errors="ignore")) + 1
    return Refusal(sqlstates.SYNTAX_ERROR, message, position=position)


def analysis_refusal(error: str, error_sqlstate: str | None, sql: str) -> Refusal:
    """The refusal of a text the analysis could not read: PostgreSQL's syntax error, or the
    analysis' own limit (too long, too complex) with its SQLSTATE."""
    if error_sqlstate is None:
        return syntax_refusal(error, sql)
    return Refusal(error_sqlstate, error)
