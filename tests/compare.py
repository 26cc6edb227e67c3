"""Run the same work directly on the database and through the gateway, and compare.

The direct side logs in as the gateway's own database login (`gateway.upstream_dsn`),
so both sides have the same privileges, ownership and settings: any difference a
test sees is the gateway's doing.
"""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from gateway_fixtures import GatewayProcess
from psycopg.conninfo import conninfo_to_dict

SIDES = ("direct", "gateway")

# One value of each commonly used type, for clients to decode in text and binary.
TYPED_SELECT = """
SELECT 32767::int2 AS i2, '-2147483648'::int4 AS i4, 9223372036854775807::int8 AS i8,
       123456789012345678901234567890.123456789::numeric AS big_numeric,
       -0.5::numeric(4, 2) AS small_numeric, 0.1::float4 AS f4, 'Infinity'::float8 AS f8,
       'héllo wörld ☃'::text AS unicode, ''::text AS empty, 'x'::varchar(3) AS vc,
       'y'::char(3) AS bpchar, '\\x00ff10'::bytea AS bin, true AS yes,
       '2024-02-29 23:59:59.123456+05:30'::timestamptz AS tstz,
       '2024-02-29 12:00'::timestamp AS ts, '2024-02-29'::date AS day, '12:34:56'::time AS t,
       '1 year 2 mons 3 days 04:05:06.7'::interval AS span,
       '{"a": [1, 2.5, null, "s"]}'::json AS js, '{"b": {"c": true}}'::jsonb AS jsb,
       ARRAY[1, NULL, 3]::int[] AS int_array, ARRAY[['a', 'b'], ['c', NULL]]::text[] AS grid,
       ARRAY[]::int8[] AS no_items, 'b0a4c8b6-7e5a-4c0c-9d63-1f5e0c9a1b2c'::uuid AS id,
       '192.168.0.1/24'::inet AS address, '10.0.0.0/8'::cidr AS network,
       '[1,10)'::int4range AS span_range, NULL::text AS nothing, 'abc'::name AS nm,
       42::oid AS an_oid, '(1,2)'::point AS pt
"""

# libpq's environment variable for each connection keyword these tests use.
_LIBPQ_ENVIRONMENT = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "application_name": "PGAPPNAME",
}


@dataclass(frozen=True)
class ErrorFields:
    """The parts of an ErrorResponse a client shows; all must match on both sides."""

    sqlstate: str | None
    severity: str | None
    message: str | None
    detail: str | None
    hint: str | None
    position: str | None
    context: str | None


@dataclass(frozen=True)
class Outcome:
    """What a client saw for one statement: its columns and rows, or its error."""

    columns: tuple[tuple[str, int], ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    status: str | None = None
    error: ErrorFields | None = None


def error_fields(error: psycopg.Error) -> ErrorFields:
    diag = error.diag
    return ErrorFields(
        sqlstate=diag.sqlstate,
        severity=diag.severity_nonlocalized,
        message=diag.message_primary,
        detail=diag.message_detail,
        hint=diag.message_hint,
        position=diag.statement_position,
        context=diag.context,
    )


def outcome(
    connection: psycopg.Connection[Any],
    query: str,
    params: Sequence[Any] | None = None,
    *,
    binary: bool = False,
    prepare: bool | None = None,
) -> Outcome:
    """Runs one statement and captures its result or error; an error leaves the
    connection as the error left it (a transaction stays failed)."""
    with connection.cursor(binary=binary) as cursor:
        try:
            cursor.execute(query, params, prepare=prepare)
        except psycopg.Error as error:
            return Outcome(error=error_fields(error))
        columns = tuple((column.name, column.type_code) for column in cursor.description or ())
        rows = tuple(cursor.fetchall()) if cursor.description else ()
        return Outcome(columns, rows, cursor.statusmessage)


def gateway_tls_context(gateway: GatewayProcess) -> ssl.SSLContext:
    """Trusts the test CA without checking the host name, as libpq's verify-ca does."""
    context = ssl.create_default_context(cafile=str(gateway.tls.ca_cert))
    context.check_hostname = False
    return context


@contextmanager
def connection_pair(
    gateway: GatewayProcess, **options: Any
) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
    """(direct, through the gateway) psycopg connections with the same options."""
    with (
        psycopg.connect(gateway.upstream_dsn, **options) as direct,
        psycopg.connect(gateway.dsn(), **options) as through,
    ):
        yield direct, through


def side_dsn(gateway: GatewayProcess, side: str, **params: str) -> str:
    """A libpq DSN for `side` ("direct" or "gateway")."""
    if side == "gateway":
        return gateway.dsn(**params)
    return psycopg.conninfo.make_conninfo(gateway.upstream_dsn, **params)


def libpq_environment(gateway: GatewayProcess, side: str, **params: str) -> dict[str, str]:
    """The environment for a libpq program (psql, pgbench, pg_dump) to reach `side`.

    Connection settings travel as PG* variables so that a token never shows in a
    process listing; any PG* variable of the caller's own is dropped so that it
    cannot steer the test elsewhere.
    """
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    environment.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", PGCLIENTENCODING="UTF8")
    for keyword, value in conninfo_to_dict(side_dsn(gateway, side, **params)).items():
        if keyword not in _LIBPQ_ENVIRONMENT:
            raise ValueError(f"no libpq environment variable known for {keyword!r}")
        environment[_LIBPQ_ENVIRONMENT[keyword]] = str(value)
    return environment


def run_program(
    program: str,
    arguments: Sequence[str],
    environment: Mapping[str, str],
    *,
    input_text: str | None = None,
    timeout: float = 60,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program, *arguments],
        input=input_text,
        env=dict(environment),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def asyncpg_options(gateway: GatewayProcess, side: str) -> dict[str, Any]:
    """Keyword arguments for `asyncpg.connect` to reach `side`."""
    if side == "gateway":
        return {
            "host": "127.0.0.1",
            "port": gateway.port,
            "user": "agent",
            "password": gateway.token("agent", "agent-asyncpg"),
            "database": gateway.database,
            "ssl": gateway_tls_context(gateway),
        }
    return {"dsn": gateway.upstream_dsn}
