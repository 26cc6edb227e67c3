"""Copies of personal data through the gateway: the roles that see it masked may not store
it where masking cannot follow, and the database shows that nothing was stored."""

from __future__ import annotations

# ruff: noqa: F811 - the fixtures of test_session_attacks, imported, are redefined as arguments
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from gateway_fixtures import GatewayProcess, rows_of
from test_session_attacks import (  # noqa: F401 - fixtures
    customer_emails,
    emails_in_rows,
    governed,
    psycopg_connect,
    superuser,
)

SINK = "public.copies_sink"
NEW = "public.copies_new"
EXPORT = Path("/tmp/custos-copies-export.csv")

# Each statement, and where its copy would land: a new relation, or the sink's rows.
INTO_NEW = [
    f"CREATE TABLE {NEW} AS SELECT id, email FROM crm.customers ORDER BY id LIMIT 5",
    f"SELECT id, email INTO {NEW} FROM crm.customers ORDER BY id LIMIT 5",
    f"CREATE MATERIALIZED VIEW {NEW} AS SELECT id, email FROM crm.customers LIMIT 5",
    f"CREATE VIEW {NEW} AS SELECT id, email FROM crm.customers",
]
INTO_SINK = [
    f"INSERT INTO {SINK} (id, note) SELECT id, email FROM crm.customers ORDER BY id LIMIT 5",
    f"WITH x AS (SELECT id, email FROM crm.customers ORDER BY id LIMIT 5) "
    f"INSERT INTO {SINK} SELECT * FROM x",
    f"UPDATE {SINK} s SET note = c.email FROM crm.customers c WHERE c.id = s.id",
    f"MERGE INTO {SINK} s USING (SELECT id, email FROM crm.customers LIMIT 5) c ON s.id = c.id"
    " WHEN MATCHED THEN UPDATE SET note = c.email"
    " WHEN NOT MATCHED THEN INSERT VALUES (c.id, c.email)",
    f"INSERT INTO {SINK} SELECT c.id, n::text FROM crm.customers c, generate_series(0, 255) n"
    " WHERE c.id <= 5 AND ascii(substr(c.email, 1, 1)) = n",
]


@pytest.fixture
def sink(superuser: psycopg.Connection) -> Iterator[str]:
    """A table outside the catalog, open to every role, holding rows without personal data."""
    superuser.execute(f"DROP TABLE IF EXISTS {SINK}")
    superuser.execute(f"CREATE TABLE {SINK} (id int PRIMARY KEY, note text)")
    superuser.execute(f"INSERT INTO {SINK} SELECT n, 'nothing' FROM generate_series(1, 5) n")
    superuser.execute(f"GRANT ALL ON {SINK} TO PUBLIC")
    yield SINK
    superuser.execute(f"DROP TABLE IF EXISTS {SINK}")


def refusal(connection: psycopg.Connection, sql: str) -> str:
    """The gateway's refusal of the statement: its message (it must be refused by policy)."""
    with pytest.raises(psycopg.Error) as refused:
        connection.execute(sql)
    assert refused.value.sqlstate == "42501", refused.value
    return str(refused.value)


def sink_notes(superuser: psycopg.Connection) -> set[str]:
    return {row[0] for row in superuser.execute(f"SELECT note FROM {SINK}").fetchall()}


@pytest.mark.parametrize("role", ["agent", "analyst"])
@pytest.mark.parametrize("sql", INTO_NEW)
def test_no_new_relation_is_made_of_personal_data(
    governed: GatewayProcess, superuser: psycopg.Connection, role: str, sql: str
) -> None:
    superuser.execute(f"DROP VIEW IF EXISTS {NEW}")
    with psycopg_connect(governed, role=role) as connection:
        message = refusal(connection, sql)
        assert rows_of(connection, f"SELECT * FROM {NEW}") == []
    if role == "analyst":  # the agent's DDL is refused first as DDL (agents-no-ddl)
        assert "no-copies-of-personal-data" in message
    (found,) = superuser.execute("SELECT to_regclass(%s)", [NEW]).fetchone()
    assert found is None


@pytest.mark.parametrize("role", ["agent", "analyst"])
@pytest.mark.parametrize("sql", INTO_SINK)
def test_no_personal_data_is_stored_in_a_table_outside_the_catalog(
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    sink: str,
    customer_emails: frozenset[bytes],
    role: str,
    sql: str,
) -> None:
    with psycopg_connect(governed, role=role) as connection:
        message = refusal(connection, sql)
    if role == "analyst" or "ascii" not in sql:  # the agent's search is refused first as such
        assert "no-copies-of-personal-data" in message
        assert "copies personal data (email)" in message
    assert sink_notes(superuser) == {"nothing"}
    rows = superuser.execute(f"SELECT * FROM {sink}").fetchall()
    assert len(rows) == 5
    assert not emails_in_rows(rows, customer_emails)


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_a_temporary_copy_is_not_made_for_the_session(
    governed: GatewayProcess, customer_emails: frozenset[bytes], role: str
) -> None:
    with psycopg_connect(governed, role=role) as connection:
        for sql in (
            "CREATE TEMP VIEW copies_v AS SELECT id, email FROM crm.customers",
            "CREATE TEMP TABLE copies_t AS SELECT id, email FROM crm.customers LIMIT 5",
            "SELECT id, email INTO TEMP copies_t FROM crm.customers LIMIT 5",
        ):
            refusal(connection, sql)
        for name in ("copies_v", "copies_t"):
            (found,) = connection.execute("SELECT to_regclass(%s)", [name]).fetchone()
            assert found is None
            assert rows_of(connection, f"SELECT * FROM {name}") == []


def test_emails_are_not_copied_into_a_catalogued_column_of_another_category(
    governed: GatewayProcess, superuser: psycopg.Connection
) -> None:
    (before,) = superuser.execute("SELECT full_name FROM crm.customers WHERE id = 1").fetchone()
    with psycopg_connect(governed) as agent:
        message = refusal(agent, "UPDATE crm.customers SET full_name = email WHERE id = 1")
    assert "copies personal data (email) into crm.customers.full_name" in message
    (after,) = superuser.execute("SELECT full_name FROM crm.customers WHERE id = 1").fetchone()
    assert after == before


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_no_personal_data_is_copied_to_a_server_file(governed: GatewayProcess, role: str) -> None:
    EXPORT.unlink(missing_ok=True)
    with psycopg_connect(governed, role=role) as connection:
        refusal(connection, f"COPY (SELECT email FROM crm.customers) TO '{EXPORT}'")
    assert not EXPORT.exists()


def test_a_role_without_masks_copies_as_before(
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    sink: str,
    customer_emails: frozenset[bytes],
) -> None:
    # The same laundering the agent and analyst are refused: a DBA sees the data unmasked
    # anyway, and the demo policy lets the copy run (which shows the refusals are not for
    # want of privileges in the database).
    with psycopg_connect(governed, role="dba") as dba:
        dba.execute(f"UPDATE {sink} s SET note = c.email FROM crm.customers c WHERE c.id = s.id")
    rows = superuser.execute(f"SELECT * FROM {sink}").fetchall()
    assert len(emails_in_rows(rows, customer_emails)) == 5
