"""A budget of time for one analysis, so that no statement can hold the gateway for long.

A statement built to be expensive (thousands of tables and column references, a megabyte of
select-list items) must be refused once it has cost its budget, not analysed to the end:
its session waits for it, and on the event loop every other session would too (long
analyses run in a worker process: custos/sql/workers.py).
The walk spends ticks as it goes (a node visited, a FROM item looked at); every few thousand
it checks the clock.
"""

from __future__ import annotations

import time

DEFAULT_SECONDS = 0.2
MAX_STATEMENT_CHARS = 256 << 10
"""Longer texts are refused before they are parsed: parsing alone would hold the loop."""

TOO_COMPLEX = (
    "the statement is too complex for the gateway to analyse within its budget ({seconds:g} s);"
    " it is refused: split it into smaller statements, or name fewer tables and columns"
)
TOO_LONG = (
    "the statement is {chars} characters long, more than the {limit} the gateway analyses;"
    " it is refused: split it into smaller statements"
)

MAX_TARGET_COLUMNS = 1664
"""PostgreSQL's own limit on a select list's columns: a `*` may expand to no more (each
level of self-joined CTEs doubles what it stands for, so a short text could ask for
millions)."""
TOO_MANY_COLUMNS = (
    "target lists can have at most 1664 entries: a * in the statement stands for {columns}"
    " columns, so PostgreSQL would refuse it too; name the columns you need"
)

MAX_ANALYSIS_BYTES = 8 << 20
"""An analysis that would hold more (result columns times the columns each comes from: one
value built from 450 tables, named in 1,600 columns) is refused: it would cost the memory
of every session, and the time to hand it from a worker back to the event loop."""
TOO_HEAVY = (
    "the statement's analysis would hold about {mib} MiB (its result columns and the table"
    " columns each comes from), more than the {limit} MiB the gateway keeps for one; it is"
    " refused: select fewer columns, or build fewer of them from many tables"
)

_CHECK_EVERY = 4096


class BudgetExceeded(Exception):
    """The analysis ran past its deadline."""


class TooManyColumns(Exception):
    """A `*` expands past what PostgreSQL accepts in one select list."""


class _Budget:
    __slots__ = ("deadline", "ticks")

    def __init__(self) -> None:
        self.deadline = float("inf")
        self.ticks = 0


_current = _Budget()


def start(seconds: float) -> None:
    _current.deadline = time.monotonic() + seconds
    _current.ticks = 0


def stop() -> None:
    _current.deadline = float("inf")


def spend(ticks: int = 1) -> None:
    """Counts work done; raises BudgetExceeded once the deadline has passed."""
    budget = _current
    budget.ticks += ticks
    if budget.ticks >= _CHECK_EVERY:
        budget.ticks = 0
        if time.monotonic() > budget.deadline:
            raise BudgetExceeded
