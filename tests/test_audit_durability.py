"""Durable before forwarding, evidenced: a gateway killed with SIGKILL under load has an
event for every statement the database executed; a store that cannot be written refuses
the statement (and new sessions), unless the target is configured to fail open.

The store is made to fail for real: the gateway runs under a file-size limit
(RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past it fails with EFBIG).
"""

from __future__ import annotations

import resource
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from gateway_fixtures import GatewayProcess, psycopg_session, start_audited_gateway

from custos.audit.chain import SessionChain
from custos.audit.digests import verify_digests
from custos.audit.events import AuditEvent, EventType
from custos.audit.local import LocalStore, stored_events
from custos.demo.embedded import write_digest_keys
from custos.demo.postgres import PostgresServer

CLIENTS = 4
STORE_LIMIT_BYTES = 512 << 10


def audited_gateway(
    directory: Path,
    pg: PostgresServer,
    upstream_dsn: str,
    fail_open_targets: list[str] | None = None,
    file_size_limit: int | None = None,
    durability: str = "disk",
    digest_key_file: Path | None = None,
    keep_literals: bool = False,
) -> GatewayProcess:
    def limit_file_size() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    audit = {
        "fail_open_targets": fail_open_targets or [],
        "durability": durability,
        "keep_literals": keep_literals,
        **({"digest_key_file": str(digest_key_file)} if digest_key_file else {}),
    }
    return start_audited_gateway(directory, pg, upstream_dsn, audit, limit_file_size)


def statement_events(directory: Path, table: str) -> dict[str, int]:
    """Per application name, the statement events of inserts into `table`."""
    counts: dict[str, int] = {}
    for event in stored_events(directory / "audit"):
        if (
            isinstance(event, AuditEvent)
            and event.event_type is EventType.STATEMENT
            and (event.statement or "").startswith(f"INSERT INTO public.{table} ")
        ):
            name = event.application_name or ""
            counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.fixture
def scratch_table(pg_dsn: str, request: pytest.FixtureRequest) -> str:
    table = f"audit_rows_{request.node.name[:30].lower()}"
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        direct.execute(f"DROP TABLE IF EXISTS public.{table}")
        direct.execute(f"CREATE TABLE public.{table} (client int, n int)")
        direct.execute(f"GRANT INSERT, SELECT ON public.{table} TO PUBLIC")
    return table


def rows_by_client(pg_dsn: str, table: str) -> dict[str, int]:
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        found = direct.execute(f"SELECT client, count(*) FROM public.{table} GROUP BY 1").fetchall()
    return {f"load-{client}": count for client, count in found}


@pytest.mark.parametrize("durability", ["disk", "process"])
def test_sigkill_under_load_loses_no_event_of_an_executed_statement(
    pg: PostgresServer,
    pg_dsn: str,
    gateway: GatewayProcess,
    tmp_path: Path,
    scratch_table: str,
    durability: str,
) -> None:
    """Either durability survives the gateway's death: `process` hands each statement's
    event to the operating system before the statement goes upstream, `disk` fsyncs it."""
    running = audited_gateway(tmp_path / "killed", pg, gateway.upstream_dsn, durability=durability)
    started = threading.Barrier(CLIENTS + 1)

    def load(client: int) -> None:
        with psycopg_session(running, "dba", "dora", application_name=f"load-{client}") as conn:
            started.wait()
            n = 0
            try:
                while True:
                    n += 1
                    conn.execute(f"INSERT INTO public.{scratch_table} VALUES ({client}, {n})")
            except psycopg.Error:
                return  # the gateway is gone

    threads = [threading.Thread(target=load, args=(c,), daemon=True) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(1.5)
    running.process.send_signal(signal.SIGKILL)
    running.process.wait()
    for thread in threads:
        thread.join(timeout=10)
    executed = rows_by_client(pg_dsn, scratch_table)
    recorded = statement_events(running.directory, scratch_table)
    assert sum(executed.values()) > 50, "the load ran before the kill"
    for client, rows in executed.items():
        # At most the one statement in flight has an event and no row.
        assert rows <= recorded.get(client, 0) <= rows + 1, client


def test_a_store_that_cannot_be_written_refuses_statements_and_sessions(
    pg: PostgresServer,
    pg_dsn: str,
    gateway: GatewayProcess,
    tmp_path: Path,
    scratch_table: str,
) -> None:
    running = audited_gateway(
        tmp_path / "full", pg, gateway.upstream_dsn, file_size_limit=STORE_LIMIT_BYTES
    )
    try:
        with psycopg_session(running, "dba", "dora", application_name="load-1") as conn:
            refused: psycopg.Error | None = None
            refused_at = 0
            for n in range(1, 20000):
                try:
                    conn.execute(f"INSERT INTO public.{scratch_table} VALUES (1, {n})")
                except psycopg.Error as error:
                    refused, refused_at = error, n
                    break
            assert refused is not None, "the store filled up"
            assert refused.sqlstate == "58030"
            assert "could not record this statement" in str(refused)
        with psycopg.connect(pg_dsn, autocommit=True) as direct:
            numbers = direct.execute(f"SELECT n FROM public.{scratch_table}").fetchall()
        assert sorted(n for (n,) in numbers) == list(range(1, refused_at))
        assert statement_events(running.directory, scratch_table)["load-1"] == refused_at - 1
        with pytest.raises(psycopg.OperationalError, match="could not record"):
            psycopg_session(running, "dba", "dora").close()
    finally:
        running.stop()


def test_a_target_configured_to_fail_open_runs_statements_the_store_cannot_record(
    pg: PostgresServer,
    pg_dsn: str,
    gateway: GatewayProcess,
    tmp_path: Path,
    scratch_table: str,
) -> None:
    running = audited_gateway(
        tmp_path / "open",
        pg,
        gateway.upstream_dsn,
        fail_open_targets=["crm"],
        file_size_limit=STORE_LIMIT_BYTES,
    )
    try:
        with psycopg_session(running, "dba", "dora", application_name="load-1") as conn:
            for n in range(1, 6000):
                conn.execute(f"INSERT INTO public.{scratch_table} VALUES (1, {n})")
        recorded = statement_events(running.directory, scratch_table)["load-1"]
        assert recorded < 5999, "the store filled up"
        assert rows_by_client(pg_dsn, scratch_table) == {"load-1": 5999}
        assert "running it anyway (fail open)" in running.log()
    finally:
        running.stop()


def test_the_gateway_digests_the_hours_over_when_it_starts(
    pg: PostgresServer, gateway: GatewayProcess, tmp_path: Path
) -> None:
    """A store with records of three hours ago: the gateway digests those hours (and the
    quiet ones after) as it starts, and they verify with the public key."""
    directory = tmp_path / "digesting"
    earlier = datetime.now(UTC) - timedelta(hours=3)
    store = LocalStore(directory / "audit")
    store.append(
        [SessionChain("s-old").sealed(event_id="old", event_type=EventType.STATEMENT, time=earlier)]
    )
    store.close()
    private = write_digest_keys(tmp_path / "digest")
    running = audited_gateway(directory, pg, gateway.upstream_dsn, digest_key_file=private)
    try:
        deadline = time.monotonic() + 20
        digests: list[Path] = []
        # Its hour and the next are over; the one after is, unless this is its first minute.
        while len(digests) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            digests = sorted((directory / "audit" / "digests").rglob("digest.json"))
        assert len(digests) >= 2, running.log()
        assert digests[0].parent.name == f"hour={earlier:%H}"
        public = load_pem_public_key((tmp_path / "digest.pub.pem").read_bytes())
        assert isinstance(public, Ed25519PublicKey)
        assert verify_digests(directory / "audit", public) == []
    finally:
        running.stop()


def test_literals_kept_on_request_only_where_no_personal_table_is_touched(
    pg: PostgresServer, gateway: GatewayProcess, tmp_path: Path, scratch_table: str
) -> None:
    running = audited_gateway(tmp_path / "literals", pg, gateway.upstream_dsn, keep_literals=True)
    try:
        with psycopg_session(running, "dba", "dora", application_name="literals") as conn:
            conn.execute(f"INSERT INTO public.{scratch_table} VALUES (7, 42)")
            conn.execute("SELECT full_name FROM crm.customers WHERE id = 7").fetchall()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):  # waits for approval
                conn.execute("DO $$ BEGIN PERFORM 'Alice Private'; END $$")
        time.sleep(0.3)
        events = [
            event
            for event in stored_events(running.directory / "audit")
            if isinstance(event, AuditEvent) and event.event_type is EventType.STATEMENT
        ]
        kept = {(event.statement or "").split(" ")[0]: event.literals for event in events}
        assert kept["INSERT"] == ("7", "42")
        assert kept["SELECT"] == ()  # over personal data: none
        assert kept["DO"] == ()  # code the analysis does not see into: none
    finally:
        running.stop()
