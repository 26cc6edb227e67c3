"""The approvals emails, published to the approvals topic, addressed by approver.

Every approver has their own email subscription to the topic, whose filter policy admits
only messages whose `approver` attribute names them (a String for one approver, a
String.Array for several). So a request's email, carrying one approver's own link, reaches
that approver alone.

The texts hold the request as approvers see it: the statement and parameters with personal
values masked (custos/approvals/shown.py), and reasons with whatever detection finds masked
(the callback masks a reason before it is kept). Plain text: mail clients show it as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from custos.approvals.models import ApprovalRequest

APPROVER_ATTRIBUTE = "approver"
MAX_SUBJECT_CHARS = 100  # SNS's limit for an email subject
_NOT_SUBJECT_TEXT = re.compile(r"[^\x20-\x7e]")  # a subject is printable ASCII, one line


def request_email(request: ApprovalRequest, link: str) -> tuple[str, str]:
    """The subject and body of the email asking one approver to decide."""
    requester = request.requester
    lines = [
        f"A statement needs your decision: approval request {request.id}.",
        "",
        "Open it to approve or deny. This link is yours alone; opening it decides nothing,",
        "only the page's Approve and Deny buttons do:",
        link,
        "",
        "Who asked",
        f"  Subject: {requester.subject}",
        f"  Issuer: {requester.issuer}",
        f"  Role: {requester.role}",
        f"  Target: {request.target or 'the gateway database'}",
        f"  Application: {requester.application_name or 'none'}",
        f"  Client address: {requester.client_addr or 'unknown'}",
        "",
        "What it runs (personal values masked)",
        *(f"  {line}" for line in request.statement.splitlines() or [""]),
    ]
    if request.parameters:
        lines.append("Parameters")
        lines.extend(
            f"  ${number} = {'NULL' if value is None else value}"
            for number, value in enumerate(request.parameters, start=1)
        )
    if request.row_estimate is not None:
        rows = "row" if request.row_estimate == 1 else "rows"
        lines.append(f"The database estimates {request.row_estimate} {rows}.")
    lines += ["", "Why it needs approval"]
    lines.extend(
        f"  - {rule.rule}" + (f": {rule.message}" if rule.message else "") for rule in request.rules
    )
    if request.message and all(rule.message != request.message for rule in request.rules):
        lines.append(f"  {request.message}")
    needed = request.approvals_needed
    lines += [
        "",
        f"Approver group: {request.group}; {needed} approval{'s' if needed > 1 else ''} needed.",
        f"Mode: {_mode(request)}",
        f"Expires: {_time(request.expires_at)}; with no decision by then, it is refused.",
    ]
    subject = _subject(f"Approval needed: request {request.id} for {request.group}")
    return subject, "\n".join(lines) + "\n"


def outcome_email(request: ApprovalRequest) -> tuple[str, str]:
    """The subject and body telling the other approvers how a request ended."""
    body = (
        f"Approval request {request.id} ({request.requester.role} on"
        f" {request.target or 'the gateway database'}) is {request.outcome_text()}.\n\n"
        "Nothing is left to decide; the link in the earlier email now only shows the request.\n"
    )
    return _subject(f"Request {request.id} {request.status.value}"), body


def publish_to(sns: Any, topic_arn: str, subject: str, body: str, approver_id: str) -> None:
    """A message for one approver's subscription only."""
    attribute = {"DataType": "String", "StringValue": approver_id}
    sns.publish(
        TopicArn=topic_arn,
        Subject=subject,
        Message=body,
        MessageAttributes={APPROVER_ATTRIBUTE: attribute},
    )


def publish_to_all(
    sns: Any, topic_arn: str, subject: str, body: str, approver_ids: Sequence[str]
) -> None:
    """One message for the subscriptions of all these approvers (a filter policy matches
    an array that holds its value)."""
    attribute = {"DataType": "String.Array", "StringValue": json.dumps(list(approver_ids))}
    sns.publish(
        TopicArn=topic_arn,
        Subject=subject,
        Message=body,
        MessageAttributes={APPROVER_ATTRIBUTE: attribute},
    )


def _subject(text: str) -> str:
    return _NOT_SUBJECT_TEXT.sub("?", text)[:MAX_SUBJECT_CHARS]


def _mode(request: ApprovalRequest) -> str:
    if request.mode == "wait":
        return "wait: the statement is held until the decision"
    grant = f" within {request.grant_seconds} s" if request.grant_seconds else ""
    return f"retry: once approved, the requester may run it once{grant}"


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
