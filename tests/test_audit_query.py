"""`custos audit query`: Athena's SQL over the local store, and every named query run on a
generated archive (tests/audit_archive.py) whose answers are known."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from audit_archive import ANN_EMAIL_PSEUDONYM, ANN_SUBJECT_PSEUDONYM, write_archive

from custos.audit.query import named_queries
from custos.cli import main

PERIOD = ["2026-03-01T00:00:00Z", "2026-03-03T00:00:00Z"]
FIRST_DAY = ["2026-03-01T00:00:00Z", "2026-03-01T23:59:59Z"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    write_archive(root)
    return root


def query(capsys: pytest.CaptureFixture[str], root: Path, sql: str, *params: str) -> list[Any]:
    arguments = ["audit", "query", sql, "--dir", str(root), "--json"]
    for param in params:
        arguments += ["--param", param]
    assert main(arguments) == 0, capsys.readouterr().err
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def named(capsys: pytest.CaptureFixture[str], root: Path, name: str, *params: str) -> list[Any]:
    return query(capsys, root, named_queries()[name].sql, *params)


def test_every_named_query_has_its_header_and_a_test_here() -> None:
    tested = {
        "subject-accesses",
        "principal-statements",
        "refused-statements",
        "approvals",
        "masking-by-category",
        "article-30-summary",
    }
    queries = named_queries()
    assert set(queries) == tested
    for found in queries.values():
        assert found.description
        # The parameters the header names, one per `?` (what is in parentheses explains).
        named_parameters = re.sub(r"\([^)]*\)", "", found.parameters).split(",")
        assert found.sql.count("?") == len(named_parameters), found.name


def test_every_access_to_one_subject(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    rows = named(capsys, archive, "subject-accesses", ANN_SUBJECT_PSEUDONYM)
    assert [
        (
            row["time"],
            row["session_id"],
            row["statement_number"],
            row["role"],
            row["principal"],
            row["columns"],
            row["access"],
            row["masked"],
            row["deciding_rule"],
            row["approval_id"],
        )
        for row in rows
    ] == [
        (
            "2026-03-01T10:00:02Z",
            "s-analyst",
            1,
            "analyst",
            "alice@corp.example",
            ["email", "name"],
            "returned",
            True,
            "mask-contact",
            None,
        ),
        (
            "2026-03-01T11:30:04Z",
            "s-support",
            1,
            "support",
            "bob@corp.example",
            [],
            "named",
            False,
            "approve-writes",
            "appr-1",
        ),
        (
            "2026-03-01T11:30:06Z",
            "s-support",
            2,
            "support",
            "bob@corp.example",
            ["phone"],
            "returned",
            False,
            "support-reads",
            None,
        ),
    ]
    assert rows[0]["statement"] == "SELECT email, name FROM crm.customers WHERE id = ?"


def test_accesses_by_email_include_the_gzipped_day(
    capsys: pytest.CaptureFixture[str], archive: Path
) -> None:
    rows = named(capsys, archive, "subject-accesses", ANN_EMAIL_PSEUDONYM)
    assert [(row["session_id"], row["access"], row["masked"]) for row in rows] == [
        ("s-analyst", "returned", True),
        ("s-later", "named", False),
        ("s-later", "returned", True),
    ]
    assert named(capsys, archive, "subject-accesses", "0" * 64) == []


def test_every_statement_by_a_principal_in_a_period(
    capsys: pytest.CaptureFixture[str], archive: Path
) -> None:
    rows = named(capsys, archive, "principal-statements", "alice@corp.example", *FIRST_DAY)
    assert [
        (row["session_id"], row["statement_number"], row["decision"], row["status"], row["rows"])
        for row in rows
    ] == [
        ("s-analyst", 1, "mask", "completed", 1),
        ("s-analyst", 2, "allow", "completed", 1),
        ("s-analyst", 3, "deny", "refused", None),
    ]
    whole = named(capsys, archive, "principal-statements", "alice@corp.example", *PERIOD)
    assert [row["session_id"] for row in whole] == ["s-analyst"] * 3 + ["s-later"]
    bob = named(capsys, archive, "principal-statements", "bob@corp.example", *PERIOD)
    assert [row["statement_number"] for row in bob] == [1, 2, 3]


def test_refused_statements_newest_first(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    rows = named(capsys, archive, "refused-statements", *PERIOD)
    assert [
        (
            row["session_id"],
            row["statement_number"],
            row["deciding_rule"],
            row["sqlstate"],
            row["error"],
        )
        for row in rows
    ] == [
        ("s-support", 3, "approve-writes", "42501", "approval appr-2 rejected"),
        ("s-analyst", 3, "no-deletes", "42501", "refused by rule no-deletes"),
    ]
    assert named(capsys, archive, "refused-statements", *["2026-03-02T00:00:00Z"] * 2) == []


def test_approvals_and_who_decided(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    rows = named(capsys, archive, "approvals", *PERIOD)
    assert rows == [
        {
            "approval_id": "appr-1",
            "requested_at": "2026-03-01T11:30:02Z",
            "role": "support",
            "requested_by": "bob@corp.example",
            "session_id": "s-support",
            "statement_number": 1,
            "statement": "UPDATE crm.customers SET phone = $1 WHERE id = $2",
            "deciding_rule": "approve-writes",
            "decided_at": "2026-03-01T11:30:03Z",
            "decision": "approved",
            "decided_by": "carol@corp.example",
        },
        {
            "approval_id": "appr-2",
            "requested_at": "2026-03-01T11:30:08Z",
            "role": "support",
            "requested_by": "bob@corp.example",
            "session_id": "s-support",
            "statement_number": 3,
            "statement": "UPDATE crm.customers SET email = $1 WHERE id = $2",
            "deciding_rule": "approve-writes",
            "decided_at": "2026-03-01T11:30:09Z",
            "decision": "rejected",
            "decided_by": "carol@corp.example",
        },
    ]


def test_masking_by_category(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    rows = named(capsys, archive, "masking-by-category", *PERIOD)
    assert rows == [
        {
            "category": "email",
            "method": "hash",
            "columns_masked": 2,
            "values_masked": 2,
            "values_nulled": 0,
            "statements": 2,
            "roles": 1,
        },
        {
            "category": "name",
            "method": "redact",
            "columns_masked": 1,
            "values_masked": 1,
            "values_nulled": 0,
            "statements": 1,
            "roles": 1,
        },
    ]
    second_day = named(capsys, archive, "masking-by-category", "2026-03-02T00:00:00Z", PERIOD[1])
    assert [(row["category"], row["columns_masked"]) for row in second_day] == [("email", 1)]


def test_article_30_summary(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    rows = named(capsys, archive, "article-30-summary", *PERIOD)
    # Refused statements processed nothing: the DELETE's phone and the second UPDATE's
    # email are not counted; approved and completed ones are.
    assert [
        (
            row["role"],
            row["purpose"],
            row["category"],
            row["statements"],
            row["principals"],
            row["first_time"],
            row["last_time"],
        )
        for row in rows
    ] == [
        (
            "analyst",
            "customer analytics",
            "email",
            3,
            1,
            "2026-03-01T10:00:01Z",
            "2026-03-02T09:00:01Z",
        ),
        (
            "analyst",
            "customer analytics",
            "name",
            1,
            1,
            "2026-03-01T10:00:01Z",
            "2026-03-01T10:00:01Z",
        ),
        (
            "support",
            "customer support",
            "phone",
            2,
            1,
            "2026-03-01T11:30:01Z",
            "2026-03-01T11:30:05Z",
        ),
    ]


def test_a_table_for_people(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    sql = (
        "SELECT session_id, count(*) AS events FROM custos_audit.events"
        " WHERE event_type = ? GROUP BY session_id ORDER BY session_id"
    )
    assert main(["audit", "query", sql, "--param", "statement", "--dir", str(archive)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "session_id  events",
        "----------  ------",
        "s-analyst   3",
        "s-later     1",
        "s-support   3",
        "(3 rows)",
    ]


def test_athena_functions_run_translated(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    sql = (
        "SELECT e.session_id, cardinality(e.categories) AS n, array_join(e.categories, '+') AS c,"
        " date_format(from_iso8601_timestamp(e.time), '%Y-%m-%d %H') AS hour_of_it"
        " FROM custos_audit.events AS e WHERE contains(e.categories, 'name')"
        " AND e.event_type = 'statement' ORDER BY e.time"
    )
    assert query(capsys, archive, sql) == [
        {"session_id": "s-analyst", "n": 2, "c": "email+name", "hour_of_it": "2026-03-01 10"},
        {"session_id": "s-analyst", "n": 3, "c": "email+name+phone", "hour_of_it": "2026-03-01 10"},
    ]


def test_an_empty_store_has_the_tables_and_no_rows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for table in ("events", "subject_access"):
        sql = f"SELECT session_id, dt, hour FROM custos_audit.{table}"
        assert query(capsys, tmp_path, sql) == []
    assert named(capsys, tmp_path, "masking-by-category", *PERIOD) == []
    assert named(capsys, tmp_path, "subject-accesses", ANN_SUBJECT_PSEUDONYM) == []


def test_errors_speak_to_the_person(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    missing = archive / "nowhere"
    assert main(["audit", "query", "SELECT 1", "--dir", str(missing)]) == 2
    assert f"no audit store at {missing}" in capsys.readouterr().err

    bad = "SELECT nosuch FROM custos_audit.events"
    assert main(["audit", "query", bad, "--dir", str(archive)]) == 2
    error = capsys.readouterr().err
    assert "nosuch" in error
    assert "as DuckDB ran it:\nSELECT nosuch FROM custos_audit.events" in error

    for writing in ("DELETE FROM custos_audit.events", "DROP TABLE custos_audit.events"):
        assert main(["audit", "query", writing, "--dir", str(archive)]) == 2
        assert "read-only" in capsys.readouterr().err
    assert main(["audit", "query", "SELECT 1; SELECT 2", "--dir", str(archive)]) == 2
    assert "give one query, not 2" in capsys.readouterr().err

    missing_parameter = named_queries()["approvals"].sql
    assert main(["audit", "query", missing_parameter, "--dir", str(archive)]) == 2
    assert "the query failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "reader", ["read_text('{path}')", "read_csv_auto('{path}')", "read_json('{path}')"]
)
def test_auditor_sql_reads_the_archive_and_no_other_file(
    capsys: pytest.CaptureFixture[str], archive: Path, tmp_path: Path, reader: str
) -> None:
    """Attack round 21: DuckDB's file functions read any file the user could."""
    secret = tmp_path / "secret.txt"
    secret.write_text('{"a": "not the archive"}\n')
    sql = f"SELECT * FROM {reader.format(path=secret)}"
    assert main(["audit", "query", sql, "--dir", str(archive)]) != 0
    captured = capsys.readouterr()
    assert "not the archive" not in captured.out + captured.err
    assert "disabled by configuration" in captured.out + captured.err


def test_a_query_that_never_ends_is_stopped(
    capsys: pytest.CaptureFixture[str], archive: Path
) -> None:
    """Attack round 22: a recursive query need never end."""
    endless = (
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"
    )
    assert main(["audit", "query", endless, "--dir", str(archive), "--timeout", "1"]) != 0
    captured = capsys.readouterr()
    assert "ran longer than 1 s and was stopped" in captured.out + captured.err
