"""Where approval requests live and are decided: the port, with a local and an AWS adapter.

The gateway submits a request, waits for its decision (wait mode) or looks for an approved
one to redeem (retry mode), and withdraws what its client gave up on. Approvers decide
elsewhere: on the gateway's approvals page and API (local.py, page.py), or from an email
link through the AWS callback (custos/approvals/aws.py, lambdas/approvals_callback).
"""

from __future__ import annotations

from typing import Protocol

from custos.approvals.models import ApprovalRequest


class ApprovalsUnavailable(Exception):
    """The backend cannot take or answer a request now: the statement is refused."""


MAX_PENDING_PER_REQUESTER = 20
"""Requests one identity may have waiting at once: an agent cannot flood its approvers."""


class TooManyPending(Exception):
    """The requester already has MAX_PENDING_PER_REQUESTER requests waiting."""


class ApprovalBackend(Protocol):
    def link(self, request_id: str) -> str:
        """Where approvers find the request (the page's address for it)."""

    async def submit(self, request: ApprovalRequest) -> None:
        """Stores a new pending request and tells its approvers; TooManyPending if its
        requester already has MAX_PENDING_PER_REQUESTER waiting."""

    async def decided(self, request_id: str) -> ApprovalRequest:
        """Waits until the request is no longer pending (an expiry is a decision too)."""

    async def withdraw(self, request_id: str) -> None:
        """The requester gave up: a pending request ends as withdrawn."""

    async def latest(self, binding: str) -> ApprovalRequest | None:
        """The newest request bound to this statement (retry mode), if any."""

    async def redeem(self, request_id: str) -> bool:
        """Uses an approved retry's grant, once: true for exactly one caller."""
