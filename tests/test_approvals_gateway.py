"""Approvals end to end: a real gateway, real clients, approvers deciding over HTTP.

Evidence only: what each client received (its result, its error, its notice), what the
database holds afterwards (read directly, not through the gateway), and what the
approvals API and the audit trail say.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from approvals_gateway_fixtures import (
    EXPIRY_SECONDS,
    REQUEST_ID,
    api,
    approver_token,
    decide,
    pending_request,
    requests_of,
    start_approvals_gateway,
)
from gateway_fixtures import GatewayProcess, client_program

from custos.audit.events import AuditEvent, EventType
from custos.audit.local import stored_events
from custos.demo.postgres import PostgresServer


@pytest.fixture(scope="module")
def approving(
    pg: PostgresServer, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str]]:
    running, page = start_approvals_gateway(
        tmp_path_factory.mktemp("approvals"), pg, gateway.upstream_dsn
    )
    yield running, page
    running.stop()


def connect(gateway: GatewayProcess, subject: str, role: str = "agent") -> psycopg.Connection:
    token = gateway.token(role, subject)
    return psycopg.connect(gateway.dsn(role, token, application_name=subject), autocommit=True)


def direct(gateway: GatewayProcess, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows read from the database itself, not through the gateway."""
    with psycopg.connect(gateway.upstream_dsn, autocommit=True) as connection:
        return connection.execute(sql, params).fetchall()


class Running:
    """A statement run in a thread (it waits for an approval), and what it ended with."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self.result = work()
        except BaseException as error:
            self.error = error

    def join(self, timeout: float = 15) -> Running:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the statement never finished"
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


def known_ids(page: str, token: str) -> set[str]:
    return {request["id"] for request in requests_of(page, token)}


def status_of(page: str, token: str, request_id: str) -> str:
    return str(api(f"{page}/api/requests/{request_id}", token)["status"])


def wait_for_status(page: str, token: str, request_id: str, status: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if status_of(page, token, request_id) == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"request {request_id} never became {status}")


# --- wait mode ----------------------------------------------------------------------------


def test_psql_waits_for_the_approval_then_gets_its_result(
    approving: tuple[GatewayProcess, str], tmp_path: Path
) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-1")
    known = known_ids(page, dpo)
    script = (
        "BEGIN;\n"
        "UPDATE crm.customers SET city = 'Approvedtown' WHERE id = 1;\n"
        "SELECT city FROM crm.customers WHERE id = 1 LIMIT 1;\n"
        "ROLLBACK;\n"
    )
    stderr_path = tmp_path / "psql.err"
    with stderr_path.open("wb") as stderr:
        psql = subprocess.Popen(
            [
                client_program("psql"),
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                gateway.dsn("agent", gateway.token("agent", "agent-psql")),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        assert psql.stdin is not None
        psql.stdin.write(script.encode())
        psql.stdin.close()
        request = pending_request(page, dpo, known)
        deadline = time.monotonic() + 5
        while request["id"] not in stderr_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        notice = stderr_path.read_text()
        assert f"this statement waits for approval by dpo: request {request['id']}" in notice
        assert f"{page}/requests/{request['id']}" in notice
        assert psql.poll() is None, "psql must still be waiting"
        assert request["requester"]["subject"] == "agent-psql"
        # A city is an address: approvers see it partly masked.
        assert "UPDATE crm.customers SET city = 'A***' WHERE id = 1" in request["statement"]
        answered = decide(page, dpo, request["id"], approve=True, reason="ticket CRM-12")
        assert answered["status"] == "approved"
        assert psql.stdout is not None
        out = psql.stdout.read()
        psql.wait(timeout=15)
    assert psql.returncode == 0, stderr_path.read_text()
    assert "Approvedtown" in out.decode().split()
    assert "UPDATE 1" in out.decode()
    # The transaction rolled back: the database holds the city it held.
    assert direct(gateway, "SELECT city FROM crm.customers WHERE id = 1")[0][0] != "Approvedtown"


def test_a_denied_statement_never_runs_and_says_who_denied_it(
    approving: tuple[GatewayProcess, str],
) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-2")
    known = known_ids(page, dpo)
    before = direct(gateway, "SELECT city FROM crm.customers WHERE id = 2")
    notices: list[str] = []
    with connect(gateway, "agent-denied") as connection:
        connection.add_notice_handler(lambda notice: notices.append(str(notice.message_primary)))
        running = Running(
            lambda: connection.execute("UPDATE crm.customers SET city = 'Nowhere' WHERE id = 2")
        )
        request = pending_request(page, dpo, known)
        decide(page, dpo, request["id"], approve=False, reason="no ticket for this")
        running.join()
        assert isinstance(running.error, psycopg.errors.InsufficientPrivilege)
        message = running.error.diag.message_primary or ""
        assert f"approval request {request['id']} was denied by dpo-2" in message
        assert "no ticket for this" in message
        # The session goes on.
        assert connection.execute("SELECT 1").fetchone() == (1,)
    assert any(request["id"] in notice for notice in notices)
    assert direct(gateway, "SELECT city FROM crm.customers WHERE id = 2") == before


def test_an_unanswered_request_expires_and_the_statement_never_runs(
    approving: tuple[GatewayProcess, str],
) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-1")
    count = direct(gateway, "SELECT count(*) FROM crm.orders")
    with connect(gateway, "agent-expiry") as connection:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="expired at") as raised:
            connection.execute("DELETE FROM crm.orders WHERE id = 1")
        assert time.monotonic() - started >= EXPIRY_SECONDS - 0.5
        request_id = REQUEST_ID.search(str(raised.value))
        assert request_id is not None
        assert status_of(page, dpo, request_id.group()) == "expired"
        # Deciding it now changes nothing.
        late = decide(page, dpo, request_id.group(), approve=True)
        assert late["status"] == 409
    assert direct(gateway, "SELECT count(*) FROM crm.orders") == count


def test_two_approvals_from_two_people(approving: tuple[GatewayProcess, str]) -> None:
    gateway, page = approving
    first, second = approver_token(gateway, "dpo-1"), approver_token(gateway, "dpo-3")
    known = known_ids(page, first)
    with connect(gateway, "agent-two") as connection:
        connection.execute("BEGIN")
        running = Running(
            lambda: connection.execute(
                "INSERT INTO crm.orders (id, customer_id, ordered_at, total_cents, currency,"
                " status) VALUES (990001, 1, now(), 4200, 'GBP', 'pending')"
            )
        )
        request = pending_request(page, first, known)
        assert decide(page, first, request["id"], approve=True)["status"] == "pending"
        again = decide(page, first, request["id"], approve=True)
        assert again["status"] == 409
        assert "different approvers" in again["error"]
        time.sleep(0.5)
        assert running.running, "one approval of two must not run it"
        assert decide(page, second, request["id"], approve=True)["status"] == "approved"
        running.join()
        assert running.error is None, running.error
        inserted = connection.execute(
            "SELECT count(*) FROM crm.orders WHERE id = 990001"
        ).fetchone()
        assert inserted == (1,)
        connection.execute("ROLLBACK")
    assert direct(gateway, "SELECT count(*) FROM crm.orders WHERE id = 990001") == [(0,)]


def test_nobody_approves_their_own_request_nor_outside_the_group(
    approving: tuple[GatewayProcess, str],
) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-1")
    own = approver_token(gateway, "agent-self")  # the requester, in the dpo group too
    stranger = approver_token(gateway, "someone", groups=("analysts",))
    known = known_ids(page, dpo)
    with connect(gateway, "agent-self") as connection:
        running = Running(
            lambda: connection.execute("UPDATE crm.customers SET city = 'Selfie' WHERE id = 3")
        )
        request = pending_request(page, dpo, known)
        refused = decide(page, own, request["id"], approve=True)
        assert refused["status"] == 403
        assert "asked for request" in refused["error"]
        outsider = decide(page, stranger, request["id"], approve=True)
        assert outsider["status"] == 403
        assert status_of(page, dpo, request["id"]) == "pending"
        assert running.running
        decide(page, dpo, request["id"], approve=False)
        running.join()
        assert isinstance(running.error, psycopg.errors.InsufficientPrivilege)
    assert direct(gateway, "SELECT city FROM crm.customers WHERE id = 3")[0][0] != "Selfie"


def test_a_cancel_withdraws_the_request(approving: tuple[GatewayProcess, str]) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-1")
    known = known_ids(page, dpo)
    with connect(gateway, "agent-cancel") as connection:
        running = Running(
            lambda: connection.execute("UPDATE crm.customers SET city = 'Cancelled' WHERE id = 4")
        )
        request = pending_request(page, dpo, known)
        connection.cancel_safe()
        running.join()
        assert isinstance(running.error, psycopg.errors.QueryCanceled)
        wait_for_status(page, dpo, request["id"], "withdrawn")
        assert decide(page, dpo, request["id"], approve=True)["status"] == 409
        assert connection.execute("SELECT 1").fetchone() == (1,)
    assert direct(gateway, "SELECT city FROM crm.customers WHERE id = 4")[0][0] != "Cancelled"


def test_psql_ctrl_c_withdraws_the_request(approving: tuple[GatewayProcess, str]) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-1")
    known = known_ids(page, dpo)
    psql = subprocess.Popen(
        [
            client_program("psql"),
            "-X",
            "-c",
            "UPDATE crm.customers SET city = 'Interrupted' WHERE id = 5",
            gateway.dsn("agent", gateway.token("agent", "agent-ctrl-c")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    request = pending_request(page, dpo, known)
    psql.send_signal(signal.SIGINT)
    _, err = psql.communicate(timeout=15)
    assert "canceling statement due to user request" in err.decode()
    wait_for_status(page, dpo, request["id"], "withdrawn")
    assert direct(gateway, "SELECT city FROM crm.customers WHERE id = 5")[0][0] != "Interrupted"


def test_a_disconnect_withdraws_the_request(approving: tuple[GatewayProcess, str]) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-1")
    known = known_ids(page, dpo)
    psql = subprocess.Popen(
        [
            client_program("psql"),
            "-X",
            "-c",
            "UPDATE crm.customers SET city = 'Vanished' WHERE id = 6",
            gateway.dsn("agent", gateway.token("agent", "agent-gone")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    request = pending_request(page, dpo, known)
    psql.kill()
    psql.wait()
    wait_for_status(page, dpo, request["id"], "withdrawn")
    # Approving it now runs nothing.
    assert decide(page, dpo, request["id"], approve=True)["status"] == 409
    time.sleep(0.3)
    assert direct(gateway, "SELECT city FROM crm.customers WHERE id = 6")[0][0] != "Vanished"


# --- retry mode ---------------------------------------------------------------------------

RETRY = "UPDATE crm.orders SET status = status WHERE id = %s"


def retried(connection: psycopg.Connection, order: int) -> str:
    """What a retry-mode statement did: its command tag, or the gateway's error."""
    try:
        cursor = connection.execute(RETRY, (order,))
    except psycopg.errors.InsufficientPrivilege as error:
        return f"refused: {error.diag.message_primary}"
    return str(cursor.statusmessage)


def test_retry_mode_runs_once_for_the_same_principal_role_statement_and_parameters(
    approving: tuple[GatewayProcess, str],
) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-1")
    with connect(gateway, "agent-retry") as connection:
        first = retried(connection, 1)
        assert first.startswith("refused: ")
        request_id = REQUEST_ID.search(first)
        assert request_id is not None
        assert "was sent to dpo" in first
        assert "still waits for dpo" in retried(connection, 1)
        assert decide(page, dpo, request_id.group(), approve=True)["status"] == "approved"
        # Not for changed parameters, another statement, another principal or role.
        assert retried(connection, 2).startswith("refused: ")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="was sent to dpo"):
            connection.execute("UPDATE crm.orders SET status = status WHERE id = 1 AND true")
    with connect(gateway, "agent-other") as stranger:
        assert retried(stranger, 1).startswith("refused: ")
    with connect(gateway, "agent-retry", role="ops") as other_role:
        assert retried(other_role, 1).startswith("refused: ")
    with connect(gateway, "agent-retry") as again:
        assert retried(again, 1) == "UPDATE 1"
        # Once only: the next attempt is a new request.
        after = retried(again, 1)
        assert after.startswith("refused: ")
        assert request_id.group() not in after


def test_a_denied_retry_stays_denied(approving: tuple[GatewayProcess, str]) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-1")
    with connect(gateway, "agent-retry-denied") as connection:
        first = retried(connection, 3)
        request_id = REQUEST_ID.search(first)
        assert request_id is not None
        decide(page, dpo, request_id.group(), approve=False, reason="not today")
        again = retried(connection, 3)
        assert f"approval request {request_id.group()} was denied by dpo-1" in again
        assert "not today" in again


# --- what approvers see, and the evidence -------------------------------------------------


def test_approvers_see_personal_values_masked_and_the_row_estimate(
    approving: tuple[GatewayProcess, str],
) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-1")
    known = known_ids(page, dpo)
    email, phone = "new.person.approvals@example.org", "+44 7700 900999"
    with connect(gateway, "agent-masked") as connection:
        running = Running(
            lambda: connection.execute(
                "UPDATE crm.customers SET email = %s, phone = %s WHERE id < 4",
                (email, phone),
            )
        )
        request = pending_request(page, dpo, known)
        decide(page, dpo, request["id"], approve=False)
        running.join()
    shown = str(request)
    assert email not in shown
    assert phone not in shown
    assert "@example.org" in shown  # partial: the domain stays
    assert request["row_estimate"] is not None
    assert request["row_estimate"] >= 1
    assert email not in gateway.log()
    assert phone not in gateway.log()


def test_the_audit_trail_holds_each_request_and_decision(
    approving: tuple[GatewayProcess, str],
) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-4")
    known = known_ids(page, dpo)
    with connect(gateway, "agent-audited") as connection:
        connection.execute("BEGIN")
        running = Running(
            lambda: connection.execute("UPDATE crm.customers SET city = 'Audited' WHERE id = 7")
        )
        request = pending_request(page, dpo, known)
        decide(page, dpo, request["id"], approve=True)
        running.join()
        connection.execute("ROLLBACK")
    deadline = time.monotonic() + 10
    mine: list[AuditEvent] = []
    while time.monotonic() < deadline:
        events = [
            e for e in stored_events(gateway.directory / "audit") if isinstance(e, AuditEvent)
        ]
        mine = [e for e in events if e.approval_id == request["id"]]
        if len(mine) >= 3:
            break
        time.sleep(0.1)
    by_type = {event.event_type: event for event in mine}
    requested = by_type[EventType.APPROVAL_REQUESTED]
    decided = by_type[EventType.APPROVAL_DECIDED]
    outcome = by_type[EventType.STATEMENT_OUTCOME]
    assert requested.session_id == decided.session_id == outcome.session_id
    assert requested.subject == "agent-audited"
    assert decided.subject == "dpo-4"
    assert decided.decision == "approved"
    assert outcome.status == "completed"
    assert outcome.rows == 0
    assert requested.seq < decided.seq < outcome.seq


def test_an_approval_lets_a_statement_run_but_does_not_lift_masking(
    approving: tuple[GatewayProcess, str],
) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-1")
    known = known_ids(page, dpo)
    (raw,) = direct(gateway, "SELECT email FROM crm.customers WHERE id = 8")[0]
    with connect(gateway, "agent-returning") as connection:
        running = Running(
            lambda: connection.execute(
                "SELECT email, pg_sleep(0) FROM crm.customers WHERE id = 8 LIMIT 1"
            ).fetchall()
        )
        request = pending_request(page, dpo, known)
        decide(page, dpo, request["id"], approve=True)
        running.join()
    assert running.error is None, running.error
    ((shown, _),) = running.result
    assert shown != raw
    assert shown.endswith("@" + raw.split("@")[1])


def test_an_application_name_holding_an_email_reaches_neither_approvers_nor_the_log(
    approving: tuple[GatewayProcess, str],
) -> None:
    gateway, page = approving
    dpo = approver_token(gateway, "dpo-1")
    known = known_ids(page, dpo)
    email = "application.name.leak@example.org"
    token = gateway.token("agent", "agent-named")
    with psycopg.connect(
        gateway.dsn("agent", token, application_name=email), autocommit=True
    ) as connection:
        running = Running(
            lambda: connection.execute("UPDATE crm.customers SET city = city WHERE id = 9")
        )
        request = pending_request(page, dpo, known)
        decide(page, dpo, request["id"], approve=False)
        running.join()
    assert email not in str(request)
    assert email not in gateway.log()
