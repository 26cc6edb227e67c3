"""The approvals callback Lambda: where an approver's email link leads, behind API Gateway.

- GET /requests/{id}?t=TICKET shows the request to the approver the link was signed for,
  with Approve and Deny buttons while they may vote. A GET never decides: mail scanners
  open links.
- POST /requests/{id}/decision (the page's form: ticket, decision, reason) decides. Its
  ticket is signed for this request and approver, lasts minutes, and counts once (the
  table keeps its nonce). The vote is counted by the request's own rules
  (ApprovalRequest.voted) and written back only if nobody wrote in between, so approvers
  voting at once each count. When the request is decided, the workflow hears it
  (SendTaskSuccess, or SendTaskFailure "Denied") and the other approvers are mailed.

Who may vote is the approver directory (cdk.json's approvals.approvers, in APPROVERS): the
approver a link was signed for votes as `Approver(subject=id, issuer="email-link")` in the
groups the directory lists them in. A requester never decides their own request.

Neither tickets nor statements are logged; a reason is masked before it is kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from custos.approvals.aws import StoredRequest
from custos.approvals.backend import ApprovalsUnavailable
from custos.approvals.links import Ticket
from custos.approvals.models import ApprovalError, ApprovalRequest, Approver, utc_now
from custos.approvals.page import MAX_REASON_CHARS, SECURITY_HEADERS, error_page, request_page
from custos.masking.detect import mask_found
from custos.masking.values import Masker
from custos.policy.models import MaskMethod
from lambdas.approvals_notify import environment
from lambdas.approvals_notify.messages import outcome_email, publish_to_all

logger = Logger(service="custos-approvals-callback")
app = APIGatewayRestResolver()

LINK_ISSUER = "email-link"  # the issuer of an approver known by their email link
MAX_FORM_BYTES = 16 * 1024
VOTE_ATTEMPTS = 5  # reads and conditional writes before giving up on a busy request
_DETECTED = frozenset({"email", "phone", "iban"})
_UNKEYED = Masker(b"\0" * 32)  # partial masking uses no key


@app.get("/requests/<request_id>")
def show(request_id: str) -> Response[str]:
    now = utc_now()
    given = app.current_event.query_string_parameters.get("t")
    if not given:
        raise ApprovalError(
            "this address shows a request only to its approvers: open it from the link in"
            " your approval email, which carries your own ticket",
            status=403,
        )
    ticket = environment.link_signer().verify(given, "view", now)
    stored = _request_for(ticket, request_id)
    approver = _approver(ticket, stored.request)
    request = stored.request
    decide_ticket = None
    notice = _own_vote(request, approver)
    try:
        _may_vote(request, approver, now)
    except ApprovalError as why:
        notice = notice or (why.message if request.pending else None)
    else:
        lifetime = timedelta(minutes=environment.decide_minutes())
        decide_ticket = environment.link_signer().sign(
            request.id, approver.subject, "decide", now + lifetime
        )
    # Relative: the API's stage (or a custom domain's base path) leads the page's path.
    action = f"{request.id}/decision" if decide_ticket else None
    return _html(request_page(request, form_action=action, ticket=decide_ticket, notice=notice))


@app.post("/requests/<request_id>/decision")
def decide(request_id: str) -> Response[str]:
    _refuse_foreign_post(app.current_event.headers)
    form = _form(app.current_event.headers, app.current_event.decoded_body)
    decision = form.get("decision")
    if decision not in ("approve", "deny"):
        raise ApprovalError("the form's decision must be approve or deny", status=400)
    reason = _masked_reason(form.get("reason"))
    now = utc_now()
    ticket = environment.link_signer().verify(form.get("ticket") or "", "decide", now)
    stored = _request_for(ticket, request_id)
    approver = _approver(ticket, stored.request)
    table = environment.approvals_table()
    if not table.use_ticket(ticket.nonce, ticket.expires_at):
        raise ApprovalError(
            "this form was used already; open the request again from your approval email",
            status=403,
        )
    try:
        before, after = _vote(stored, approver, decision == "approve", reason)
    except ApprovalError as error:
        if error.status == 404:
            raise
        latest = table.get(request_id) or stored
        page = request_page(latest.request, form_action=None, ticket=None, notice=error.message)
        return _html(page, status=error.status)
    logger.info(
        "vote counted",
        extra={"request": request_id, "approver": approver.subject, "vote": decision},
    )
    if not after.pending:
        _answer_workflow(before, after)
        _tell_the_others(after, approver)
    return _html(
        request_page(after, form_action=None, ticket=None, notice=_counted(after, decision))
    )


@app.not_found
def nowhere(_: Exception) -> Response[str]:
    return _html(
        error_page(
            "there is nothing here: open the request from the link in your approval email", 404
        ),
        status=404,
    )


def refused(error: ApprovalError) -> Response[str]:
    return _html(error_page(error.message, error.status), status=error.status)


def unavailable(error: ApprovalsUnavailable) -> Response[str]:
    logger.error("approvals table unavailable", extra={"error": str(error)})
    message = "the approvals store cannot answer just now; try the link again in a minute"
    return _html(error_page(message, 503), status=503)


app.exception_handler(ApprovalError)(refused)
app.exception_handler(ApprovalsUnavailable)(unavailable)


@logger.inject_lambda_context(log_event=False)  # the event holds tickets and reasons
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)


# --- who and what --------------------------------------------------------------------------


def _request_for(ticket: Ticket, request_id: str) -> StoredRequest:
    if ticket.request_id != request_id:
        raise ApprovalError(
            f"this link was made for another request, not {request_id}; open the request"
            " from its own approval email",
            status=403,
        )
    stored = environment.approvals_table().get(request_id)
    if stored is None:
        raise ApprovalError(
            f"there is no approval request {request_id} (it ended long ago and was removed)",
            status=404,
        )
    return stored


def _approver(ticket: Ticket, request: ApprovalRequest) -> Approver:
    """The approver a ticket was signed for, if the directory lists them in the group."""
    members = {approver.id for approver in environment.group_approvers(request.group)}
    if ticket.approver not in members:
        raise ApprovalError(
            f"{ticket.approver} is not an approver of group {request.group}, which decides"
            f" request {request.id}",
            status=403,
        )
    return Approver(subject=ticket.approver, issuer=LINK_ISSUER, groups=(request.group,))


def _may_vote(request: ApprovalRequest, approver: Approver, now: datetime) -> None:
    # The requester signed in with their IdP, the approver came by link: their issuers
    # differ, so the model's own check cannot see that they are the same person.
    if approver.subject == request.requester.subject:
        raise ApprovalError(
            f"{approver.subject} asked for request {request.id}, so cannot decide it;"
            f" another member of {request.group} decides",
            status=403,
        )
    request.may_vote(approver, now)


def _vote(
    stored: StoredRequest, approver: Approver, approve: bool, reason: str | None
) -> tuple[StoredRequest, ApprovalRequest]:
    """The request as read before the vote that counted, and with it counted."""
    table = environment.approvals_table()
    current = stored
    for _ in range(VOTE_ATTEMPTS):
        now = utc_now()
        _may_vote(current.request, approver, now)
        voted = current.request.voted(approver, approve, reason, now)
        if table.write_vote(voted, current.version):
            return current, voted
        # Someone wrote first (another vote, a withdrawal, the expiry): count on what is now.
        found = table.get(current.request.id)
        if found is None:
            raise ApprovalError(f"approval request {current.request.id} is gone", status=404)
        current = found
    raise ApprovalsUnavailable(
        f"approval request {current.request.id} changed {VOTE_ATTEMPTS} times while this"
        " vote was being counted"
    )


# --- telling the workflow and the others -------------------------------------------------


def _answer_workflow(before: StoredRequest, decided: ApprovalRequest) -> None:
    """The workflow waits on its task token; the table holds the decision either way."""
    token = before.task_token
    if token is None:
        logger.error(
            "no task token: the workflow ends at its timeout", extra={"request": decided.id}
        )
        return
    states = environment.stepfunctions_client()
    try:
        if decided.status.value == "approved":
            states.send_task_success(taskToken=token, output=json.dumps({"status": "approved"}))
        else:
            states.send_task_failure(taskToken=token, error="Denied", cause=decided.outcome_text())
    except (ClientError, BotoCoreError) as error:
        # Timed out or stopped meanwhile: its record step leaves a decided request as it is.
        logger.warning("workflow not answered", extra={"request": decided.id, "error": str(error)})


def _tell_the_others(decided: ApprovalRequest, approver: Approver) -> None:
    others = [
        member.id
        for member in environment.group_approvers(decided.group)
        if member.id not in (approver.subject, decided.requester.subject)
    ]
    if not others:
        return
    subject, body = outcome_email(decided)
    try:
        publish_to_all(environment.sns_client(), environment.topic_arn(), subject, body, others)
    except (ClientError, BotoCoreError) as error:
        # The decision stands; the others find it decided when they open their link.
        logger.warning("outcome not mailed", extra={"request": decided.id, "error": str(error)})


# --- the form ------------------------------------------------------------------------------


def _form(headers: Mapping[str, str], body: str | None) -> dict[str, str]:
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ApprovalError("send the page's form (application/x-www-form-urlencoded)", 400)
    text = body or ""
    if len(text.encode()) > MAX_FORM_BYTES:
        raise ApprovalError(f"the form is larger than the {MAX_FORM_BYTES // 1024} KiB taken", 413)
    try:
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=10, errors="strict")
    except ValueError:
        raise ApprovalError("the form could not be read; send the page's form", 400) from None
    return {name: values[0] for name, values in fields.items()}


def _masked_reason(text: str | None) -> str | None:
    """The reason as kept, mailed and logged: personal values detection finds, masked."""
    reason = (text or "").strip()[:MAX_REASON_CHARS]
    if not reason:
        return None
    return mask_found(reason, _DETECTED, MaskMethod.PARTIAL, _UNKEYED)[0]


def _refuse_foreign_post(headers: Mapping[str, str]) -> None:
    """Another site's page may not post here: its Origin (or Referer) says where it was."""
    source = headers.get("origin") or headers.get("referer")
    if source is None:
        return  # not a browser: the ticket decides
    host = (headers.get("host") or "").lower()
    if source == "null" or urlsplit(source).netloc.lower() != host:
        raise ApprovalError(
            "this form was posted from another site's page, which may not decide here;"
            " open the request from your approval email and use its buttons",
            status=403,
        )


# --- answers -------------------------------------------------------------------------------


def _own_vote(request: ApprovalRequest, approver: Approver) -> str | None:
    for vote in request.votes:
        if (vote.issuer, vote.approver) == (approver.issuer, approver.subject):
            return f"You {vote.decision} this request."
    return None


def _counted(request: ApprovalRequest, decision: str) -> str:
    if request.pending:
        approvals = sum(1 for vote in request.votes if vote.decision == "approved")
        more = request.approvals_needed - approvals
        return f"Your approval is counted; it needs {more} more before the statement may run."
    if decision == "deny":
        return f"You denied request {request.id}; the requester is told."
    return f"Request {request.id} is approved; the statement may now run."


def _html(page: str, status: int = 200) -> Response[str]:
    return Response(
        status_code=status,
        content_type="text/html; charset=utf-8",
        body=page,
        headers=dict(SECURITY_HEADERS),
    )
