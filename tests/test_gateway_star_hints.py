"""A refused `SELECT *` through a real gateway names the table's real columns, and keeps up with
schema changes made through the gateway."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from gateway_fixtures import GatewayProcess, start_gateway

from custos.demo.postgres import PostgresServer

DEMO_POLICY = Path(__file__).resolve().parent.parent / "custos" / "demo" / "policy.yaml"
STAR_ADVICE = "select only the columns the task needs instead of *"


@pytest.fixture(scope="module")
def probe() -> str:
    return f"star_probe_{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def governed(
    pg: PostgresServer,
    gateway: GatewayProcess,
    probe: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """A gateway whose DBAs change the schema without approval, and whose agents read the
    probe table (personal data) only in pages, like customer data."""
    directory = tmp_path_factory.mktemp("star-hints")
    text = DEMO_POLICY.read_text()
    for old, new in (
        (
            "match: {roles: [dba], kinds: [ddl, grant]}",
            "match: {roles: [nobody], kinds: [ddl, grant]}",
        ),
        ("catalog:\n", f"catalog:\n  crm.{probe}:\n    columns: {{note: free_text}}\n"),
        (
            "relations: [crm.customers, crm.support_tickets]\n      risks: {limit_above: 100}",
            f"relations: [crm.customers, crm.support_tickets, crm.{probe}]\n"
            "      risks: {limit_above: 100}",
        ),
    ):
        assert old in text
        text = text.replace(old, new)
    policy = directory / "policy.yaml"
    policy.write_text(text)
    running = start_gateway(
        directory / "gateway",
        pg,
        upstream_dsn=gateway.upstream_dsn,
        extra_config={"roles": [], "policy": {"file": str(policy)}},
    )
    yield running
    running.stop()
    with psycopg.connect(pg.dsn(), autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS crm.{probe}")


def connect(gateway: GatewayProcess, role: str) -> psycopg.Connection:
    subject = "agent-star" if role == "agent" else f"{role}-user"
    groups = ["dba"] if role == "dba" else []
    token = gateway.token(role, subject, groups=groups)
    return psycopg.connect(gateway.dsn(role, token), autocommit=True)


def refused_hint(connection: psycopg.Connection, sql: str) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        connection.execute(sql)
    hint = refused.value.diag.message_hint
    assert hint is not None
    return hint


def real_columns(pg: PostgresServer, table: str) -> list[str]:
    with psycopg.connect(pg.dsn(), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [table],
        ).fetchall()
    return [name for (name,) in rows]


def test_a_refused_star_names_the_real_columns_and_the_session_carries_on(governed, pg):
    columns = ", ".join(real_columns(pg, "crm.customers"))
    with connect(governed, "agent") as agent:
        hint = refused_hint(agent, "SELECT * FROM customers")
        assert hint.startswith(f"crm.customers has columns {columns}: {STAR_ADVICE}; ")
        assert "agents-no-bulk-export" in hint
        assert agent.execute("SELECT id, city FROM crm.customers LIMIT 2").fetchall()
        # The same statement in a transaction: refused with the same hint, and the
        # transaction is aborted as PostgreSQL would abort it.
        agent.autocommit = False
        assert refused_hint(agent, "SELECT c.* FROM crm.customers c") == hint
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            agent.execute("SELECT 1")
        agent.rollback()
        assert agent.execute("SELECT 1").fetchone() == (1,)


def test_a_schema_change_through_the_gateway_shows_in_the_next_hint(governed, probe):
    table = f"crm.{probe}"
    with connect(governed, "agent") as agent, connect(governed, "dba") as dba:
        dba.execute(f"CREATE TABLE {table} (id int, note text)")
        assert refused_hint(agent, f"SELECT * FROM {table}").startswith(
            f"{table} has columns id, note: {STAR_ADVICE}"
        )
        dba.execute(f"ALTER TABLE {table} ADD COLUMN added_later text")
        assert refused_hint(agent, f"SELECT * FROM {table}").startswith(
            f"{table} has columns id, note, added_later: {STAR_ADVICE}"
        )
        # In a transaction, the change shows once it is committed.
        with dba.transaction():
            dba.execute(f"ALTER TABLE {table} DROP COLUMN note")
            assert refused_hint(agent, f"SELECT * FROM {table}").startswith(
                f"{table} has columns id, note, added_later:"
            )
        assert refused_hint(agent, f"SELECT * FROM {table}").startswith(
            f"{table} has columns id, added_later: {STAR_ADVICE}"
        )
        assert agent.execute(f"SELECT id FROM {table} LIMIT 1").fetchall() == []
