"""The gateway's column catalog, reading a real database over the gateway's own connection."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from custos.sql.analysis import analyze
from custos.sql.expansion import relations_with_all_columns
from custos.sql.names import qualified
from custos.upstream.columns import (
    ColumnCatalog,
    ColumnsUnavailable,
    askable,
    columns_from_rows,
    columns_query,
)
from custos.upstream.credentials import credential_source
from custos.upstream.settings import UpstreamSettings
from proxy_task.upstream import SideConnection, side_connector

PRODUCTS = ("id", "name", "price_cents")
ODD_TABLE = 'it\'s "odd".x'  # a single quote, double quotes and a dot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingConnector:
    """The real side connector, counting the connections it opens and the queries they run."""

    def __init__(self, dsn: str, application_name: str) -> None:
        credentials = credential_source(UpstreamSettings.model_validate({"dsn": dsn}))
        self._connect = side_connector(credentials, application_name, 10.0)
        self.opened = 0
        self.queries = 0

    async def __call__(self) -> CountedConnection:
        connection = await self._connect()
        self.opened += 1
        return CountedConnection(connection, self)


class CountedConnection:
    def __init__(self, inner: SideConnection, counter: CountingConnector) -> None:
        self._inner = inner
        self._counter = counter

    @property
    def closed(self) -> bool:
        return self._inner.closed

    async def query(self, text: str) -> list[tuple[str | None, ...]]:
        self._counter.queries += 1
        return await self._inner.query(text)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture
def scratch(pg_dsn: str) -> Iterator[str]:
    """A schema of this test's own, with an odd table and one without columns."""
    schema = f"columns_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        connection.execute(
            sql.SQL('CREATE TABLE {} ("a\'b" int, "C.d" text, plain int)').format(
                sql.Identifier(schema, ODD_TABLE)
            )
        )
        connection.execute(sql.SQL("CREATE TABLE {} ()").format(sql.Identifier(schema, "empty")))
    yield schema
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def catalog_for(
    pg_dsn: str, clock: Callable[[], float] | None = None, **options: float
) -> tuple[ColumnCatalog, CountingConnector, str]:
    name = f"custos-catalog-test-{secrets.token_hex(3)}"
    connector = CountingConnector(pg_dsn, name)
    catalog = ColumnCatalog(connector, clock=clock or Clock(), **options)
    return catalog, connector, name


async def load_once(catalog: ColumnCatalog, relations: list[str]) -> dict[str, tuple[str, ...]]:
    try:
        return await catalog.load(relations)
    finally:
        catalog.close()


def test_load_reads_columns_in_table_order_and_what_they_reach_in_two_queries(pg_dsn):
    catalog, connector, _ = catalog_for(pg_dsn)

    async def scenario() -> None:
        assert catalog.known(["crm.products"]) == {}
        loaded = await catalog.load(["crm.products", "crm.orders"])
        assert loaded["crm.products"] == PRODUCTS
        assert loaded["crm.orders"][:2] == ("id", "customer_id")
        assert catalog.known(["crm.products"]) == {"crm.products": PRODUCTS}
        assert catalog.missing(["crm.products", "crm.orders"]) == frozenset()
        assert await catalog.load(["crm.products"]) == {"crm.products": PRODUCTS}
        catalog.close()

    asyncio.run(scenario())
    # The search path emptied (definitions then name every schema), columns, then reach.
    assert (connector.opened, connector.queries) == (1, 3)


def test_entries_expire_after_the_ttl(pg_dsn):
    clock = Clock()
    catalog, connector, _ = catalog_for(pg_dsn, clock, ttl_seconds=60)

    async def scenario() -> None:
        await catalog.load(["crm.products", "crm.nowhere"])
        clock.now += 59
        assert catalog.known(["crm.products"]) == {"crm.products": PRODUCTS}
        assert catalog.missing(["crm.products", "crm.nowhere"]) == frozenset()
        clock.now += 1
        assert catalog.known(["crm.products"]) == {}
        assert catalog.missing(["crm.products", "crm.nowhere"]) == {"crm.products", "crm.nowhere"}
        assert await catalog.load(["crm.products"]) == {"crm.products": PRODUCTS}
        catalog.close()

    asyncio.run(scenario())
    assert (connector.opened, connector.queries) == (1, 5)


def test_invalidate_forgets_everything_so_a_new_column_shows(pg_dsn, scratch):
    catalog, connector, _ = catalog_for(pg_dsn)
    relation = f"{scratch}.empty"

    async def scenario() -> None:
        assert await catalog.load([relation, "crm.products"]) == {
            relation: (),
            "crm.products": PRODUCTS,
        }
        with psycopg.connect(pg_dsn, autocommit=True) as connection:
            connection.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN added int").format(
                    sql.Identifier(scratch, "empty")
                )
            )
        assert catalog.known([relation]) == {relation: ()}  # cached until told
        catalog.invalidate()
        assert catalog.known([relation, "crm.products"]) == {}
        assert await catalog.load([relation]) == {relation: ("added",)}
        catalog.close()

    asyncio.run(scenario())
    assert connector.queries == 5


def test_absent_relations_are_remembered_but_never_answered(pg_dsn):
    catalog, connector, _ = catalog_for(pg_dsn)

    async def scenario() -> None:
        assert await catalog.load(["crm.nowhere", "nowhere.products"]) == {}
        assert catalog.missing(["crm.nowhere", "nowhere.products"]) == frozenset()
        assert catalog.known(["crm.nowhere"]) == {}
        assert await catalog.load(["crm.nowhere"]) == {}
        catalog.close()

    asyncio.run(scenario())
    assert connector.queries == 3


def test_absence_holds_only_for_the_decision_whose_own_read_found_it(pg_dsn, scratch):
    """A relation or function created in the database after it was found absent is read,
    however fresh the absence: absence holds for the statement whose own load found it,
    and until that read only (nothing remembers a decision made on it)."""
    clock = Clock()
    catalog, connector, _ = catalog_for(pg_dsn, clock)
    view, function = f"{scratch}.later", f"{scratch}.later_f"

    async def scenario() -> None:
        first = clock.now
        await catalog.load([view], absent_since=first)
        await catalog.load_behind("function", [function], absent_since=first)
        assert catalog.views([view]) is None  # an earlier absence: not for a decision
        assert catalog.reach([view]) is None
        assert catalog.behind("function", [function]) is None
        assert catalog.views([view], absent_since=first) == ({}, first)  # until its read
        assert catalog.reach([view], absent_since=first) == ({}, first)
        assert catalog.behind("function", [function], absent_since=first) == ({}, first)
        with psycopg.connect(pg_dsn, autocommit=True) as connection:
            connection.execute(
                sql.SQL("CREATE VIEW {} AS SELECT email FROM crm.customers").format(
                    sql.Identifier(scratch, "later")
                )
            )
            connection.execute(
                sql.SQL(
                    "CREATE FUNCTION {}() RETURNS text LANGUAGE sql"
                    " AS 'SELECT email FROM crm.customers LIMIT 1'"
                ).format(sql.Identifier(scratch, "later_f"))
            )
        clock.now += 1
        second = clock.now
        assert catalog.views([view], absent_since=second) is None  # read again first
        await catalog.load([view])  # a hint's load keeps the absence it has
        assert catalog.missing([view]) == frozenset()
        await catalog.load([view], absent_since=second)
        await catalog.load_behind("function", [function], absent_since=second)
        views = catalog.views([view], absent_since=second)
        assert views is not None
        assert "crm.customers" in views[0][view]
        bodies = catalog.behind("function", [function], absent_since=second)
        assert bodies is not None
        assert "crm.customers" in bodies[0][function].relations
        catalog.close()

    asyncio.run(scenario())
    # Emptied search path; the view's columns and reach twice (absent, then created); the
    # function's body twice.
    assert connector.queries == 7


def test_a_table_without_columns_is_not_absent(pg_dsn, scratch):
    catalog, _, _ = catalog_for(pg_dsn)
    relation = f"{scratch}.empty"
    assert asyncio.run(load_once(catalog, [relation])) == {relation: ()}


def test_names_with_quotes_and_dots_are_read(pg_dsn, scratch):
    quoted = sql.Identifier(scratch, ODD_TABLE).as_string()
    (relation,) = relations_with_all_columns(analyze(f"SELECT * FROM {quoted}", ("public",)))
    catalog, _, _ = catalog_for(pg_dsn)
    assert asyncio.run(load_once(catalog, [relation])) == {relation: ("a'b", "C.d", "plain")}


def test_names_with_a_backslash_or_nul_are_never_asked_about(pg_dsn):
    catalog, connector, _ = catalog_for(pg_dsn)
    odd = ["crm.back\\slash", "crm.nul\x00"]
    assert not any(askable(relation) for relation in odd)
    assert catalog.missing(odd) == frozenset()
    assert asyncio.run(load_once(catalog, odd)) == {}
    assert connector.opened == 0
    with pytest.raises(ValueError, match="cannot ask"):
        columns_query(odd)


def test_the_query_text_escapes_literals_for_the_database(pg_dsn, scratch):
    # The same text `custos policy explain --upstream` runs through psycopg.
    relation = qualified(scratch, ODD_TABLE)
    text = columns_query([relation, "crm.products", "crm.nowhere"])
    assert "'it''s" in text
    with psycopg.connect(pg_dsn) as connection:
        rows = connection.execute(text).fetchall()
    assert columns_from_rows(rows) == {
        relation: ("a'b", "C.d", "plain"),
        "crm.products": PRODUCTS,
    }


def test_a_failure_raises_and_the_next_load_connects_again(pg_dsn):
    unreachable = CountingConnector(
        "postgresql://nobody@127.0.0.1:1/custos_demo", "custos-unreachable"
    )
    reachable = CountingConnector(pg_dsn, f"custos-catalog-test-{secrets.token_hex(3)}")
    attempts = iter([unreachable, reachable])

    async def connect() -> CountedConnection:
        return await next(attempts)()

    catalog = ColumnCatalog(connect)

    async def scenario() -> None:
        with pytest.raises(ColumnsUnavailable, match="cannot list the columns"):
            await catalog.load(["crm.products"])
        assert catalog.missing(["crm.products"]) == {"crm.products"}
        assert await catalog.load(["crm.products"]) == {"crm.products": PRODUCTS}
        catalog.close()

    asyncio.run(scenario())
    assert reachable.opened == 1


def test_a_connection_lost_mid_query_raises_then_is_replaced(pg_dsn):
    clock = Clock()
    catalog, connector, name = catalog_for(pg_dsn, clock, ttl_seconds=60)

    async def scenario() -> None:
        await catalog.load(["crm.products"])
        clock.now += 60
        # The server ends the connection; the event loop has not yet seen it go when the next
        # query is written, so that query fails.
        _terminate(pg_dsn, name)
        with pytest.raises(ColumnsUnavailable):
            await catalog.load(["crm.products"])
        assert await catalog.load(["crm.products"]) == {"crm.products": PRODUCTS}
        catalog.close()

    asyncio.run(scenario())
    assert connector.opened == 2


def test_a_connection_closed_while_idle_is_replaced_without_an_error(pg_dsn):
    clock = Clock()
    catalog, connector, name = catalog_for(pg_dsn, clock, ttl_seconds=60)

    async def scenario() -> None:
        await catalog.load(["crm.products"])
        clock.now += 60
        _terminate(pg_dsn, name)
        await asyncio.sleep(0.1)  # lets the event loop see the connection end
        assert await catalog.load(["crm.products"]) == {"crm.products": PRODUCTS}
        catalog.close()

    asyncio.run(scenario())
    assert connector.opened == 2


def _terminate(pg_dsn: str, application_name: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        ended = connection.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE application_name = %s",
            [application_name],
        ).fetchall()
    assert ended == [(True,)]


def test_definitions_are_read_with_every_schema_named(pg_dsn):
    catalog, _, _ = catalog_for(pg_dsn)

    async def scenario() -> list[tuple[str | None, ...]]:
        await catalog.load(["crm.products"])  # opens the connection
        assert catalog._connection is not None
        rows = await catalog._connection.query("SHOW search_path")
        catalog.close()
        return rows

    assert asyncio.run(scenario()) == [("",)]
