"""Cancel keys: the client holds the gateway's secret, never the database's.

BackendKeyData names the database backend's real process id (so it matches
`pg_backend_pid()` and the sender of a notification) with a secret the gateway
drew. A CancelRequest with that key, sent to the gateway, cancels the running
statement (57014); a guessed secret cancels nothing, and neither does the
client's key sent straight to the database.
"""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest
from gateway_fixtures import GatewayProcess
from wire import (
    WireClient,
    data_row_values,
    database_pid,
    healthy_session,
    login_as_agent,
    query,
)

from custos.demo.postgres import PostgresServer


def wait_until_running(pg: PostgresServer, pid: int, fragment: str) -> None:
    """Polls until the backend executes the statement, so a cancel cannot arrive early."""
    deadline = time.monotonic() + 10
    with psycopg.connect(pg.dsn(), autocommit=True) as connection:
        while time.monotonic() < deadline:
            row = connection.execute(
                "SELECT state, query FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone()
            if row is not None and row[0] == "active" and fragment in row[1]:
                return
            time.sleep(0.02)
    pytest.fail(f"backend {pid} never started running {fragment!r}")


def send_cancel(gateway: GatewayProcess, process_id: int, secret_key: int, tls: bool) -> None:
    with WireClient.connect(gateway.port) as canceller:
        if tls:
            canceller.start_tls(gateway.tls.ca_cert)
        canceller.cancel(process_id, secret_key)


def test_backend_key_data_names_the_backend_with_the_gateway_secret(
    gateway: GatewayProcess, pg: PostgresServer
) -> None:
    with login_as_agent(gateway) as client:
        assert client.backend_key is not None
        process_id, secret_key = client.backend_key
        real_pid = database_pid(client)
        assert process_id == real_pid
        client.send(query("SELECT pg_sleep(1)"))
        wait_until_running(pg, real_pid, "pg_sleep(1)")
        # Straight to the database, the client's secret is a wrong one.
        with WireClient.connect(pg.port, host=pg.host) as direct:
            direct.cancel(process_id, secret_key)
        answers = client.read_until("Z")
    assert [m.type for m in answers] == ["T", "D", "C", "Z"]
    with login_as_agent(gateway) as first, login_as_agent(gateway) as second:
        assert first.backend_key != second.backend_key


def test_guessed_cancel_keys_cancel_nothing(gateway: GatewayProcess, pg: PostgresServer) -> None:
    guess = random.Random(11)
    with healthy_session(gateway.dsn()), login_as_agent(gateway) as client:
        assert client.backend_key is not None
        process_id, secret_key = client.backend_key
        real_pid = database_pid(client)
        client.send(query("SELECT pg_sleep(3)"))
        wait_until_running(pg, real_pid, "pg_sleep(3)")
        assert process_id == real_pid
        guesses = [
            (guess.randrange(1, 2**31), guess.randrange(-(2**31), 2**31)),
            (process_id, guess.randrange(-(2**31), 2**31)),
            (process_id, secret_key ^ 1),
            (process_id, 0),
            (process_id + 1, secret_key),
            (0, 0),
        ]
        for tls in (False, True):
            for guessed_pid, guessed_secret in guesses:
                # The gateway closes a cancel connection only after it has decided.
                send_cancel(gateway, guessed_pid, guessed_secret, tls)
        answers = client.read_until("Z")
    errors = [m.notice.fields for m in answers if m.type == "E"]
    assert not errors
    assert [m.type for m in answers] == ["T", "D", "C", "Z"]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "over-tls"])
def test_right_key_cancels_the_statement(
    gateway: GatewayProcess, pg: PostgresServer, tls: bool
) -> None:
    with healthy_session(gateway.dsn()), login_as_agent(gateway) as client:
        assert client.backend_key is not None
        real_pid = database_pid(client)
        client.send(query("SELECT pg_sleep(30)"))
        wait_until_running(pg, real_pid, "pg_sleep(30)")
        send_cancel(gateway, *client.backend_key, tls=tls)
        answers = client.read_until("Z")
        errors = [m.notice for m in answers if m.type == "E"]
        assert [e.sqlstate for e in errors] == ["57014"]
        assert "canceling statement due to user request" in errors[0].message
        # The session survives its cancelled statement.
        rows = [m for m in client.run("SELECT 'after'") if m.type == "D"]
        assert [data_row_values(m) for m in rows] == [[b"after"]]


def test_psycopg_cancel_through_the_gateway(gateway: GatewayProcess, pg: PostgresServer) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as connection:
        real_pid = connection.execute("SELECT pg_backend_pid()").fetchone()
        assert real_pid == (connection.info.backend_pid,)
        outcome: list[BaseException] = []

        def sleep() -> None:
            try:
                connection.execute("SELECT pg_sleep(30)")
            except psycopg.Error as error:
                outcome.append(error)

        sleeper = threading.Thread(target=sleep)
        sleeper.start()
        wait_until_running(pg, real_pid[0], "pg_sleep(30)")
        connection.cancel_safe(timeout=10)
        sleeper.join(timeout=10)
        assert len(outcome) == 1
        assert isinstance(outcome[0], psycopg.errors.QueryCanceled)
        assert connection.execute("SELECT 1").fetchone() == (1,)
