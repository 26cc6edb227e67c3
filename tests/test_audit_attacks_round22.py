"""Adversarial probes of the audit trail (attack round 22): `keep_literals` over statements
that reach personal tables indirectly, retention tombstones and digests, `custos audit
query` beyond reading the archive, and the data-subject index in binary results.

Each test asserts the README's claim; a failing one is a finding. The round's findings
are closed (files beside the segments, hours spelt another way, an endless query,
literals of code the analysis does not see into), but for two kept as strict expected
failures: a rule (CREATE RULE) the analysis does not follow, and a gateway started
again that signs on from the digests left.
"""

# ruff: noqa: F811, E501 - fixtures imported are redefined as arguments;
# probe statements are kept whole on one line, as sent

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from gateway_fixtures import GatewayProcess, psycopg_session
from test_audit_attacks_round20 import customer, leaked, try_run
from test_audit_attacks_round21 import HOUR, KEY, _store, _verify
from test_audit_durability import audited_gateway
from test_audit_gateway import (  # noqa: F401  (the fixture)
    audit_dir,
    audit_key,
    audited,
    statements_and_outcomes,
    subject_rows,
    wait_for_end,
)

from custos.audit.chain import SessionChain
from custos.audit.digest_schedule import DigestSchedule
from custos.audit.digests import digest_path, tombstone_path
from custos.audit.events import EventType, IdentifierType, SubjectAccess
from custos.audit.local import segments
from custos.audit.pseudonyms import identifier_pseudonym, subject_pseudonym
from custos.audit.query import run_query
from custos.audit.retention import expire_hours
from custos.cli import main
from custos.demo.postgres import PostgresServer

# --- 1. keep_literals keeps no personal value of a statement over personal data ------------


@pytest.fixture(scope="module")
def literal_keeper(
    pg: PostgresServer,
    gateway: GatewayProcess,
    pg_dsn: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        direct.execute(
            "CREATE OR REPLACE VIEW public.probe22_v AS SELECT id, full_name, email FROM crm.customers"
        )
        direct.execute(
            "CREATE OR REPLACE FUNCTION public.probe22_f(text) RETURNS bigint LANGUAGE sql AS 'SELECT id FROM crm.customers WHERE full_name = $1'"
        )
        direct.execute("GRANT SELECT ON public.probe22_v TO PUBLIC")
        direct.execute("DROP TABLE IF EXISTS public.probe22_t")
        direct.execute("CREATE TABLE public.probe22_t (id int, v text)")
        direct.execute(
            "CREATE RULE probe22_r AS ON INSERT TO public.probe22_t DO ALSO SELECT id, email FROM crm.customers WHERE full_name = NEW.v"
        )
        direct.execute("GRANT ALL ON public.probe22_t TO PUBLIC")
    running = audited_gateway(
        tmp_path_factory.mktemp("literals22"), pg, gateway.upstream_dsn, keep_literals=True
    )
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("number", "statements"),
    [
        (501, ["SELECT id FROM crm.customers WHERE full_name = '{name}'"]),  # the baseline
        (502, ["SELECT id FROM public.probe22_v WHERE full_name = '{name}'"]),
        (503, ["SELECT public.probe22_f('{name}')"]),
        (504, ["DO $$BEGIN PERFORM 1 FROM crm.customers WHERE full_name = '{name}'; END$$"]),
        (
            505,
            [
                "PREPARE p505 AS SELECT id FROM crm.customers WHERE full_name = $1",
                "EXECUTE p505('{name}')",
            ],
        ),
        (
            506,
            [
                "WITH c AS (SELECT id FROM crm.customers WHERE full_name = '{name}') SELECT count(*) FROM c"
            ],
        ),
        (507, ["SELECT (SELECT id FROM crm.customers WHERE full_name = '{name}')"]),
        (
            508,
            [
                "BEGIN",
                "DECLARE c508 CURSOR FOR SELECT id FROM crm.customers WHERE full_name = '{name}'",
                "FETCH ALL FROM c508",
                "COMMIT",
            ],
        ),
        (509, ["SELECT id FROM public.probe22_v WHERE email = '{local}' || '@' || '{domain}'"]),
        (
            510,
            [
                "SELECT * FROM crm.customers c WHERE c.full_name = '{name}' UNION SELECT * FROM crm.customers WHERE false"
            ],
        ),
        (511, ["EXPLAIN SELECT id FROM crm.customers WHERE full_name = '{name}'"]),
        (
            512,
            [
                "PREPARE p512 AS SELECT id FROM crm.customers WHERE full_name = '{name}'",
                "EXECUTE p512",
            ],
        ),
        (513, ["CREATE TEMP VIEW t513 AS SELECT id FROM crm.customers WHERE full_name = '{name}'"]),
        (514, ["SELECT id FROM crm.customers WHERE full_name = '{name}' AND"]),  # does not parse
        (515, ["UPDATE public.probe22_v SET email = email WHERE full_name = '{name}'"]),
        (516, ["SELECT id FROM crm.customers WHERE full_name = '{name}'; SELECT 1"]),
        (517, ["SELECT * FROM public.probe22_f('{name}')"]),
        (
            518,
            [
                "SELECT query_to_xml('SELECT id FROM crm.customers WHERE full_name = ''{name}''', true, true, '')"
            ],
        ),
        (519, ["SELECT id FROM crm.customers WHERE full_name = '{name}' FOR UPDATE"]),
        (
            521,
            [
                "DO LANGUAGE plpgsql $$BEGIN RAISE NOTICE '%', (SELECT count(*) FROM public.probe22_v WHERE full_name = '{name}'); END$$"
            ],
        ),
        pytest.param(
            524,
            ["BEGIN", "INSERT INTO public.probe22_t VALUES (1, '{name}')", "ROLLBACK"],
            marks=pytest.mark.xfail(
                strict=True,
                reason="known gap: the analysis does not follow rules (CREATE RULE), so a"
                " rule's read of crm.customers is not seen (noted for the policy)",
            ),
        ),  # a rule reads crm.customers
        (522, ["SELECT id FROM crm.support_tickets WHERE body LIKE '%{name}%'"]),
        (
            523,
            [
                "INSERT INTO crm.support_tickets (customer_id, body) SELECT id, '{name}' FROM crm.customers WHERE false"
            ],
        ),
    ],
)
def test_keep_literals_keeps_no_value_of_a_statement_over_personal_data(
    literal_keeper: GatewayProcess, pg_dsn: str, number: int, statements: list[str]
) -> None:
    person = customer(pg_dsn, number)
    local, _, domain = person["email"].partition("@")
    application = f"literals-{number}"
    with psycopg_session(literal_keeper, "dba", "dora", application_name=application) as conn:
        for statement in statements:
            try_run(conn, statement.format(name=person["full_name"], local=local, domain=domain))
    time.sleep(0.5)
    assert leaked(literal_keeper, person["full_name"], local) == []


def test_keep_literals_copy_out_keeps_no_value(literal_keeper: GatewayProcess, pg_dsn: str) -> None:
    person = customer(pg_dsn, 520)
    sql = f"COPY (SELECT id FROM public.probe22_v WHERE full_name = '{person['full_name']}') TO STDOUT"
    with (
        psycopg_session(literal_keeper, "dba", "dora", application_name="literals-520") as conn,
        conn.cursor().copy(sql) as copy,
    ):
        for _ in copy:
            pass
    time.sleep(0.5)
    assert leaked(literal_keeper, person["full_name"]) == []


# --- 2. verify names records added, removed or changed without the digest key ------------


def _forged_session(session_id: str, moment: datetime) -> bytes:
    chain = SessionChain(session_id)
    events = [
        chain.sealed(
            event_id=f"{session_id}-0",
            event_type=EventType.SESSION_START,
            time=moment,
            role="analyst",
            subject="bob",
        ),
        chain.sealed(
            event_id=f"{session_id}-1",
            event_type=EventType.STATEMENT,
            time=moment,
            statement_number=1,
            statement="SELECT ? FROM crm.customers",
            role="analyst",
            subject="bob",
        ),
        chain.sealed(
            event_id=f"{session_id}-2",
            event_type=EventType.SESSION_END,
            time=moment,
            role="analyst",
            subject="bob",
        ),
    ]
    return b"".join(event.model_dump_json().encode() + b"\n" for event in events)


def _forged_subject_row(moment: datetime) -> bytes:
    row = SubjectAccess(
        event_id="forged-1",
        session_id="forged",
        statement_number=1,
        time=moment,
        role="analyst",
        principal="bob",
        identifier_type=IdentifierType.SUBJECT,
        pseudonym=subject_pseudonym(b"k" * 32, "42"),
        relation="crm.customers",
        access="returned",
    )
    return row.model_dump_json().encode() + b"\n"


@pytest.mark.parametrize(
    "where",
    [
        "events/dt=2026-12-06/hour=10/forged.jsonl",  # read by query, not by verify
        "events/dt=20261206/hour=10/segment-00000000000000000001-forged.jsonl",  # the same hour, spelt otherwise
        "events/dt=2026-W49-7/hour=10/segment-00000000000000000001-forged.jsonl",
    ],
)
def test_a_session_added_to_a_digested_hour_is_named(tmp_path: Path, where: str) -> None:
    root = _store(tmp_path / "audit")
    forged = root / where
    forged.parent.mkdir(parents=True, exist_ok=True)
    forged.write_bytes(_forged_session("forged", HOUR + timedelta(hours=1, minutes=7)))
    shown = run_query(root, "SELECT count(*) FROM custos_audit.events WHERE session_id = 'forged'")
    assert shown.rows == [(0,)]  # no reader counts it
    assert _verify(root, tmp_path) == 1


@pytest.mark.parametrize(
    "where",
    [
        "subject_access/dt=2026-12-06/hour=10/extra.jsonl",
        "subject_access/dt=20261206/hour=10/segment-00000000000000000001-forged.jsonl",
    ],
)
def test_a_subject_row_added_to_a_digested_hour_is_named(tmp_path: Path, where: str) -> None:
    root = _store(tmp_path / "audit")
    forged = root / where
    forged.parent.mkdir(parents=True, exist_ok=True)
    forged.write_bytes(_forged_subject_row(HOUR + timedelta(hours=1, minutes=7)))
    shown = run_query(
        root, "SELECT count(*) FROM custos_audit.subject_access WHERE session_id = 'forged'"
    )
    assert shown.rows == [(0,)]  # no reader counts it
    assert _verify(root, tmp_path) == 1


def _expired_first_hour(root: Path) -> None:
    assert expire_hours(root, KEY, HOUR + timedelta(hours=1)) == [HOUR]


def test_an_expired_store_verifies(tmp_path: Path) -> None:
    root = _store(tmp_path / "audit")
    _expired_first_hour(root)
    assert _verify(root, tmp_path) == 0


def test_a_tombstone_copied_to_another_hour_is_named(tmp_path: Path) -> None:
    root = _store(tmp_path / "audit")
    _expired_first_hour(root)
    second = HOUR + timedelta(hours=1)
    tombstone_path(root, second).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tombstone_path(root, HOUR), tombstone_path(root, second))
    for segment in [*segments(root), *segments(root, "subject_access")]:
        if "hour=10" in segment.as_posix():
            segment.unlink()
    assert _verify(root, tmp_path) == 1


def test_a_digest_swapped_under_a_tombstone_is_named(tmp_path: Path) -> None:
    root = _store(tmp_path / "audit")
    _expired_first_hour(root)
    shutil.copy(digest_path(root, HOUR + timedelta(hours=1)), digest_path(root, HOUR))
    assert _verify(root, tmp_path) == 1


def test_a_segment_moved_to_an_expired_hour_is_named(tmp_path: Path) -> None:
    root = _store(tmp_path / "audit")
    _expired_first_hour(root)
    (moved,) = [s for s in segments(root) if "hour=10" in s.as_posix()]
    target = root / "events/dt=2026-12-06/hour=09" / moved.name
    target.parent.mkdir(parents=True, exist_ok=True)
    moved.rename(target)
    assert _verify(root, tmp_path) == 1


def test_an_hour_folder_renamed_is_named(tmp_path: Path) -> None:
    root = _store(tmp_path / "audit")
    (root / "events/dt=20261206").mkdir()
    (root / "events/dt=2026-12-06/hour=10").rename(root / "events/dt=20261206/hour=10")
    assert _verify(root, tmp_path) == 1


@pytest.mark.xfail(
    strict=True,
    reason="known limit: a gateway started again signs on from the digests left; only the"
    " newest digest's hash kept elsewhere shows it (within a run, the schedule refuses:"
    " test_audit_digest_schedule.py)",
)
def test_digests_removed_and_records_rewritten_are_not_resigned(tmp_path: Path) -> None:
    """Who can write the store removes the digests from an hour on and changes that hour's
    records; the gateway's schedule signs the hours again, as they now are."""
    root = _store(tmp_path / "audit")
    for hour in (1, 2):
        shutil.rmtree(digest_path(root, HOUR + timedelta(hours=hour)).parent)
    (second,) = [s for s in segments(root) if "hour=10" in s.as_posix()]
    second.unlink()  # the DELETE of hour 10, gone
    now = datetime.now(UTC)
    DigestSchedule(root, KEY, started=now).hourly(now)  # a gateway started again
    assert _verify(root, tmp_path) == 1


# --- 3. custos audit query reads the archive and ends -----------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
        "SELECT count(*) FROM UNNEST(sequence(1, 100000000000)) AS t(n)",
    ],
)
def test_a_query_that_never_ends_is_stopped(tmp_path: Path, sql: str) -> None:
    root = _store(tmp_path / "audit")
    command = [
        sys.executable,
        "-c",
        "import sys; from custos.cli import main; sys.exit(main(sys.argv[1:]))",
        "audit",
        "query",
        "--dir",
        str(root),
        "--timeout",
        "5",
        sql,
    ]
    started = time.monotonic()
    try:
        subprocess.run(command, capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {time.monotonic() - started:.0f} s: {sql}")


# --- 4. the data-subject index, binary results -------------------------------------------


@pytest.mark.parametrize(
    ("number", "sql"),
    [
        (
            601,
            "SELECT email FROM crm.customers WHERE id = {id} UNION SELECT 'nobody@example.invalid'",
        ),
        (602, "SELECT to_jsonb(c) FROM crm.customers c WHERE id = {id}"),
        (603, "SELECT json_build_object('e', email) FROM crm.customers WHERE id = {id}"),
        (604, "SELECT jsonb_agg(email) FROM crm.customers WHERE id BETWEEN {id} AND {id}"),
        (605, "SELECT ARRAY[email] FROM crm.customers WHERE id > {id} - 1 AND id < {id} + 1"),
        (606, "SELECT ROW(id, email) FROM crm.customers WHERE id > {id} - 1 AND id < {id} + 1"),
        (607, "SELECT email::bytea FROM crm.customers WHERE id > {id} - 1 AND id < {id} + 1"),
        (608, "SELECT id::text::bytea FROM crm.customers WHERE id > {id} - 1 AND id < {id} + 1"),
        (609, "SELECT email FROM public.probe22_v WHERE id > {id} - 1 AND id < {id} + 1"),
        (
            610,
            "SELECT row_to_json(v) FROM public.probe22_v v WHERE id > {id} - 1 AND id < {id} + 1",
        ),
        (
            611,
            "SELECT email FROM crm.customers WHERE id = {id} UNION ALL SELECT email FROM public.probe22_v WHERE false",
        ),
        (612, "SELECT (SELECT email FROM crm.customers WHERE id > {id} - 1 AND id < {id} + 1)"),
        (
            613,
            "SELECT jsonb_path_query(to_jsonb(c), '$.email') FROM crm.customers c WHERE id > {id} - 1 AND id < {id} + 1",
        ),
        (
            614,
            "SELECT json_agg(o) FROM (SELECT customer_id FROM crm.orders WHERE customer_id > {id} - 1 AND customer_id < {id} + 1) o",
        ),
        (
            615,
            "SELECT x FROM public.probe22_v v, LATERAL (VALUES (v.email)) AS t(x) WHERE v.id > {id} - 1 AND v.id < {id} + 1",
        ),
        (
            616,
            "SELECT jsonb_each_text(to_jsonb(c)) FROM crm.customers c WHERE id > {id} - 1 AND id < {id} + 1",
        ),
        (
            617,
            "SELECT string_to_array(email, '') FROM public.probe22_v WHERE id > {id} - 1 AND id < {id} + 1",
        ),
    ],
)
def test_a_binary_result_is_indexed_or_unidentified(
    audited: GatewayProcess, pg_dsn: str, number: int, sql: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        direct.execute(
            "CREATE OR REPLACE VIEW public.probe22_v AS SELECT id, full_name, email FROM crm.customers"
        )
        direct.execute("GRANT SELECT ON public.probe22_v TO PUBLIC")
    person = customer(pg_dsn, number)
    application = f"binary22-{number}"
    with psycopg_session(audited, "dba", "dora", application_name=application) as conn:
        conn.execute(sql.format(id=person["id"]), binary=True).fetchall()
    ((_, outcome),) = statements_and_outcomes(wait_for_end(audited, application))
    key = audit_key(audited)
    wanted = {
        subject_pseudonym(key, str(person["id"])),
        identifier_pseudonym(key, IdentifierType.EMAIL, person["email"]),
    }
    rows = [r for r in subject_rows(audited) if r.event_id == outcome.event_id]
    read = {"crm.customers", "crm.orders"}
    assert {r.pseudonym for r in rows} & wanted or read & set(outcome.unidentified or ()), (
        rows,
        outcome,
    )


def test_an_unchained_event_in_a_file_verify_does_not_read_is_named(tmp_path: Path) -> None:
    """`custos audit query`, `subject`, `replay` and `export` read every `*.jsonl` of an
    hour's folder; `verify` reads `segment-*` files only."""
    root = _store(tmp_path / "audit")
    first = segments(root)[0].read_bytes().splitlines()[1]
    event = json.loads(first)
    event.update(statement="SELECT ? FROM crm.orders", hash="0" * 64, session_id="unchained", seq=7)
    forged = root / "events/dt=2026-12-06/hour=10/notes.jsonl"
    forged.write_bytes(json.dumps(event).encode() + b"\n")
    shown = run_query(
        root, "SELECT statement FROM custos_audit.events WHERE session_id = 'unchained'"
    )
    assert shown.rows == []  # no reader counts it
    assert main(["audit", "verify", "--dir", str(root)]) == 1
