"""The local approvals backend: requests held by the gateway, decided on its own page.

Everything lives in the gateway's memory: a request outlives neither the gateway nor (in
wait mode) its session, and a retry's grant is lost with a restart (the agent asks again).
The approvals page and API (server.py) call the approver-facing half: the inbox, one
request, a vote, and the single use of each form's ticket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from custos.approvals.backend import MAX_PENDING_PER_REQUESTER, TooManyPending
from custos.approvals.links import Ticket
from custos.approvals.models import (
    ApprovalError,
    ApprovalRequest,
    Approver,
    RequestStatus,
    utc_now,
)

log = logging.getLogger("custos.approvals")

MAX_KEPT_REQUESTS = 10_000
"""Ended requests are forgotten, oldest first, beyond this many held in all."""


class LocalApprovals:
    def __init__(
        self,
        base_url: str,
        *,
        clock: Callable[[], datetime] = utc_now,
        on_decided: Callable[[ApprovalRequest], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._clock = clock
        self._on_decided = on_decided
        self._requests: dict[str, ApprovalRequest] = {}
        self._waiters: dict[str, list[asyncio.Future[ApprovalRequest]]] = {}
        self._expiries: dict[str, asyncio.TimerHandle] = {}
        self._used_tickets: dict[str, datetime] = {}
        # Woken whenever a request changes: the page's inbox waits on it.
        self.changed = asyncio.Condition()
        self._notifying: set[asyncio.Task[None]] = set()

    # --- the gateway's side (backend.ApprovalBackend) ----------------------------------------

    def link(self, request_id: str) -> str:
        return f"{self.base_url}/requests/{request_id}"

    async def submit(self, request: ApprovalRequest) -> None:
        self._forget_old()
        asker = (request.requester.issuer, request.requester.subject)
        waiting = sum(
            1
            for held in self._requests.values()
            if held.pending and (held.requester.issuer, held.requester.subject) == asker
        )
        if waiting >= MAX_PENDING_PER_REQUESTER:
            raise TooManyPending
        self._requests[request.id] = request
        delay = max(0.0, (request.expires_at - self._clock()).total_seconds())
        loop = asyncio.get_running_loop()
        self._expiries[request.id] = loop.call_later(delay, self._expire, request.id)
        await self._notify()

    async def decided(self, request_id: str) -> ApprovalRequest:
        request = self._known(request_id)
        if not request.pending:
            return request
        waiter: asyncio.Future[ApprovalRequest] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_id, []).append(waiter)
        return await waiter

    async def withdraw(self, request_id: str) -> None:
        request = self._requests.get(request_id)
        if request is not None and request.pending:
            self._ended(request.ended(RequestStatus.WITHDRAWN, self._clock()))
            await self._notify()

    async def latest(self, binding: str) -> ApprovalRequest | None:
        bound = [r for r in self._requests.values() if r.binding == binding]
        return max(bound, key=lambda r: r.created_at) if bound else None

    async def redeem(self, request_id: str) -> bool:
        request = self._requests.get(request_id)
        if request is None or not request.redeemable(self._clock()):
            return False
        self._requests[request_id] = request.model_copy(update={"grant_used": True})
        await self._notify()
        return True

    # --- the approvers' side (server.py) ------------------------------------------------------

    def requests(self) -> list[ApprovalRequest]:
        """Every request held, newest first."""
        return sorted(self._requests.values(), key=lambda r: r.created_at, reverse=True)

    def get(self, request_id: str) -> ApprovalRequest:
        return self._known(request_id)

    async def vote(
        self, request_id: str, approver: Approver, approve: bool, reason: str | None
    ) -> ApprovalRequest:
        request = self._known(request_id)
        updated = request.voted(approver, approve, reason, self._clock())
        log.info(
            "approval %s: %s %s",
            request_id,
            approver.subject,
            "approved" if approve else "denied",
        )
        if updated.pending:
            self._requests[request_id] = updated
        else:
            self._ended(updated)
        await self._notify()
        return updated

    def use_ticket(self, ticket: Ticket) -> None:
        """Accepts a verified ticket once; ApprovalError (403) the second time."""
        now = self._clock()
        for nonce, expires_at in list(self._used_tickets.items()):
            if expires_at <= now:
                del self._used_tickets[nonce]
        if ticket.nonce in self._used_tickets:
            raise ApprovalError(
                "this link was used already; open the request again from the approvals page",
                status=403,
            )
        self._used_tickets[ticket.nonce] = ticket.expires_at

    # --- inside ---------------------------------------------------------------------------

    def _known(self, request_id: str) -> ApprovalRequest:
        request = self._requests.get(request_id)
        if request is None:
            raise ApprovalError(
                f"no approval request {request_id!r} is held by this gateway (it may have"
                " ended and been forgotten, or the gateway restarted)",
                status=404,
            )
        return request

    def _expire(self, request_id: str) -> None:
        self._expiries.pop(request_id, None)
        request = self._requests.get(request_id)
        if request is not None and request.pending:
            log.info("approval %s expired with no decision", request_id)
            self._ended(request.ended(RequestStatus.EXPIRED, self._clock()))
            notifying = asyncio.ensure_future(self._notify())
            self._notifying.add(notifying)
            notifying.add_done_callback(self._notifying.discard)

    def _ended(self, request: ApprovalRequest) -> None:
        self._requests[request.id] = request
        timer = self._expiries.pop(request.id, None)
        if timer is not None:
            timer.cancel()
        for waiter in self._waiters.pop(request.id, []):
            if not waiter.done():
                waiter.set_result(request)
        if self._on_decided is not None:
            try:
                self._on_decided(request)
            except Exception:
                log.exception("approval %s: its decision could not be recorded", request.id)

    def _forget_old(self) -> None:
        if len(self._requests) < MAX_KEPT_REQUESTS:
            return
        ended = sorted(
            (r for r in self._requests.values() if not r.pending), key=lambda r: r.created_at
        )
        for request in ended[: len(self._requests) - MAX_KEPT_REQUESTS + 1]:
            del self._requests[request.id]

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()
