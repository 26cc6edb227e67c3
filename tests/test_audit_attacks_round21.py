"""Adversarial probes of the audit trail (attack round 21): raw values the store keeps in
fields other than the statement text and in names the detectors miss, subjects returned
beside a named one, cursors fetched, and a store whose tampering `verify` does not name.

Each test asserts the README's claim; a failing one is a finding. This round's findings
are closed, but for three known limits, kept as strict expected failures: a person's name
written as names (nothing tells a name from a column's), the newest hours cut off with
their digests (the newest digest's hash, which `verify` prints, kept elsewhere shows it),
and a record of the hour not yet digested removed (nothing signs it yet).
"""

# ruff: noqa: F811, E501 - the fixture `audited`, imported, is redefined as an argument;
# probe statements are kept whole on one line, as sent

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
)
from gateway_fixtures import GatewayProcess, psycopg_session
from test_audit_attacks_round20 import customer, leaked, rows_of_outcome, stored_bytes, try_run
from test_audit_gateway import (  # noqa: F401  (the fixture)
    audit_dir,
    audit_key,
    audited,
    statements_and_outcomes,
    wait_for_end,
)

from custos.audit.chain import SessionChain
from custos.audit.digests import digest_path, write_digest
from custos.audit.events import EventType, IdentifierType, SubjectAccess
from custos.audit.local import LocalStore, segments
from custos.audit.pseudonyms import identifier_pseudonym, subject_pseudonym
from custos.cli import main


def two_word_customer(pg_dsn: str, start: int) -> dict[str, Any]:
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        row = direct.execute(
            "SELECT id FROM crm.customers WHERE id >= %s AND full_name ~ '^[A-Za-z]+ [A-Za-z]+$' ORDER BY id LIMIT 1",
            [start],
        ).fetchone()
    assert row is not None
    return customer(pg_dsn, row[0])


# --- 1. raw personal data never enters the store -----------------------------------------------


@pytest.mark.parametrize(
    ("number", "template"),
    [
        (301, "SELECT * FROM {iban_lower}"),  # the text redacts it; `relations` holds it?
        (302, 'SELECT * FROM "{email}"'),
        (303, "SELECT * FROM public.{iban_lower} WHERE false"),
        (304, "SELECT {iban_lower}()"),  # a function's name
        (305, "SET my.x = '{email}'"),
        (306, "PREPARE p{number} AS SELECT '{email}'"),
        (308, "DO $$BEGIN PERFORM '{email}'; END$$"),
        (309, "SELECT * FROM crm.{iban_lower}"),
        (310, "CREATE TEMP TABLE {iban_lower} (v int)"),
        (311, 'SELECT 1 FROM crm.customers AS "{email}" WHERE false'),
    ],
)
def test_no_field_keeps_a_name_that_is_a_value(
    audited: GatewayProcess, pg_dsn: str, number: int, template: str
) -> None:
    person = customer(pg_dsn, number)
    sql = template.format(email=person["email"], iban_lower=person["iban"].lower(), number=number)
    application = f"names-{number}"
    with psycopg_session(audited, "dba", "dora", application_name=application) as conn:
        conn.execute("BEGIN")
        try_run(conn, sql)
        conn.execute("ROLLBACK")
    wait_for_end(audited, application)
    assert leaked(audited, person["email"], person["iban"]) == []


@pytest.mark.parametrize(
    ("number", "template"),
    [
        (321, "SELECT {first} {last} FROM (SELECT 1 AS {first}) s"),  # a full name as names
        (322, "SELEC {first} {last}"),  # does not parse
        (323, "SAVEPOINT {first}_{last}"),
    ],
)
@pytest.mark.xfail(
    strict=True,
    reason="known limit: a name written as names reads as one; nothing tells them apart",
)
def test_a_full_name_written_as_names_is_not_kept(
    audited: GatewayProcess, pg_dsn: str, number: int, template: str
) -> None:
    person = two_word_customer(pg_dsn, number)
    first, last = person["full_name"].split(" ")
    application = f"full-name-{number}"
    with psycopg_session(audited, "dba", "dora", application_name=application) as conn:
        conn.execute("BEGIN")
        try_run(conn, template.format(first=first, last=last))
        conn.execute("ROLLBACK")
    wait_for_end(audited, application)
    stored = stored_bytes(audited).lower()
    assert f"{first} {last}".lower().encode() not in stored
    assert f"{first}_{last}".lower().encode() not in stored


@pytest.mark.parametrize(
    ("number", "template"),
    [
        (331, "SAVEPOINT p{digits}"),  # +44 7700 900123 as 447700900123
        (332, "SAVEPOINT p0{national}"),  # ... as 07700900123
        (333, "SAVEPOINT p_{spaced}"),  # ... as 44_7700_900123
        (334, "SELECT 1 AS tel{digits}"),
    ],
)
def test_a_phone_number_written_as_a_name_is_not_kept(
    audited: GatewayProcess, pg_dsn: str, number: int, template: str
) -> None:
    person = customer(pg_dsn, number)
    digits = re.sub(r"\D", "", person["phone"])
    national = digits.removeprefix("44")
    spaced = re.sub(r"[^\d]+", "_", person["phone"].lstrip("+"))
    application = f"phone-{number}"
    with psycopg_session(audited, "dba", "dora", application_name=application) as conn:
        conn.execute("BEGIN")
        try_run(conn, template.format(digits=digits, national=national, spaced=spaced))
        conn.execute("ROLLBACK")
    wait_for_end(audited, application)
    stored = stored_bytes(audited)
    assert national.encode() not in stored, person["phone"]


def test_copy_to_stdout_with_a_literal_keeps_no_raw_value(
    audited: GatewayProcess, pg_dsn: str
) -> None:
    person = customer(pg_dsn, 307)
    sql = f"COPY (SELECT id FROM crm.customers WHERE email = '{person['email']}') TO STDOUT"
    with (
        psycopg_session(audited, "dba", "dora", application_name="copy-out-literal") as conn,
        conn.cursor().copy(sql) as copy,
    ):
        assert list(copy.rows()) == [(str(person["id"]),)]
    wait_for_end(audited, "copy-out-literal")
    assert leaked(audited, person["email"]) == []


def test_token_labels_keep_no_raw_value(audited: GatewayProcess, pg_dsn: str) -> None:
    person = customer(pg_dsn, 340)
    token = audited.issuer.mint(
        "dba",
        "dora",
        groups=["dba"],
        extra_claims={"run_id": f"run {person['email']} {person['iban'].lower()}"},
    )
    with psycopg.connect(audited.dsn("dba", token, application_name="labelled")) as conn:
        conn.execute("SELECT 1").fetchall()
    wait_for_end(audited, "labelled")
    assert leaked(audited, person["email"], person["iban"]) == []


@pytest.mark.parametrize("field", ["user", "dbname"])
def test_a_refused_login_keeps_no_raw_value_of_its_startup(
    audited: GatewayProcess, pg_dsn: str, field: str
) -> None:
    import time

    person = customer(pg_dsn, 350 if field == "user" else 351)
    params = {"user": "dba", "dbname": audited.database, "application_name": f"login-{field}"}
    params[field] = person["email"]
    token = audited.token("dba", "dora", groups=["dba"])
    dsn = audited.dsn("dba", token)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, **params).close()
    time.sleep(1)
    assert leaked(audited, person["email"]) == []


# --- 2. every statement the database runs has its event -----------------------------------------


def test_an_execute_flushed_without_sync_has_its_event(
    audited: GatewayProcess, pg_dsn: str
) -> None:
    """A sequence advances whether or not the transaction commits: evidence it ran."""
    from test_audit_attacks_round20 import _bind, _execute, _parse, _raw_session
    from wire import frontend_message

    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        direct.execute("DROP SEQUENCE IF EXISTS public.audit_probe_seq")
        direct.execute("CREATE SEQUENCE public.audit_probe_seq")
        direct.execute("GRANT ALL ON public.audit_probe_seq TO PUBLIC")
    client = _raw_session(audited, "flushed")
    client.send(
        _parse(b"", "SELECT nextval('public.audit_probe_seq')")
        + _bind(b"", b"")
        + _execute(b"")
        + frontend_message(b"H")
    )
    client.read_until("C")
    client.send(frontend_message(b"X"))
    client.close()
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        ran = direct.execute("SELECT last_value, is_called FROM public.audit_probe_seq").fetchone()
    assert ran == (1, True)
    texts = [
        e.statement for e in wait_for_end(audited, "flushed") if e.event_type is EventType.STATEMENT
    ]
    assert any(t and "nextval" in t for t in texts), texts


# --- 3. the data-subject index ------------------------------------------------------------------


def customers_returned(pg_dsn: str, sql: str) -> list[int]:
    """The ids of the customers whose values the statement returns (asked directly)."""
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        return [row[0] for row in direct.execute(sql).fetchall()]


BESIDE_PROBES = [
    # (number, the statement, the ids of the customers whose email it returns)
    (
        401,
        "SELECT lower(email) FROM crm.customers WHERE id <> {id} ORDER BY id LIMIT 3",
        "SELECT id FROM crm.customers WHERE id <> {id} ORDER BY id LIMIT 3",
    ),
    (
        402,
        "SELECT lower(email) FROM crm.customers WHERE id = {id} OR id < 4 ORDER BY id",
        "SELECT id FROM crm.customers WHERE id = {id} OR id < 4 ORDER BY id",
    ),
    (
        403,
        "SELECT c.id, (SELECT lower(d.email) FROM crm.customers d WHERE d.id = c.id + 1) FROM crm.customers c WHERE c.id = {id}",
        "SELECT {id} + 1",
    ),
    (
        404,
        "SELECT id, lead(lower(email)) OVER (ORDER BY id) FROM crm.customers WHERE id IN ({id}, {id} + 1)",
        "SELECT {id} + 1",
    ),
]


@pytest.mark.parametrize(("number", "template", "returned"), BESIDE_PROBES)
def test_subjects_returned_beside_a_named_one_are_indexed(
    audited: GatewayProcess, pg_dsn: str, number: int, template: str, returned: str
) -> None:
    person = customer(pg_dsn, number)
    sql = template.format(id=person["id"])
    others = [
        i for i in customers_returned(pg_dsn, returned.format(id=person["id"])) if i != person["id"]
    ]
    application = f"beside-{number}"
    with psycopg_session(audited, "dba", "dora", application_name=application) as conn:
        conn.execute(sql).fetchall()
    ((_, outcome),) = statements_and_outcomes(wait_for_end(audited, application))
    key = audit_key(audited)
    indexed = {r.pseudonym for r in rows_of_outcome(audited, outcome)}
    missing = [i for i in others if subject_pseudonym(key, str(i)) not in indexed]
    emails = [customer(pg_dsn, i)["email"] for i in missing]
    missing = [
        i
        for i, e in zip(missing, emails, strict=True)
        if identifier_pseudonym(key, IdentifierType.EMAIL, e) not in indexed
    ]
    assert not missing or "crm.customers" in outcome.unidentified, (missing, outcome)


def test_a_cursor_fetched_in_steps_indexes_whom_each_fetch_returned(
    audited: GatewayProcess, pg_dsn: str
) -> None:
    person = customer(pg_dsn, 410)
    with psycopg_session(audited, "analyst", "alice", application_name="fetching") as conn:
        conn.execute("BEGIN")
        conn.execute(
            f"DECLARE c CURSOR FOR SELECT id, email FROM crm.customers WHERE id >= {person['id']} ORDER BY id"
        )
        first = conn.execute("FETCH 2 FROM c").fetchall()
        second = conn.execute("FETCH 2 FROM c").fetchall()
        conn.execute("COMMIT")
    assert [r[0] for r in first + second] == [person["id"] + n for n in range(4)]
    key = audit_key(audited)
    pairs = statements_and_outcomes(wait_for_end(audited, "fetching"))
    fetches = [(s, o) for s, o in pairs if s.statement and s.statement.startswith("FETCH")]
    assert len(fetches) == 2
    for (_, outcome), rows in zip(fetches, (first, second), strict=True):
        indexed = {r.pseudonym for r in rows_of_outcome(audited, outcome)}
        wanted = {subject_pseudonym(key, str(r[0])) for r in rows}
        assert wanted <= indexed or "crm.customers" in outcome.unidentified, (outcome, indexed)


def test_a_view_over_customers_is_indexed_or_unidentified(
    audited: GatewayProcess, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        direct.execute("DROP VIEW IF EXISTS public.audit_probe_people")
        direct.execute(
            "CREATE VIEW public.audit_probe_people AS SELECT id AS who, email AS mail FROM crm.customers"
        )
        direct.execute("GRANT SELECT ON public.audit_probe_people TO PUBLIC")
    person = customer(pg_dsn, 420)
    with psycopg_session(audited, "dba", "dora", application_name="viewing") as conn:
        rows = conn.execute(
            f"SELECT who, mail FROM public.audit_probe_people WHERE who >= {person['id']} ORDER BY who LIMIT 2"
        ).fetchall()
    assert rows
    assert rows[0][0] == person["id"]
    ((_, outcome),) = statements_and_outcomes(wait_for_end(audited, "viewing"))
    key = audit_key(audited)
    indexed = {r.pseudonym for r in rows_of_outcome(audited, outcome)}
    wanted = {subject_pseudonym(key, str(r[0])) for r in rows}
    assert wanted <= indexed or outcome.unidentified, (outcome, indexed)


def test_update_returning_in_binary_is_indexed(audited: GatewayProcess, pg_dsn: str) -> None:
    person = customer(pg_dsn, 430)
    with psycopg_session(audited, "dba", "dora", application_name="returning") as conn:
        conn.execute("BEGIN")
        cursor = conn.cursor(binary=True)
        rows = cursor.execute(
            "UPDATE crm.customers SET city = city WHERE id BETWEEN %s AND %s RETURNING id::numeric, email::varchar(200)",
            [person["id"], person["id"] + 1],
        ).fetchall()
        conn.execute("ROLLBACK")
    assert len(rows) == 2
    pairs = statements_and_outcomes(wait_for_end(audited, "returning"))
    ((_, outcome),) = [(s, o) for s, o in pairs if s.statement and s.statement.startswith("UPDATE")]
    key = audit_key(audited)
    indexed = {r.pseudonym for r in rows_of_outcome(audited, outcome)}
    wanted = {subject_pseudonym(key, str(person["id"] + n)) for n in range(2)}
    assert wanted <= indexed or "crm.customers" in outcome.unidentified, (outcome, indexed)


def test_the_report_by_email_finds_an_access_by_id(
    audited: GatewayProcess, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An Art. 15 request gives an email; the analyst read the person by id."""
    import json

    person = customer(pg_dsn, 450)
    with psycopg_session(audited, "analyst", "alice", application_name="by-id") as conn:
        conn.execute(
            "SELECT full_name, birth_date FROM crm.customers WHERE id = %s", [person["id"]]
        ).fetchall()
    events = wait_for_end(audited, "by-id")
    session = events[0].session_id
    capsys.readouterr()
    assert main(
        ["audit", "subject", "--dir", str(audit_dir(audited)), "--email", person["email"],
         "--key-file", str(audited.directory / "audit.key"), "--policy",
         str(Path(__file__).resolve().parent.parent / "custos" / "demo" / "policy.yaml"), "--json"]
    ) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    sessions = {a["session_id"] for a in report["accesses"]} | {
        r["session_id"] for r in report["unidentified_reads"]
    }
    assert session in sessions, report


# --- 4. verify names what was changed or removed ----------------------------------------------

HOUR = datetime(2026, 12, 6, 9, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()


def _store(root: Path) -> Path:
    """Three hours, each with one whole session and a subject row; each hour digested."""
    writer = LocalStore(root)
    for hour in range(3):
        chain = SessionChain(f"s-{hour}")
        moment = HOUR + timedelta(hours=hour, minutes=5)
        events = [
            chain.sealed(event_id=f"e-{hour}-0", event_type=EventType.SESSION_START, time=moment),
            chain.sealed(
                event_id=f"e-{hour}-1",
                event_type=EventType.STATEMENT,
                time=moment,
                statement_number=1,
                statement="DELETE FROM crm.customers WHERE id = ?",
            ),
            chain.sealed(event_id=f"e-{hour}-2", event_type=EventType.SESSION_END, time=moment),
        ]
        writer.append(events)
    writer.close()
    for hour in range(3):
        write_digest(root, HOUR + timedelta(hours=hour), KEY)
    return root


def _verify(root: Path, tmp_path: Path) -> int:
    public = tmp_path / "digest.pub.pem"
    public.write_bytes(
        KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return main(["audit", "verify", "--dir", str(root), "--public-key", str(public)])


def test_an_untouched_store_verifies(tmp_path: Path) -> None:
    assert _verify(_store(tmp_path / "audit"), tmp_path) == 0


@pytest.mark.xfail(
    strict=True,
    reason="known limit: shown by the newest digest's hash (verify prints it) kept elsewhere",
)
def test_the_newest_hour_removed_with_its_digest_is_named(tmp_path: Path) -> None:
    root = _store(tmp_path / "audit")
    last = HOUR + timedelta(hours=2)
    digest_path(root, last).unlink()
    for segment in segments(root):
        if f"hour={last:%H}" in segment.as_posix():
            segment.unlink()
    assert _verify(root, tmp_path) == 1


def test_the_oldest_hour_removed_with_its_digest_is_named(tmp_path: Path) -> None:
    root = _store(tmp_path / "audit")
    digest_path(root, HOUR).unlink()
    for segment in segments(root):
        if f"hour={HOUR:%H}" in segment.as_posix():
            segment.unlink()
    assert _verify(root, tmp_path) == 1


def test_every_digest_removed_and_an_event_rewritten_is_named(tmp_path: Path) -> None:
    """The chain is a plain hash chain: who can write the store can recompute it."""
    root = _store(tmp_path / "audit")
    shutil.rmtree(root / "digests")
    first = segments(root)[0]
    lines = first.read_bytes().splitlines()
    from custos.audit.events import AuditEvent

    events = [AuditEvent.model_validate_json(line) for line in lines]
    chain = SessionChain(events[0].session_id)
    rewritten = []
    for event in events:
        fields = event.model_dump(exclude={"session_id", "seq", "prev_hash", "hash"})
        if fields.get("statement"):
            fields["statement"] = "SELECT ?"  # the DELETE, hidden
        rewritten.append(chain.sealed(**fields).model_dump_json().encode())
    first.write_bytes(b"\n".join(rewritten) + b"\n")
    assert _verify(root, tmp_path) == 1


@pytest.mark.xfail(strict=True, reason="known limit: an hour's records are signed once it is over")
def test_a_subject_row_of_the_current_hour_removed_is_named(
    audited: GatewayProcess, pg_dsn: str, tmp_path: Path
) -> None:
    """Subject rows are not chained; the current hour has no digest yet."""
    person = customer(pg_dsn, 440)
    with psycopg_session(audited, "analyst", "alice", application_name="unindex") as conn:
        conn.execute("SELECT id FROM crm.customers WHERE id = %s", [person["id"]]).fetchall()
    ((_, outcome),) = statements_and_outcomes(wait_for_end(audited, "unindex"))
    assert rows_of_outcome(audited, outcome)
    copy = tmp_path / "copy"
    shutil.copytree(audit_dir(audited), copy)
    for path in copy.rglob("segment-*.jsonl"):
        if "subject_access" not in path.as_posix():
            continue
        kept = [
            line
            for line in path.read_bytes().splitlines()
            if SubjectAccess.model_validate_json(line).event_id != outcome.event_id
        ]
        path.write_bytes(b"".join(line + b"\n" for line in kept))
    assert main(["audit", "verify", "--dir", str(copy)]) == 1


def test_query_reads_nothing_but_the_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("a file beside the archive, not of it\n")
    root = _store(tmp_path / "audit")
    capsys.readouterr()
    code = main(["audit", "query", "--dir", str(root), f"SELECT * FROM read_text('{outside}')"])
    printed = capsys.readouterr().out
    assert code != 0 or "beside the archive" not in printed, printed
