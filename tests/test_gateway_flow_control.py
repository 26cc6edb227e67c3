"""Backpressure, many sessions at once, and graceful shutdown.

A client that reads slowly must slow the database down, not fill the
gateway's memory; SIGTERM must let transactions finish and close idle
sessions at once.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from gateway_fixtures import GatewayProcess, start_gateway
from wire import (
    database_pid,
    gateway_backends,
    healthy_session,
    login_as_agent,
    query,
    wait_for_backends,
)

from custos.demo.postgres import PostgresServer

# 300 MB of rows: far more than the gateway may ever hold for one session.
LARGE_RESULT = "SELECT repeat('x', 1000) FROM generate_series(1, 300000)"
ROWS = 300_000


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def wait_for_wait_event(pg: PostgresServer, pid: int, event: str) -> None:
    """Polls until the database backend `pid` waits on `event`."""
    deadline = time.monotonic() + 20
    with psycopg.connect(pg.dsn(), autocommit=True) as connection:
        while time.monotonic() < deadline:
            row = connection.execute(
                "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone()
            if row == (event,):
                return
            time.sleep(0.05)
    pytest.fail(f"database backend {pid} never waited on {event}")


def test_slow_reader_keeps_gateway_memory_bounded(
    gateway: GatewayProcess, pg: PostgresServer
) -> None:
    pid = gateway.process.pid
    with healthy_session(gateway.dsn()), login_as_agent(gateway, timeout=30) as client:
        backend = database_pid(client)
        baseline = rss_bytes(pid)
        client.send(query(LARGE_RESULT))
        # The database blocks writing to the gateway: backpressure reached it.
        wait_for_wait_event(pg, backend, "ClientWrite")
        peak = rss_bytes(pid)
        for _ in range(30):
            client.read_some(1024)
            time.sleep(0.05)
            peak = max(peak, rss_bytes(pid))
        growth = peak - baseline
        assert growth < 50 << 20, f"the gateway grew by {growth >> 20} MB for one slow reader"
        counts = client.count_until_ready()
    assert counts["D"] == ROWS
    assert counts["C"] == 1
    assert counts["E"] == 0


def test_many_concurrent_sessions(gateway: GatewayProcess) -> None:
    sessions = 50
    all_open = threading.Barrier(sessions, timeout=60)
    tokens = [gateway.token("agent", f"agent-{n}") for n in range(sessions)]

    def run(n: int) -> list[tuple[int, str]]:
        with psycopg.connect(gateway.dsn(token=tokens[n]), autocommit=True) as connection:
            all_open.wait()
            results = []
            for step in range(5):
                row = connection.execute("SELECT %s::int, current_user", [n * 10 + step])
                results.append(row.fetchone())
            return results

    with ThreadPoolExecutor(max_workers=sessions) as pool:
        outcomes = list(pool.map(run, range(sessions)))
    for n, results in enumerate(outcomes):
        assert [value for value, _ in results] == [n * 10 + step for step in range(5)]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_graceful_shutdown(gateway: GatewayProcess, pg: PostgresServer, tmp_path: Path) -> None:
    grace = 3
    stopping = start_gateway(
        tmp_path,
        pg,
        # The session gateway's credential: provisioning a new one would lock it out.
        upstream_dsn=gateway.upstream_dsn,
        extra_config={"limits": {"shutdown_grace_seconds": grace}},
    )
    # The gateway's start-up query of the database's connection limit ends its own session
    # as the gateway starts: count once that one is gone.
    before = gateway_backends(pg)
    for _ in range(50):
        time.sleep(0.1)
        now = gateway_backends(pg)
        if now == before:
            break
        before = now
    try:
        with (
            login_as_agent(stopping, timeout=30) as idle,
            psycopg.connect(stopping.dsn()) as finishing,
            login_as_agent(stopping, timeout=30) as stuck,
        ):
            assert finishing.execute("SELECT 1").fetchone() == (1,)
            stuck.run("BEGIN")
            stuck.run("SELECT 1")
            assert gateway_backends(pg) == before + 3

            stopping.process.send_signal(signal.SIGTERM)

            # The idle session is told at once, with PostgreSQL's own SQLSTATE for a shutdown.
            notice = idle.expect_refusal("57P01")
            assert "shutting down" in notice.message
            deadline = time.monotonic() + 10
            while not refused(stopping.port):
                assert time.monotonic() < deadline, "the gateway still accepts connections"
                time.sleep(0.05)

            # The session inside a transaction may finish it, and is closed after.
            assert finishing.execute("SELECT 2").fetchone() == (2,)
            finishing.commit()
            with pytest.raises(psycopg.OperationalError, match="shutting down"):
                finishing.execute("SELECT 3")

            # A transaction still open when the grace period ends is closed too.
            notice = stuck.expect_refusal("57P01")
            assert "shutting down" in notice.message
            assert stopping.process.wait(timeout=grace + 10) == 0
        wait_for_backends(pg, before)
    finally:
        stopping.stop()
    assert "Traceback" not in stopping.log()
