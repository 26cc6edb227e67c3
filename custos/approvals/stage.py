"""Approvals, a stage after audit: a statement policy says needs a person's approval waits
for one (wait mode), or is refused until one is given (retry mode).

**Wait mode**: the stage submits a request and holds the statement; the client hears at
once, in a NoticeResponse, the request's id and where approvers decide. Approved, the
statement runs and returns its result; denied or expired, the client gets an error that
says which, by whom and when. A cancel or a disconnect withdraws the request.

**Retry mode**: the client gets an error at once, with the request's id and link. Once it
is approved, the same principal may run the same statement (same text, parameters, role and
target: binding.py) once, within the grant's lifetime; until then a retry hears that the
request still waits, or how it was decided.

Each request is recorded in the session's audit chain (`approval_requested`), and so is a
wait-mode decision (`approval_decided`); the outcome event of a statement names its
approval. A backend that fails refuses the statement: it never runs unapproved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pglast.parser import parse_sql_json

from custos.approvals.backend import MAX_PENDING_PER_REQUESTER, ApprovalBackend, TooManyPending
from custos.approvals.binding import statement_binding
from custos.approvals.models import (
    ApprovalRequest,
    FiredRule,
    Requester,
    RequestStatus,
    new_request_id,
    utc_now,
)
from custos.approvals.shown import shown_statement
from custos.audit.events import EventType
from custos.audit.stage import AuditStage
from custos.policy.catalog import PersonalDataCatalog
from custos.policy.engine import ApprovalRequirement, Decision, Effect
from custos.protocol import sqlstates
from custos.protocol.messages import notice_response
from custos.session.refusal import Refusal
from custos.session.stages import FORWARD, Outcome, Plan, Refuse, Settled, Stage, Status, WaitFor
from custos.session.statement import Statement

log = logging.getLogger("custos.approvals")

APPROVALS_UNAVAILABLE = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "this statement needs a person's approval, and the gateway could not reach its approvals"
    " service, so it did not run it",
    "try again shortly; tell the operator of this gateway if it persists",
)
RUNS_ANOTHER = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "this statement needs a person's approval, and an EXECUTE or FETCH runs a statement"
    " prepared or bound earlier, which approvers would not see",
    "send the statement itself (with its parameters, if any) so approvers see what runs",
)
ESTIMATE_SECONDS = 2.0
BINARY_VALUE = "<a binary value>"

# The planner's row estimate for a text, its parameters and the search path it runs under.
TOO_MANY_PENDING = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    f"you already have {MAX_PENDING_PER_REQUESTER} approval requests waiting, so the gateway"
    " did not ask for another; the statement did not run",
    "wait for the approvers to decide those (or cancel the statements that wait), then run"
    " it again",
)

RowEstimate = Callable[[str, tuple[str | None, ...], Sequence[str]], Awaitable[int | None]]


@dataclass(frozen=True, slots=True)
class _Retried:
    request: ApprovalRequest
    redeemed: bool = False
    new: bool = False


class ApprovalStage(Stage):
    hears_outcomes = True

    def __init__(
        self,
        backend: ApprovalBackend,
        requester: Requester,
        target: str | None,
        key: bytes,
        catalog: Callable[[], PersonalDataCatalog],
        *,
        audit: AuditStage | None = None,
        estimate: RowEstimate | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._backend = backend
        self._requester = requester
        self._target = target
        self._key = key
        self._catalog = catalog
        self._audit = audit
        self._estimate = estimate
        self._clock = clock
        # Wait-mode requests of statements still waiting: statement number -> (id, task).
        self._waiting: dict[int, tuple[str, asyncio.Task[ApprovalRequest]]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def plan(self, statement: Statement) -> Plan:
        decision = statement.decision
        if decision is None or decision.effect is not Effect.REQUIRE_APPROVAL:
            return FORWARD
        requirement = decision.approval
        if requirement is None:
            return Refuse(APPROVALS_UNAVAILABLE)
        exact = statement.text
        if exact is None or _runs_another(exact):
            return Refuse(RUNS_ANOTHER)
        text = _shown_text(exact, statement.client_encoding)
        search_path = tuple(dict.fromkeys(path for _, path in statement.candidates))
        binding = statement_binding(
            self._key,
            issuer=self._requester.issuer,
            subject=self._requester.subject,
            role=self._requester.role,
            target=self._target,
            # latin-1 reads any bytes one to one: texts that differ are bound apart.
            text=exact.decode("latin-1") + "\0" + repr(search_path),
            parameters=_exact_parameters(statement),
        )
        if requirement.mode == "retry":
            retried = asyncio.ensure_future(
                self._retry(statement, decision, requirement, binding, text)
            )
            return WaitFor(retried, lambda settled: self._retried(statement, settled))
        request_id = new_request_id()
        link = self._backend.link(request_id)
        statement.approval_id = request_id
        waiting = asyncio.ensure_future(
            self._wait(request_id, statement, decision, requirement, binding, text)
        )
        self._waiting[statement.number] = (request_id, waiting)
        notice = notice_response(
            f"this statement waits for approval by {requirement.group}: request {request_id}",
            detail=decision.message,
            hint=f"an approver decides at {link}; the statement runs once approved."
            " Cancel it (Ctrl-C in psql) to withdraw the request",
        )
        return WaitFor(waiting, lambda settled: self._decided(statement, settled), notice)

    def finished(self, statement: Statement, outcome: Outcome) -> None:
        waiting = self._waiting.pop(statement.number, None)
        if waiting is None or outcome.status is not Status.WITHDRAWN:
            return
        request_id, task = waiting
        withdrawing = asyncio.ensure_future(self._withdraw(request_id, task))
        self._background.add(withdrawing)
        withdrawing.add_done_callback(self._background.discard)
        self._record(EventType.APPROVAL_DECIDED, statement, request_id, decision="withdrawn")

    # --- wait mode -------------------------------------------------------------------------

    async def _wait(
        self,
        request_id: str,
        statement: Statement,
        decision: Decision,
        requirement: ApprovalRequirement,
        binding: str,
        text: str,
    ) -> ApprovalRequest:
        request = await self._request(request_id, statement, decision, requirement, binding, text)
        # Submitted whole even if the session gives up meanwhile: a withdrawal follows it.
        await asyncio.shield(self._submit(request))
        self._record(EventType.APPROVAL_REQUESTED, statement, request_id)
        return await self._backend.decided(request_id)

    async def _submit(self, request: ApprovalRequest) -> None:
        """Hands the request to the backend, and logs it (no values: the rule and group)."""
        await self._backend.submit(request)
        log.info(
            "approval %s requested: role=%s rule=%s group=%s",
            request.id,
            request.requester.role,
            request.rules[0].rule if request.rules else "?",
            request.group,
        )

    def _decided(self, statement: Statement, settled: Settled) -> Plan:
        self._waiting.pop(statement.number, None)
        request = settled.value
        if isinstance(settled.error, TooManyPending):
            return Refuse(TOO_MANY_PENDING)
        if settled.error is not None or not isinstance(request, ApprovalRequest):
            log.error("approval: the request could not be made or followed: %s", settled.error)
            return Refuse(APPROVALS_UNAVAILABLE)
        deciders = ", ".join(vote.approver for vote in request.deciders) or None
        self._record(
            EventType.APPROVAL_DECIDED,
            statement,
            request.id,
            decision=request.status.value,
            decided_by=deciders,
        )
        if request.status is RequestStatus.APPROVED:
            return FORWARD
        return Refuse(_ended_refusal(request))

    async def _withdraw(self, request_id: str, task: asyncio.Task[ApprovalRequest]) -> None:
        task.cancel()
        # Cancelled, or failed: either way it waits no more.
        with contextlib.suppress(BaseException):
            await task
        try:
            await self._backend.withdraw(request_id)
        except Exception as error:
            log.error("approval %s could not be withdrawn: %s", request_id, error)

    # --- retry mode ------------------------------------------------------------------------

    async def _retry(
        self,
        statement: Statement,
        decision: Decision,
        requirement: ApprovalRequirement,
        binding: str,
        text: str,
    ) -> _Retried:
        backend = self._backend
        latest = await backend.latest(binding)
        now = self._clock()
        if latest is not None:
            if latest.redeemable(now) and await backend.redeem(latest.id):
                return _Retried(latest, redeemed=True)
            if latest.pending and not latest.expired_at(now):
                return _Retried(latest)
            # A denial stands until the request would have expired: asking again at once
            # would only ask the same approvers the same question.
            if latest.status is RequestStatus.DENIED and now < latest.expires_at:
                return _Retried(latest)
        request = await self._request(
            new_request_id(), statement, decision, requirement, binding, text
        )
        await self._submit(request)
        return _Retried(request, new=True)

    def _retried(self, statement: Statement, settled: Settled) -> Plan:
        retried = settled.value
        if isinstance(settled.error, TooManyPending):
            return Refuse(TOO_MANY_PENDING)
        if settled.error is not None or not isinstance(retried, _Retried):
            log.error("approval: the retry's request could not be read or made: %s", settled.error)
            return Refuse(APPROVALS_UNAVAILABLE)
        request = retried.request
        statement.approval_id = request.id
        if retried.redeemed:
            return FORWARD
        link = self._backend.link(request.id)
        if retried.new:
            self._record(EventType.APPROVAL_REQUESTED, statement, request.id)
            grant = request.grant_seconds
            within = f" within {_duration(grant)} of the approval" if grant else ""
            return Refuse(
                Refusal(
                    sqlstates.INSUFFICIENT_PRIVILEGE,
                    f"{request.message}; approval request {request.id} was sent to {request.group}",
                    f"once it is approved (at {link}), run exactly this statement again, with"
                    f" the same parameters and role{within}: it will then run once",
                ),
            )
        if request.pending:
            return Refuse(
                Refusal(
                    sqlstates.INSUFFICIENT_PRIVILEGE,
                    f"approval request {request.id} for this statement still waits for"
                    f" {request.group}",
                    f"run it again once it is approved at {link}",
                )
            )
        return Refuse(_ended_refusal(request))

    # --- the request -----------------------------------------------------------------------

    async def _request(
        self,
        request_id: str,
        statement: Statement,
        decision: Decision,
        requirement: ApprovalRequirement,
        binding: str,
        text: str,
    ) -> ApprovalRequest:
        analysis = statement.decided or statement.analysis
        relations = tuple(
            dict.fromkeys(
                relation
                for shape in analysis.statements
                for relation in (*shape.relations_read, *shape.relations_written)
            )
        )
        values = _parameter_texts(statement)
        shown, parameters = shown_statement(text, relations, self._catalog(), values)
        estimate = None
        if requirement.estimate_rows and self._estimate is not None:
            try:
                async with asyncio.timeout(ESTIMATE_SECONDS):
                    path = statement.candidates[0][1] if statement.candidates else ()
                    estimate = await self._estimate(text, values, path)
            except Exception as error:  # shown as unknown; the approvers decide without it
                log.warning("approval: the row estimate failed: %s", type(error).__name__)
        now = self._clock()
        return ApprovalRequest(
            id=request_id,
            created_at=now,
            expires_at=now + timedelta(seconds=requirement.expires_seconds),
            requester=self._requester,
            target=self._target,
            search_path=statement.candidates[0][1] if statement.candidates else (),
            statement=shown,
            parameters=parameters,
            rules=tuple(FiredRule(rule=rule) for rule in decision.rules),
            message=decision.message,
            policy_version=decision.policy_version,
            row_estimate=estimate,
            group=requirement.group,
            approvals_needed=requirement.approvals,
            mode="retry" if requirement.mode == "retry" else "wait",
            grant_seconds=requirement.grant_for_seconds,
            binding=binding,
        )

    def _record(
        self,
        event_type: EventType,
        statement: Statement,
        request_id: str,
        *,
        decision: str | None = None,
        decided_by: str | None = None,
    ) -> None:
        if self._audit is not None:
            self._audit.approval(
                event_type,
                statement.number,
                request_id,
                decision=decision,
                decided_by=decided_by,
            )


def _runs_another(text: bytes) -> bool:
    """Whether the text is (or holds) an EXECUTE or a FETCH: it runs a statement prepared
    or bound earlier, whose text and parameters the approvers would not see."""
    try:
        tree = json.loads(parse_sql_json(text.decode("utf-8", errors="replace")))
    except Exception:  # unreadable: nothing to approve by
        return True
    return any(
        "ExecuteStmt" in item.get("stmt", {}) or "FetchStmt" in item.get("stmt", {})
        for item in tree.get("stmts", ())
    )


# PostgreSQL's client encodings that Python names otherwise; the rest read as UTF-8.
_PYTHON_ENCODINGS = {
    "LATIN1": "latin-1",
    "LATIN9": "iso8859-15",
    "WIN1252": "cp1252",
    "WIN1251": "cp1251",
    "SQL_ASCII": "latin-1",
}


def _shown_text(text: bytes, client_encoding: str) -> str:
    """The text as the client's encoding reads it, as the database will."""
    codec = _PYTHON_ENCODINGS.get(client_encoding.upper(), "utf-8")
    return text.decode(codec, errors="replace")


def _exact_parameters(statement: Statement) -> tuple[str | None, ...]:
    """Every Bind value exactly as sent (its bytes, its format) and its declared type: what
    a retry's grant is bound to, whether or not policy reads the values."""
    portal = statement.portal
    bind = None if portal is None else portal.bind
    if portal is None or bind is None:
        return ()
    types = portal.prepared.parameter_types
    return tuple(
        None
        if value is None
        else f"{'b' if bind.binary[index] else 't'}:"
        f"{types[index] if index < len(types) else 0}:{value.hex()}"
        for index, value in enumerate(bind.values)
    )


def _parameter_texts(statement: Statement) -> tuple[str | None, ...]:
    """The Bind values as text, for approvers (masked by shown.py) and the row estimate;
    a binary value of a type that has no plain text form is shown as a marker."""
    portal = statement.portal
    bind = None if portal is None else portal.bind
    if portal is None or bind is None:
        return statement.parameters
    texts = bind.texts(portal.prepared.parameter_types)
    return tuple(
        text if text is not None or value is None else BINARY_VALUE
        for text, value in zip(texts, bind.values, strict=True)
    )


def _ended_refusal(request: ApprovalRequest) -> Refusal:
    if request.status is RequestStatus.DENIED:
        return Refusal(
            sqlstates.INSUFFICIENT_PRIVILEGE,
            f"approval request {request.id} was {request.outcome_text()}; the statement did"
            " not run",
            f"change the statement, or ask {request.group} why",
        )
    if request.status is RequestStatus.EXPIRED:
        return Refusal(
            sqlstates.INSUFFICIENT_PRIVILEGE,
            f"approval request {request.id} {request.outcome_text()}; the statement did not run",
            f"run it again to ask again, and ask a member of {request.group} to decide sooner",
        )
    return Refusal(
        sqlstates.INSUFFICIENT_PRIVILEGE,
        f"approval request {request.id} was {request.outcome_text()}; the statement did not run",
        "run it again to ask again",
    )


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"
