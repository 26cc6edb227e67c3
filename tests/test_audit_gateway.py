"""The audit trail through a real gateway: what each session and statement leaves in the
local store, the data-subject index, and what the store never holds.

Evidence only: the records read back from the store's files, checked against what the
database holds (the demo customers' own values, the rows a statement changed), with the
pseudonyms computed here from the audit key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from gateway_fixtures import GatewayProcess, psycopg_session, start_audited_gateway

from custos.audit.events import AuditEvent, EventType, IdentifierType, SubjectAccess
from custos.audit.local import SUBJECT_ACCESS, segments, stored_events, verify_store
from custos.audit.pseudonyms import identifier_pseudonym, subject_pseudonym
from custos.demo.postgres import PostgresServer

DEMO_POLICY = Path(__file__).resolve().parent.parent / "custos" / "demo" / "policy.yaml"


@pytest.fixture(scope="module")
def audited(
    pg: PostgresServer, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    running = start_audited_gateway(
        tmp_path_factory.mktemp("audited"),
        pg,
        gateway.upstream_dsn,
        {"labels": {"run_id": "run_id"}},
    )
    yield running
    running.stop()


def audit_dir(gateway: GatewayProcess) -> Path:
    return gateway.directory / "audit"


def audit_key(gateway: GatewayProcess) -> bytes:
    return (gateway.directory / "audit.key").read_text().strip().encode()


def events_of(gateway: GatewayProcess, session_application: str) -> list[AuditEvent]:
    """The events of the sessions that named themselves so, in the order written."""
    events = [e for e in stored_events(audit_dir(gateway)) if isinstance(e, AuditEvent)]
    sessions = {e.session_id for e in events if e.application_name == session_application}
    return [event for event in events if event.session_id in sessions]


def subject_rows(gateway: GatewayProcess) -> list[SubjectAccess]:
    rows: list[SubjectAccess] = []
    for path in segments(audit_dir(gateway), SUBJECT_ACCESS):
        rows += [SubjectAccess.model_validate_json(line) for line in path.read_bytes().splitlines()]
    return rows


def wait_for_end(gateway: GatewayProcess, application: str) -> list[AuditEvent]:
    """A session's events once its end is written (it follows the session's close)."""
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = events_of(gateway, application)
        if events and events[-1].event_type is EventType.SESSION_END:
            return events
        time.sleep(0.05)
    raise AssertionError(f"no end event for {application}")


def statements_and_outcomes(events: list[AuditEvent]) -> list[tuple[AuditEvent, AuditEvent]]:
    outcomes = {
        e.statement_number: e for e in events if e.event_type is EventType.STATEMENT_OUTCOME
    }
    return [
        (event, outcomes[event.statement_number])
        for event in events
        if event.event_type is EventType.STATEMENT
    ]


def test_a_session_is_recorded_in_order_and_its_chain_holds(audited: GatewayProcess) -> None:
    with psycopg_session(audited, "agent", "agent-ordered", application_name="ordered") as conn:
        conn.execute("SELECT id, full_name FROM crm.customers WHERE id < 4 LIMIT 10").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT email FROM crm.customers")  # no LIMIT: refused
    events = wait_for_end(audited, "ordered")
    types = [event.event_type for event in events]
    assert types == [
        EventType.SESSION_START,
        EventType.STATEMENT,
        EventType.STATEMENT_OUTCOME,
        EventType.STATEMENT,
        EventType.STATEMENT_OUTCOME,
        EventType.SESSION_END,
    ]
    assert {event.role for event in events} == {"agent"}
    assert {event.subject for event in events} == {"agent-ordered"}
    (read, read_outcome), (refused, refused_outcome) = statements_and_outcomes(events)
    assert read.statement == "SELECT id, full_name FROM crm.customers WHERE id < ? LIMIT ?"
    assert read.decision == "allow"
    assert read.deciding_rule == "agents-read-crm"
    assert read.relations == ("crm.customers",)
    assert "name" in read.categories
    assert read_outcome.status == "completed"
    assert read_outcome.rows == 3
    assert read_outcome.bytes
    assert read_outcome.bytes > 0
    assert refused.decision == "deny"
    assert refused.deciding_rule == "agents-no-bulk-export"
    assert refused_outcome.status == "refused"
    assert refused_outcome.sqlstate == "42501"
    assert refused_outcome.error
    assert "pages of at most 100 rows" in refused_outcome.error
    assert refused_outcome.unidentified == ()  # it never ran: it read nothing
    assert verify_store(audit_dir(audited)) == ([], [])


def test_a_failed_login_is_recorded_without_the_token(audited: GatewayProcess) -> None:
    import time

    forged = audited.token("agent", "agent-forger") + "x"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(audited.dsn("agent", forged, application_name="forger")).close()
    deadline = time.monotonic() + 10
    failures: list[AuditEvent] = []
    while not failures and time.monotonic() < deadline:
        time.sleep(0.05)
        failures = [
            event
            for event in stored_events(audit_dir(audited))
            if isinstance(event, AuditEvent)
            and event.event_type is EventType.AUTHENTICATION_FAILURE
            and event.application_name == "forger"
        ]
    assert len(failures) == 1
    assert failures[0].role == "agent"
    assert failures[0].sqlstate == "28P01"
    assert forged[:40] not in failures[0].model_dump_json()


def test_the_subject_index_names_whom_a_statement_returned_and_named(
    audited: GatewayProcess, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        row = direct.execute("SELECT email FROM crm.customers WHERE id = 42").fetchone()
    assert row is not None
    key = audit_key(audited)
    with psycopg_session(audited, "analyst", "alice", application_name="subjects") as conn:
        conn.execute("SELECT id, email FROM crm.customers WHERE id = %s", [42]).fetchall()
    events = wait_for_end(audited, "subjects")
    ((_, outcome),) = statements_and_outcomes(events)
    rows = [row for row in subject_rows(audited) if row.event_id == outcome.event_id]
    found = {(r.identifier_type, r.pseudonym, r.access.value, r.masked) for r in rows}
    assert found == {
        (IdentifierType.SUBJECT, subject_pseudonym(key, "42"), "named", False),
        (IdentifierType.SUBJECT, subject_pseudonym(key, "42"), "returned", False),
        (IdentifierType.EMAIL, identifier_pseudonym(key, IdentifierType.EMAIL, row[0]),
         "returned", True),
    }  # fmt: skip
    assert outcome.subjects == 3
    assert not outcome.subjects_capped
    assert outcome.unidentified == ()
    assert {r.principal for r in rows} == {"alice"}
    assert {r.role for r in rows} == {"analyst"}


def test_a_read_that_says_not_whom_is_recorded_as_such(audited: GatewayProcess) -> None:
    with psycopg_session(audited, "analyst", "alice", application_name="counting") as conn:
        conn.execute("SELECT count(*) FROM crm.customers").fetchall()
    ((_, outcome),) = statements_and_outcomes(wait_for_end(audited, "counting"))
    assert outcome.unidentified == ("crm.customers",)
    assert outcome.subjects == 0


def test_the_subject_index_stops_at_its_cap_and_says_so(audited: GatewayProcess) -> None:
    with psycopg_session(audited, "analyst", "alice", application_name="many") as conn:
        rows = conn.execute("SELECT id FROM crm.customers ORDER BY id LIMIT 1500").fetchall()
    assert len(rows) == 1500
    ((_, outcome),) = statements_and_outcomes(wait_for_end(audited, "many"))
    assert outcome.subjects == 1000
    assert outcome.subjects_capped


def _raw_values(pg_dsn: str) -> list[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        rows = direct.execute("SELECT email, phone, iban, full_name FROM crm.customers").fetchall()
    return [value for row in rows for value in row]


def _forms(value: str) -> set[bytes]:
    """A value as a store might hold it: as it is, in other cases, without spaces, as
    JSON escapes it."""
    forms = {value, value.lower(), value.upper(), value.replace(" ", "")}
    encoded = {form.encode() for form in forms}
    encoded |= {json.dumps(form).strip('"').encode() for form in forms}
    return encoded


def test_no_raw_personal_value_reaches_the_store(audited: GatewayProcess, pg_dsn: str) -> None:
    written: dict[str, Any] = {
        "email": "mallory.private@example.net",
        "phone": "+44 7700 900999",
        "iban": "GB33BUKB20201555555555",
    }
    with psycopg_session(audited, "analyst", "alice", application_name="scan-analyst") as conn:
        conn.execute("SELECT * FROM crm.customers ORDER BY id LIMIT 50").fetchall()
        conn.execute(
            "SELECT id FROM crm.customers WHERE email = %s OR phone = %s",
            [written["email"], written["phone"]],
        ).fetchall()
        with pytest.raises(psycopg.Error):
            conn.execute(f"SELECT '{written['iban']}'::int")  # the error echoes the value
    with psycopg_session(audited, "agent", "agent-scan", application_name="scan-agent") as conn:
        conn.execute("SELECT full_name, email, phone FROM crm.customers LIMIT 20").fetchall()
        conn.execute("SELECT body FROM crm.support_tickets LIMIT 20").fetchall()
    with psycopg_session(audited, "dba", "dora", application_name="scan-dba") as conn:
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO crm.customers (id, full_name, email, phone, iban, birth_date,"
            " street_address, city, country, created_at, marketing_opt_in)"
            f" VALUES (900001, 'Mallory Private', '{written['email']}', %s, %s,"
            " '1980-01-01', '1 Hidden Lane', 'Nowhere', 'United Kingdom', now(), false)",
            [written["phone"], written["iban"]],
        )
        with pytest.raises(psycopg.errors.UniqueViolation):  # echoes the email in DETAIL
            conn.execute(
                "INSERT INTO crm.customers SELECT 900002, full_name, email, phone, iban,"
                " birth_date, street_address, city, country, created_at, marketing_opt_in"
                f" FROM crm.customers WHERE email = '{written['email']}'"
            )
        conn.execute("ROLLBACK")
    for application in ("scan-analyst", "scan-agent", "scan-dba"):
        wait_for_end(audited, application)
    forbidden = {
        form for value in [*_raw_values(pg_dsn), *written.values()] for form in _forms(value)
    }
    forbidden = {form for form in forbidden if len(form) >= 6}
    stored = b"".join(path.read_bytes() for path in audit_dir(audited).rglob("*") if path.is_file())
    assert stored, "the store holds the sessions above"
    found = sorted(form for form in forbidden if form in stored)
    assert found == []
    # What was kept instead: the pseudonyms of the values written, named and bound.
    key = audit_key(audited)
    named = {(row.identifier_type, row.pseudonym) for row in subject_rows(audited)}
    for kind in (IdentifierType.EMAIL, IdentifierType.PHONE, IdentifierType.IBAN):
        assert (kind, identifier_pseudonym(key, kind, written[kind.value])) in named


def test_personal_values_written_as_names_are_redacted(
    audited: GatewayProcess, pg_dsn: str
) -> None:
    """Attack round 20: an email scans as names and an operator, an IBAN is a valid name
    (of a savepoint, a cursor, an alias), and application_name is the client's to set."""
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        row = direct.execute("SELECT email, iban FROM crm.customers WHERE id = 110").fetchone()
    assert row is not None
    email, iban = row
    with psycopg_session(audited, "dba", "dora", application_name=email) as conn:
        with pytest.raises(psycopg.Error):
            conn.execute(f"SELECT {email}")
        conn.execute("BEGIN")
        conn.execute(f"SAVEPOINT {iban}")
        conn.execute(f'SELECT 1 AS "{iban}", 2 AS {iban}')
        conn.execute("ROLLBACK")
    wait_for_end(audited, recorded_application(email))
    stored = b"".join(path.read_bytes() for path in audit_dir(audited).rglob("*") if path.is_file())
    for value in (email, iban, iban.lower()):
        assert value.encode() not in stored


def recorded_application(name: str) -> str:
    from custos.audit.statements import recorded_text

    return recorded_text(name)


def test_a_subject_key_in_another_spelling_finds_the_same_subject(audited: GatewayProcess) -> None:
    """Attack round 20: `id = 231.0`, `'0241'`, `' 242 '` match customers 231, 241, 242.
    The last two are texts of one shape: each is read for its own value."""
    key = audit_key(audited)
    with psycopg_session(audited, "dba", "dora", application_name="spellings") as conn:
        for spelling in ("231.0", "'0241'", "' 242 '"):
            conn.execute(f"SELECT full_name FROM crm.customers WHERE id = {spelling}").fetchall()
    events = wait_for_end(audited, "spellings")
    outcomes = {o.event_id for _, o in statements_and_outcomes(events)}
    named = {
        row.pseudonym
        for row in subject_rows(audited)
        if row.event_id in outcomes and row.access.value == "named"
    }
    assert named == {subject_pseudonym(key, str(number)) for number in (231, 241, 242)}


def test_a_report_on_all_of_a_persons_identifiers_finds_a_read_by_id(
    audited: GatewayProcess, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack round 21: read by id, a person is not found by their email alone. Given both,
    the report by id shows the access, and the one by email lists the read among those that
    did not say whom they read (the result shows the person's values, no identifier)."""
    from custos.cli import main

    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        row = direct.execute("SELECT email FROM crm.customers WHERE id = 450").fetchone()
    assert row is not None
    with psycopg_session(audited, "analyst", "alice", application_name="by-id") as conn:
        conn.execute("SELECT full_name, birth_date FROM crm.customers WHERE id = 450").fetchall()
    (session,) = {event.session_id for event in wait_for_end(audited, "by-id")}
    arguments = ["audit", "subject", "--email", row[0], "--subject", "crm.customers:450"]
    arguments += ["--dir", str(audit_dir(audited)), "--policy", str(DEMO_POLICY), "--json"]
    arguments += ["--key-file", str(audited.directory / "audit.key")]
    assert main(arguments) == 0
    by_email, by_id = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert [a["access"] for a in by_id["accesses"] if a["session_id"] == session] == ["named"]
    assert [r["session_id"] for r in by_email["unidentified_reads"]].count(session) == 1
    assert row[0] not in json.dumps(by_id)
