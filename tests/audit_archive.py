"""A generated audit archive with known answers, for the auditors' commands and queries.

Three sessions over two days, written by the real chain and store:
- s-analyst (2026-03-01, 10:00): alice (analyst) reads customer 42 masked (index rows
  for the subject and for ann's email), runs an aggregate over crm.customers that says
  nobody (unidentified), and a DELETE the policy refuses.
- s-support (2026-03-01, 11:30): bob (support) updates customer 42's phone with carol's
  approval appr-1, reads it back in clear, and has appr-2 rejected by carol.
- s-later (2026-03-02, 09:00, its segments gzipped): alice looks ann up by email.
"""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from custos.audit.chain import SessionChain
from custos.audit.events import (
    Access,
    AuditEvent,
    EventType,
    IdentifierType,
    MaskedColumnRecord,
    SubjectAccess,
)
from custos.audit.local import TABLES, LocalStore, segment_directory
from custos.audit.pseudonyms import identifier_pseudonym, subject_pseudonym

AUDIT_KEY = "an-audit-key-of-thirty-two-bytes-at-least"
KEY = AUDIT_KEY.encode()
ANN_EMAIL = "Ann.Smith@example.com"
ANN_PHONE = "+44 20 7946 0018"
ANN_SUBJECT = ("crm.customers", "42")
ANN_EMAIL_PSEUDONYM = identifier_pseudonym(KEY, IdentifierType.EMAIL, ANN_EMAIL)
ANN_PHONE_PSEUDONYM = identifier_pseudonym(KEY, IdentifierType.PHONE, ANN_PHONE)
ANN_SUBJECT_PSEUDONYM = subject_pseudonym(KEY, ANN_SUBJECT[1])

DAY_ONE = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
SUPPORT_START = datetime(2026, 3, 1, 11, 30, tzinfo=UTC)
DAY_TWO = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

ANALYST = {
    "role": "analyst",
    "subject": "alice@corp.example",
    "issuer": "https://issuer.corp.example",
    "client_addr": "10.1.2.3",
    "application_name": "psql",
    "target": "crm",
    "purpose": "customer analytics",
}
SUPPORT = {
    "role": "support",
    "subject": "bob@corp.example",
    "issuer": "https://issuer.corp.example",
    "client_addr": "10.1.2.4",
    "application_name": "agent",
    "target": "crm",
    "purpose": "customer support",
}
APPROVER = {"role": "dpo", "subject": "carol@corp.example"}


class _Session:
    """Seals one session's events a second apart (unless told when) and its index rows."""

    def __init__(self, session_id: str, start: datetime, who: dict[str, str]) -> None:
        self.chain = SessionChain(session_id)
        self.who = who
        self.moment = start
        self.events: list[AuditEvent] = []
        self.subjects: list[SubjectAccess] = []

    def event(self, event_type: EventType, **fields: Any) -> AuditEvent:
        event = self.chain.sealed(
            event_id=f"{self.chain.session_id}-{len(self.events)}",
            event_type=event_type,
            time=self.moment,
            **{**self.who, **fields},
        )
        self.events.append(event)
        self.moment += timedelta(seconds=1)
        return event

    def index(
        self,
        outcome: AuditEvent,
        identifier_type: IdentifierType,
        pseudonym: str,
        access: Access,
        columns: tuple[str, ...] = (),
        masked: bool = False,
    ) -> None:
        assert outcome.statement_number is not None
        self.subjects.append(
            SubjectAccess(
                event_id=outcome.event_id,
                session_id=outcome.session_id,
                statement_number=outcome.statement_number,
                time=outcome.time,
                role=self.who["role"],
                principal=self.who["subject"],
                identifier_type=identifier_type,
                pseudonym=pseudonym,
                relation="crm.customers",
                columns=columns,
                access=access,
                masked=masked,
            )
        )


def _analyst_session() -> _Session:
    session = _Session("s-analyst", DAY_ONE, ANALYST)
    session.event(EventType.SESSION_START)
    session.event(
        EventType.STATEMENT,
        statement_number=1,
        statement="SELECT email, name FROM crm.customers WHERE id = ?",
        kinds=("select",),
        relations=("crm.customers",),
        categories=("email", "name"),
        decision="mask",
        rules=("mask-contact",),
        deciding_rule="mask-contact",
        policy_version="v7",
    )
    outcome = session.event(
        EventType.STATEMENT_OUTCOME,
        statement_number=1,
        status="completed",
        rows=1,
        bytes=96,
        duration_ms=3.5,
        masked=(
            MaskedColumnRecord(
                statement_index=0, position=0, category="email", method="hash", values=1, nulled=0
            ),
            MaskedColumnRecord(
                statement_index=0, position=1, category="name", method="redact", values=1, nulled=0
            ),
        ),
        subjects=2,
    )
    session.index(
        outcome,
        IdentifierType.SUBJECT,
        ANN_SUBJECT_PSEUDONYM,
        Access.RETURNED,
        ("email", "name"),
        masked=True,
    )
    session.index(
        outcome, IdentifierType.EMAIL, ANN_EMAIL_PSEUDONYM, Access.RETURNED, ("email",), True
    )
    session.moment = DAY_ONE + timedelta(minutes=5)
    session.event(
        EventType.STATEMENT,
        statement_number=2,
        statement="SELECT avg(length(email)) FROM crm.customers",
        kinds=("select",),
        relations=("crm.customers",),
        categories=("email",),
        decision="allow",
        rules=("aggregates",),
        deciding_rule="aggregates",
        policy_version="v7",
    )
    session.event(
        EventType.STATEMENT_OUTCOME,
        statement_number=2,
        status="completed",
        rows=1,
        bytes=12,
        duration_ms=20.25,
        unidentified=("crm.customers",),
    )
    session.event(
        EventType.STATEMENT,
        statement_number=3,
        statement="DELETE FROM crm.customers WHERE id = ?",
        kinds=("delete",),
        relations=("crm.customers",),
        categories=("email", "name", "phone"),
        decision="deny",
        rules=("no-deletes",),
        deciding_rule="no-deletes",
        policy_version="v7",
    )
    session.event(
        EventType.STATEMENT_OUTCOME,
        statement_number=3,
        status="refused",
        sqlstate="42501",
        error="refused by rule no-deletes",
    )
    session.event(EventType.SESSION_END)
    return session


def _support_session() -> _Session:
    session = _Session("s-support", SUPPORT_START, SUPPORT)
    session.event(EventType.SESSION_START)
    session.event(
        EventType.STATEMENT,
        statement_number=1,
        statement="UPDATE crm.customers SET phone = $1 WHERE id = $2",
        kinds=("update",),
        relations=("crm.customers",),
        categories=("phone",),
        decision="require_approval",
        rules=("approve-writes",),
        deciding_rule="approve-writes",
        policy_version="v7",
    )
    session.event(
        EventType.APPROVAL_REQUESTED, statement_number=1, approval_id="appr-1", decision="pending"
    )
    session.event(
        EventType.APPROVAL_DECIDED,
        statement_number=1,
        approval_id="appr-1",
        decision="approved",
        **APPROVER,
    )
    outcome = session.event(
        EventType.STATEMENT_OUTCOME,
        statement_number=1,
        status="completed",
        rows=1,
        bytes=0,
        duration_ms=4.0,
        approval_id="appr-1",
        subjects=2,
    )
    session.index(outcome, IdentifierType.SUBJECT, ANN_SUBJECT_PSEUDONYM, Access.NAMED)
    session.index(outcome, IdentifierType.PHONE, ANN_PHONE_PSEUDONYM, Access.NAMED)
    session.event(
        EventType.STATEMENT,
        statement_number=2,
        statement="SELECT phone FROM crm.customers WHERE id = $1",
        kinds=("select",),
        relations=("crm.customers",),
        categories=("phone",),
        decision="allow",
        rules=("support-reads",),
        deciding_rule="support-reads",
        policy_version="v7",
    )
    outcome = session.event(
        EventType.STATEMENT_OUTCOME,
        statement_number=2,
        status="completed",
        rows=1,
        bytes=40,
        duration_ms=1.0,
        subjects=1,
    )
    session.index(
        outcome, IdentifierType.SUBJECT, ANN_SUBJECT_PSEUDONYM, Access.RETURNED, ("phone",)
    )
    session.event(
        EventType.STATEMENT,
        statement_number=3,
        statement="UPDATE crm.customers SET email = $1 WHERE id = $2",
        kinds=("update",),
        relations=("crm.customers",),
        categories=("email",),
        decision="require_approval",
        rules=("approve-writes",),
        deciding_rule="approve-writes",
        policy_version="v7",
    )
    session.event(
        EventType.APPROVAL_REQUESTED, statement_number=3, approval_id="appr-2", decision="pending"
    )
    session.event(
        EventType.APPROVAL_DECIDED,
        statement_number=3,
        approval_id="appr-2",
        decision="rejected",
        **APPROVER,
    )
    session.event(
        EventType.STATEMENT_OUTCOME,
        statement_number=3,
        status="refused",
        sqlstate="42501",
        error="approval appr-2 rejected",
        approval_id="appr-2",
    )
    session.event(EventType.SESSION_END)
    return session


def _later_session() -> _Session:
    session = _Session("s-later", DAY_TWO, ANALYST)
    session.event(EventType.SESSION_START)
    session.event(
        EventType.STATEMENT,
        statement_number=1,
        statement="SELECT email FROM crm.customers WHERE email = ?",
        kinds=("select",),
        relations=("crm.customers",),
        categories=("email",),
        decision="mask",
        rules=("mask-contact",),
        deciding_rule="mask-contact",
        policy_version="v8",
    )
    outcome = session.event(
        EventType.STATEMENT_OUTCOME,
        statement_number=1,
        status="completed",
        rows=1,
        bytes=70,
        duration_ms=2.0,
        masked=(
            MaskedColumnRecord(
                statement_index=0, position=0, category="email", method="hash", values=1, nulled=0
            ),
        ),
        subjects=1,
    )
    session.index(outcome, IdentifierType.EMAIL, ANN_EMAIL_PSEUDONYM, Access.NAMED)
    session.index(
        outcome, IdentifierType.EMAIL, ANN_EMAIL_PSEUDONYM, Access.RETURNED, ("email",), True
    )
    session.event(EventType.SESSION_END)
    return session


def write_archive(root: Path) -> dict[str, list[AuditEvent]]:
    """Writes the three sessions (the last one's segments gzipped); their events by session."""
    sessions = [_analyst_session(), _support_session(), _later_session()]
    store = LocalStore(root)
    for session in sessions:
        store.append(session.events, session.subjects)
    store.close()
    for path in [p for table in TABLES for p in segment_directory(root, DAY_TWO, table).glob("*")]:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    return {session.chain.session_id: session.events for session in sessions}
