"""The session as the database has it: prepared statements, portals, the search path.

What the gateway believes changes only when the database confirms it: a statement exists
once its ParseComplete (or PREPARE's CommandComplete) arrives, a SET sticks once its
transaction commits. Statements the client sends before those answers arrive are decided
on a prediction that is exact by construction:

* Within one *segment* (the messages up to a sync point: Sync, a simple Query, a
  FunctionCall), every earlier message succeeded, or the database skips the rest of the
  segment after its error. So inside a segment, the effects of earlier messages are
  assumed (`predict`).
* Across segments the earlier ones may have failed. A name an unconfirmed earlier segment
  touched is `UNCONFIRMED`: the session waits for the database's answers before it looks
  again. Every segment may end a transaction, which drops portals, so a portal from an
  earlier segment always waits for that segment's answers.
* The search path instead takes every value it may have (`SearchPathView`), so nothing
  waits for it: a statement is decided as reading each schema the path may hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

T = TypeVar("T")


class _Unconfirmed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCONFIRMED"


UNCONFIRMED: Final = _Unconfirmed()


class Namespace(Generic[T]):
    """Prepared statements or portals by name: confirmed, and predicted per segment."""

    __slots__ = ("_cleared_in", "_every_segment_touches", "_overlay", "_touched", "confirmed")

    def __init__(self, *, every_segment_touches: bool = False) -> None:
        self.confirmed: dict[bytes, T] = {}
        self._overlay: dict[bytes, T | None] = {}
        self._touched: dict[bytes, int] = {}
        self._cleared_in = -1
        self._every_segment_touches = every_segment_touches

    def lookup(self, name: bytes, segment: int, confirmed_segments: int) -> T | None | _Unconfirmed:
        """What `name` holds for a message of `segment`, once segments before
        `confirmed_segments` are answered; UNCONFIRMED when that cannot be known yet."""
        touched = self._touched.get(name, -1)
        if touched == segment:
            return self._overlay[name]
        if self._cleared_in == segment:
            return None
        if self._every_segment_touches:
            if segment > confirmed_segments:
                return UNCONFIRMED
        elif touched >= confirmed_segments or self._cleared_in >= confirmed_segments:
            return UNCONFIRMED
        return self.confirmed.get(name)

    def predict(self, name: bytes, value: T | None, segment: int) -> None:
        """A message of `segment` will give `name` this value (None: remove it) if it runs.

        A prediction made late (a statement that waited) never overrides a later message's.
        """
        if self._touched.get(name, -1) > segment:
            return
        self._overlay[name] = value
        self._touched[name] = segment

    def predict_cleared(self, segment: int) -> None:
        self._overlay.clear()
        self._touched.clear()
        self._cleared_in = segment

    def forget_predictions(self, confirmed_segments: int) -> None:
        """Drops predictions for segments the database has answered, keeping memory flat."""
        if self._touched and len(self._touched) > 64:
            stale = [name for name, seg in self._touched.items() if seg < confirmed_segments]
            for name in stale:
                del self._touched[name]
                del self._overlay[name]


@dataclass(slots=True)
class _PathChange:
    """A search path set by a statement that is under way or done in an open transaction."""

    path: tuple[str, ...]
    local: bool
    done: bool = False


@dataclass(slots=True)
class SearchPathView:
    """Every search path a statement may run under, settled as transactions end.

    `settled` holds the paths a committed transaction may have left (one, unless a
    ROLLBACK TO made it unclear which SET survived); `changes` the SETs under way or done
    inside the open transaction.
    """

    default: tuple[str, ...]
    settled: list[tuple[str, ...]] = field(default_factory=list)
    changes: list[_PathChange] = field(default_factory=list)
    rolled_back_to_savepoint: bool = False

    def __post_init__(self) -> None:
        if not self.settled:
            self.settled.append(self.default)

    def schemas(self) -> tuple[str, ...]:
        """Every schema an unqualified name may resolve to, in a stable order."""
        if not self.changes and len(self.settled) == 1:
            return schemas_of(self.settled[0])
        paths = [*self.settled, *(change.path for change in self.changes)]
        return tuple(dict.fromkeys(schema for path in paths for schema in schemas_of(path)))

    def change(self, path: Sequence[str], local: bool) -> _PathChange:
        """A statement that sets the path is under way; its record follows it."""
        record = _PathChange(tuple(path) or self.default, local)
        self.changes.append(record)
        return record

    def drop(self, record: _PathChange) -> None:
        """The statement failed or was skipped: its SET never happened."""
        if record in self.changes:
            self.changes.remove(record)

    def transaction_ended(self, committed: bool) -> None:
        done = [change for change in self.changes if change.done]
        if committed:
            persistent = [change.path for change in done if not change.local]
            if self.rolled_back_to_savepoint and persistent:
                self.settled = list(dict.fromkeys([*self.settled, *persistent]))
            elif persistent:
                self.settled = [persistent[-1]]
        self.changes = [change for change in self.changes if not change.done]
        self.rolled_back_to_savepoint = False


def schemas_of(search_path: Sequence[str]) -> tuple[str, ...]:
    schemas = tuple(dict.fromkeys(schema for schema in search_path if schema))
    return schemas or ("public",)
