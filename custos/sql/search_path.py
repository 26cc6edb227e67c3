"""The search path in force at each statement of one query string.

`SET search_path TO crm; SELECT * FROM customers` must read crm.customers, so a string's
statements are resolved in order, each with the path its predecessors left. SET LOCAL lasts
until the transaction ends; ROLLBACK (or ROLLBACK TO a savepoint) undoes SETs made since the
transaction (savepoint) began. Where a transaction or savepoint began before this string, we
take the path at the start of the string: the gateway, which sees every message, must undo
across messages itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from custos.sql.facts import StatementFacts

Path = tuple[str, ...]


class PathTracker:
    __slots__ = ("_base", "_current", "_savepoints", "_session")

    def __init__(self, initial: Path) -> None:
        self._current = initial  # in force for the next statement
        self._session = initial  # what remains once the transaction commits (no SET LOCAL)
        self._base = initial  # what a ROLLBACK returns to
        self._savepoints: dict[str, tuple[Path, Path]] = {}

    @property
    def current(self) -> Path:
        return self._current

    def apply(self, facts: StatementFacts, node: Mapping[str, Any]) -> None:
        if facts.new_search_path is not None:
            self._current = facts.new_search_path
            if not facts.search_path_local:
                self._session = facts.new_search_path
        transaction = node.get("TransactionStmt")
        if transaction is not None:
            self._transaction(transaction.get("kind", ""), transaction.get("savepoint_name", ""))

    def _transaction(self, kind: str, savepoint: str) -> None:
        if kind in ("TRANS_STMT_COMMIT", "TRANS_STMT_PREPARE"):
            self._current = self._base = self._session
            self._savepoints.clear()
        elif kind == "TRANS_STMT_ROLLBACK":
            self._current = self._session = self._base
            self._savepoints.clear()
        elif kind == "TRANS_STMT_SAVEPOINT":
            self._savepoints[savepoint] = (self._current, self._session)
        elif kind == "TRANS_STMT_ROLLBACK_TO":
            self._current, self._session = self._savepoints.get(savepoint, (self._base, self._base))
        elif kind == "TRANS_STMT_RELEASE":
            self._savepoints.pop(savepoint, None)
