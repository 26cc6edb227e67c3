"""What a statement does to the session, once the database says it completed.

The analysis says what each statement of a request would change (a prepared statement, a
cursor, the search path, the transaction); the view predicts it when the statement is sent
and confirms it on the statement's CommandComplete (view.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from custos.session.statement import Portal, Prepared


@dataclass(frozen=True, slots=True)
class Prepare:
    """PREPARE name AS ...: the statement exists under `name`."""

    name: bytes
    prepared: Prepared


@dataclass(frozen=True, slots=True)
class Deallocate:
    """DEALLOCATE name, or ALL (name None)."""

    name: bytes | None


@dataclass(frozen=True, slots=True)
class Declare:
    """DECLARE name CURSOR: a portal, reachable from the protocol too."""

    name: bytes
    portal: Portal


@dataclass(frozen=True, slots=True)
class CloseCursor:
    """CLOSE name, or ALL (name None)."""

    name: bytes | None


@dataclass(slots=True)
class SetPath:
    """SET search_path (or set_config): under way until done, then settled with its transaction."""

    path: tuple[str, ...]
    local: bool
    done: bool = False


@dataclass(frozen=True, slots=True)
class Transaction:
    """BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...: `action` as the analysis names it."""

    action: str


Effect = Prepare | Deallocate | Declare | CloseCursor | SetPath | Transaction
