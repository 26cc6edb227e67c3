"""`custos audit replay`: a session's timeline, and `custos audit verify --public-key`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from audit_archive import write_archive
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.audit.digests import write_digest
from custos.cli import main


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    write_archive(root)
    return root


def test_the_timeline_in_order(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    assert main(["audit", "replay", "s-analyst", "--dir", str(archive)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "session s-analyst: 8 events"
    assert [line.split()[2] for line in lines[1:]] == [
        "session_start",
        "statement",
        "statement_outcome",
        "statement",
        "statement_outcome",
        "statement",
        "statement_outcome",
        "session_end",
    ]
    assert lines[1].endswith(
        "alice@corp.example as analyst, token from https://issuer.corp.example,"
        " from 10.1.2.3, application psql, target crm"
    )
    assert lines[2].endswith(
        "SELECT email, name FROM crm.customers WHERE id = ?  -> mask by rule mask-contact"
        " (policy v7)"
    )
    assert lines[3].endswith(
        "completed, 1 rows, 96 bytes, 3.5 ms; masked: column 0 email (hash, 1 values),"
        " column 1 name (redact, 1 values)"
    )
    assert lines[5].endswith("; read without naming whom: crm.customers")
    assert lines[7].endswith("refused, SQLSTATE 42501, refused by rule no-deletes")


def test_the_timeline_as_json(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    assert main(["audit", "replay", "s-support", "--dir", str(archive), "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [entry["seq"] for entry in entries] == list(range(12))
    decided = [entry for entry in entries if entry["event_type"] == "approval_decided"]
    assert [(e["approval_id"], e["decision"], e["subject"]) for e in decided] == [
        ("appr-1", "approved", "carol@corp.example"),
        ("appr-2", "rejected", "carol@corp.example"),
    ]
    outcome = entries[4]
    assert outcome == {
        "time": "2026-03-01T11:30:04Z",
        "seq": 4,
        "event_type": "statement_outcome",
        "role": "support",
        "subject": "bob@corp.example",
        "issuer": "https://issuer.corp.example",
        "client_addr": "10.1.2.4",
        "application_name": "agent",
        "target": "crm",
        "purpose": "customer support",
        "statement_number": 1,
        "approval_id": "appr-1",
        "status": "completed",
        "rows": 1,
        "bytes": 0,
        "duration_ms": 4.0,
        "subjects": 2,
        "subjects_capped": False,
    }


def test_a_gzipped_session(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    assert main(["audit", "replay", "s-later", "--dir", str(archive)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "session s-later: 4 events"


def test_an_unknown_session(capsys: pytest.CaptureFixture[str], archive: Path) -> None:
    assert main(["audit", "replay", "s-nobody", "--dir", str(archive)]) == 2
    error = capsys.readouterr().err
    assert f"no events of session s-nobody in {archive}" in error
    assert "SELECT DISTINCT session_id" in error


def _signed(root: Path, tmp_path: Path) -> Path:
    key = Ed25519PrivateKey.generate()
    for hour in (datetime(2026, 3, 1, h, tzinfo=UTC) for h in (10, 11)):
        write_digest(root, hour, key)
    public = tmp_path / "digest.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def test_verify_checks_digests_with_the_public_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = tmp_path / "store"
    write_archive(root)
    for gzipped in root.rglob("*.jsonl.gz"):  # this test's digests cover the plain hours
        gzipped.unlink()
    public = _signed(root, tmp_path)
    assert main(["audit", "verify", "--dir", str(root), "--public-key", str(public)]) == 0
    assert "every session's chain holds and every digest's signature" in capsys.readouterr().out

    segment = next((root / "subject_access" / "dt=2026-03-01" / "hour=11").iterdir())
    segment.write_bytes(segment.read_bytes().replace(b'"masked":false', b'"masked":true '))
    digest = root / "digests" / "dt=2026-03-01" / "hour=10" / "digest.json"
    digest.write_bytes(digest.read_bytes().replace(b'"version":1', b'"version":2'))
    assert main(["audit", "verify", "--dir", str(root), "--public-key", str(public)]) == 1
    printed = capsys.readouterr().out
    assert f"{segment.relative_to(root)}: changed since its digest" in printed
    assert "digests/dt=2026-03-01/hour=10/digest.json: its signature does not hold" in printed
    assert "digest.json: it does not link to the digest before it" in printed
    assert "problems found" in printed

    other = tmp_path / "other.pub"
    other.write_text("not a key")
    assert main(["audit", "verify", "--dir", str(root), "--public-key", str(other)]) == 2
    assert "is not a PEM public key" in capsys.readouterr().err
