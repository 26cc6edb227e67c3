"""Policy enforced by a real gateway, through psql, psycopg and asyncpg.

Each refused statement must come back as an ordinary PostgreSQL error (42501)
naming its rule, and the session must carry on exactly as it would after any
other error: outside a transaction nothing else is affected; inside one, the
transaction is aborted until ROLLBACK; in the extended protocol, everything up
to the next Sync is skipped.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from gateway_fixtures import GatewayProcess, client_program, start_gateway

from custos.demo.postgres import PostgresServer

DEMO_POLICY = Path(__file__).resolve().parent.parent / "custos" / "demo" / "policy.yaml"


@pytest.fixture(scope="module")
def governed(
    pg: PostgresServer, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    running = start_gateway(
        tmp_path_factory.mktemp("governed"),
        pg,
        upstream_dsn=gateway.upstream_dsn,
        extra_config={"roles": [], "policy": {"file": str(DEMO_POLICY), "poll_seconds": 0.2}},
    )
    yield running
    running.stop()


def connect(gateway: GatewayProcess, role: str = "agent", **options) -> psycopg.Connection:
    subject = "agent-policy" if role == "agent" else f"{role}-user"
    groups = {"analyst": ["analysts"], "dba": ["dba"]}.get(role, [])
    token = gateway.token(role, subject, groups=groups)
    return psycopg.connect(gateway.dsn(role, token), **options)


def test_allowed_statements_run_and_refused_ones_name_their_rule(governed):
    with connect(governed, autocommit=True) as connection:
        assert connection.execute("SELECT count(*) FROM crm.products").fetchone()[0] > 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            connection.execute("SELECT id FROM crm.customers")
        assert "agents-no-bulk-export" in refused.value.diag.message_primary
        assert refused.value.diag.context is None
        orders = connection.execute("SELECT id FROM crm.orders ORDER BY id LIMIT 2").fetchall()
        assert orders == [(1,), (2,)]


def test_approval_required_is_refused_with_its_own_message(governed):
    with connect(governed, autocommit=True) as connection:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            connection.execute("UPDATE crm.orders SET status = 'x' WHERE id = 1")
        assert "agents-write-crm-needs-approval" in refused.value.diag.message_primary
        assert "approv" in refused.value.diag.message_primary
        assert connection.execute("SELECT status FROM crm.orders WHERE id = 1").fetchone()[0] != "x"


def test_a_refusal_inside_a_transaction_aborts_it_as_postgresql_would(governed):
    with connect(governed) as connection:
        connection.execute("SELECT 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("SELECT email FROM crm.customers")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            connection.execute("SELECT 1")
        connection.rollback()
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_savepoint_recovers_from_a_refusal(governed):
    with connect(governed) as connection:
        connection.execute("SAVEPOINT before_refusal")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("SELECT phone FROM crm.customers")
        connection.execute("ROLLBACK TO SAVEPOINT before_refusal")
        assert connection.execute("SELECT count(*) FROM crm.orders").fetchone()[0] == 20000


def test_pipeline_with_a_refused_statement_in_the_middle(governed):
    with connect(governed, autocommit=True) as connection:
        first = connection.cursor()
        refused = connection.cursor()
        last = connection.cursor()
        # The refusal surfaces when the pipeline syncs, as any error would.
        with pytest.raises(psycopg.errors.InsufficientPrivilege), connection.pipeline():  # noqa: PT012
            first.execute("SELECT id FROM crm.orders WHERE id = %s", [5])
            refused.execute("SELECT email FROM crm.customers WHERE id > %s", [0])
            last.execute("SELECT 42")
        assert first.fetchone() == (5,)
        assert connection.execute("SELECT 7").fetchone() == (7,)


def test_extended_protocol_decides_with_the_bind_parameters(governed):
    with connect(governed, autocommit=True) as connection:
        small = connection.execute(
            "SELECT id FROM crm.customers ORDER BY id LIMIT %s", [10], prepare=True
        ).fetchall()
        assert len(small) == 10
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            connection.execute("SELECT id FROM crm.customers ORDER BY id LIMIT %s", [5000])
        assert "agents-no-bulk-export" in refused.value.diag.message_primary
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("SELECT id FROM crm.customers WHERE email LIKE %s", ["%"])
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_search_path_changes_are_followed(governed):
    with connect(governed, autocommit=True) as connection:
        connection.execute("SET search_path TO public")
        connection.execute("SET search_path TO crm")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("SELECT id FROM customers")
    with connect(governed) as connection:
        connection.execute("SET search_path TO public")
        connection.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("SELECT id FROM customers")


def test_prepare_and_execute_are_decided_on_the_prepared_statement(governed):
    with connect(governed, autocommit=True) as connection:
        connection.execute("PREPARE orders_page AS SELECT id FROM crm.orders LIMIT 3")
        assert len(connection.execute("EXECUTE orders_page").fetchall()) == 3
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("PREPARE wipe AS DELETE FROM crm.orders")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            connection.execute("EXECUTE wipe")


UNPARSABLE = [
    "SELEC id FROM crm.orders",
    "SELECT id FROM crm.orders WHERE",
    "SELECT 'unterminated",
    'SELECT "" FROM crm.orders',
    "SELECT 1a",
    "SELECT é FROM",
    "SELECT 1; SELEC 2",
]


@pytest.mark.parametrize("sql", UNPARSABLE)
@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_unparsable_statements_get_postgresqls_own_syntax_error(governed, pg_dsn, sql, prepare):
    """Refused (fail closed), but with the server's SQLSTATE, message and position."""

    def syntax_error(connection: psycopg.Connection) -> tuple[str, str, str | None]:
        parameters = [] if prepare else None
        with pytest.raises(psycopg.errors.SyntaxError) as raised:
            connection.execute(sql.encode(), parameters, prepare=prepare)
        diag = raised.value.diag
        assert connection.execute("SELECT 1").fetchone() == (1,)
        return diag.sqlstate, diag.message_primary, diag.statement_position

    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        expected = syntax_error(direct)
    with connect(governed, autocommit=True) as through_gateway:
        assert syntax_error(through_gateway) == expected


def test_a_parse_error_quoting_the_statement_stays_out_of_the_log(governed):
    secret = "jane.doe.parse-error@example.com"
    with connect(governed, autocommit=True) as connection:
        with pytest.raises(psycopg.errors.SyntaxError) as refused:
            connection.execute(f"SELECT id FROM crm.customers WHERE email = 'a' '{secret}'")
        # The client gets the parser's pointer to its own text, as PostgreSQL would give it.
        assert secret in refused.value.diag.message_primary
        assert connection.execute("SELECT 1").fetchone() == (1,)
    _wait_for_log(governed, "statement refused")
    assert secret not in governed.log()


def test_psql_session_carries_on_after_refusals(governed):
    token = governed.token("agent", "agent-psql")
    script = (
        "SELECT count(*) FROM crm.orders;\n"
        "SELECT email FROM crm.customers;\n"
        "COPY crm.customers TO STDOUT;\n"
        "SELECT pg_read_file('/etc/hostname');\n"
        "SELECT 'still here';\n"
    )
    result = subprocess.run(
        [client_program("psql"), governed.dsn("agent", token), "-X", "-v", "ON_ERROR_STOP=0"],
        input=script,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "20000" in result.stdout
    assert "still here" in result.stdout
    assert result.stderr.count("ERROR:") == 3
    assert "no-server-side-access" in result.stderr
    assert "CONTEXT" not in result.stderr


def test_asyncpg_prepared_statements_are_governed(governed):
    async def scenario() -> None:
        token = governed.token("agent", "agent-asyncpg")
        connection = await asyncpg.connect(
            host="127.0.0.1",
            port=governed.port,
            user="agent",
            password=token,
            database=governed.database,
            ssl="require",
        )
        try:
            rows = await connection.fetch("SELECT id FROM crm.orders WHERE id < $1", 4)
            assert [row["id"] for row in rows] == [1, 2, 3]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.fetch("SELECT iban FROM crm.customers")
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_roles_come_from_the_policy(governed):
    with connect(governed, role="analyst", autocommit=True) as connection:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            connection.execute("DELETE FROM crm.orders WHERE id = 1")
        assert "analysts-read-only" in refused.value.diag.message_primary


def test_a_changed_policy_file_takes_effect_and_a_broken_one_does_not(
    pg: PostgresServer, gateway: GatewayProcess, tmp_path: Path
):
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEMO_POLICY.read_text())
    running = start_gateway(
        tmp_path / "gateway",
        pg,
        upstream_dsn=gateway.upstream_dsn,
        extra_config={"roles": [], "policy": {"file": str(policy), "poll_seconds": 0.1}},
    )
    try:
        with connect(running, autocommit=True) as connection:
            assert connection.execute("SELECT 1 FROM crm.products LIMIT 1").fetchone() == (1,)
        policy.write_text("rules: [this is not a policy")
        _wait_for_log(running, "rejected")
        with connect(running, autocommit=True) as connection:
            assert connection.execute("SELECT 1 FROM crm.products LIMIT 1").fetchone() == (1,)
        policy.write_text(
            DEMO_POLICY.read_text().replace('relations: ["crm.*"]', 'relations: ["nothing.*"]')
        )
        _wait_for_log(running, "loaded")
        with (
            connect(running, autocommit=True) as connection,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            connection.execute("SELECT 1 FROM crm.products LIMIT 1")
    finally:
        running.stop()


def _wait_for_log(gateway: GatewayProcess, text: str, seconds: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while text not in gateway.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway never logged {text!r}:\n{gateway.log()}")
        time.sleep(0.05)


@pytest.mark.parametrize("encoding", ["LATIN9", "WIN1252", "UTF8"])
def test_text_in_the_clients_encoding_is_read_as_the_server_reads_it(governed, pg_dsn, encoding):
    """Non-ASCII literals in a single-byte client encoding: the same answer as direct."""
    statements = [
        "SELECT 'd\u00e9j\u00e0 vu \u20ac' AS text",
        "SELECT count(*) FROM crm.orders WHERE status = '\u00e9t\u00e9'",
    ]

    def answers(connection: psycopg.Connection) -> list[object]:
        return [connection.execute(sql).fetchone() for sql in statements]

    with psycopg.connect(pg_dsn, autocommit=True, client_encoding=encoding) as direct:
        expected = (direct.info.encoding, answers(direct))
    with connect(governed, autocommit=True, client_encoding=encoding) as through_gateway:
        assert (through_gateway.info.encoding, answers(through_gateway)) == expected
