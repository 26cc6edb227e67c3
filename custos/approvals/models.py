"""An approval request, the votes on it, and the rules every backend decides it by.

A request is what approvers see and what the decision is evidence of: who asked (their
verified identity and role), for what target, the statement and its parameters as shown to
approvers (personal values masked, shown.py), the rules that fired and why, the database's
row estimate when the rule asks for it, and how it was decided. The statement's exact text
is never in it: a keyed binding (binding.py) ties the decision to it instead, so a request
can be stored, mailed and logged without personal data.

The voting rules live here, once, for the local backend and the AWS callback alike:
approvers belong to the rule's group, nobody approves their own request, each approver
votes once, one denial decides, N approvals decide, and a request past its expiry is
expired whatever arrives after.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ApprovalError(Exception):
    """A vote or a request that cannot be taken; the message says why and what to do."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status  # the HTTP status the approvals API answers with


class RequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # the requester cancelled or disconnected while it waited


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Requester(_Model):
    subject: str
    issuer: str
    role: str
    groups: tuple[str, ...] = ()
    client_addr: str = ""
    application_name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    session_id: str | None = None


class Approver(_Model):
    """Someone who decides: a verified identity and the groups its token gave."""

    subject: str
    issuer: str
    groups: tuple[str, ...] = ()
    name: str | None = None  # how pages and notices show them (the subject if none)

    @property
    def shown(self) -> str:
        return self.name or self.subject


class FiredRule(_Model):
    rule: str
    message: str = ""


class Vote(_Model):
    approver: str  # subject
    issuer: str
    decision: Literal["approved", "denied"]
    reason: str | None = None
    at: datetime


def new_request_id() -> str:
    return "apr-" + secrets.token_hex(10)


class ApprovalRequest(_Model):
    id: str = Field(default_factory=new_request_id, pattern=r"^apr-[0-9a-f]{20}$")
    created_at: datetime
    expires_at: datetime
    requester: Requester
    target: str | None = None
    search_path: tuple[str, ...] = ()  # the schemas unqualified names resolve in
    statement: str  # as shown to approvers: personal values masked
    parameters: tuple[str | None, ...] = ()  # likewise
    rules: tuple[FiredRule, ...] = ()
    message: str = ""  # the deciding rule's, as the requester hears it
    policy_version: str = ""
    row_estimate: int | None = None
    group: str
    approvals_needed: int = Field(default=1, ge=1)
    mode: Literal["wait", "retry"] = "wait"
    grant_seconds: int | None = None
    # HMAC of the exact statement, parameters, identity, role and target (binding.py).
    binding: str
    status: RequestStatus = RequestStatus.PENDING
    votes: tuple[Vote, ...] = ()
    decided_at: datetime | None = None
    grant_expires_at: datetime | None = None
    grant_used: bool = False

    # --- reading it ------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return self.status is RequestStatus.PENDING

    def expired_at(self, now: datetime) -> bool:
        return self.pending and now >= self.expires_at

    @property
    def deciders(self) -> tuple[Vote, ...]:
        """The votes that decided it: the denial, or the approvals."""
        if self.status is RequestStatus.DENIED:
            return tuple(v for v in self.votes if v.decision == "denied")
        if self.status is RequestStatus.APPROVED:
            return tuple(v for v in self.votes if v.decision == "approved")
        return ()

    def outcome_text(self) -> str:
        """How it ended, as the requester and the other approvers are told."""
        at = self.decided_at.strftime("%Y-%m-%d %H:%M:%S UTC") if self.decided_at else "?"
        if self.status in (RequestStatus.APPROVED, RequestStatus.DENIED):
            names = ", ".join(vote.approver for vote in self.deciders)
            reasons = [vote.reason for vote in self.deciders if vote.reason]
            why = f" ({'; '.join(reasons)})" if reasons else ""
            return f"{self.status.value} by {names} at {at}{why}"
        if self.status is RequestStatus.EXPIRED:
            return f"expired at {at} with no decision"
        if self.status is RequestStatus.WITHDRAWN:
            return f"withdrawn by the requester at {at}"
        return "waiting for a decision"

    # --- deciding it -----------------------------------------------------------------------

    def may_vote(self, approver: Approver, now: datetime) -> None:
        """Raises ApprovalError unless `approver` may decide this request now."""
        if self.expired_at(now):
            raise ApprovalError(f"request {self.id} expired at {_shown_time(self.expires_at)}")
        if not self.pending:
            raise ApprovalError(
                f"request {self.id} is already {self.outcome_text()}; nothing left to decide"
            )
        if (approver.issuer, approver.subject) == (self.requester.issuer, self.requester.subject):
            raise ApprovalError(
                f"{approver.subject} asked for request {self.id}, so cannot decide it;"
                f" ask another member of {self.group}",
                status=403,
            )
        if self.group not in approver.groups:
            raise ApprovalError(
                f"{approver.subject} is not in the approver group {self.group} of request"
                f" {self.id}; sign in with an identity of that group",
                status=403,
            )
        if any(
            (vote.issuer, vote.approver) == (approver.issuer, approver.subject)
            for vote in self.votes
        ):
            raise ApprovalError(
                f"{approver.subject} already approved request {self.id}; it needs"
                f" {self.approvals_needed} different approvers"
            )

    def voted(
        self, approver: Approver, approve: bool, reason: str | None, now: datetime
    ) -> ApprovalRequest:
        """The request with this vote counted (may_vote first)."""
        self.may_vote(approver, now)
        vote = Vote(
            approver=approver.subject,
            issuer=approver.issuer,
            decision="approved" if approve else "denied",
            reason=(reason or "").strip()[:500] or None,
            at=now,
        )
        votes = (*self.votes, vote)
        approvals = sum(1 for v in votes if v.decision == "approved")
        if not approve:
            return self.model_copy(
                update={"votes": votes, "status": RequestStatus.DENIED, "decided_at": now}
            )
        if approvals < self.approvals_needed:
            return self.model_copy(update={"votes": votes})
        grant = self.grant_seconds if self.grant_seconds is not None else 0
        grant_expires = (
            max(self.expires_at, now + timedelta(seconds=grant)) if self.mode == "retry" else now
        )
        return self.model_copy(
            update={
                "votes": votes,
                "status": RequestStatus.APPROVED,
                "decided_at": now,
                "grant_expires_at": grant_expires,
            }
        )

    def ended(self, status: RequestStatus, now: datetime) -> ApprovalRequest:
        """Expired or withdrawn (a pending request only)."""
        return self.model_copy(update={"status": status, "decided_at": now})

    def redeemable(self, now: datetime) -> bool:
        """Whether an approved retry may still run, once."""
        return (
            self.status is RequestStatus.APPROVED
            and self.mode == "retry"
            and not self.grant_used
            and self.grant_expires_at is not None
            and now < self.grant_expires_at
        )


def utc_now() -> datetime:
    return datetime.now(UTC)


def _shown_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")
