"""The columns of the database's relations, and the functions they reach, from its catalog.

Columns first; the functions reading or writing a relation runs (its views' definitions,
defaults, triggers, checks: custos/upstream/reach.py) are read alongside, in the same
round trip, and, unlike columns, take part in decisions (custos/session/reached.py).

`SELECT *` names no columns; the database knows which it stands for. A gateway keeps one
ColumnCatalog for all its sessions: it reads the columns of the relations a `*` touches over a
side connection of its own, and keeps them for a while. What it knows only ever adds to the
facts (see custos/sql/expansion.py): it names the columns in a refusal's hint and in
`custos policy explain`, and never narrows a decision, so a stale or failed answer costs
precision, not safety.

Absent is not unknown. A relation the catalog does not hold (no such table, or a temporary
table of another session) is remembered as absent, so that refusals naming it do not ask the
database again until the entry expires; but it is left out of every answer, just like a relation
not yet read, because an absent relation's `*` must stay `*`. An empty column tuple is something
else: a real relation without columns (`CREATE TABLE t ()`), whose `*` rightly stands for none.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from custos.sql.bodies import body_reach
from custos.sql.names import qualified, split_qualified
from custos.sql.reached import NOTHING_REACHED, UNDEFINED, Reach
from custos.upstream.reach import (
    EMPTY_SEARCH_PATH,
    asked_about,
    behind_from_rows,
    bodies_from_rows,
    bodies_query,
    functions_called,
    operators_query,
    reach_from_rows,
    reach_query,
    string_literal,
    types_query,
    views_from_rows,
)

Row = tuple[str | None, ...]

DEFAULT_TTL_SECONDS = 300.0
# Each entry is a relation name some statement gave; names are cheap to invent.
_MAX_ENTRIES = 10_000

_COLUMNS_QUERY = """\
SELECT n.nspname, c.relname, a.attname
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute AS a
  ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND (n.nspname::text, c.relname::text) IN (VALUES {relations})
ORDER BY n.nspname, c.relname, a.attnum"""


def askable(relation: str) -> bool:
    """Whether the relation's name can be put in the columns query.

    Names are sent as string literals. Doubling the quote escapes it whatever the server's
    standard_conforming_strings; a backslash would make the literal depend on that setting,
    and a NUL cannot be sent, so such names are not asked about: their `*` stays unexpanded.
    """
    parts = split_qualified(relation)
    return parts is not None and not any("\\" in part or "\x00" in part for part in parts)


def columns_query(relations: Collection[str]) -> str:
    """One query for the columns of every relation in `relations`, in table order.

    Its rows are (schema, relation, column), column NULL for a relation without columns;
    columns_from_rows reads them. Raises ValueError for a name that is not askable.
    """
    if not relations:
        raise ValueError("no relations to ask about")
    pairs = []
    for relation in sorted(relations):
        parts = split_qualified(relation) if askable(relation) else None
        if parts is None:
            raise ValueError(f"cannot ask the database about the relation name {relation!r}")
        pairs.append(f"({string_literal(parts[0])}, {string_literal(parts[1])})")
    return _COLUMNS_QUERY.format(relations=", ".join(pairs))


def columns_from_rows(rows: Iterable[Row]) -> dict[str, tuple[str, ...]]:
    """relation (spelled as the facts spell it) -> its columns, from columns_query's rows."""
    found: dict[str, list[str]] = {}
    for schema, name, column in rows:
        if schema is None or name is None:
            raise ValueError("the columns query returned a row without a relation name")
        columns = found.setdefault(qualified(schema, name), [])
        if column is not None:
            columns.append(column)
    return {relation: tuple(columns) for relation, columns in found.items()}


class CatalogConnection(Protocol):
    """A database connection of the gateway's own that runs simple queries."""

    @property
    def closed(self) -> bool: ...

    async def query(self, sql: str) -> list[Row]:
        """The rows, every value as text or None; raises if the query fails."""
        ...

    def close(self) -> None: ...


Connect = Callable[[], Awaitable[CatalogConnection]]


class ColumnsUnavailable(Exception):
    """The database's catalog could not be read. Callers carry on without the columns."""


@dataclass(frozen=True, slots=True)
class _Entry:
    columns: tuple[str, ...] | None  # None: the relation does not exist
    read_at: float
    reach: Reach = NOTHING_REACHED
    # The views reading the relation reads (itself, if it is one), with their definitions.
    views: Mapping[str, str] | None = None


class ColumnCatalog:
    """The columns of relations, read over one lazily opened connection, kept `ttl_seconds`.

    invalidate() forgets everything: the gateway calls it whenever a schema change runs
    through it. Changes made elsewhere show once entries expire.
    """

    def __init__(
        self,
        connect: Connect,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._ttl = ttl_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # (operator or type, name) -> what its user-defined versions run, and when read
        self._behind: dict[tuple[str, str], tuple[Reach, float]] = {}
        self._connection: CatalogConnection | None = None
        self._lock = asyncio.Lock()
        # Bumped by invalidate(), so that a read begun before a schema change is not kept.
        self._generation = 0

    def known(self, relations: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """The fresh columns of those `relations` that exist; absent or unread ones left out."""
        now = self._clock()
        known: dict[str, tuple[str, ...]] = {}
        for relation in relations:
            entry = self._entries.get(relation)
            if entry is not None and entry.columns is not None and self._fresh(entry, now):
                known[relation] = entry.columns
        return known

    def missing(
        self, relations: Iterable[str], absent_before: float | None = None
    ) -> frozenset[str]:
        """Those askable `relations` with no fresh entry, neither columns nor absence; with
        `absent_before`, also those found absent before then (read again for a decision:
        _trusted)."""
        now = self._clock()
        return frozenset(
            relation
            for relation in relations
            if askable(relation)
            and (
                (entry := self._entries.get(relation)) is None
                or not self._fresh(entry, now)
                or (
                    absent_before is not None
                    and entry.columns is None
                    and entry.read_at < absent_before
                )
            )
        )

    def reach(
        self, relations: Iterable[str], absent_since: float | None = None
    ) -> tuple[dict[str, Reach], float] | None:
        """What reading or writing each relation reaches, and until when that holds; None
        while one is unread or stale (one whose name cannot be asked about always is).

        A relation known to be absent counts as unread unless it was found absent at or
        after `absent_since` (see _trusted). The database's own relations reach nothing
        that matters (reach.asked_about).
        """
        trusted = self._trusted_entries(relations, absent_since)
        if trusted is None:
            return None
        entries, until = trusted
        found = {
            relation: entry.reach
            for relation, entry in entries.items()
            if entry.reach is not NOTHING_REACHED
        }
        return found, until

    def views(
        self, relations: Iterable[str], absent_since: float | None = None
    ) -> tuple[dict[str, str], float] | None:
        """The views reading these relations reads, each with its defining query (every
        name in it qualified), and until when that holds; None while one is unread or
        stale, or absent as reach() says. The database's own views are not read through
        (reach.asked_about)."""
        trusted = self._trusted_entries(relations, absent_since)
        if trusted is None:
            return None
        entries, until = trusted
        found: dict[str, str] = {}
        for entry in entries.values():
            if entry.views:
                found.update(entry.views)
        return found, until

    def _trusted_entries(
        self, relations: Iterable[str], absent_since: float | None
    ) -> tuple[dict[str, _Entry], float] | None:
        """The entries a decision may use of the relations asked about, and until when all
        hold; None while one is unread or stale (see _trusted)."""
        now = self._clock()
        entries: dict[str, _Entry] = {}
        until = now + self._ttl
        for relation in relations:
            if not asked_about(relation):
                continue
            trusted = self._trusted(relation, absent_since, now)
            if trusted is None:
                return None
            entries[relation], valid_until = trusted
            until = min(until, valid_until)
        return entries, until

    def _trusted(
        self, relation: str, absent_since: float | None, now: float
    ) -> tuple[_Entry, float] | None:
        """The relation's entry as a decision may use it, and until when; None while it is
        unread or stale. That a relation does not exist holds only for the statement whose
        own catalog read found it so (at or after `absent_since`), and only for it (valid
        until its read: nothing remembers it): the relation may be created in the database
        at any moment, and a view created since over personal columns must be read
        through, not taken for one that reads nothing."""
        entry = self._entries.get(relation)
        if entry is None or not self._fresh(entry, now):
            return None
        if entry.columns is not None:
            return entry, entry.read_at + self._ttl
        if absent_since is None or entry.read_at < absent_since:
            return None
        return entry, entry.read_at

    @property
    def generation(self) -> int:
        """Changes whenever what the catalog knew was forgotten (a schema change)."""
        return self._generation

    def now(self) -> float:
        return self._clock()

    def _fresh(self, entry: _Entry | None, now: float) -> bool:
        return entry is not None and now - entry.read_at < self._ttl

    def behind(
        self, kind: str, names: Iterable[str], absent_since: float | None = None
    ) -> tuple[dict[str, Reach], float] | None:
        """What each operator (kind "operator"), cast type (kind "type") or user-defined
        function (kind "function", by its body) of these names runs, for those that run
        something, and until when that holds; None while one is unread or stale. A name
        nothing has (no function, operator or type) counts as unread unless found so at or
        after `absent_since`, and then holds until its read (as an absent relation:
        _trusted)."""
        now = self._clock()
        found: dict[str, Reach] = {}
        until = now + self._ttl
        for name in names:
            entry = self._behind.get((kind, name))
            if entry is None or now - entry[1] >= self._ttl:
                return None
            reach, read_at = entry
            if reach is UNDEFINED:
                if absent_since is None or read_at < absent_since:
                    return None
                until = min(until, read_at)
                continue
            until = min(until, read_at + self._ttl)
            if reach is not NOTHING_REACHED:
                found[name] = reach
        return found, until

    async def load_behind(
        self, kind: str, names: Iterable[str], absent_since: float | None = None
    ) -> None:
        """Reads what the names not fresh run (and, with `absent_since`, names nothing
        had before then); raises ColumnsUnavailable."""
        now = self._clock()
        missing = sorted(
            name
            for name in set(names)
            if (entry := self._behind.get((kind, name))) is None
            or now - entry[1] >= self._ttl
            or (entry[0] is UNDEFINED and absent_since is not None and entry[1] < absent_since)
        )
        if not missing:
            return
        async with self._lock:
            generation = self._generation
            read_at = self._clock()
            if kind == "function":
                found = bodies_from_rows(await self._query(bodies_query(missing)), body_reach)
            else:
                query = operators_query(missing) if kind == "operator" else types_query(missing)
                found = behind_from_rows(await self._query(query), functions_called)
            if generation == self._generation:
                if len(self._behind) + len(missing) > _MAX_ENTRIES:
                    self._behind.clear()
                for name in missing:
                    self._behind[(kind, name)] = (found.get(name, NOTHING_REACHED), read_at)

    def invalidate(self) -> None:
        self._entries.clear()
        self._behind.clear()
        self._generation += 1

    async def load(
        self, relations: Iterable[str], absent_since: float | None = None
    ) -> dict[str, tuple[str, ...]]:
        """Like known(), after reading what is missing or stale; raises ColumnsUnavailable.
        With `absent_since`, relations last found absent before then are read again."""
        wanted = frozenset(relations)
        read: dict[str, tuple[str, ...]] = {}
        if self.missing(wanted, absent_since):
            async with self._lock:
                # Another session may have read them while this one waited.
                missing = self.missing(wanted, absent_since)
                if missing:
                    read = await self._read(missing)
        return {**self.known(wanted), **read}

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _read(self, relations: frozenset[str]) -> dict[str, tuple[str, ...]]:
        generation = self._generation
        # Timed from before the query, so an entry never outlives what it saw by more than the TTL.
        read_at = self._clock()
        found = columns_from_rows(await self._query(columns_query(relations)))
        asked = [relation for relation in relations if asked_about(relation)]
        reached = {}
        views: dict[str, dict[str, str]] = {}
        if asked:
            rows = await self._query(reach_query(asked))
            reached = reach_from_rows(rows, functions_called)
            views = views_from_rows(rows)
        if generation == self._generation:
            if len(self._entries) + len(relations) > _MAX_ENTRIES:
                self._entries.clear()
            for relation in relations:
                reach = reached.get(relation, NOTHING_REACHED)
                read_through = views.get(relation)
                self._entries[relation] = _Entry(found.get(relation), read_at, reach, read_through)
        return {relation: columns for relation, columns in found.items() if relation in relations}

    async def _query(self, sql: str) -> list[Row]:
        try:
            async with asyncio.timeout(self._timeout):
                if self._connection is None or self._connection.closed:
                    connection = await self._connect()
                    # The definitions it reads then name every object with its schema,
                    # whatever the path of the sessions that read them.
                    await connection.query(EMPTY_SEARCH_PATH)
                    self._connection = connection
                return await self._connection.query(sql)
        except TimeoutError:
            self.close()
            raise ColumnsUnavailable(
                f"the database did not list the columns within {self._timeout:g} s"
            ) from None
        except Exception as error:
            self.close()
            raise ColumnsUnavailable(f"cannot list the columns in the database: {error}") from error
        except BaseException:
            # Cancelled mid-query: what the connection sends next is no longer known.
            self.close()
            raise
