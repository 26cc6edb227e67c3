"""asyncpg (extended protocol, binary, named statements) through the gateway."""

from __future__ import annotations

import asyncio
import datetime
import io
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from compare import SIDES, TYPED_SELECT, asyncpg_options
from gateway_fixtures import GatewayProcess

Scenario = Callable[[asyncpg.Connection], Awaitable[Any]]


def _on_both(gateway: GatewayProcess, scenario: Scenario) -> tuple[Any, Any]:
    """Runs `scenario` on a direct connection, then on one through the gateway."""

    async def run() -> tuple[Any, Any]:
        results = []
        for side in SIDES:
            connection = await asyncpg.connect(**asyncpg_options(gateway, side))
            try:
                results.append(await scenario(connection))
            finally:
                await connection.close()
        direct, through = results
        return direct, through

    return asyncio.run(run())


def _error(error: asyncpg.PostgresError) -> tuple[Any, ...]:
    return (
        type(error),
        error.sqlstate,
        error.severity_en,
        error.message,
        error.detail,
        error.hint,
        error.position,
    )


def _described(statement: asyncpg.prepared_stmt.PreparedStatement) -> list[tuple[str, str]]:
    return [(attribute.name, attribute.type.name) for attribute in statement.get_attributes()]


def test_fetch_decodes_rows_and_types_like_direct(gateway: GatewayProcess) -> None:
    async def scenario(connection: asyncpg.Connection) -> list[Any]:
        seen: list[Any] = []
        for query in (
            TYPED_SELECT,
            "SELECT * FROM crm.customers ORDER BY id LIMIT 500",
            "SELECT * FROM crm.orders WHERE customer_id < 40 ORDER BY id",
        ):
            statement = await connection.prepare(query)
            seen.append(_described(statement))
            seen.append([tuple(row) for row in await statement.fetch()])
        # Composite and record types make asyncpg introspect the catalog first.
        composite = await connection.fetch(
            "SELECT c::crm.products AS product, ROW(c.id, c.name) AS pair"
            " FROM crm.products AS c ORDER BY id LIMIT 3"
        )
        seen.append([(tuple(row["product"]), tuple(row["pair"])) for row in composite])
        seen.append(await connection.fetchval("SELECT count(*) FROM crm.support_tickets"))
        seen.append(tuple(await connection.fetchrow("SELECT * FROM crm.products WHERE id = 3")))
        return seen

    direct, through = _on_both(gateway, scenario)
    assert through == direct
    assert through[-2] == 2000


def test_prepared_statements_take_parameters_and_are_reused(gateway: GatewayProcess) -> None:
    async def scenario(connection: asyncpg.Connection) -> list[Any]:
        statement = await connection.prepare(
            "SELECT id, full_name, birth_date FROM crm.customers WHERE id = ANY($1::bigint[])"
            " AND created_at > $2 ORDER BY id"
        )
        seen: list[Any] = [[parameter.name for parameter in statement.get_parameters()]]
        for ids in ([1, 2, 3], [10, 20, 30, 40], []):
            rows = await statement.fetch(ids, datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
            seen.append([tuple(row) for row in rows])
        typed = await connection.fetchrow(
            "SELECT $1::numeric * 2, $2::text || '!', $3::bytea, $4::uuid, $5::jsonb, $6::int[]",
            Decimal("1.25"),
            "hé",
            b"\x00\xff",
            uuid.UUID("b0a4c8b6-7e5a-4c0c-9d63-1f5e0c9a1b2c"),
            '{"k": 1}',
            [1, None, 3],
        )
        seen.append(tuple(typed))
        # asyncpg names and caches its statements; they live on the server session.
        seen.append(await connection.fetchval("SELECT count(*) > 0 FROM pg_prepared_statements"))
        return seen

    direct, through = _on_both(gateway, scenario)
    assert through == direct
    assert [row[0] for row in through[1]] == [1, 2, 3]
    assert through[-1] is True


def test_executemany_and_cursors_in_a_transaction(gateway: GatewayProcess) -> None:
    async def scenario(connection: asyncpg.Connection) -> list[Any]:
        await connection.execute("CREATE TEMP TABLE many (n int PRIMARY KEY, word text)")
        await connection.executemany(
            "INSERT INTO many VALUES ($1, $2)", [(n, f"word {n}") for n in range(2000)]
        )
        seen: list[Any] = [await connection.fetchrow("SELECT count(*), sum(n) FROM many")]
        async with connection.transaction():
            batches = []
            cursor = await connection.cursor("SELECT * FROM crm.orders ORDER BY id")
            while batch := await cursor.fetch(3000):
                batches.append([tuple(row) for row in batch])
            seen.append([len(batch) for batch in batches])
            seen.append(batches[-1][-1])
            seen.append(
                [
                    tuple(row)
                    async for row in connection.cursor(
                        "SELECT id, email FROM crm.customers WHERE id < $1 ORDER BY id",
                        1200,
                        prefetch=250,
                    )
                ]
            )
        try:
            await connection.executemany(
                "INSERT INTO many VALUES ($1, $2)", [(5000, "new"), (1, "duplicate")]
            )
        except asyncpg.UniqueViolationError as error:
            seen.append(_error(error))
        seen.append(await connection.fetchval("SELECT count(*) FROM many"))
        return seen

    direct, through = _on_both(gateway, scenario)
    assert through == direct
    assert through[1] == [3000] * 6 + [2000]
    assert through[-2][1] == "23505"


@pytest.mark.parametrize("copy_format", ["text", "csv", "binary"])
def test_copy_to_and_from_tables_moves_the_same_bytes(
    gateway: GatewayProcess, copy_format: str
) -> None:
    digest = "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY id)) FROM {} AS t"

    async def scenario(connection: asyncpg.Connection) -> list[Any]:
        exported = io.BytesIO()
        await connection.copy_from_table(
            "customers", schema_name="crm", output=exported, format=copy_format
        )
        await connection.execute("CREATE TEMP TABLE customers_copy (LIKE crm.customers)")
        exported.seek(0)
        status = await connection.copy_to_table(
            "customers_copy", source=exported, format=copy_format
        )
        await connection.execute("CREATE TEMP TABLE records (id int, name text, seen date)")
        await connection.copy_records_to_table(
            "records",
            records=await connection.fetch(
                "SELECT id::int, full_name, birth_date FROM crm.customers ORDER BY id"
            ),
        )
        return [
            exported.getvalue(),
            status,
            tuple(await connection.fetchrow(digest.format("customers_copy"))),
            tuple(await connection.fetchrow(digest.format("crm.customers"))),
            await connection.fetchval("SELECT count(*) FROM records"),
        ]

    direct, through = _on_both(gateway, scenario)
    assert through == direct
    assert through[2] == through[3]
    assert through[1] == "COPY 5000"


def test_transactions_roll_back_and_failed_ones_refuse_until_rollback(
    gateway: GatewayProcess,
) -> None:
    async def scenario(connection: asyncpg.Connection) -> list[Any]:
        seen: list[Any] = []
        await connection.execute("CREATE TEMP TABLE ledger (n int PRIMARY KEY)")
        async with connection.transaction():
            await connection.execute("INSERT INTO ledger VALUES (1)")
        try:
            async with connection.transaction():
                await connection.execute("INSERT INTO ledger VALUES (2)")
                raise LookupError("roll back")
        except LookupError:
            pass
        async with connection.transaction():
            await connection.execute("INSERT INTO ledger VALUES (3)")
            try:
                async with connection.transaction():
                    await connection.execute("INSERT INTO ledger VALUES (1)")
            except asyncpg.UniqueViolationError as error:
                seen.append(_error(error))
        transaction = connection.transaction()
        await transaction.start()
        for statement in ("SELECT 1 / 0", "SELECT 1"):
            try:
                await connection.execute(statement)
            except asyncpg.PostgresError as error:
                seen.append(_error(error))
        await transaction.rollback()
        seen.append(await connection.fetchval("SELECT array_agg(n ORDER BY n) FROM ledger"))
        for statement in ("SELECT * FROM crm.nothing_here", "SELEC 1", "SELECT $1::int"):
            try:
                await connection.fetch(statement, *(["x"] if "$1" in statement else []))
            except (asyncpg.PostgresError, asyncpg.DataError) as error:
                seen.append(type(error).__name__)
        return seen

    direct, through = _on_both(gateway, scenario)
    assert through == direct
    assert [entry[1] for entry in through[:3]] == ["23505", "22012", "25P02"]
    assert through[3] == [1, 3]


def test_notifications_reach_listeners_both_ways(gateway: GatewayProcess) -> None:
    channel = f"custos_{uuid.uuid4().hex[:8]}"

    async def run() -> list[tuple[str, str]]:
        direct = await asyncpg.connect(**asyncpg_options(gateway, "direct"))
        through = await asyncpg.connect(**asyncpg_options(gateway, "gateway"))
        received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        heard_in_order: list[tuple[str, str]] = []

        def heard(_: object, pid: int, heard_channel: str, text: str) -> None:
            received.put_nowait((heard_channel, text))

        try:
            for listener, sender, payload in (
                (through, direct, "to the gateway"),
                (direct, through, "from the gateway"),
            ):
                await listener.add_listener(channel, heard)
                await sender.execute("SELECT pg_notify($1, $2)", channel, payload)
                heard_in_order.append(await asyncio.wait_for(received.get(), timeout=10))
                await listener.remove_listener(channel, heard)
        finally:
            await direct.close()
            await through.close()
        return heard_in_order

    assert asyncio.run(run()) == [
        (channel, "to the gateway"),
        (channel, "from the gateway"),
    ]


def test_a_timeout_cancels_the_statement_on_the_server_and_the_connection_goes_on(
    gateway: GatewayProcess,
) -> None:
    async def scenario(connection: asyncpg.Connection) -> list[Any]:
        seen: list[Any] = []
        transaction = connection.transaction()
        await transaction.start()
        with pytest.raises(TimeoutError):
            await connection.fetch("SELECT pg_sleep(30)", timeout=0.5)
        # Only a cancel that reached the database fails the transaction; a sleep that
        # ran on would leave it usable.
        try:
            await connection.fetchval("SELECT 1")
        except asyncpg.PostgresError as error:
            seen.append(error.sqlstate)
        await transaction.rollback()
        seen.append(await connection.fetchval("SELECT 6 * 7"))
        with pytest.raises(TimeoutError):
            await connection.execute("SELECT pg_sleep(30)", timeout=0.5)
        seen.append(await connection.fetchval("SELECT 'after'"))
        return seen

    direct, through = _on_both(gateway, scenario)
    assert through == direct == ["25P02", 42, "after"]


def test_a_pool_resets_and_reuses_gateway_connections(gateway: GatewayProcess) -> None:
    async def run(side: str) -> list[Any]:
        seen: list[Any] = []
        async with asyncpg.create_pool(
            **asyncpg_options(gateway, side), min_size=2, max_size=2
        ) as pool:
            for round_number in range(3):
                async with pool.acquire() as connection:
                    # Released connections are reset (RESET ALL, UNLISTEN *, CLOSE ALL),
                    # so a setting made here is gone on the next acquire.
                    seen.append(await connection.fetchval("SHOW statement_timeout"))
                    await connection.execute(f"SET statement_timeout = {1000 + round_number}")
                    await connection.execute("LISTEN pool_channel")
            seen.append(
                sorted(
                    await asyncio.gather(
                        *(pool.fetchval("SELECT $1::int * 2", n) for n in range(8))
                    )
                )
            )
        return seen

    direct = asyncio.run(run("direct"))
    through = asyncio.run(run("gateway"))
    assert through == direct
    assert through[:3] == ["0", "0", "0"]
