"""What the gateway tells a client whose statement does not run (see own_messages.py for how)."""

from __future__ import annotations

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
