"""COPY TO STDOUT of masked data, end to end: every byte the client receives scanned for
the demo's personal values, and the data loaded back by the database itself to check it
holds what a SELECT of the same rows gives."""

from __future__ import annotations

# ruff: noqa: F811 - the fixtures of test_session_attacks, imported, are redefined as arguments
import base64
import subprocess
from pathlib import Path

import psycopg
import pytest
from compare import libpq_environment
from gateway_fixtures import GatewayProcess, client_program
from test_masking_gateway import personal  # noqa: F401 - fixture
from test_session_attacks import governed, psycopg_connect, superuser  # noqa: F401 - fixtures

from custos.masking.values import iban_valid

CONTACTS = "SELECT id, email, phone, iban FROM crm.customers ORDER BY id"
COPY_CONTACTS = f"COPY ({CONTACTS}) TO STDOUT"
TABLE = "CREATE TEMPORARY TABLE copied (id bigint, email text, phone text, iban text)"


def copied(connection: psycopg.Connection, sql: str) -> bytes:
    """Every byte of a COPY TO STDOUT's data, as the client received it."""
    with connection.cursor().copy(sql) as copy:
        return b"".join(bytes(block) for block in copy)


def found_in(data: bytes, personal: frozenset[str]) -> set[bytes]:
    """The personal values (and their base64) that the bytes hold."""
    forms = {value.encode() for value in personal if len(value) > 6}
    forms |= {base64.b64encode(form) for form in forms}
    return {form for form in forms if form in data}


def loaded_back(superuser: psycopg.Connection, data: bytes, options: str) -> list[tuple]:
    superuser.execute(TABLE)
    try:
        with superuser.cursor().copy(f"COPY copied FROM STDIN {options}") as copy:
            copy.write(data)
        return superuser.execute("SELECT * FROM copied ORDER BY id").fetchall()
    finally:
        superuser.execute("DROP TABLE copied")


@pytest.mark.parametrize(
    ("options", "loading"),
    [
        ("", ""),
        ("(FORMAT csv, HEADER)", "(FORMAT csv, HEADER)"),
        (
            "WITH CSV DELIMITER ';' QUOTE '''' FORCE QUOTE *",
            "(FORMAT csv, DELIMITER ';', QUOTE '''')",
        ),
        ("(FORMAT text, NULL 'nil', DELIMITER '|')", "(FORMAT text, NULL 'nil', DELIMITER '|')"),
    ],
)
def test_copy_out_is_masked_like_the_rows_of_a_select(
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    personal: frozenset[str],
    options: str,
    loading: str,
) -> None:
    with psycopg_connect(governed, role="analyst") as analyst:
        data = copied(analyst, f"{COPY_CONTACTS} {options}")
        selected = analyst.execute(CONTACTS).fetchall()
    assert not found_in(data, personal)
    back = loaded_back(superuser, data, loading)
    assert back == selected  # the same keyed pseudonyms as the SELECT, row by row
    assert len(back) == superuser.execute("SELECT count(*) FROM crm.customers").fetchone()[0]
    assert all(iban_valid(iban) for *_, iban in back if iban)


def test_binary_copy_out_gives_masked_columns_as_null(
    governed: GatewayProcess, superuser: psycopg.Connection, personal: frozenset[str]
) -> None:
    with psycopg_connect(governed, role="analyst") as analyst:
        data = copied(analyst, f"{COPY_CONTACTS} (FORMAT binary)")
    assert not found_in(data, personal)
    back = loaded_back(superuser, data, "(FORMAT binary)")
    ids = [row[0] for row in superuser.execute("SELECT id FROM crm.customers ORDER BY id")]
    assert [row[0] for row in back] == ids  # what is not personal comes as it is
    assert {row[1:] for row in back} == {(None, None, None)}


def test_copy_of_a_whole_table_is_masked(
    governed: GatewayProcess, superuser: psycopg.Connection, personal: frozenset[str]
) -> None:
    with psycopg_connect(governed, role="analyst") as analyst:
        data = copied(analyst, "COPY crm.customers TO STDOUT (FORMAT csv)")
    customers = superuser.execute("SELECT count(*) FROM crm.customers").fetchone()[0]
    assert data.count(b"\n") == customers
    assert not found_in(data, personal)


def test_psql_copy_to_stdout_is_masked(governed: GatewayProcess, personal: frozenset[str]) -> None:
    token = governed.token("analyst", "analyst-psql", groups=["analysts"])
    environment = libpq_environment(governed, "gateway", role="analyst", token=token)
    run = subprocess.run(
        [
            client_program("psql"),
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f"{COPY_CONTACTS} (FORMAT csv)",
        ],
        env=environment,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count(b"\n") > 100
    assert not found_in(run.stdout + run.stderr, personal)


@pytest.mark.parametrize(
    "sql",
    [
        "COPY (SELECT email FROM crm.customers) TO '/tmp/custos-copied-emails'",
        "COPY (SELECT email FROM crm.customers) TO STDOUT (ENCODING 'SJIS')",
        "COPY (SELECT email FROM crm.customers) TO STDOUT (FORMAT 'CSV')",
    ],
)
def test_a_copy_masking_cannot_follow_is_refused(governed: GatewayProcess, sql: str) -> None:
    with psycopg_connect(governed, role="analyst") as analyst, pytest.raises(psycopg.Error):
        copied(analyst, sql)
    assert not Path("/tmp/custos-copied-emails").exists()
