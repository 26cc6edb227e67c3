"""A session's timeline from the audit store: who started it from where, each statement
(its text without values, the decision and the rule that made it), how each ended
(status, rows, bytes, time taken, the columns masked), approvals, and its end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from custos.audit.output import plain
from custos.audit.query import AuditQueryError, run_query

_SESSION_EVENTS = """
SELECT time, seq, event_type, role, subject, issuer, groups, client_addr, application_name,
       target, purpose, statement_number, statement, kinds, relations, categories, decision,
       rules, deciding_rule, policy_version, masked, approval_id, status, sqlstate, error,
       rows, bytes, duration_ms, subjects, subjects_capped, unidentified
FROM custos_audit.events
WHERE session_id = ?
ORDER BY seq
"""

_LIST_SESSIONS = "SELECT DISTINCT session_id, role, subject FROM custos_audit.events"


def session_timeline(root: Path, session_id: str) -> list[dict[str, Any]]:
    """The session's events in order, each with only the fields it has."""
    rows = run_query(root, _SESSION_EVENTS, [session_id]).records()
    if not rows:
        raise AuditQueryError(
            f"no events of session {session_id} in {root}: list the sessions with"
            f" custos audit query {_LIST_SESSIONS!r} --dir {root}"
        )
    return [
        {name: plain(value) for name, value in row.items() if value not in (None, [], {})}
        for row in rows
    ]


def describe(entry: dict[str, Any]) -> str:
    """One line of the timeline, for a person."""
    kind = entry["event_type"]
    number = entry.get("statement_number", "")
    detail = _DESCRIBERS.get(kind, _other)(entry)
    return f"{entry['time']}  {entry['seq']:>4}  {kind:<18} {number!s:>3}  {detail}".rstrip()


def _start(entry: dict[str, Any]) -> str:
    who = f"{entry.get('subject', '?')} as {entry.get('role', '?')}"
    parts = [who]
    if "issuer" in entry:
        parts.append(f"token from {entry['issuer']}")
    if "client_addr" in entry:
        parts.append(f"from {entry['client_addr']}")
    if "application_name" in entry:
        parts.append(f"application {entry['application_name']}")
    if "target" in entry:
        parts.append(f"target {entry['target']}")
    return ", ".join(parts)


def _statement(entry: dict[str, Any]) -> str:
    rule = f" by rule {entry['deciding_rule']}" if "deciding_rule" in entry else ""
    policy = f" (policy {entry['policy_version']})" if "policy_version" in entry else ""
    return f"{entry.get('statement', '')}  -> {entry.get('decision', '?')}{rule}{policy}"


def _outcome(entry: dict[str, Any]) -> str:
    parts = [entry.get("status", "?")]
    for field, unit in (("rows", "rows"), ("bytes", "bytes"), ("duration_ms", "ms")):
        if field in entry:
            parts.append(f"{entry[field]} {unit}")
    if "sqlstate" in entry:
        parts.append(f"SQLSTATE {entry['sqlstate']}")
    if "error" in entry:
        parts.append(entry["error"])
    if "approval_id" in entry:
        parts.append(f"approval {entry['approval_id']}")
    text = ", ".join(str(part) for part in parts)
    masked = entry.get("masked", [])
    if masked:
        columns = ", ".join(
            f"column {column['position']} {column['category']} ({column['method']},"
            f" {column['values']} values)"
            for column in masked
        )
        text += f"; masked: {columns}"
    if "unidentified" in entry:
        text += f"; read without naming whom: {', '.join(entry['unidentified'])}"
    return text


def _approval(entry: dict[str, Any]) -> str:
    done = "requested" if entry["event_type"] == "approval_requested" else entry.get("decision")
    by = f" by {entry['subject']}" if "subject" in entry else ""
    return f"approval {entry.get('approval_id', '?')} {done}{by}"


def _other(entry: dict[str, Any]) -> str:
    return str(entry.get("status", entry.get("error", "")))


_DESCRIBERS = {
    "session_start": _start,
    "statement": _statement,
    "statement_outcome": _outcome,
    "approval_requested": _approval,
    "approval_decided": _approval,
}
