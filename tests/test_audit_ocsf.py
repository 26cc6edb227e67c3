"""`custos audit export --ocsf`: OCSF Datastore Activity Parquet in Security Lake's layout,
read back with DuckDB and checked field by field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from audit_archive import write_archive

from custos.cli import main

SOURCE = ["--region", "eu-west-1", "--account-id", "123456789012", "--source-name", "custos"]


def exported(root: Path, out: Path) -> list[dict[str, Any]]:
    files = sorted(str(path) for path in out.rglob("*.parquet"))
    cursor = duckdb.connect().execute(
        "SELECT * FROM read_parquet(?, hive_partitioning = false) ORDER BY time", [files]
    )
    names = [column[0] for column in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_one_record_per_statement_in_the_security_lake_layout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root, out = tmp_path / "store", tmp_path / "lake"
    write_archive(root)
    assert main(["audit", "export", "--ocsf", str(out), "--dir", str(root), *SOURCE]) == 0
    assert "2 Parquet files" in capsys.readouterr().out
    prefix = out / "ext" / "custos" / "region=eu-west-1" / "accountId=123456789012"
    assert sorted(path.relative_to(prefix).as_posix() for path in out.rglob("*.parquet")) == [
        "eventDay=20260301/custos-20260301.parquet",
        "eventDay=20260302/custos-20260302.parquet",
    ]
    records = exported(root, out)
    assert [
        (
            r["query_info"]["uid"],
            r["activity_id"],
            r["activity_name"],
            r["type_uid"],
            r["status_id"],
            r["status"],
        )
        for r in records
    ] == [
        ("s-analyst:1", 1, "Read", 600501, 1, "Success"),
        ("s-analyst:2", 1, "Read", 600501, 1, "Success"),
        ("s-analyst:3", 7, "Delete", 600507, 2, "Failure"),
        ("s-support:1", 2, "Update", 600502, 1, "Success"),
        ("s-support:2", 1, "Read", 600501, 1, "Success"),
        ("s-support:3", 2, "Update", 600502, 2, "Failure"),
        ("s-later:1", 1, "Read", 600501, 1, "Success"),
    ]
    first = records[0]
    assert (first["class_uid"], first["category_uid"], first["class_name"]) == (
        6005,
        6,
        "Datastore Activity",
    )
    assert first["time"] == 1772359201000  # 2026-03-01T10:00:01Z, the statement's time
    assert first["end_time"] == 1772359202000
    assert first["duration"] == 4  # 3.5 ms, rounded
    assert first["actor"] == {
        "user": {"name": "alice@corp.example", "uid": "alice@corp.example", "groups": []},
        "session": {"uid": "s-analyst", "issuer": "https://issuer.corp.example"},
        "app_name": "psql",
    }
    assert first["src_endpoint"] == {"ip": "10.1.2.3"}
    assert first["database"] == {"name": "crm", "type": "PostgreSQL", "type_id": 1}
    assert first["table"] == {"name": "crm.customers"}
    assert first["query_info"]["query_string"] == (
        "SELECT email, name FROM crm.customers WHERE id = ?"
    )
    assert first["cloud"] == {
        "provider": "AWS",
        "region": "eu-west-1",
        "account": {"uid": "123456789012"},
    }
    assert first["metadata"]["product"]["name"] == "Custos"
    assert first["metadata"]["version"] == "1.3.0"
    assert first["metadata"]["uid"] == "s-analyst-2"
    unmapped = dict(first["unmapped"])
    assert unmapped["decision"] == "mask"
    assert unmapped["deciding_rule"] == "mask-contact"
    assert json.loads(unmapped["categories"]) == ["email", "name"]
    assert [column["category"] for column in json.loads(unmapped["masked"])] == ["email", "name"]
    refused = records[2]
    assert (refused["status_code"], refused["status_detail"]) == (
        "42501",
        "refused by rule no-deletes",
    )
    approved = dict(records[3]["unmapped"])
    assert approved["approval_id"] == "appr-1"


def test_an_empty_store_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "lake"
    assert main(["audit", "export", "--ocsf", str(out), "--dir", str(tmp_path), *SOURCE]) == 0
    assert "0 Parquet files" in capsys.readouterr().out
    assert not list(out.rglob("*.parquet"))


def test_the_partition_needs_region_and_account(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    arguments = ["audit", "export", "--ocsf", str(tmp_path / "lake"), "--dir", str(tmp_path)]
    assert main([*arguments, "--account-id", "123456789012"]) == 2
    assert "give --region" in capsys.readouterr().err
