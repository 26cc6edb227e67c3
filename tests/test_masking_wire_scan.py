"""Every byte a masked role's clients receive, scanned for the demo's personal values.

A recording relay sits between each client and the gateway (the gateway allows cleartext
on loopback here, so the relay sees the protocol itself) and keeps every byte the gateway
sends: row data, errors, notices, parameter statuses, COPY data. psql, psycopg (text,
binary, server-side cursors, protocol-level prepared statements), asyncpg (binary,
prepared) and COPY TO STDOUT in text, csv and binary read the customers as the agent
(partial masks) and the analyst (pseudonyms). The bytes must hold no email, phone number
or IBAN of the demo, in any of these forms: as stored, lower-cased, reversed, without
punctuation, and base64-encoded at each of the three alignments a longer base64 text
could hold it in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from gateway_fixtures import GatewayProcess, client_program, start_gateway
from test_session_attacks import DEMO_POLICY

from custos.demo.postgres import PostgresServer

CONTACTS = "SELECT id, email, phone, iban, full_name FROM crm.customers ORDER BY id LIMIT 100"
# Forms of the whole rows too, where the policy lets them run.
WHOLE_ROWS = [
    "SELECT row_to_json(c) FROM crm.customers c ORDER BY id LIMIT 20",
    "SELECT c::text FROM crm.customers c ORDER BY id LIMIT 20",
    "SELECT json_agg(c) FROM (SELECT * FROM crm.customers ORDER BY id LIMIT 20) c",
    "SELECT lower(email), reverse(phone), replace(iban, ' ', '') FROM crm.customers LIMIT 20",
    "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM crm.customers LIMIT 20",
]
COPY_FORMATS = ["", "(FORMAT csv, HEADER)", "(FORMAT binary)"]


class RecordingRelay:
    """A TCP relay to the gateway that keeps every byte the gateway sends back."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._received: list[bytes] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def received(self) -> bytes:
        """What the gateway sent so far, over every connection."""
        with self._lock:
            return b"".join(self._received)

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            for source, sink, record in ((client, upstream, False), (upstream, client, True)):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink, record), daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):  # either side gone: the other is shut too
            while chunk := source.recv(65536):
                if record:
                    with self._lock:
                        self._received.append(chunk)
                sink.sendall(chunk)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def cleartext_gateway(
    pg: PostgresServer, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    running = start_gateway(
        tmp_path_factory.mktemp("wire-scan"),
        pg,
        upstream_dsn=gateway.upstream_dsn,
        extra_config={
            "roles": [],
            "policy": {"file": str(DEMO_POLICY)},
            "allow_loopback_cleartext": True,
        },
    )
    yield running
    running.stop()


@pytest.fixture
def relay(cleartext_gateway: GatewayProcess) -> Iterator[RecordingRelay]:
    recording = RecordingRelay(cleartext_gateway.port)
    yield recording
    recording.close()


@pytest.fixture(scope="module")
def personal_forms(pg_dsn: str) -> frozenset[bytes]:
    """Every email, phone number and IBAN of the demo, in the forms that carry it."""
    with psycopg.connect(pg_dsn, dbname="custos_demo") as connection:
        rows = connection.execute("SELECT email, phone, iban FROM crm.customers").fetchall()
    forms: set[bytes] = set()
    for value in (value for row in rows for value in row if value):
        for form in {value, value.lower(), value[::-1], re.sub(r"\W", "", value)}:
            encoded = form.encode()
            forms.add(encoded)
            forms |= _base64_forms(encoded)
    return frozenset(form for form in forms if len(form) > 6)


def _base64_forms(value: bytes) -> set[bytes]:
    """The value's base64 at each alignment, without the characters its neighbours share."""
    forms = set()
    for offset, (start, end) in enumerate(((0, -2), (2, -3), (3, -2))):
        encoded = base64.b64encode(b"\0" * offset + value).rstrip(b"=")
        forms.add(encoded[start:end])
    return forms


def found(data: bytes, forms: frozenset[bytes]) -> set[bytes]:
    return {form for form in forms if form in data}


def _login(gateway: GatewayProcess, port: int, role: str) -> dict[str, str]:
    """Where and how a client of `role` connects through the relay (in the clear)."""
    groups = {"analyst": ["analysts"], "dba": ["dba"]}.get(role, [])
    return {
        "host": "127.0.0.1",
        "port": str(port),
        "dbname": gateway.database,
        "user": role,
        "password": gateway.token(role, f"{role}-wire-scan", groups=groups),
    }


def _psycopg_reads(login: dict[str, str]) -> int:
    """Reads the customers every way psycopg can; the rows that came back."""
    rows = 0
    with psycopg.connect(**login, sslmode="disable", autocommit=True) as connection:
        rows += len(connection.execute(CONTACTS).fetchall())
        rows += len(connection.cursor(binary=True).execute(CONTACTS).fetchall())
        rows += len(connection.execute(CONTACTS, prepare=True).fetchall())
        rows += len(connection.execute(CONTACTS, prepare=True).fetchall())  # named, bound again
        for sql in WHOLE_ROWS:
            with contextlib.suppress(psycopg.Error):  # refused: its error is scanned too
                rows += len(connection.execute(sql).fetchall())
    with (
        psycopg.connect(**login, sslmode="disable") as connection,
        connection.cursor(name="pages") as cursor,
    ):
        cursor.itersize = 7
        rows += sum(1 for _ in cursor.execute(CONTACTS))
    return rows


def _copy_reads(login: dict[str, str]) -> int:
    """COPY TO STDOUT in each format; the data bytes that came back."""
    received = 0
    for options in COPY_FORMATS:
        with psycopg.connect(**login, sslmode="disable", autocommit=True) as connection:
            try:
                with connection.cursor().copy(f"COPY ({CONTACTS}) TO STDOUT {options}") as copy:
                    received += sum(len(block) for block in copy)
            except psycopg.Error:
                pass  # refused by the policy (the agent may not COPY customers)
    return received


def _asyncpg_reads(login: dict[str, str]) -> int:
    async def read() -> int:
        connection = await asyncpg.connect(
            host=login["host"],
            port=int(login["port"]),
            user=login["user"],
            password=login["password"],
            database=login["dbname"],
            ssl=False,
        )
        try:
            statement = await connection.prepare(CONTACTS)
            rows = len(await statement.fetch()) + len(await connection.fetch(CONTACTS))
            async with connection.transaction():
                rows += len([row async for row in connection.cursor(CONTACTS, prefetch=9)])
            return rows
        finally:
            await connection.close()

    return asyncio.run(read())


def _psql_reads(login: dict[str, str]) -> int:
    """psql's rows and COPY lines (the token travels in the environment, not the arguments)."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    environment.update(
        PGHOST=login["host"],
        PGPORT=login["port"],
        PGDATABASE=login["dbname"],
        PGUSER=login["user"],
        PGPASSWORD=login["password"],
        PGSSLMODE="disable",
    )
    completed = subprocess.run(
        [client_program("psql"), "-X", "-c", CONTACTS, "-c", f"COPY ({CONTACTS}) TO STDOUT"],
        capture_output=True,
        env=environment,
        timeout=60,
        check=False,
    )
    return completed.stdout.count(b"\n")


READERS: dict[str, Callable[[dict[str, str]], int]] = {
    "psycopg": _psycopg_reads,
    "copy": _copy_reads,
    "asyncpg": _asyncpg_reads,
    "psql": _psql_reads,
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(
    ("role", "masked_form"),
    [
        ("agent", rb"\*\*\*@example\.(com|org|net)"),
        ("analyst", rb"[0-9a-f]{10}@[0-9a-f]{6}\.example"),
    ],
)
def test_no_personal_value_reaches_a_masked_role_in_any_byte(
    cleartext_gateway: GatewayProcess,
    relay: RecordingRelay,
    personal_forms: frozenset[bytes],
    reader: str,
    role: str,
    masked_form: bytes,
) -> None:
    came_back = READERS[reader](_login(cleartext_gateway, relay.port, role))
    data = relay.received()
    assert not found(data, personal_forms)
    if reader == "copy" and role == "agent":
        assert came_back == 0  # the policy refuses agents' COPY of customers
        assert b"agents may not export customer data with COPY" in data
        return
    # The reads did come back, masked: the scan looked at real rows.
    assert came_back >= 100
    assert re.search(masked_form, data)


def test_the_scan_catches_a_role_that_sees_values_in_clear(
    cleartext_gateway: GatewayProcess, relay: RecordingRelay, personal_forms: frozenset[bytes]
) -> None:
    """The relay and the scan together: a DBA, whom no mask rule names, is caught."""
    assert _psycopg_reads(_login(cleartext_gateway, relay.port, "dba")) >= 100
    assert found(relay.received(), personal_forms)


def test_the_scan_finds_values_sent_in_clear(pg_dsn: str, personal_forms: frozenset[bytes]) -> None:
    """The scan itself: a DBA's unmasked read, base64 included, is found."""
    with psycopg.connect(pg_dsn, dbname="custos_demo") as connection:
        email, encoded = connection.execute(
            "SELECT email, encode(convert_to(email, 'UTF8'), 'base64') FROM crm.customers"
            " ORDER BY id LIMIT 1"
        ).fetchone() or ("", "")
    assert found(email.encode(), personal_forms)
    assert found(b"prefix " + encoded.encode() + b" suffix", personal_forms)
    assert found(base64.b64encode(b"x" + email.encode()), personal_forms)
    assert found(base64.b64encode(b"xy" + email.encode()), personal_forms)
    assert not found(Path(__file__).read_bytes(), personal_forms)
