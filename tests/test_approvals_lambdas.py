"""The approvals Lambdas in-process under moto: the workflow really waits on its task token.

moto runs the state machine here (its ASL executor): a workflow of the approvals state
machine's shape, whose Notify task waits for its token and whose Lambdas are moto's stand-ins
(they run no code), so each of our handlers is called in-process with the payload the
workflow gave its stand-in. The gateway submits through AwsApprovals, the notify handler
mails through SNS, each approver's mail lands in an SQS queue subscribed with that
approver's filter policy (as their email subscription has it), the callback answers API
Gateway's events, and SendTaskSuccess and SendTaskFailure move the execution on, or are
refused for a token moto does not know.

moto's executor copies the backend when it starts an execution, which fails once an
execution holds its locks: each test starts at most one.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
from approvals_aws_fixtures import (
    API_URL,
    RAW_VALUES,
    TABLE,
    approval_request,
    approved,
    create_approvals_table,
    scanned,
)
from moto import mock_aws
from moto.core.config import DefaultConfig
from moto_credentials import use_fake_credentials

from custos.approvals.aws import ApprovalsTable, AwsApprovals
from custos.approvals.links import LinkSigner
from custos.approvals.models import ApprovalRequest, RequestStatus, utc_now
from custos.approvals.settings import ApprovalSettings
from custos.audit.events import AuditEvent
from lambdas.approvals_callback import handler as callback
from lambdas.approvals_notify import environment
from lambdas.approvals_notify import handler as notify
from lambdas.approvals_record import handler as record
from tests.audit_aws_fixtures import TABLE as AUDIT_TABLE
from tests.audit_aws_fixtures import LambdaContext, create_events_table

LINK_KEY = "link-signing-key-0123456789abcdef0123456789abcdef"
HOST = "abc123.execute-api.eu-west-1.amazonaws.com"
APPROVERS = {
    "dpo": [
        {"id": "dpo-1", "email": "dpo-1@example.com"},
        {"id": "dpo-2", "email": "dpo-2@example.com"},
    ],
    "dba": [{"id": "dba-1", "email": "dba-1@example.com"}],
}
EVERYONE = ("dpo-1", "dpo-2", "dba-1")
WORKFLOW_ROLE = "custos-approvals-workflow"


def _workflow(function_arn: str) -> dict[str, Any]:
    """Notify waits for its token, with the request's timeout; then the record step."""

    def recorded(outcome: str) -> dict[str, Any]:
        return {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {
                "FunctionName": function_arn,
                "Payload": {"request_id.$": "$.request_id", "outcome": outcome},
            },
            "End": True,
        }

    return {
        "StartAt": "Notify",
        "States": {
            "Notify": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
                "Parameters": {
                    "FunctionName": function_arn,
                    "Payload": {"request_id.$": "$.request_id", "task_token.$": "$$.Task.Token"},
                },
                "TimeoutSecondsPath": "$.timeout_seconds",
                "ResultPath": "$.decision",
                "Catch": [
                    {"ErrorEquals": ["States.Timeout"], "ResultPath": "$.error", "Next": "Expired"},
                    {"ErrorEquals": ["Denied"], "ResultPath": "$.error", "Next": "Denied"},
                ],
                "Next": "Decided",
            },
            "Decided": recorded("decided"),
            "Denied": recorded("denied"),
            "Expired": recorded("expired"),
        },
    }


@dataclass
class World:
    """Everything the approvals Lambdas reach, under moto."""

    dynamodb: Any
    sns: Any
    sqs: Any
    stepfunctions: Any
    state_machine_arn: str
    topic_arn: str
    queues: dict[str, str] = field(default_factory=dict)  # approver id -> queue URL
    seen: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def table(self) -> ApprovalsTable:
        return ApprovalsTable(TABLE, self.dynamodb)

    def backend(self) -> AwsApprovals:
        settings = ApprovalSettings(
            backend="aws",
            state_machine_arn=self.state_machine_arn,
            table=TABLE,
            url=API_URL,
            poll_seconds=0.2,
        )
        return AwsApprovals(settings, dynamodb=self.dynamodb, stepfunctions=self.stepfunctions)

    def submit(self, request: ApprovalRequest) -> str:
        """The gateway's submit, and the Notify step's token once the execution waits."""
        asyncio.run(self.backend().submit(request))
        token = self.scheduled(request.id, "Notify")["task_token"]
        assert isinstance(token, str)
        return token

    def notify(self, request: ApprovalRequest) -> None:
        """The workflow up to its wait: submitted, and the notify handler called."""
        token = self.submit(request)
        notify.handler({"request_id": request.id, "task_token": token}, LambdaContext())

    def execution(self, request_id: str) -> str:
        return self.state_machine_arn.replace(":stateMachine:", ":execution:") + ":" + request_id

    def history(self, request_id: str) -> list[dict[str, Any]]:
        events = self.stepfunctions.get_execution_history(executionArn=self.execution(request_id))
        return list(events["events"])

    def scheduled(self, request_id: str, state: str, timeout: float = 10) -> dict[str, Any]:
        """The payload the workflow gave the Lambda of `state`, once it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entered = None
            for event in self.history(request_id):
                if "stateEnteredEventDetails" in event:
                    entered = event["stateEnteredEventDetails"]["name"]
                details = event.get("taskScheduledEventDetails")
                if details and entered == state:
                    payload: dict[str, Any] = json.loads(details["parameters"])["Payload"]
                    return payload
            time.sleep(0.05)
        raise AssertionError(f"the workflow of {request_id} never scheduled {state}")

    def status(self, request_id: str, timeout: float = 10) -> str:
        """The execution's status once it has left RUNNING (or RUNNING at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            status = str(
                self.stepfunctions.describe_execution(executionArn=self.execution(request_id))[
                    "status"
                ]
            )
            if status != "RUNNING" or time.monotonic() > deadline:
                return status
            time.sleep(0.05)

    def mail(self, approver: str) -> list[dict[str, Any]]:
        """The messages delivered to this approver's subscription so far (as SNS wraps them)."""
        seen = self.seen.setdefault(approver, [])
        while True:
            answer = self.sqs.receive_message(
                QueueUrl=self.queues[approver], MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = answer.get("Messages", [])
            if not messages:
                return seen
            for message in messages:
                seen.append(json.loads(message["Body"]))
                self.sqs.delete_message(
                    QueueUrl=self.queues[approver], ReceiptHandle=message["ReceiptHandle"]
                )

    def stored(self, request_id: str) -> ApprovalRequest:
        found = self.table.get(request_id)
        assert found is not None
        return found.request


def _lambda_stand_in(role_arn: str) -> str:
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("stand_in.py", "def handler(event, context):\n    return event\n")
    function = boto3.client("lambda").create_function(
        FunctionName="approvals-stand-in",
        Runtime="python3.12",
        Role=role_arn,
        Handler="stand_in.handler",
        Code={"ZipFile": code.getvalue()},
    )
    return str(function["FunctionArn"])


def _clear_built() -> None:
    for built in (
        environment.approvals_table,
        environment.approvers,
        environment.link_signer,
        environment.sns_client,
        environment.stepfunctions_client,
        record.audit_store,
    ):
        built.cache_clear()


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    use_fake_credentials(monkeypatch, "eu-west-1")
    # moto runs the workflow, and its Lambdas are stand-ins that run nothing.
    config: DefaultConfig = {
        "stepfunctions": {"execute_state_machine": True},
        "lambda": {"use_docker": False},
    }
    with mock_aws(config=config):
        dynamodb = boto3.client("dynamodb")
        create_approvals_table(dynamodb)
        role_arn = boto3.client("iam").create_role(
            RoleName=WORKFLOW_ROLE, AssumeRolePolicyDocument="{}"
        )["Role"]["Arn"]
        stepfunctions = boto3.client("stepfunctions")
        machine = stepfunctions.create_state_machine(
            name="custos-approvals",
            definition=json.dumps(_workflow(_lambda_stand_in(role_arn))),
            roleArn=role_arn,
        )["stateMachineArn"]
        sns, sqs = boto3.client("sns"), boto3.client("sqs")
        topic = sns.create_topic(Name="custos-approvals")["TopicArn"]
        world = World(dynamodb, sns, sqs, stepfunctions, machine, topic)
        for approver in EVERYONE:
            url = sqs.create_queue(QueueName=f"mail-{approver}")["QueueUrl"]
            queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
            # The filter policy of the approver's email subscription (stacks/approvals.py).
            sns.subscribe(
                TopicArn=topic,
                Protocol="sqs",
                Endpoint=queue_arn,
                Attributes={"FilterPolicy": json.dumps({"approver": [approver]})},
            )
            world.queues[approver] = url
        secret = boto3.client("secretsmanager").create_secret(
            Name="custos/approvals-link-key", SecretString=LINK_KEY
        )["ARN"]
        for name, value in {
            "APPROVALS_TABLE": TABLE,
            "APPROVALS_TOPIC": topic,
            "APPROVERS": json.dumps(APPROVERS),
            "LINK_KEY_SECRET": secret,
            "API_URL": API_URL + "/",
            "DECIDE_MINUTES": "10",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AUDIT_TABLE", raising=False)
        _clear_built()
        yield world
        _clear_built()


SIGNER = LinkSigner(LINK_KEY.encode())


def _api_event(
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An API Gateway REST proxy event, as the approvals API hands it to the callback."""
    sent = {"Host": HOST, **(headers or {})}
    if form is not None:
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": sent,
        "multiValueHeaders": {name: [value] for name, value in sent.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": (
            {name: [value] for name, value in query.items()} if query else None
        ),
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "stage": "prod",
            "path": f"/prod{path}",
            "httpMethod": method,
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "203.0.113.9"},
        },
        "body": None if form is None else urlencode(form),
        "isBase64Encoded": False,
    }


def _get(request_id: str, ticket: str | None) -> dict[str, Any]:
    query = None if ticket is None else {"t": ticket}
    answer: dict[str, Any] = callback.handler(
        _api_event("GET", f"/requests/{request_id}", query=query), LambdaContext()
    )
    return answer


def _post(request_id: str, form: dict[str, str], **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = callback.handler(
        _api_event("POST", f"/requests/{request_id}/decision", form=form, headers=headers),
        LambdaContext(),
    )
    return answer


def _headers(answer: dict[str, Any]) -> dict[str, str]:
    """The response's headers: the resolver answers a REST event in multiValueHeaders."""
    single = dict(answer.get("headers") or {})
    multiple = {name: values[0] for name, values in (answer.get("multiValueHeaders") or {}).items()}
    return {**single, **multiple}


_LINK = re.compile(r"(https://\S+/requests/(apr-[0-9a-f]{20})\?t=(\S+))")
_FORM_TICKET = re.compile(r'name="ticket" value="([^"]+)"')


def _view_ticket(world: World, approver: str) -> str:
    (message,) = [m for m in world.mail(approver) if "Approval needed" in m["Subject"]]
    found = _LINK.search(message["Message"])
    assert found is not None
    return found.group(3)


def _decide_ticket(world: World, request: ApprovalRequest, approver: str) -> str:
    """The ticket of the Approve and Deny form the approver's page holds."""
    page = _get(request.id, _view_ticket(world, approver))
    assert page["statusCode"] == 200, page["body"]
    found = _FORM_TICKET.search(page["body"])
    assert found is not None, "the page has no form"
    return found.group(1)


def _untouched(world: World, request: ApprovalRequest) -> None:
    stored = world.stored(request.id)
    assert stored.status is RequestStatus.PENDING
    assert stored.votes == ()


# --- notify -----------------------------------------------------------------------------------


def test_each_approver_of_the_group_gets_their_own_email_with_their_own_link(
    world: World,
) -> None:
    request = approval_request(group="dpo")
    world.notify(request)
    now = utc_now()
    for approver in ("dpo-1", "dpo-2"):
        (message,) = world.mail(approver)
        assert message["MessageAttributes"]["approver"] == {"Type": "String", "Value": approver}
        assert message["Subject"] == f"Approval needed: request {request.id} for dpo"
        body = message["Message"]
        found = _LINK.search(body)
        assert found is not None
        link, request_id, ticket = found.groups()
        assert link.startswith(f"{API_URL}/requests/{request.id}?t=")  # one slash: url stripped
        assert request_id == request.id
        verified = SIGNER.verify(ticket, "view", now)
        assert (verified.request_id, verified.approver) == (request.id, approver)
        assert verified.expires_at == request.expires_at.replace(microsecond=0)
        # What the approver judges by: the statement as shown, who asked, why, how many rows.
        assert request.statement in body
        assert "***@example.com" in body
        for shown in ("agent-7", "Role: agent", "Target: crm", "Application: psql", "10.0.0.7"):
            assert shown in body
        assert "customers-write: changes to customers need the DPO's approval" in body
        assert "The database estimates 3 rows." in body
        assert "Expires: " in body
    assert world.mail("dba-1") == []  # another group's approver hears nothing


def test_emails_hold_no_raw_personal_value(world: World) -> None:
    request = approval_request()
    world.notify(request)
    mailed = json.dumps(world.mail("dpo-1") + world.mail("dpo-2"))
    for raw in RAW_VALUES:
        assert raw not in mailed
    stored = json.dumps(scanned(world.dynamodb))
    for raw in RAW_VALUES:
        assert raw not in stored


def test_notify_keeps_the_task_token_with_the_request(world: World) -> None:
    request = approval_request()
    token = world.submit(request)
    assert world.table.get(request.id) is not None
    notify.handler({"request_id": request.id, "task_token": token}, LambdaContext())
    stored = world.table.get(request.id)
    assert stored is not None
    assert stored.task_token == token


def test_the_requester_is_not_asked_even_if_in_the_group(world: World) -> None:
    request = approval_request(subject="dpo-2")
    world.notify(request)
    assert len(world.mail("dpo-1")) == 1
    assert world.mail("dpo-2") == []


def test_a_group_without_approvers_fails_the_step(world: World) -> None:
    request = approval_request(group="auditors")
    token = world.submit(request)
    with pytest.raises(notify.NoApprovers, match="no approver to ask in group auditors"):
        notify.handler({"request_id": request.id, "task_token": token}, LambdaContext())
    assert all(world.mail(approver) == [] for approver in EVERYONE)


def test_a_request_withdrawn_before_notify_asks_nobody(world: World) -> None:
    request = approval_request()
    world.table.create(request)
    assert world.table.end(request.id, RequestStatus.WITHDRAWN, utc_now())
    answer = notify.handler({"request_id": request.id, "task_token": "token"}, LambdaContext())
    assert answer == {"request_id": request.id, "notified": 0}
    assert all(world.mail(approver) == [] for approver in EVERYONE)


@pytest.mark.parametrize(
    "event",
    [
        {"request_id": "apr-" + "0" * 20},
        {"request_id": "not-a-request", "task_token": "t"},
        {"request_id": "apr-" + "0" * 20, "task_token": "t", "extra": 1},
    ],
)
def test_a_malformed_notify_event_is_refused(world: World, event: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="validation error"):
        notify.handler(event, LambdaContext())


def test_notify_for_an_unknown_request_fails(world: World) -> None:
    with pytest.raises(LookupError, match="not in the approvals table"):
        notify.handler({"request_id": "apr-" + "0" * 20, "task_token": "t"}, LambdaContext())


# --- the callback: GET only shows -------------------------------------------------------------


def test_the_link_shows_the_request_with_its_buttons_and_never_decides(world: World) -> None:
    request = approval_request()
    world.notify(request)
    ticket = _view_ticket(world, "dpo-1")
    for _ in range(3):  # a mail scanner, a preview, the approver
        page = _get(request.id, ticket)
        assert page["statusCode"] == 200
        headers = _headers(page)
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["Cache-Control"] == "no-store"
        assert headers["X-Frame-Options"] == "DENY"
        body = page["body"]
        assert f'action="{request.id}/decision"' in body  # relative: the stage leads the path
        assert 'id="approve"' in body
        assert 'id="deny"' in body
        assert "***@example.com" in body
        form_ticket = _FORM_TICKET.search(body)
        assert form_ticket is not None
        decide = SIGNER.verify(form_ticket.group(1), "decide", utc_now())
        assert (decide.request_id, decide.approver) == (request.id, "dpo-1")
        assert decide.expires_at <= utc_now() + timedelta(minutes=10)
    _untouched(world, request)
    assert world.status(request.id, timeout=0.5) == "RUNNING"


@pytest.mark.parametrize(
    "case", ["missing", "forged", "altered", "expired", "decide ticket", "other request"]
)
def test_a_bad_link_is_refused_with_a_page(world: World, case: str) -> None:
    request = approval_request()
    world.table.create(request)
    other = approval_request()
    world.table.create(other)
    now = utc_now()
    tickets = {
        "missing": None,
        "forged": LinkSigner(b"not-the-link-key-0123456789").sign(
            request.id, "dpo-1", "view", request.expires_at
        ),
        "altered": SIGNER.sign(request.id, "dpo-1", "view", request.expires_at)[:-3] + "AAA",
        "expired": SIGNER.sign(request.id, "dpo-1", "view", now - timedelta(seconds=1)),
        "decide ticket": SIGNER.sign(request.id, "dpo-1", "decide", request.expires_at),
        "other request": SIGNER.sign(other.id, "dpo-1", "view", request.expires_at),
    }
    page = _get(request.id, tickets[case])
    assert page["statusCode"] == 403
    assert "<h1>403: Refused</h1>" in page["body"]
    assert 'id="approve"' not in page["body"]
    assert request.statement not in page["body"]
    _untouched(world, request)


def test_a_link_for_someone_outside_the_group_is_refused(world: World) -> None:
    request = approval_request(group="dpo")
    world.table.create(request)
    for approver in ("dba-1", "mallory"):
        page = _get(request.id, SIGNER.sign(request.id, approver, "view", request.expires_at))
        assert page["statusCode"] == 403
        assert f"{approver} is not an approver of group dpo" in page["body"]


def test_an_unknown_request_and_an_unknown_page_are_not_found(world: World) -> None:
    unknown = "apr-" + "e" * 20
    page = _get(unknown, SIGNER.sign(unknown, "dpo-1", "view", utc_now() + timedelta(hours=1)))
    assert page["statusCode"] == 404
    answer = callback.handler(_api_event("GET", "/elsewhere"), LambdaContext())
    assert answer["statusCode"] == 404
    assert "Content-Security-Policy" in _headers(answer)


def test_the_requesters_own_link_shows_no_buttons(world: World) -> None:
    request = approval_request(subject="dpo-2")
    world.table.create(request)
    page = _get(request.id, SIGNER.sign(request.id, "dpo-2", "view", request.expires_at))
    assert page["statusCode"] == 200
    assert 'id="approve"' not in page["body"]
    assert "dpo-2 asked for request" in page["body"]


# --- the callback: POST decides ---------------------------------------------------------------


def test_an_approval_moves_the_workflow_on_and_the_gateway_learns_it(world: World) -> None:
    request = approval_request()
    world.notify(request)
    ticket = _decide_ticket(world, request, "dpo-1")
    origin = {"Origin": f"https://{HOST}"}

    async def gateway_waits() -> ApprovalRequest:
        waiting = asyncio.ensure_future(world.backend().decided(request.id))
        await asyncio.sleep(0.3)
        answer = await asyncio.to_thread(
            _post, request.id, {"ticket": ticket, "decision": "approve", "reason": ""}, **origin
        )
        assert answer["statusCode"] == 200, answer["body"]
        assert f"Request {request.id} is approved" in answer["body"]
        return await asyncio.wait_for(waiting, timeout=10)

    decided = asyncio.run(gateway_waits())
    assert decided.status is RequestStatus.APPROVED
    assert [(vote.approver, vote.issuer) for vote in decided.votes] == [("dpo-1", "email-link")]
    # SendTaskSuccess with the stored token: the execution went on to record the decision.
    assert world.status(request.id) == "SUCCEEDED"
    assert world.scheduled(request.id, "Decided") == {
        "request_id": request.id,
        "outcome": "decided",
    }
    # The other approver hears who decided; the decider is not mailed again.
    (outcome,) = [m for m in world.mail("dpo-2") if "Approval needed" not in m["Subject"]]
    assert outcome["Subject"] == f"Request {request.id} approved"
    assert "approved by dpo-1 at " in outcome["Message"]
    assert outcome["MessageAttributes"]["approver"]["Type"] == "String.Array"
    assert [m["Subject"] for m in world.mail("dpo-1")] == [
        f"Approval needed: request {request.id} for dpo"
    ]
    assert world.mail("dba-1") == []


def test_a_denial_with_a_reason_fails_the_task_and_keeps_the_reason_masked(world: World) -> None:
    request = approval_request()
    world.notify(request)
    ticket = _decide_ticket(world, request, "dpo-2")
    reason = "not without a ticket; ask jane.doe@example.com or +49 170 9876543"
    answer = _post(request.id, {"ticket": ticket, "decision": "deny", "reason": reason})
    assert answer["statusCode"] == 200
    assert f"You denied request {request.id}" in answer["body"]
    stored = world.stored(request.id)
    assert stored.status is RequestStatus.DENIED
    (vote,) = stored.votes
    assert vote.approver == "dpo-2"
    assert vote.reason is not None
    assert vote.reason.startswith("not without a ticket; ask ***@")
    # SendTaskFailure "Denied": the workflow took its Denied branch.
    assert world.status(request.id) == "SUCCEEDED"
    assert world.scheduled(request.id, "Denied") == {"request_id": request.id, "outcome": "denied"}
    (denied,) = [
        json.loads(event["stateEnteredEventDetails"]["input"])
        for event in world.history(request.id)
        if event.get("stateEnteredEventDetails", {}).get("name") == "Denied"
    ]
    assert denied["error"]["Error"] == "Denied"
    (outcome,) = [m for m in world.mail("dpo-1") if "Approval needed" not in m["Subject"]]
    assert "denied by dpo-2" in outcome["Message"]
    everything = json.dumps([world.mail(a) for a in EVERYONE]) + json.dumps(scanned(world.dynamodb))
    for raw in RAW_VALUES:
        assert raw not in everything


def test_two_approvals_needed_count_both_and_only_then_decide(world: World) -> None:
    request = approval_request(approvals_needed=2)
    world.notify(request)
    first = _post(
        request.id, {"ticket": _decide_ticket(world, request, "dpo-1"), "decision": "approve"}
    )
    assert first["statusCode"] == 200
    assert "it needs 1 more" in first["body"]
    assert world.stored(request.id).pending
    assert world.status(request.id, timeout=0.5) == "RUNNING"
    second = _post(
        request.id, {"ticket": _decide_ticket(world, request, "dpo-2"), "decision": "approve"}
    )
    assert second["statusCode"] == 200
    stored = world.stored(request.id)
    assert stored.status is RequestStatus.APPROVED
    assert [vote.approver for vote in stored.votes] == ["dpo-1", "dpo-2"]
    assert world.status(request.id) == "SUCCEEDED"


def test_approvers_racing_each_count(world: World) -> None:
    """Two votes read the same version; the second write fails its condition, reads again
    and counts on top of the first."""
    request = approval_request(approvals_needed=2)
    world.notify(request)
    tickets = [_decide_ticket(world, request, approver) for approver in ("dpo-1", "dpo-2")]

    async def race() -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(
                *(
                    asyncio.to_thread(_post, request.id, {"ticket": t, "decision": "approve"})
                    for t in tickets
                )
            )
        )

    answers = asyncio.run(race())
    assert [answer["statusCode"] for answer in answers] == [200, 200]
    stored = world.stored(request.id)
    assert sorted(vote.approver for vote in stored.votes) == ["dpo-1", "dpo-2"]
    assert stored.status is RequestStatus.APPROVED


@pytest.mark.parametrize(
    "case",
    ["forged", "altered", "expired", "view ticket", "other request", "other approver", "outsider"],
)
def test_a_bad_decide_ticket_is_refused_and_nothing_is_decided(world: World, case: str) -> None:
    request = approval_request()
    world.notify(request)
    other = approval_request()
    world.table.create(other)
    now, until = utc_now(), request.expires_at
    good = _decide_ticket(world, request, "dpo-1")
    body, seal = good.split(".")
    tickets = {
        "forged": LinkSigner(b"not-the-link-key-0123456789").sign(
            request.id, "dpo-1", "decide", until
        ),
        "altered": body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + seal,
        "expired": SIGNER.sign(request.id, "dpo-1", "decide", now - timedelta(seconds=1)),
        "view ticket": SIGNER.sign(request.id, "dpo-1", "view", until),
        "other request": SIGNER.sign(other.id, "dpo-1", "decide", until),
        "other approver": SIGNER.sign(request.id, "dba-1", "decide", until),
        "outsider": SIGNER.sign(request.id, "mallory", "decide", until),
    }
    answer = _post(request.id, {"ticket": tickets[case], "decision": "approve"})
    assert answer["statusCode"] == 403, answer["body"]
    _untouched(world, request)
    assert world.status(request.id, timeout=0.5) == "RUNNING"


def test_a_replayed_form_is_refused(world: World) -> None:
    request = approval_request(approvals_needed=2)
    world.notify(request)
    form = {"ticket": _decide_ticket(world, request, "dpo-1"), "decision": "approve"}
    assert _post(request.id, form)["statusCode"] == 200
    replayed = _post(request.id, form)
    assert replayed["statusCode"] == 403
    assert "used already" in replayed["body"]
    assert [vote.approver for vote in world.stored(request.id).votes] == ["dpo-1"]


def test_the_requester_cannot_approve_their_own_request(world: World) -> None:
    request = approval_request(subject="dpo-1")
    world.notify(request)
    ticket = SIGNER.sign(request.id, "dpo-1", "decide", request.expires_at)
    answer = _post(request.id, {"ticket": ticket, "decision": "approve"})
    assert answer["statusCode"] == 403
    assert "dpo-1 asked for request" in answer["body"]
    _untouched(world, request)


def test_a_vote_on_a_decided_request_is_refused(world: World) -> None:
    request = approval_request()
    world.notify(request)
    first = _decide_ticket(world, request, "dpo-1")
    second = _decide_ticket(world, request, "dpo-2")
    assert _post(request.id, {"ticket": first, "decision": "approve"})["statusCode"] == 200
    late = _post(request.id, {"ticket": second, "decision": "deny"})
    assert late["statusCode"] == 409
    assert "already approved by dpo-1" in late["body"]
    assert world.stored(request.id).status is RequestStatus.APPROVED


def test_a_form_posted_from_another_site_is_refused(world: World) -> None:
    request = approval_request()
    world.notify(request)
    form = {"ticket": _decide_ticket(world, request, "dpo-1"), "decision": "approve"}
    answer = _post(request.id, form, Origin="https://attacker.example")
    assert answer["statusCode"] == 403
    assert "posted from another site" in answer["body"]
    _untouched(world, request)


@pytest.mark.parametrize(
    ("form", "content_type", "status"),
    [
        ({"decision": "maybe"}, None, 400),
        ({"decision": "approve"}, "application/json", 400),
        ({"decision": "approve", "reason": "x" * 20_000}, None, 413),
        ({"decision": "approve"}, None, 403),  # no ticket
    ],
)
def test_a_malformed_form_is_refused(
    world: World, form: dict[str, str], content_type: str | None, status: int
) -> None:
    request = approval_request()
    world.table.create(request)
    headers = {} if content_type is None else {"Content-Type": content_type}
    answer = _post(request.id, form, **headers)
    assert answer["statusCode"] == status, answer["body"]
    _untouched(world, request)


def test_a_missing_table_answers_a_page_not_a_trace(world: World) -> None:
    request = approval_request()
    ticket = SIGNER.sign(request.id, "dpo-1", "view", request.expires_at)
    world.dynamodb.delete_table(TableName=TABLE)
    page = _get(request.id, ticket)
    assert page["statusCode"] == 503
    assert "try the link again" in page["body"]


def test_send_task_success_with_a_token_the_workflow_never_gave_is_refused(
    world: World,
) -> None:
    request = approval_request()
    world.notify(request)
    with pytest.raises(world.stepfunctions.exceptions.InvalidToken):
        world.stepfunctions.send_task_success(taskToken="not-a-token", output="{}")
    assert world.status(request.id, timeout=0.5) == "RUNNING"


# --- the record step --------------------------------------------------------------------------


def _audit_events(world: World) -> list[AuditEvent]:
    items = world.dynamodb.scan(TableName=AUDIT_TABLE, ConsistentRead=True)["Items"]
    return [AuditEvent.model_validate_json(item["record"]["S"]) for item in items]


@pytest.fixture
def audited(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    create_events_table(world.dynamodb)
    monkeypatch.setenv("AUDIT_TABLE", AUDIT_TABLE)
    monkeypatch.setenv("AUDIT_RETENTION_DAYS", "45")
    record.audit_store.cache_clear()
    return world


def test_an_expiry_times_the_workflow_out_and_is_recorded(audited: World) -> None:
    world = audited
    request = approval_request(expires_in=2, mode="retry")
    world.notify(request)

    async def gateway_waits() -> ApprovalRequest:
        waiting = asyncio.ensure_future(world.backend().decided(request.id))
        # The workflow's wait times out; its record step gets the payload read here.
        payload = await asyncio.to_thread(world.scheduled, request.id, "Expired")
        assert payload == {"request_id": request.id, "outcome": "expired"}
        answer = await asyncio.to_thread(record.handler, payload, LambdaContext())
        assert answer == {"request_id": request.id, "status": "expired"}
        return await asyncio.wait_for(waiting, timeout=10)

    decided = asyncio.run(gateway_waits())
    assert decided.status is RequestStatus.EXPIRED
    (event,) = _audit_events(world)
    assert event.event_type == "approval_decided"
    assert (event.approval_id, event.decision, event.subject) == (request.id, "expired", None)
    assert event.role == "agent"
    assert event.session_id == f"approval-{request.id}"
    (told,) = [m for m in world.mail("dpo-2") if "Approval needed" not in m["Subject"]]
    assert "expired at " in told["Message"]


def test_a_decision_is_recorded_once_however_often_the_step_runs(audited: World) -> None:
    world = audited
    request = approval_request(mode="retry")
    world.table.create(request)
    approver = "dpo-1"
    assert world.table.write_vote(approved(request, approver), 0)
    for _ in range(3):  # Step Functions retries a failed Lambda step
        answer = record.handler({"request_id": request.id, "outcome": "decided"}, LambdaContext())
        assert answer["status"] == "approved"
    (event,) = _audit_events(world)
    assert (event.decision, event.subject) == ("approved", "dpo-1")
    assert event.time == world.stored(request.id).decided_at


def test_a_wait_mode_decision_is_left_to_the_waiting_sessions_chain(audited: World) -> None:
    world = audited
    request = approval_request(mode="wait")
    world.table.create(request)
    assert world.table.write_vote(approved(request, "dpo-1"), 0)
    answer = record.handler({"request_id": request.id, "outcome": "decided"}, LambdaContext())
    assert answer["status"] == "approved"
    assert _audit_events(world) == []


def test_an_expiry_after_a_vote_leaves_the_vote_standing(audited: World) -> None:
    world = audited
    request = approval_request()
    world.table.create(request)
    assert world.table.write_vote(approved(request), 0)
    answer = record.handler({"request_id": request.id, "outcome": "expired"}, LambdaContext())
    assert answer["status"] == "approved"
    assert world.stored(request.id).status is RequestStatus.APPROVED
    assert [m for a in EVERYONE for m in world.mail(a)] == []  # nobody told of an expiry


def test_a_decision_the_table_does_not_hold_fails_the_step(audited: World) -> None:
    world = audited
    request = approval_request()
    world.table.create(request)
    with pytest.raises(record.NotDecided, match="only the callback may decide"):
        record.handler({"request_id": request.id, "outcome": "decided"}, LambdaContext())
    assert _audit_events(world) == []


def test_without_an_audit_table_the_outcome_is_only_in_the_approvals_table(world: World) -> None:
    request = approval_request()
    world.table.create(request)
    answer = record.handler({"request_id": request.id, "outcome": "expired"}, LambdaContext())
    assert answer["status"] == "expired"
    assert world.stored(request.id).status is RequestStatus.EXPIRED


@pytest.mark.parametrize(
    "event",
    [
        {"request_id": "apr-" + "0" * 20, "outcome": "approved"},
        {"request_id": "apr-" + "0" * 20},
        {"request_id": "x", "outcome": "expired"},
    ],
)
def test_a_malformed_record_event_is_refused(world: World, event: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="validation error"):
        record.handler(event, LambdaContext())
