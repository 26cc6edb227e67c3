"""psycopg 3 through the gateway sees what it sees connected directly."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from compare import TYPED_SELECT, ErrorFields, Outcome, connection_pair, error_fields, outcome
from gateway_fixtures import GatewayProcess
from psycopg import errors
from psycopg.types.json import Jsonb

_QUERIES = {
    "customers": "SELECT * FROM crm.customers ORDER BY id LIMIT 300",
    "orders": "SELECT * FROM crm.orders WHERE customer_id < 40 ORDER BY id",
    "tickets": "SELECT * FROM crm.support_tickets ORDER BY id LIMIT 100",
    "products": "SELECT * FROM crm.products ORDER BY id",
    "types": TYPED_SELECT,
    "no_rows": "SELECT 1 WHERE false",
    "show": "SHOW search_path",
    "empty": ";",
}

_FAILING = [
    ("SELECT 1 / 0", None),
    ("SELECT * FROM crm.no_such_table", None),
    ("SELECT no_such_column FROM crm.customers", None),
    ("SELEC 1", None),
    ("SELECT 'abc'::int", None),
    ("SELECT %s::int", ["not a number"]),
    ("INSERT INTO crm.products (id, name, price_cents) VALUES (1, 'duplicate', 100)", None),
    ("INSERT INTO crm.products (id, name, price_cents) VALUES (999, 'free', -1)", None),
    (
        "DO $$ BEGIN RAISE EXCEPTION 'custom failure' USING ERRCODE = 'P0001',"
        " DETAIL = 'some detail', HINT = 'some hint'; END $$",
        None,
    ),
]

# What libpq reports from the startup's ParameterStatus messages.
_REPORTED_PARAMETERS = (
    "server_version",
    "server_encoding",
    "client_encoding",
    "application_name",
    "is_superuser",
    "session_authorization",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
)


Pair = tuple[psycopg.Connection[Any], psycopg.Connection[Any]]


@pytest.fixture
def pair(gateway: GatewayProcess) -> Iterator[Pair]:
    """(direct, through the gateway), in autocommit mode."""
    with connection_pair(gateway, autocommit=True) as connections:
        yield connections


def _both(pair: Pair, run: Callable[[psycopg.Connection[Any]], Any]) -> tuple[Any, Any]:
    direct, through = pair
    return run(direct), run(through)


def test_startup_reports_the_same_server_parameters(pair: Pair) -> None:
    direct, through = pair
    for name in _REPORTED_PARAMETERS:
        assert through.info.parameter_status(name) == direct.info.parameter_status(name), name
    assert through.info.transaction_status == direct.info.transaction_status


@pytest.mark.parametrize(
    "options",
    [
        {"options": "-c statement_timeout=4321 -c search_path=public"},
        {"client_encoding": "LATIN1"},
        {"max_protocol_version": "3.2"},
    ],
    ids=["options", "client_encoding", "protocol_3_2"],
)
def test_startup_options_take_effect_as_they_do_directly(
    gateway: GatewayProcess, options: dict[str, str]
) -> None:
    with connection_pair(gateway, **options) as (direct, through):
        assert through.pgconn.full_protocol_version == direct.pgconn.full_protocol_version
        for name in ("client_encoding", "statement_timeout", "search_path"):
            assert outcome(through, f"SHOW {name}") == outcome(direct, f"SHOW {name}")
        assert outcome(through, "SELECT 'é' AS accented") == outcome(
            direct, "SELECT 'é' AS accented"
        )


def test_settings_changed_in_the_session_are_reported_back(pair: Pair) -> None:
    def run(connection: psycopg.Connection[Any]) -> list[str | None]:
        connection.execute("SET TimeZone = 'Asia/Tokyo'")
        connection.execute("SET application_name = 'renamed'")
        connection.execute("SET DateStyle = 'SQL, DMY'")
        return [
            connection.info.parameter_status(name)
            for name in ("TimeZone", "application_name", "DateStyle")
        ]

    direct, through = _both(pair, run)
    assert through == direct == ["Asia/Tokyo", "renamed", "SQL, DMY"]


def test_notices_and_warnings_reach_the_client(pair: Pair) -> None:
    def run(connection: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        heard: list[tuple[Any, ...]] = []
        connection.add_notice_handler(
            lambda notice: heard.append(
                (
                    notice.severity_nonlocalized,
                    notice.sqlstate,
                    notice.message_primary,
                    notice.message_detail,
                    notice.message_hint,
                )
            )
        )
        connection.execute("DO $$ BEGIN RAISE NOTICE 'a notice'; END $$")
        connection.execute(
            "DO $$ BEGIN RAISE WARNING 'a warning' USING DETAIL = 'detail', HINT = 'hint'; END $$",
            prepare=True,
        )
        connection.execute("DROP TABLE IF EXISTS no_such_table_here")
        return heard

    direct, through = _both(pair, run)
    assert through == direct
    assert len(through) == 3


def test_large_messages_from_the_client_pass_whole(pair: Pair) -> None:
    blob = bytes(range(256)) * (8 << 12)  # 8 MiB in one Bind message

    def run(connection: psycopg.Connection[Any]) -> tuple[Any, ...]:
        echoed = connection.execute("SELECT md5(%b), length(%b)", [blob, blob]).fetchone()
        connection.execute("CREATE TEMP TABLE blobs (data text)")
        with connection.cursor() as cursor, cursor.copy("COPY blobs FROM STDIN") as copy:
            # One 8 MiB row, which psycopg sends in 128 KiB CopyData messages.
            copy.write(b"x" * (8 << 20) + b"\n")
        stored = connection.execute("SELECT length(data) FROM blobs").fetchone()
        return echoed, stored

    direct, through = _both(pair, run)
    assert through == direct
    assert through[1] == (8 << 20,)


def test_an_error_in_the_middle_of_copy_out_fails_the_same(pair: Pair) -> None:
    def run(connection: psycopg.Connection[Any]) -> tuple[Any, ...]:
        received = 0
        try:
            with (
                connection.cursor() as cursor,
                cursor.copy(
                    "COPY (SELECT 1 / (i - 30000) FROM generate_series(1, 40000) AS i) TO STDOUT"
                ) as copy,
            ):
                for chunk in copy:
                    received += len(chunk)
        except errors.DivisionByZero as error:
            failure = error_fields(error)
        return failure, received > 0, outcome(connection, "SELECT 'next'")

    direct, through = _both(pair, run)
    assert through == direct
    assert through[0].sqlstate == "22012"


def test_a_backend_terminated_by_the_server_ends_the_client_session_the_same(
    gateway: GatewayProcess,
) -> None:
    seen = []
    with connection_pair(gateway, autocommit=True) as connections:
        for connection in connections:
            with pytest.raises(psycopg.OperationalError) as ended:
                connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            seen.append((type(ended.value), ended.value.sqlstate, connection.closed))
    assert seen[1] == seen[0]
    assert seen[1][0] is errors.AdminShutdown


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("query", _QUERIES.values(), ids=_QUERIES.keys())
def test_rows_and_column_types_match_direct(pair: Pair, query: str, binary: bool) -> None:
    direct, through = _both(pair, lambda connection: outcome(connection, query, binary=binary))
    assert through == direct
    assert through.error is None


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_parameters_of_many_types_round_trip(pair: Pair, binary: bool) -> None:
    values = [
        7,
        -(2**62),
        Decimal("12345.678901234567890"),
        3.5,
        "text with 'quotes' and ☃",
        b"\x00\x01binary\xff",
        True,
        datetime.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=datetime.UTC),
        datetime.date(1999, 12, 31),
        datetime.timedelta(days=3, seconds=5),
        uuid.UUID("b0a4c8b6-7e5a-4c0c-9d63-1f5e0c9a1b2c"),
        Jsonb({"nested": [1, {"k": None}]}),
        [1, 2, None],
        ["a", None],
        None,
    ]
    placeholder = "%b" if binary else "%s"
    query = "SELECT " + ", ".join([placeholder] * len(values))
    direct, through = _both(
        pair, lambda connection: outcome(connection, query, values, binary=binary)
    )
    assert through == direct
    assert through.rows[0][0] == 7


@pytest.mark.parametrize(("query", "params"), _FAILING)
def test_errors_carry_the_same_fields_and_the_connection_goes_on(
    pair: Pair, query: str, params: list[Any] | None
) -> None:
    def run(connection: psycopg.Connection[Any]) -> tuple[Outcome, Outcome]:
        return outcome(connection, query, params), outcome(connection, "SELECT 'still here'")

    (direct_error, direct_next), (through_error, through_next) = _both(pair, run)
    assert through_error == direct_error
    assert through_error.error is not None
    assert through_error.error.sqlstate is not None
    assert (
        through_next == direct_next == Outcome((("?column?", 25),), (("still here",),), "SELECT 1")
    )


def _prepared_statement_names(connection: psycopg.Connection[Any]) -> list[str]:
    rows = connection.execute("SELECT name FROM pg_prepared_statements ORDER BY name").fetchall()
    return [name for (name,) in rows]


def test_prepared_statements_are_prepared_on_the_server_and_reused(pair: Pair) -> None:
    def run(connection: psycopg.Connection[Any]) -> tuple[list[Outcome], list[str]]:
        connection.prepare_threshold = 2
        results = [
            outcome(connection, "SELECT * FROM crm.customers WHERE id = %s", [i], prepare=True)
            for i in (1, 2, 3)
        ]
        # Unmarked, the statement is prepared once run more than prepare_threshold times.
        results += [
            outcome(connection, "SELECT count(*) FROM crm.orders WHERE customer_id = %s", [i])
            for i in range(1, 8)
        ]
        results += [
            outcome(connection, "SELECT %s::int / %s", [1, 0], binary=True, prepare=True),
            outcome(connection, "SELECT %s::int / %s", [6, 3], binary=True, prepare=True),
        ]
        return results, _prepared_statement_names(connection)

    (direct_results, direct_names), (through_results, through_names) = _both(pair, run)
    assert through_results == direct_results
    assert through_names == direct_names
    assert through_names
    assert through_results[-2].error is not None
    assert through_results[-1].rows == ((2,),)


def test_pipeline_mode_runs_many_statements_and_reports_an_error_in_place(pair: Pair) -> None:
    def run(connection: psycopg.Connection[Any]) -> tuple[Any, ...]:
        connection.execute("CREATE TEMP TABLE piped (n int PRIMARY KEY, word text)")
        with connection.pipeline(), connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO piped VALUES (%s, %s)", [(n, f"word {n}") for n in range(500)]
            )
            selects = [connection.execute("SELECT %s::int * 2", [n]) for n in range(200)]
        doubled = [select.fetchone() for select in selects]
        failure: ErrorFields | None = None
        aborted = False
        try:
            with connection.pipeline():
                connection.execute("INSERT INTO piped VALUES (1000, 'fine')")
                connection.execute("INSERT INTO piped VALUES (1, 'duplicate')")
                try:
                    connection.execute("INSERT INTO piped VALUES (1001, 'never')")
                except errors.PipelineAborted:
                    aborted = True
        except psycopg.Error as error:
            failure = error_fields(error)
        rows = connection.execute("SELECT count(*), sum(n) FROM piped").fetchone()
        return doubled, failure, aborted, rows

    direct, through = _both(pair, run)
    assert through == direct
    doubled, failure, _, rows = through
    assert doubled == [(n * 2,) for n in range(200)]
    assert failure is not None
    assert failure.sqlstate == "23505"
    # One Sync ends the second pipeline: its statements were one implicit transaction.
    assert rows == (500, sum(range(500)))


def test_server_side_cursor_fetches_orders_in_batches(pair: Pair) -> None:
    def run(connection: psycopg.Connection[Any]) -> tuple[list[Any], list[Any], Any]:
        with connection.transaction(), connection.cursor(name="orders_cursor") as cursor:
            cursor.itersize = 700
            cursor.execute("SELECT * FROM crm.orders ORDER BY id")
            batches: list[Any] = []
            while batch := cursor.fetchmany(3000):
                batches.append(len(batch))
                batches.extend(batch)
        with (
            connection.transaction(),
            connection.cursor(name="scrolling", scrollable=True, binary=True) as cursor,
        ):
            cursor.execute("SELECT id, total_cents FROM crm.orders ORDER BY id")
            cursor.scroll(10_000, mode="absolute")
            after_jump = cursor.fetchmany(3)
            cursor.scroll(-2)
            backwards = cursor.fetchone()
            described = [(column.name, column.type_code) for column in cursor.description or ()]
        return batches, [*after_jump, backwards], described

    direct, through = _both(pair, run)
    assert through == direct
    assert len(through[0]) == 20_000 + 7
    assert through[1][0][0] == 10_001


def _copy_out(connection: psycopg.Connection[Any], statement: str) -> bytes:
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


_TABLE_DIGEST = "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY id)) FROM {} AS t"


@pytest.mark.parametrize("copy_format", ["text", "csv", "binary"])
def test_copy_out_and_in_moves_the_same_bytes(pair: Pair, copy_format: str) -> None:
    def run(connection: psycopg.Connection[Any]) -> tuple[bytes, Any]:
        data = _copy_out(connection, f"COPY crm.orders TO STDOUT (FORMAT {copy_format})")
        connection.execute("CREATE TEMP TABLE orders_copy (LIKE crm.orders)")
        with (
            connection.cursor() as cursor,
            cursor.copy(f"COPY orders_copy FROM STDIN (FORMAT {copy_format})") as copy,
        ):
            # Odd-sized pieces, so CopyData messages do not line up with rows.
            for start in range(0, len(data), 65_521):
                copy.write(data[start : start + 65_521])
        loaded = connection.execute(_TABLE_DIGEST.format("orders_copy")).fetchone()
        return data, loaded

    (direct_data, direct_loaded), (through_data, through_loaded) = _both(pair, run)
    assert through_data == direct_data
    assert through_loaded == direct_loaded
    source = pair[1].execute(_TABLE_DIGEST.format("crm.orders")).fetchone()
    assert through_loaded == source


def test_copy_rows_with_binary_types_and_read_them_back(pair: Pair) -> None:
    rows = [
        (n, f"name {n}", Decimal(n) / 7, datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
        for n in range(2000)
    ]

    def run(connection: psycopg.Connection[Any]) -> list[Any]:
        connection.execute(
            "CREATE TEMP TABLE typed (id int, name text, ratio numeric, at timestamptz)"
        )
        with (
            connection.cursor() as cursor,
            cursor.copy("COPY typed FROM STDIN (FORMAT binary)") as copy,
        ):
            copy.set_types(["int4", "text", "numeric", "timestamptz"])
            for row in rows:
                copy.write_row(row)
        with (
            connection.cursor() as cursor,
            cursor.copy("COPY (SELECT * FROM typed ORDER BY id) TO STDOUT (FORMAT binary)") as copy,
        ):
            copy.set_types(["int4", "text", "numeric", "timestamptz"])
            return list(copy.rows())

    direct, through = _both(pair, run)
    assert through == direct
    assert through == rows


def test_a_copy_abandoned_by_the_client_fails_the_same_and_the_connection_goes_on(
    pair: Pair,
) -> None:
    def abandon(connection: psycopg.Connection[Any]) -> None:
        with (
            connection.cursor() as cursor,
            cursor.copy("COPY abandoned FROM STDIN") as copy,
        ):
            copy.write(b"1\n2\n")
            raise RuntimeError("the client gives up")

    def run(connection: psycopg.Connection[Any]) -> tuple[Outcome, Outcome]:
        connection.execute("CREATE TEMP TABLE abandoned (n int)")
        # psycopg answers the exception with CopyFail and re-raises it once the server
        # has refused the COPY.
        with pytest.raises(RuntimeError):
            abandon(connection)
        return outcome(connection, "SELECT count(*) FROM abandoned"), outcome(
            connection, "SELECT 'next'"
        )

    direct, through = _both(pair, run)
    assert through == direct
    assert through[0].rows == ((0,),)
    assert through[1].rows == (("next",),)


def test_bad_copy_data_fails_the_same_and_the_connection_goes_on(pair: Pair) -> None:
    def run(connection: psycopg.Connection[Any]) -> tuple[Any, Outcome]:
        connection.execute("CREATE TEMP TABLE strict_numbers (n int)")
        try:
            with (
                connection.cursor() as cursor,
                cursor.copy("COPY strict_numbers FROM STDIN") as copy,
            ):
                copy.write(b"1\nnot a number\n3\n")
        except errors.InvalidTextRepresentation as error:
            failure = error_fields(error)
        return failure, outcome(connection, "SELECT count(*) FROM strict_numbers")

    direct, through = _both(pair, run)
    assert through == direct
    assert through[0].sqlstate == "22P02"


def test_notifications_cross_between_direct_and_gateway_connections(pair: Pair) -> None:
    direct, through = pair
    channel = f"custos_{uuid.uuid4().hex[:8]}"
    for listener, sender in ((through, direct), (direct, through)):
        listener.execute(f"LISTEN {channel}")
        sender.execute("SELECT pg_notify(%s, %s)", [channel, "payload ☃"])
        sender.execute(f"NOTIFY {channel}, 'second'")
        received = list(listener.notifies(timeout=10, stop_after=2))
        assert [(note.channel, note.payload) for note in received] == [
            (channel, "payload ☃"),
            (channel, "second"),
        ]
        assert received[0].pid == sender.execute("SELECT pg_backend_pid()").fetchone()[0]
        listener.execute(f"UNLISTEN {channel}")


def test_a_listener_recognises_its_own_notifications_by_backend_pid(pair: Pair) -> None:
    channel = f"custos_{uuid.uuid4().hex[:8]}"
    for connection in pair:
        connection.execute(f"LISTEN {channel}")
        connection.execute(f"NOTIFY {channel}")
        (note,) = connection.notifies(timeout=10, stop_after=1)
        assert note.pid == connection.info.backend_pid
        assert connection.execute("SELECT pg_backend_pid()").fetchone() == (note.pid,)


def _cancel_once_running(
    observer_dsn: str, backend_pid: int, cancel: Callable[[], None]
) -> threading.Thread:
    """Cancels from another thread once the database runs the backend's statement."""

    def watch() -> None:
        with psycopg.connect(observer_dsn, autocommit=True) as observer:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                state = observer.execute(
                    "SELECT state FROM pg_stat_activity WHERE pid = %s", [backend_pid]
                ).fetchone()
                if state == ("active",):
                    cancel()
                    return
                time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "transaction"])
def test_cancel_stops_a_running_statement_and_the_connection_goes_on(
    gateway: GatewayProcess, method: str, in_transaction: bool
) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=not in_transaction) as connection:
        backend_pid = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
        watcher = _cancel_once_running(
            gateway.upstream_dsn, backend_pid, getattr(connection, method)
        )
        with pytest.raises(errors.QueryCanceled) as canceled:
            connection.execute("SELECT pg_sleep(30)")
        watcher.join()
        assert canceled.value.diag.message_primary == "canceling statement due to user request"
        if in_transaction:
            with pytest.raises(errors.InFailedSqlTransaction):
                connection.execute("SELECT 1")
            connection.rollback()
        assert connection.execute("SELECT 6 * 7").fetchone() == (42,)


def test_transactions_commit_roll_back_and_recover_from_errors(pair: Pair) -> None:
    def insert_then_fail(connection: psycopg.Connection[Any]) -> None:
        with connection.transaction():
            connection.execute("INSERT INTO ledger VALUES (3)")
            raise RuntimeError("roll this back")

    def run(connection: psycopg.Connection[Any]) -> list[Any]:
        seen: list[Any] = []
        connection.execute("CREATE TEMP TABLE ledger (n int PRIMARY KEY)")
        with connection.transaction():
            connection.execute("INSERT INTO ledger VALUES (1), (2)")
        with pytest.raises(RuntimeError):
            insert_then_fail(connection)
        with connection.transaction():
            connection.execute("INSERT INTO ledger VALUES (4)")
            try:
                with connection.transaction():
                    connection.execute("INSERT INTO ledger VALUES (5)")
                    connection.execute("INSERT INTO ledger VALUES (1)")
            except errors.UniqueViolation as error:
                seen.append(error_fields(error))
        seen.append(connection.info.transaction_status)
        connection.execute("BEGIN")
        seen.append(outcome(connection, "SELECT 1 / 0"))
        seen.append(connection.info.transaction_status)
        seen.append(outcome(connection, "SELECT 1"))
        seen.append(outcome(connection, "ROLLBACK"))
        seen.append(connection.info.transaction_status)
        seen.append(outcome(connection, "SELECT array_agg(n ORDER BY n) FROM ledger"))
        return seen

    direct, through = _both(pair, run)
    assert through == direct
    assert through[4].error.sqlstate == "25P02"
    assert through[-1].rows == (([1, 2, 4],),)


def test_a_large_result_arrives_whole_and_in_order(pair: Pair) -> None:
    # 200 MB: far more than any buffer on the way, so flow control has to work.
    query = "SELECT i, repeat(chr(65 + i %% 26), 1000) AS filler FROM generate_series(1, %s) AS i"
    through = pair[1]
    described = [
        [(column.name, column.type_code) for column in connection.execute(query, [1]).description]
        for connection in pair
    ]
    assert described[1] == described[0]
    # The rows are a function of i, which stands in for reading 200 MB directly as well.
    expected = 1
    with through.cursor() as cursor:
        for number, filler in cursor.stream(query, [200_000], size=2000):
            assert number == expected
            assert filler == chr(65 + number % 26) * 1000
            expected += 1
    assert expected == 200_001
    assert through.execute("SELECT 'after'").fetchone() == ("after",)


def test_application_name_reaches_the_database(gateway: GatewayProcess) -> None:
    name = f"custos-clients-{uuid.uuid4().hex[:8]}"
    with (
        psycopg.connect(gateway.dsn(application_name=name)) as through,
        psycopg.connect(gateway.upstream_dsn, autocommit=True) as observer,
    ):
        backend_pid = through.execute("SELECT pg_backend_pid()").fetchone()[0]
        seen = observer.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = %s", [backend_pid]
        ).fetchone()
        assert seen == (name,)
        assert through.info.parameter_status("application_name") == name


async def _async_session(dsn: str) -> list[Any]:
    seen: list[Any] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        for binary in (False, True):
            async with connection.cursor(binary=binary) as cursor:
                await cursor.execute(TYPED_SELECT)
                seen.append([(column.name, column.type_code) for column in cursor.description])
                seen.append(await cursor.fetchall())
                await cursor.execute(
                    "SELECT * FROM crm.customers WHERE id = ANY(%s) ORDER BY id", [[5, 7, 11]]
                )
                seen.append(await cursor.fetchall())
        try:
            await connection.execute("SELECT * FROM crm.missing")
        except psycopg.Error as error:
            seen.append(error_fields(error))
        async with connection.pipeline():
            cursors = [
                await connection.execute("SELECT %s::int + 1", [n], prepare=True)
                for n in range(100)
            ]
        seen.append([await cursor.fetchone() for cursor in cursors])
        async with connection.transaction():
            await connection.execute("CREATE TEMP TABLE async_rows (n int)")
            async with connection.cursor() as cursor:
                await cursor.executemany("INSERT INTO async_rows VALUES (%s)", [[1], [2], [3]])
        cursor = await connection.execute("SELECT sum(n) FROM async_rows")
        seen.append(await cursor.fetchone())
        backend_pid = (await (await connection.execute("SELECT pg_backend_pid()")).fetchone())[0]
        sleeper = asyncio.create_task(connection.execute("SELECT pg_sleep(30)"))
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as observer:
            while True:
                state = await (
                    await observer.execute(
                        "SELECT state FROM pg_stat_activity WHERE pid = %s", [backend_pid]
                    )
                ).fetchone()
                if state == ("active",):
                    break
                await asyncio.sleep(0.02)
        await connection.cancel_safe()
        try:
            await sleeper
        except errors.QueryCanceled as error:
            seen.append(error.sqlstate)
        seen.append(await (await connection.execute("SELECT 'after cancel'")).fetchone())
    return seen


def test_async_connections_behave_like_direct_ones(gateway: GatewayProcess) -> None:
    direct = asyncio.run(_async_session(gateway.upstream_dsn))
    through = asyncio.run(_async_session(gateway.dsn()))
    assert through == direct
    assert through[-2:] == ["57014", ("after cancel",)]
