"""The approvals notify Lambda: the workflow's Notify step, called with `.waitForTaskToken`.

It keeps the workflow's task token with the request (the callback answers it when the
approvers have decided), then mails each approver of the request's group their own email:
the request as approvers see it and a link signed for that request and that approver,
valid until the request expires. The requester gets none, even if in the group: nobody
decides their own request. A group without approvers fails the step, so that the workflow
ends the request at once rather than when it expires; an email SNS did not take fails it
as NotificationFailed, which the workflow retries.

Its log names request ids and counts only, never an address or a statement.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field

from lambdas.approvals_notify import environment
from lambdas.approvals_notify.messages import publish_to, request_email

logger = Logger(service="custos-approvals-notify")


class NotifyEvent(BaseModel):
    """The step's payload (stacks/approvals.py)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^apr-[0-9a-f]{20}$")
    task_token: str = Field(min_length=1)


class NoApprovers(RuntimeError):
    """Nobody could be asked: the request's group has no approver but its requester."""


class NotificationFailed(RuntimeError):
    """SNS did not take an approver's email; the workflow retries the step."""


@logger.inject_lambda_context(log_event=False)  # the event holds the task token
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    step = NotifyEvent.model_validate(event)
    table = environment.approvals_table()
    stored = table.get(step.request_id)
    if stored is None or not table.store_token(step.request_id, step.task_token):
        raise LookupError(f"approval request {step.request_id} is not in the approvals table")
    request = stored.request
    if not request.pending:
        # Withdrawn before its workflow got here: nobody is asked; the execution is stopped.
        logger.info("not pending", extra={"request": request.id, "status": request.status})
        return {"request_id": request.id, "notified": 0}
    asked = [
        approver
        for approver in environment.group_approvers(request.group)
        if approver.id != request.requester.subject
    ]
    if not asked:
        raise NoApprovers(
            f"approval request {request.id} has no approver to ask in group {request.group}:"
            " add approvers for it to approvals.approvers in cdk.json and deploy"
        )
    signer = environment.link_signer()
    base = environment.api_url()
    sns, topic = environment.sns_client(), environment.topic_arn()
    for approver in asked:
        ticket = signer.sign(request.id, approver.id, "view", request.expires_at)
        subject, body = request_email(request, f"{base}/requests/{request.id}?t={ticket}")
        try:
            publish_to(sns, topic, subject, body, approver.id)
        except (ClientError, BotoCoreError) as error:
            raise NotificationFailed(
                f"approval request {request.id}: the approvals topic refused an email ({error})"
            ) from None
    logger.info("approvers notified", extra={"request": request.id, "notified": len(asked)})
    return {"request_id": request.id, "notified": len(asked)}
