"""`custos audit subject`: a data-subject access report from an identifier, under the
audit key, on the generated archive (tests/audit_archive.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from audit_archive import (
    ANN_EMAIL,
    ANN_EMAIL_PSEUDONYM,
    ANN_PHONE,
    ANN_SUBJECT_PSEUDONYM,
    AUDIT_KEY,
    write_archive,
)

from custos.cli import main

POLICY = """
catalog:
  crm.customers:
    subject: id
    columns: {email: email, phone: phone}
  support.tickets:
    subject: customer_id
    columns: {body: free_text}
  billing.accounts:
    subject: id
    columns: {iban: iban}
rules:
  - id: allow-all
    match: {}
    effect: allow
"""


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    write_archive(root)
    return root


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CUSTOS_AUDIT_KEY", raising=False)
    path = tmp_path / "audit.key"
    path.write_text(AUDIT_KEY + "\n")
    return path


def report(capsys: pytest.CaptureFixture[str], *arguments: str) -> dict[str, Any]:
    assert main(["audit", "subject", *arguments, "--json"]) == 0, capsys.readouterr().err
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


def test_every_access_by_email_any_spelling(
    capsys: pytest.CaptureFixture[str], archive: Path, key_file: Path
) -> None:
    spelled = "  ANN.smith@Example.COM "
    found = report(capsys, "--email", spelled, "--dir", str(archive), "--key-file", str(key_file))
    assert found["pseudonym"] == ANN_EMAIL_PSEUDONYM
    assert [
        (
            a["time"],
            a["role"],
            a["principal"],
            a["columns"],
            a["access"],
            a["masked"],
            a["deciding_rule"],
        )
        for a in found["accesses"]
    ] == [
        (
            "2026-03-01T10:00:02Z",
            "analyst",
            "alice@corp.example",
            ["email"],
            "returned",
            True,
            "mask-contact",
        ),
        (
            "2026-03-02T09:00:02Z",
            "analyst",
            "alice@corp.example",
            [],
            "named",
            False,
            "mask-contact",
        ),
        (
            "2026-03-02T09:00:02Z",
            "analyst",
            "alice@corp.example",
            ["email"],
            "returned",
            True,
            "mask-contact",
        ),
    ]
    # Without a catalog: the reads that named nobody, by statements reading emails.
    assert found["unidentified_tables"] is None
    assert [
        (r["session_id"], r["statement_number"], r["relation"]) for r in found["unidentified_reads"]
    ] == [("s-analyst", 2, "crm.customers")]


def test_by_subject_key_with_rules_and_approvals(
    capsys: pytest.CaptureFixture[str],
    archive: Path,
    key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUSTOS_AUDIT_KEY", AUDIT_KEY)
    found = report(capsys, "--subject", "crm.customers:42", "--dir", str(archive))
    assert found["pseudonym"] == ANN_SUBJECT_PSEUDONYM
    assert [
        (
            a["session_id"],
            a["statement_number"],
            a["access"],
            a["masked"],
            a["decision"],
            a["approval_id"],
        )
        for a in found["accesses"]
    ] == [
        ("s-analyst", 1, "returned", True, "mask", None),
        ("s-support", 1, "named", False, "require_approval", "appr-1"),
        ("s-support", 2, "returned", False, "allow", None),
    ]
    assert found["unidentified_tables"] == ["crm.customers"]
    assert [r["statement"] for r in found["unidentified_reads"]] == [
        "SELECT avg(length(email)) FROM crm.customers"
    ]
    other = report(capsys, "--subject", "crm.customers:43", "--dir", str(archive))
    assert other["accesses"] == []


def test_the_catalog_names_the_tables_of_a_category(
    capsys: pytest.CaptureFixture[str], archive: Path, key_file: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    common = ["--dir", str(archive), "--key-file", str(key_file), "--policy", str(policy)]
    phone = report(capsys, "--phone", ANN_PHONE, *common)
    assert [(a["session_id"], a["access"]) for a in phone["accesses"]] == [("s-support", "named")]
    # Free text may quote a phone number: the tickets are among the tables to look at.
    assert phone["unidentified_tables"] == ["crm.customers", "support.tickets"]
    assert len(phone["unidentified_reads"]) == 1
    iban = report(capsys, "--iban", "GB33 BUKB 2020 1555 5555 55", *common)
    assert iban["unidentified_tables"] == ["billing.accounts", "support.tickets"]
    assert iban["accesses"] == []
    assert iban["unidentified_reads"] == []


def test_the_key_from_the_gateway_config(
    capsys: pytest.CaptureFixture[str], archive: Path, key_file: Path, tmp_path: Path
) -> None:
    config = tmp_path / "custos.yaml"
    config.write_text(f"audit:\n  dir: {archive}\n  key:\n    key_file: {key_file}\n")
    found = report(capsys, "--email", ANN_EMAIL, "--dir", str(archive), "--config", str(config))
    assert len(found["accesses"]) == 3


def test_the_report_for_people_prints_no_other_identifier(
    capsys: pytest.CaptureFixture[str], archive: Path, key_file: Path
) -> None:
    arguments = ["audit", "subject", "--subject", "crm.customers:42", "--dir", str(archive)]
    assert main([*arguments, "--key-file", str(key_file)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Data-subject access report: subject crm.customers:42\n")
    assert "Accesses (3):" in printed
    assert "Reads that did not say whom they read (crm.customers): 1" in printed
    lines = printed.splitlines()
    assert any("appr-1" in line and "named" in line for line in lines)
    assert any("phone" in line and "returned  clear" in line for line in lines)
    for raw in (ANN_EMAIL, ANN_EMAIL.lower(), ANN_PHONE, "GB33"):
        assert raw not in printed


def test_errors_speak_to_the_person(
    capsys: pytest.CaptureFixture[str],
    archive: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUSTOS_AUDIT_KEY", raising=False)
    assert main(["audit", "subject", "--email", ANN_EMAIL, "--dir", str(archive)]) == 2
    assert "no audit key: set $CUSTOS_AUDIT_KEY" in capsys.readouterr().err
    short = tmp_path / "short.key"
    short.write_text("too short")
    arguments = ["audit", "subject", "--email", ANN_EMAIL, "--key-file", str(short)]
    assert main([*arguments, "--dir", str(archive)]) == 2
    assert "at least 32" in capsys.readouterr().err
    monkeypatch.setenv("CUSTOS_AUDIT_KEY", AUDIT_KEY)
    assert main(["audit", "subject", "--subject", "customers", "--dir", str(archive)]) == 2
    assert "must be TABLE:ID" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert main(["audit", "subject", "--email", ANN_EMAIL, "--dir", str(missing)]) == 2
    assert f"no audit store at {missing}" in capsys.readouterr().err
