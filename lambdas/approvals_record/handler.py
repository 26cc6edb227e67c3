"""The approvals record Lambda: the workflow's last step, once a request has its outcome.

The step's `outcome` says how the workflow ended: `decided` (the callback's SendTaskSuccess),
`denied` (its SendTaskFailure), or `expired` (the wait timed out, or the approvers could
not be notified). The callback wrote an approval or denial into the table before it told
the workflow; an expiry this step writes, only onto a request still pending (a vote that
landed first stands). Then, with AUDIT_TABLE set, a retry-mode request's outcome goes into
the audit trail (a wait-mode one is in its session's chain already) as an
`approval_decided` event of a chain of its own, named after the request, so that a retry
of this step writes the same item again rather than a second event. On an expiry the
group's approvers are told nobody decided in time.

Environment: APPROVALS_TABLE, and for the audit trail AUDIT_TABLE and AUDIT_RETENTION_DAYS
(the events table's TTL days); for the expiry mail APPROVALS_TOPIC and APPROVERS.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Literal

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field

from custos.approvals.models import ApprovalRequest, RequestStatus, utc_now
from custos.audit.chain import SessionChain
from custos.audit.dynamo import DynamoStore
from custos.audit.events import EventType
from lambdas.approvals_notify import environment
from lambdas.approvals_notify.messages import outcome_email, publish_to_all

logger = Logger(service="custos-approvals-record")

AUDIT_TABLE_ENV = "AUDIT_TABLE"
AUDIT_RETENTION_ENV = "AUDIT_RETENTION_DAYS"


class RecordEvent(BaseModel):
    """The step's payload (stacks/approvals.py)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^apr-[0-9a-f]{20}$")
    outcome: Literal["decided", "denied", "expired"]


class NotDecided(RuntimeError):
    """The workflow heard a decision the table does not hold."""


@functools.cache
def audit_store() -> DynamoStore | None:
    table = os.environ.get(AUDIT_TABLE_ENV, "")
    if not table:
        return None
    return DynamoStore(table, int(os.environ.get(AUDIT_RETENTION_ENV) or "30"))


def decided_event_fields(request: ApprovalRequest) -> dict[str, Any]:
    """The audit event of the outcome: fixed by the request, so a retry writes it again."""
    deciders = ", ".join(vote.approver for vote in request.deciders) or None
    return {
        "event_id": f"{request.id}-decided",
        "event_type": EventType.APPROVAL_DECIDED,
        "time": request.decided_at,
        "approval_id": request.id,
        "decision": request.status.value,
        "subject": deciders,
        "role": request.requester.role,
        "target": request.target,
        "policy_version": request.policy_version or None,
    }


@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    step = RecordEvent.model_validate(event)
    table = environment.approvals_table()
    expired_now = step.outcome == "expired" and table.end(
        step.request_id, RequestStatus.EXPIRED, utc_now()
    )
    stored = table.get(step.request_id)
    if stored is None:
        raise LookupError(f"approval request {step.request_id} is not in the approvals table")
    request = stored.request
    if request.pending:
        raise NotDecided(
            f"the workflow heard approval request {request.id} {step.outcome}, but the table"
            " holds it pending; only the callback may decide a request"
        )
    store = audit_store()
    # A wait-mode request's session records its decision in its own chain as it hears it.
    if (
        store is not None
        and request.mode == "retry"
        and request.status is not RequestStatus.WITHDRAWN
    ):
        chain = SessionChain(f"approval-{request.id}")
        store.append([chain.sealed(**decided_event_fields(request))])
    if expired_now:
        _tell_the_approvers(request)
    logger.info("recorded", extra={"request": request.id, "status": request.status})
    return {"request_id": request.id, "status": request.status.value}


def _tell_the_approvers(request: ApprovalRequest) -> None:
    approvers = [
        member.id
        for member in environment.group_approvers(request.group)
        if member.id != request.requester.subject
    ]
    if not approvers:
        return
    subject, body = outcome_email(request)
    try:
        publish_to_all(environment.sns_client(), environment.topic_arn(), subject, body, approvers)
    except (ClientError, BotoCoreError) as error:
        logger.warning("expiry not mailed", extra={"request": request.id, "error": str(error)})
