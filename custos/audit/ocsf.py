"""The audit trail as OCSF Datastore Activity (class 6005) records, in Parquet, laid out
as AWS Security Lake takes a custom source's objects:
`OUT/ext/<source>/region=<region>/accountId=<account>/eventDay=<YYYYMMDD>/<file>.parquet`.

One record per statement that has an outcome: the activity from the statement's kinds,
the actor from its token (role, subject, issuer, groups), the source endpoint from the
client's address, the database from the policy's target, the status from the outcome.
What OCSF has no field for (decision, rules, categories, masking, approval, the
data-subject index's counts) goes under `unmapped`, as text.
"""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from custos.audit.query import run_query, sql_literal

OCSF_VERSION = "1.3.0"
DATASTORE_ACTIVITY = 6005
APPLICATION_ACTIVITY = 6

# OCSF's activities of a datastore, and which statement kind is which; a statement of
# several kinds is the first of these it has (a DELETE ... RETURNING deletes).
_ACTIVITIES: tuple[tuple[str, int, str], ...] = (
    ("delete", 7, "Delete"),
    ("update", 2, "Update"),
    ("merge", 2, "Update"),
    ("insert", 6, "Create"),
    ("copy_from", 5, "Write"),
    ("copy_to", 1, "Read"),
    ("select", 1, "Read"),
)
_OTHER = (99, "Other")
_STATUS = {"completed": (1, "Success"), "refused": (2, "Failure"), "failed": (2, "Failure")}
_RELATIONAL = 1  # OCSF database type_id

_OUTCOMES = """
SELECT o.event_id, o.time AS ended, st.time AS started, o.session_id, o.statement_number,
       st.role, st.subject, st.issuer, st.groups, st.client_addr, st.application_name,
       st.labels, st.target, st.purpose, st.statement, st.kinds, st.relations,
       st.categories, st.decision, st.rules, st.deciding_rule, st.policy_version,
       o.masked, o.approval_id, o.status, o.sqlstate, o.error, o.rows, o.bytes,
       o.duration_ms, o.subjects, o.subjects_capped, o.unidentified
FROM custos_audit.events AS o
JOIN custos_audit.events AS st
  ON st.session_id = o.session_id
 AND st.statement_number = o.statement_number
 AND st.event_type = 'statement'
WHERE o.event_type = 'statement_outcome'
ORDER BY from_iso8601_timestamp(st.time), o.session_id, o.statement_number
"""

# The Parquet schema: OCSF's names and types (timestamps as epoch milliseconds).
_USER = "STRUCT(name VARCHAR, uid VARCHAR, groups STRUCT(name VARCHAR)[])"
_COLUMNS = {
    "activity_id": "INTEGER",
    "activity_name": "VARCHAR",
    "category_uid": "INTEGER",
    "category_name": "VARCHAR",
    "class_uid": "INTEGER",
    "class_name": "VARCHAR",
    "type_uid": "BIGINT",
    "type_name": "VARCHAR",
    "severity_id": "INTEGER",
    "severity": "VARCHAR",
    "time": "BIGINT",
    "start_time": "BIGINT",
    "end_time": "BIGINT",
    "duration": "BIGINT",
    "status_id": "INTEGER",
    "status": "VARCHAR",
    "status_code": "VARCHAR",
    "status_detail": "VARCHAR",
    "message": "VARCHAR",
    "actor": f"STRUCT(user {_USER}, session STRUCT(uid VARCHAR, issuer VARCHAR), app_name VARCHAR)",
    "src_endpoint": "STRUCT(ip VARCHAR)",
    "database": "STRUCT(name VARCHAR, type VARCHAR, type_id INTEGER)",
    "table": "STRUCT(name VARCHAR)",
    "query_info": "STRUCT(query_string VARCHAR, uid VARCHAR)",
    "cloud": "STRUCT(provider VARCHAR, region VARCHAR, account STRUCT(uid VARCHAR))",
    "metadata": "STRUCT(product STRUCT(name VARCHAR, vendor_name VARCHAR, version VARCHAR),"
    " version VARCHAR, uid VARCHAR, log_name VARCHAR)",
    "unmapped": "MAP(VARCHAR, VARCHAR)",
}


@dataclass(frozen=True, slots=True)
class SecurityLakeSource:
    """Where the records go: the custom source's name, its region and account."""

    name: str
    region: str
    account_id: str


def _product_version() -> str:
    try:
        return importlib.metadata.version("custos")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


def _epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def activity(kinds: list[str]) -> tuple[int, str]:
    for kind, activity_id, name in _ACTIVITIES:
        if kind in kinds:
            return activity_id, name
    return _OTHER


def ocsf_record(row: dict[str, Any], source: SecurityLakeSource) -> dict[str, Any]:
    """One statement and its outcome as an OCSF Datastore Activity record."""
    activity_id, activity_name = activity(row["kinds"] or [])
    status_id, status = _STATUS.get(row["status"], (99, "Other"))
    relations = row["relations"] or []
    started, ended = _epoch_ms(row["started"]), _epoch_ms(row["ended"])
    decided = f"{row['decision']} by rule {row['deciding_rule']}" if row["deciding_rule"] else ""
    unmapped = {
        "role": row["role"],
        "purpose": row["purpose"],
        "decision": row["decision"],
        "deciding_rule": row["deciding_rule"],
        "rules": row["rules"],
        "policy_version": row["policy_version"],
        "kinds": row["kinds"],
        "relations": relations,
        "categories": row["categories"],
        "masked": row["masked"],
        "approval_id": row["approval_id"],
        "custos_status": row["status"],
        "rows": row["rows"],
        "bytes": row["bytes"],
        "duration_ms": row["duration_ms"],
        "subjects": row["subjects"],
        "subjects_capped": row["subjects_capped"],
        "unidentified": row["unidentified"],
        "labels": row["labels"],
    }
    return {
        "activity_id": activity_id,
        "activity_name": activity_name,
        "category_uid": APPLICATION_ACTIVITY,
        "category_name": "Application Activity",
        "class_uid": DATASTORE_ACTIVITY,
        "class_name": "Datastore Activity",
        "type_uid": DATASTORE_ACTIVITY * 100 + activity_id,
        "type_name": f"Datastore Activity: {activity_name}",
        "severity_id": 1,
        "severity": "Informational",
        "time": started,
        "start_time": started,
        "end_time": ended,
        "duration": None if row["duration_ms"] is None else round(row["duration_ms"]),
        "status_id": status_id,
        "status": status,
        "status_code": row["sqlstate"],
        "status_detail": row["error"] or row["status"],
        "message": f"{row['statement']} ({decided})" if decided else row["statement"],
        "actor": {
            "user": {
                "name": row["subject"],
                "uid": row["subject"],
                "groups": [{"name": group} for group in row["groups"] or []],
            },
            "session": {"uid": row["session_id"], "issuer": row["issuer"]},
            "app_name": row["application_name"],
        },
        "src_endpoint": {"ip": row["client_addr"]},
        "database": {"name": row["target"], "type": "PostgreSQL", "type_id": _RELATIONAL},
        "table": {"name": relations[0]} if len(relations) == 1 else None,
        "query_info": {
            "query_string": row["statement"],
            "uid": f"{row['session_id']}:{row['statement_number']}",
        },
        "cloud": {
            "provider": "AWS",
            "region": source.region,
            "account": {"uid": source.account_id},
        },
        "metadata": {
            "product": {"name": "Custos", "vendor_name": "Custos", "version": _product_version()},
            "version": OCSF_VERSION,
            "uid": row["event_id"],
            "log_name": "custos_audit",
        },
        "unmapped": {
            name: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            for name, value in unmapped.items()
            if value not in (None, [], {})
        },
    }


def export_ocsf(root: Path, out: Path, source: SecurityLakeSource) -> list[Path]:
    """Writes one Parquet file per day of statements; the files written, in day order."""
    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in run_query(root, _OUTCOMES).records():
        record = ocsf_record(row, source)
        day = datetime.fromtimestamp(record["time"] / 1000, UTC).strftime("%Y%m%d")
        by_day.setdefault(day, []).append(record)
    written = []
    connection = duckdb.connect()
    try:
        for day, records in sorted(by_day.items()):
            folder = (
                out
                / "ext"
                / source.name
                / f"region={source.region}"
                / f"accountId={source.account_id}"
                / f"eventDay={day}"
            )
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{source.name}-{day}.parquet"
            _write_parquet(connection, records, path)
            written.append(path)
    finally:
        connection.close()
    return written


def _write_parquet(
    connection: duckdb.DuckDBPyConnection, records: list[dict[str, Any]], path: Path
) -> None:
    # DuckDB reads the records as JSON Lines, typed by the schema above, and writes them.
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8") as staged:
        for record in records:
            staged.write(json.dumps(record) + "\n")
        staged.flush()
        columns = ", ".join(
            f"{sql_literal(name)}: {sql_literal(kind)}" for name, kind in _COLUMNS.items()
        )
        connection.execute(
            # Every value in the text is a literal made by sql_literal.
            f"COPY (SELECT * FROM read_json({sql_literal(staged.name)},"  # noqa: S608
            f" format = 'newline_delimited', columns = {{{columns}}}))"
            f" TO {sql_literal(str(path))} (FORMAT PARQUET, COMPRESSION ZSTD)"
        )
