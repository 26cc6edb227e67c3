"""The session as the database has it: prepared statements, portals, settings.

What the gateway believes changes only when the database confirms it: a statement exists
once its ParseComplete (or PREPARE's CommandComplete) arrives, a SET sticks once its
transaction commits, the lexical settings are what the server last reported. Statements
the client sends before those answers arrive are decided on a prediction that is exact
by construction:

* Within one *segment* (the messages up to a sync point: Sync, a simple Query, a
  FunctionCall), every earlier message succeeded, or the database skips the rest of the
  segment after its error. So inside a segment, the effects of earlier messages are
  assumed (`Namespace.predict`).
* Across segments the earlier ones may have failed. A name an unconfirmed earlier segment
  touched is `UNCONFIRMED`: the session waits for the database's answers before it looks
  again. Every segment may end a transaction, which drops portals, so a portal from an
  earlier segment always waits for that segment's answers.
* The search path instead takes every value it may have (`SearchPathView`), so nothing
  waits for it: a statement is decided as reading each schema the path may hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Generic, TypeVar

from custos.session.effects import (
    CloseCursor,
    Deallocate,
    Declare,
    Effect,
    Prepare,
    SetPath,
    Transaction,
)
from custos.session.lexical import LexicalSettings
from custos.session.statement import Candidates, Portal, Prepared, Statement
from custos.sql.facts import Analysis

T = TypeVar("T", Prepared, Portal)

# PostgreSQL keeps statement and portal names in NAMEDATALEN-byte keys: longer names that
# agree on their first 63 bytes are one name.
NAME_BYTES: Final = 63


class Unconfirmed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCONFIRMED"


UNCONFIRMED: Final = Unconfirmed()


class Namespace(Generic[T]):
    """Prepared statements or portals by name: confirmed, and predicted per segment."""

    __slots__ = ("_cleared_in", "_every_segment_touches", "_overlay", "_touched", "confirmed")

    def __init__(self, *, every_segment_touches: bool = False) -> None:
        self.confirmed: dict[bytes, T] = {}
        self._overlay: dict[bytes, T | None] = {}
        self._touched: dict[bytes, int] = {}
        self._cleared_in = -1
        self._every_segment_touches = every_segment_touches

    def lookup(self, name: bytes, segment: int, confirmed_segments: int) -> T | Unconfirmed | None:
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

    def holds(self, name: bytes) -> bool:
        """Whether `name` is held, as far as the messages taken so far say."""
        if name in self._touched:
            return self._overlay[name] is not None
        return name in self.confirmed

    def predict_cleared(self, segment: int) -> None:
        self._overlay.clear()
        self._touched.clear()
        self._cleared_in = segment

    def forget(self, name: bytes | None, *, all_but_unnamed: bool = False) -> None:
        """The database confirmed a removal (None: of every one, or every named one)."""
        if name is not None:
            self.confirmed.pop(name, None)
            return
        unnamed = self.confirmed.get(b"") if all_but_unnamed else None
        self.confirmed.clear()
        if unnamed is not None:
            self.confirmed[b""] = unnamed

    def forget_predictions(self, confirmed_segments: int) -> None:
        """Drops predictions for segments the database has answered, keeping memory flat."""
        if len(self._touched) > 64:
            stale = [name for name, seg in self._touched.items() if seg < confirmed_segments]
            for name in stale:
                del self._touched[name]
                del self._overlay[name]


class SearchPathView:
    """Every search path a statement may run under, settled as transactions end.

    `settled` holds the paths a committed transaction may have left (one, unless a
    ROLLBACK TO made it unclear which SET survived); `changes` the SETs under way or done
    inside the open transaction.
    """

    __slots__ = ("_schemas", "changes", "default", "rolled_back_to_savepoint", "settled", "user")

    def __init__(self, default: tuple[str, ...], user: str = "") -> None:
        self.default = default
        self.user = user  # what "$user" in a path stands for: the database login
        self.settled: list[tuple[str, ...]] = [default]
        self.changes: list[SetPath] = []
        self.rolled_back_to_savepoint = False
        self._schemas: tuple[str, ...] = ()
        self._changed()

    def schemas(self) -> tuple[str, ...]:
        """Every schema an unqualified name may resolve to, in a stable order."""
        return self._schemas

    def change(self, path: Sequence[str], local: bool) -> SetPath:
        """A statement that sets the path is under way; its record follows it."""
        record = SetPath(tuple(path) or self.default, local)
        self.changes.append(record)
        self._changed()
        return record

    def drop(self, record: SetPath) -> None:
        """The statement failed or was skipped: its SET never happened."""
        if record in self.changes:
            self.changes.remove(record)
            self._changed()

    def transaction_ended(self, committed: bool) -> None:
        if not self.changes:
            self.rolled_back_to_savepoint = False
            return
        done = [change for change in self.changes if change.done]
        if committed:
            persistent = [change.path for change in done if not change.local]
            if self.rolled_back_to_savepoint and persistent:
                self.settled = list(dict.fromkeys([*self.settled, *persistent]))
            elif persistent:
                self.settled = [persistent[-1]]
        self.changes = [change for change in self.changes if not change.done]
        self.rolled_back_to_savepoint = False
        self._changed()

    def _changed(self) -> None:
        paths = [*self.settled, *(change.path for change in self.changes)]
        self._schemas = tuple(
            dict.fromkeys(schema for path in paths for schema in schemas_of(path, self.user))
        )


class SessionView:
    """Names, search path and lexical settings, and the segments that order them."""

    __slots__ = (
        "confirmed_segments",
        "declared_in_transaction",
        "lexical",
        "lexical_version",
        "path",
        "portals",
        "segment",
        "segment_lexical_change",
        "statements",
        "transaction_failed",
    )

    def __init__(
        self, search_path: Sequence[str], lexical: LexicalSettings, user: str = ""
    ) -> None:
        self.statements: Namespace[Prepared] = Namespace()
        self.portals: Namespace[Portal] = Namespace(every_segment_touches=True)
        self.path = SearchPathView(tuple(search_path), user)
        self.lexical = lexical
        self.lexical_version = 0  # changes with the settings: readings kept by text expire
        self.segment = 0  # sync points the client sent so far: the segment being taken in
        self.confirmed_segments = 0  # sync points the database answered (or skipped)
        # A statement ran earlier in the current segment: it may change how text reads.
        self.segment_lexical_change = False
        self.transaction_failed = False  # an error since the transaction began
        self.declared_in_transaction: set[bytes] = set()  # cursors its rollback would drop

    def end_segment(self) -> None:
        self.segment += 1
        self.segment_lexical_change = False

    def reported(self, name: str, value: str) -> None:
        """The server reported a setting (ParameterStatus)."""
        updated = self.lexical.updated(name, value)
        if updated != self.lexical:
            self.lexical = updated
            self.lexical_version += 1

    # --- a statement's effects ------------------------------------------------------------

    def predict(self, statement: Statement) -> None:
        """A statement is sent: what it would change, predicted for the messages after it."""
        analysis = statement.candidates[0][0] if statement.candidates else None
        if analysis is None or not analysis.session_effects:
            return
        path = statement.candidates[0][1]
        segment = self.segment
        effects: list[tuple[Effect, ...]] = []
        for position, facts in enumerate(analysis.statements):
            found: list[Effect] = []
            if facts.prepares is not None:
                key = sql_name(facts.prepares)
                prepared = Prepared(single(analysis, position, path))
                self.statements.predict(key, prepared, segment)
                found.append(Prepare(key, prepared))
            if facts.deallocates is not None:
                forgotten = self._predict_forget(self.statements, facts.deallocates)
                found.append(Deallocate(forgotten))
            if facts.declares is not None:
                key = sql_name(facts.declares)
                portal = Portal(Prepared(single(analysis, position, path)), holdable=facts.holdable)
                self.portals.predict(key, portal, segment)
                found.append(Declare(key, portal))
            if facts.closes is not None:
                found.append(CloseCursor(self._predict_forget(self.portals, facts.closes)))
            if facts.new_search_path is not None:
                found.append(self.path.change(facts.new_search_path, facts.search_path_local))
            if facts.transaction is not None:
                found.append(Transaction(facts.transaction))
            effects.append(tuple(found))
        statement.effects = effects

    def _predict_forget(self, namespace: Namespace[T], name: str) -> bytes | None:
        if name == "*":
            namespace.predict_cleared(self.segment)
            return None
        key = sql_name(name)
        namespace.predict(key, None, self.segment)
        return key

    def completed(self, statement: Statement, tag: str) -> None:
        """A statement of the request completed: what it did to the session is now true."""
        effects = statement.effects
        position = statement.index
        statement.index += 1
        if effects is None or position >= len(effects):
            return
        for effect in effects[position]:
            if isinstance(effect, Prepare):
                self.statements.confirmed[effect.name] = effect.prepared
            elif isinstance(effect, Deallocate):
                # DEALLOCATE ALL (and DISCARD ALL) drop the named statements, not the unnamed.
                self.statements.forget(effect.name, all_but_unnamed=True)
            elif isinstance(effect, Declare):
                self.portals.confirmed[effect.name] = effect.portal
                self.declared_in_transaction.add(effect.name)
            elif isinstance(effect, CloseCursor):
                self.portals.forget(effect.name)
            elif isinstance(effect, SetPath):
                effect.done = True
            elif effect.action in ("commit", "prepare", "rollback"):
                # COMMIT of a failed transaction answers ROLLBACK.
                self.end_transaction(effect.action != "rollback" and tag != "ROLLBACK")
            elif effect.action == "rollback_to":
                self.path.rolled_back_to_savepoint = True

    def abandoned(self, statement: Statement) -> None:
        """The rest of a request will not run: its SETs never happen."""
        effects = statement.effects
        if effects is None:
            return
        for position in range(statement.index, len(effects)):
            for effect in effects[position]:
                if isinstance(effect, SetPath):
                    self.path.drop(effect)

    def end_transaction(self, committed: bool) -> None:
        self.path.transaction_ended(committed)
        confirmed = self.portals.confirmed
        if confirmed:
            # A WITH HOLD cursor outlives its transaction only if that transaction commits.
            self.portals.confirmed = {
                name: portal
                for name, portal in confirmed.items()
                if portal.holdable and (committed or name not in self.declared_in_transaction)
            }
        self.declared_in_transaction.clear()
        self.transaction_failed = False

    def segment_confirmed(self) -> None:
        self.confirmed_segments += 1

    def forget_predictions(self) -> None:
        self.statements.forget_predictions(self.confirmed_segments)
        self.portals.forget_predictions(self.confirmed_segments)


def single(analysis: Analysis, position: int, path: tuple[str, ...]) -> Candidates:
    """One statement of a string, as a prepared statement's (or cursor's) candidates."""
    statement = Analysis((analysis.statements[position],), analysis.texts[position : position + 1])
    return ((statement, path),)


def sql_name(name: str) -> bytes:
    """A name from SQL as the server keeps it."""
    return name.encode()[:NAME_BYTES]


def schemas_of(search_path: Sequence[str], user: str = "") -> tuple[str, ...]:
    """The schemas of a path, "$user" standing for the login (when it is known)."""
    named = (user if schema == "$user" and user else schema for schema in search_path)
    schemas = tuple(dict.fromkeys(schema for schema in named if schema))
    return schemas or ("public",)
