"""The gateway's AWS approvals backend under moto: the approvals table as the CDK app
declares it, the state machine's executions, the poller that learns decisions, withdrawal,
retry grants redeemed once, and a table that holds no raw personal value.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from approvals_aws_fixtures import (
    API_URL,
    RAW_VALUES,
    TABLE,
    approval_request,
    approved,
    create_approvals_table,
    create_state_machine,
    scanned,
)

from custos.approvals.aws import (
    EXPIRY_GRACE,
    ApprovalsTable,
    AwsApprovals,
    execution_arn,
    read_approvers,
    read_time,
    request_item,
    stored_request,
    stored_time,
)
from custos.approvals.backend import ApprovalBackend, ApprovalsUnavailable
from custos.approvals.models import (
    ApprovalRequest,
    Approver,
    RequestStatus,
    utc_now,
)
from custos.approvals.service import approval_service
from custos.approvals.settings import ApprovalSettings
from tests.audit_aws_fixtures import aws

__all__ = ["aws"]  # the fixture, used by name


@pytest.fixture
def dynamodb(aws: None) -> Any:
    client = boto3.client("dynamodb")
    create_approvals_table(client)
    return client


@pytest.fixture
def stepfunctions(aws: None) -> Any:
    return boto3.client("stepfunctions")


def backend(
    dynamodb: Any,
    stepfunctions: Any,
    *,
    state_machine_arn: str | None = None,
    poll_seconds: float = 0.5,
    expiry_grace: timedelta = EXPIRY_GRACE,
) -> AwsApprovals:
    settings = ApprovalSettings(
        backend="aws",
        state_machine_arn=state_machine_arn or create_state_machine(stepfunctions),
        table=TABLE,
        url=API_URL + "/",
        poll_seconds=poll_seconds,
    )
    return AwsApprovals(
        settings, dynamodb=dynamodb, stepfunctions=stepfunctions, expiry_grace=expiry_grace
    )


# --- the item ---------------------------------------------------------------------------------


def test_an_item_reads_back_as_its_request() -> None:
    request = approved(approval_request(mode="retry", grant_seconds=3600))
    stored = stored_request(request_item(request))
    assert stored.request == request
    assert (stored.version, stored.task_token) == (0, None)


def test_stored_times_order_as_the_times_do() -> None:
    earlier = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    later = earlier + timedelta(microseconds=1)
    assert stored_time(earlier) < stored_time(later)
    assert stored_time(datetime(2026, 12, 31, 23, 0, tzinfo=UTC)) < stored_time(
        datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert read_time(stored_time(earlier)) == earlier


def test_execution_arn_is_the_state_machines_execution_of_that_name() -> None:
    machine = "arn:aws:states:eu-west-1:123456789012:stateMachine:custos-approvals"
    assert execution_arn(machine, "apr-0") == (
        "arn:aws:states:eu-west-1:123456789012:execution:custos-approvals:apr-0"
    )
    with pytest.raises(ValueError, match="not a state machine"):
        execution_arn("arn:aws:states:eu-west-1:123456789012:activity:x", "apr-0")


def test_approvers_are_read_from_their_json_and_bad_ones_named_without_addresses() -> None:
    approvers = read_approvers('{"dpo": [{"id": "dpo-1", "email": "dpo@example.com"}]}')
    assert [(a.id, a.email) for a in approvers["dpo"]] == [("dpo-1", "dpo@example.com")]
    for text in (
        '{"dpo": [{"id": "dpo-1", "email": "not-an-address"}]}',
        '{"dpo": [{"id": "has space", "email": "x@example.com"}]}',
        '{"dpo": [{"id": "dpo-1"}]}',
        '["dpo"]',
        "not json",
    ):
        with pytest.raises(ValueError, match=r"approvals\.approvers") as caught:
            read_approvers(text)
        assert "not-an-address" not in str(caught.value)


def test_settings_without_the_workflow_are_refused(dynamodb: Any, stepfunctions: Any) -> None:
    settings = ApprovalSettings(backend="local", listen="127.0.0.1:0")
    with pytest.raises(ValueError, match="state_machine_arn, table and url"):
        AwsApprovals(settings, dynamodb=dynamodb, stepfunctions=stepfunctions)


# --- submit -----------------------------------------------------------------------------------


def test_it_is_an_approval_backend(dynamodb: Any, stepfunctions: Any) -> None:
    approvals: ApprovalBackend = backend(dynamodb, stepfunctions)
    assert approvals.link("apr-0") == f"{API_URL}/requests/apr-0"


def test_submit_stores_the_request_and_starts_its_execution(
    dynamodb: Any, stepfunctions: Any
) -> None:
    approvals = backend(dynamodb, stepfunctions)
    request = approval_request(expires_in=600)
    asyncio.run(approvals.submit(request))

    (item,) = scanned(dynamodb)
    assert item["id"]["S"] == request.id
    assert item["status"]["S"] == "pending"
    assert item["binding"]["S"] == request.binding
    assert item["group"]["S"] == "dpo"
    assert item["mode"]["S"] == "wait"
    assert item["grant_used"]["BOOL"] is False
    assert item["created_at"]["S"] == stored_time(request.created_at)
    assert item["expires_at"]["S"] == stored_time(request.expires_at)
    kept_until = request.expires_at + timedelta(days=30)
    assert int(item["delete_after"]["N"]) == int(kept_until.timestamp())
    assert ApprovalRequest.model_validate_json(item["request"]["S"]) == request

    (execution,) = stepfunctions.list_executions(stateMachineArn=approvals.state_machine_arn)[
        "executions"
    ]
    assert execution["name"] == request.id
    described = stepfunctions.describe_execution(executionArn=execution["executionArn"])
    workflow_input = json.loads(described["input"])
    assert workflow_input["request_id"] == request.id
    assert 590 <= workflow_input["timeout_seconds"] <= 600


def test_a_request_submitted_twice_is_refused(dynamodb: Any, stepfunctions: Any) -> None:
    approvals = backend(dynamodb, stepfunctions)
    request = approval_request()
    asyncio.run(approvals.submit(request))
    with pytest.raises(ApprovalsUnavailable, match="in the approvals table already"):
        asyncio.run(approvals.submit(request))


def test_a_request_whose_workflow_cannot_start_is_refused_and_forgotten(
    dynamodb: Any, stepfunctions: Any
) -> None:
    missing = "arn:aws:states:eu-west-1:123456789012:stateMachine:not-deployed"
    approvals = backend(dynamodb, stepfunctions, state_machine_arn=missing)
    with pytest.raises(ApprovalsUnavailable, match="not-deployed did not start"):
        asyncio.run(approvals.submit(approval_request()))
    assert scanned(dynamodb) == []  # nobody heard of it, so nothing waits on it


def test_a_missing_table_makes_submit_refuse_naming_it(aws: None) -> None:
    stepfunctions = boto3.client("stepfunctions")
    approvals = backend(boto3.client("dynamodb"), stepfunctions)
    with pytest.raises(ApprovalsUnavailable, match=f"approvals table {TABLE} refused"):
        asyncio.run(approvals.submit(approval_request()))
    assert (
        stepfunctions.list_executions(stateMachineArn=approvals.state_machine_arn)["executions"]
        == []
    )


def test_the_table_holds_no_raw_personal_value(dynamodb: Any, stepfunctions: Any) -> None:
    approvals = backend(dynamodb, stepfunctions)
    request = approval_request()
    assert "***@example.com" in request.statement  # the mask shows what kind it was
    asyncio.run(approvals.submit(request))
    stored = json.dumps(scanned(dynamodb))
    for raw in RAW_VALUES:
        assert raw not in stored


# --- decided: the poller ----------------------------------------------------------------------


def test_decided_learns_a_vote_from_the_table_within_a_second(
    dynamodb: Any, stepfunctions: Any
) -> None:
    approvals = backend(dynamodb, stepfunctions)
    request = approval_request(expires_in=600)  # expiry cannot be what ends the wait

    async def scenario() -> tuple[ApprovalRequest, float]:
        await approvals.submit(request)
        waiting = asyncio.ensure_future(approvals.decided(request.id))
        await asyncio.sleep(0.7)
        assert not waiting.done()
        table = ApprovalsTable(TABLE, dynamodb)
        written = time.monotonic()
        assert await asyncio.to_thread(table.write_vote, approved(request), 0)
        decided = await asyncio.wait_for(waiting, timeout=10)
        return decided, time.monotonic() - written

    decided, took = asyncio.run(scenario())
    assert decided.status is RequestStatus.APPROVED
    assert [vote.approver for vote in decided.votes] == ["dpo-1"]
    assert took < 1.5, f"the decision took {took:.2f} s to arrive"


def test_one_poller_reads_every_awaited_request_in_one_call(
    dynamodb: Any, stepfunctions: Any
) -> None:
    approvals = backend(dynamodb, stepfunctions, poll_seconds=0.2)
    requests = [approval_request() for _ in range(5)]
    calls: list[int] = []
    dynamodb.meta.events.register(
        "provide-client-params.dynamodb.BatchGetItem",
        lambda params, **_: calls.append(len(params["RequestItems"][TABLE]["Keys"])),
    )

    async def scenario() -> list[ApprovalRequest]:
        for request in requests:
            await approvals.submit(request)
        waits = [asyncio.ensure_future(approvals.decided(r.id)) for r in requests]
        await asyncio.sleep(0.5)
        pollers = [t for t in asyncio.all_tasks() if t.get_name() == "custos-approvals-poller"]
        assert len(pollers) == 1
        table = ApprovalsTable(TABLE, dynamodb)
        for request in requests:
            await asyncio.to_thread(table.write_vote, approved(request), 0)
        decided = await asyncio.wait_for(asyncio.gather(*waits), timeout=10)
        await asyncio.sleep(0.5)
        assert pollers[0].done()  # nothing awaited: the poller stops
        return decided

    decided = asyncio.run(scenario())
    assert {r.status for r in decided} == {RequestStatus.APPROVED}
    assert calls
    assert max(calls) == 5  # all five ids in one BatchGetItem
    assert len(calls) < 10


def test_a_cancelled_wait_stops_being_polled(dynamodb: Any, stepfunctions: Any) -> None:
    approvals = backend(dynamodb, stepfunctions, poll_seconds=0.1)
    request = approval_request()

    async def scenario() -> None:
        await approvals.submit(request)
        waiting = asyncio.ensure_future(approvals.decided(request.id))
        await asyncio.sleep(0.3)
        waiting.cancel()
        await asyncio.sleep(0.4)
        pollers = [t for t in asyncio.all_tasks() if t.get_name() == "custos-approvals-poller"]
        assert pollers == []

    asyncio.run(scenario())


def test_a_request_still_pending_well_past_its_expiry_is_taken_as_expired(
    dynamodb: Any, stepfunctions: Any
) -> None:
    approvals = backend(
        dynamodb, stepfunctions, poll_seconds=0.1, expiry_grace=timedelta(seconds=0.5)
    )
    request = approval_request(expires_in=1)

    async def scenario() -> ApprovalRequest:
        await approvals.submit(request)
        return await asyncio.wait_for(approvals.decided(request.id), timeout=10)

    decided = asyncio.run(scenario())
    assert decided.status is RequestStatus.EXPIRED
    assert decided.decided_at is not None
    assert decided.decided_at >= request.expires_at + timedelta(seconds=0.5)


def test_an_unreadable_table_is_retried_until_expiry_then_refused(
    dynamodb: Any, stepfunctions: Any
) -> None:
    approvals = backend(
        dynamodb, stepfunctions, poll_seconds=0.1, expiry_grace=timedelta(seconds=0.2)
    )
    request = approval_request(expires_in=2)

    async def scenario() -> float:
        await approvals.submit(request)
        waiting = asyncio.ensure_future(approvals.decided(request.id))
        await asyncio.sleep(0.3)  # the poller has read the request, and its expiry
        await asyncio.to_thread(dynamodb.delete_table, TableName=TABLE)
        await asyncio.sleep(0.5)
        assert not waiting.done()  # still trying
        with pytest.raises(ApprovalsUnavailable, match=f"approvals table {TABLE}"):
            await asyncio.wait_for(waiting, timeout=10)
        return float((utc_now() - request.expires_at).total_seconds())

    past_expiry = asyncio.run(scenario())
    assert past_expiry >= 0.2


def test_a_request_missing_from_the_table_is_refused_after_the_grace(
    dynamodb: Any, stepfunctions: Any
) -> None:
    approvals = backend(
        dynamodb, stepfunctions, poll_seconds=0.1, expiry_grace=timedelta(seconds=0.3)
    )

    async def scenario() -> None:
        with pytest.raises(ApprovalsUnavailable, match="not in the approvals table"):
            await asyncio.wait_for(approvals.decided("apr-" + "0" * 20), timeout=10)

    asyncio.run(scenario())


# --- withdraw ---------------------------------------------------------------------------------


def test_withdraw_ends_a_pending_request_and_stops_its_execution(
    dynamodb: Any, stepfunctions: Any
) -> None:
    approvals = backend(dynamodb, stepfunctions, poll_seconds=0.1)
    request = approval_request()

    async def scenario() -> ApprovalRequest:
        await approvals.submit(request)
        waiting = asyncio.ensure_future(approvals.decided(request.id))
        await approvals.withdraw(request.id)
        return await asyncio.wait_for(waiting, timeout=10)

    decided = asyncio.run(scenario())
    assert decided.status is RequestStatus.WITHDRAWN
    (item,) = scanned(dynamodb)
    assert item["status"]["S"] == "withdrawn"
    assert item["version"]["N"] == "1"  # a vote read before it can no longer be written
    arn = execution_arn(approvals.state_machine_arn, request.id)
    assert stepfunctions.describe_execution(executionArn=arn)["status"] == "ABORTED"


def test_withdrawing_a_decided_request_changes_nothing(dynamodb: Any, stepfunctions: Any) -> None:
    approvals = backend(dynamodb, stepfunctions)
    request = approval_request()
    asyncio.run(approvals.submit(request))
    table = ApprovalsTable(TABLE, dynamodb)
    assert table.write_vote(approved(request), 0)
    asyncio.run(approvals.withdraw(request.id))
    stored = table.get(request.id)
    assert stored is not None
    assert stored.request.status is RequestStatus.APPROVED
    arn = execution_arn(approvals.state_machine_arn, request.id)
    assert stepfunctions.describe_execution(executionArn=arn)["status"] != "ABORTED"


def test_a_vote_read_before_a_withdrawal_is_not_written(dynamodb: Any, stepfunctions: Any) -> None:
    approvals = backend(dynamodb, stepfunctions)
    request = approval_request()
    asyncio.run(approvals.submit(request))
    asyncio.run(approvals.withdraw(request.id))
    table = ApprovalsTable(TABLE, dynamodb)
    assert not table.write_vote(approved(request), 0)
    stored = table.get(request.id)
    assert stored is not None
    assert stored.request.status is RequestStatus.WITHDRAWN


# --- latest and redeem (retry mode) -----------------------------------------------------------


def test_latest_is_the_newest_request_bound_to_the_statement(
    dynamodb: Any, stepfunctions: Any
) -> None:
    approvals = backend(dynamodb, stepfunctions)
    start = utc_now()
    older = approval_request(mode="retry", created_at=start - timedelta(minutes=5))
    newer = approval_request(mode="retry", created_at=start)
    other = approval_request(mode="retry", statement="DELETE FROM crm.customers WHERE id = 1")

    async def scenario() -> tuple[ApprovalRequest | None, ApprovalRequest | None]:
        for request in (newer, older, other):
            await approvals.submit(request)
        return await approvals.latest(newer.binding), await approvals.latest("0" * 64)

    found, none = asyncio.run(scenario())
    assert older.binding == newer.binding != other.binding
    assert found == newer
    assert none is None


def test_latest_reads_the_status_written_after_submit(dynamodb: Any, stepfunctions: Any) -> None:
    approvals = backend(dynamodb, stepfunctions)
    request = approval_request(mode="retry", grant_seconds=600)
    asyncio.run(approvals.submit(request))
    assert ApprovalsTable(TABLE, dynamodb).write_vote(approved(request), 0)
    found = asyncio.run(approvals.latest(request.binding))
    assert found is not None
    assert found.status is RequestStatus.APPROVED
    assert found.redeemable(utc_now())


def test_an_approved_grant_is_redeemed_exactly_once_under_concurrency(
    dynamodb: Any, stepfunctions: Any
) -> None:
    approvals = backend(dynamodb, stepfunctions)
    request = approval_request(mode="retry", grant_seconds=600)
    asyncio.run(approvals.submit(request))
    assert ApprovalsTable(TABLE, dynamodb).write_vote(approved(request), 0)

    async def race() -> list[bool]:
        return list(await asyncio.gather(*(approvals.redeem(request.id) for _ in range(16))))

    outcomes = asyncio.run(race())
    assert outcomes.count(True) == 1
    assert asyncio.run(approvals.redeem(request.id)) is False
    found = asyncio.run(approvals.latest(request.binding))
    assert found is not None
    assert found.grant_used
    assert not found.redeemable(utc_now())


@pytest.mark.parametrize("case", ["pending", "denied", "wait mode", "grant over", "unknown"])
def test_a_grant_is_not_redeemed_unless_approved_retry_and_current(
    dynamodb: Any, stepfunctions: Any, case: str
) -> None:
    approvals = backend(dynamodb, stepfunctions)
    request = approval_request(mode="wait" if case == "wait mode" else "retry", grant_seconds=600)
    asyncio.run(approvals.submit(request))
    table = ApprovalsTable(TABLE, dynamodb)
    voter = Approver(subject="dpo-1", issuer="email-link", groups=("dpo",))
    if case == "denied":
        assert table.write_vote(request.voted(voter, False, "no", utc_now()), 0)
    elif case in ("wait mode", "grant over"):
        decided = approved(request)
        if case == "grant over":
            decided = decided.model_copy(update={"grant_expires_at": utc_now()})
        assert table.write_vote(decided, 0)
    request_id = "apr-" + "f" * 20 if case == "unknown" else request.id
    assert asyncio.run(approvals.redeem(request_id)) is False


def test_an_item_the_gateway_cannot_read_fails_its_waiters_closed(
    dynamodb: Any, stepfunctions: Any
) -> None:
    approvals = backend(dynamodb, stepfunctions, poll_seconds=0.1)
    request = approval_request()

    async def scenario() -> None:
        await approvals.submit(request)
        await asyncio.to_thread(
            dynamodb.update_item,
            TableName=TABLE,
            Key={"id": {"S": request.id}},
            UpdateExpression="SET #request = :damaged",
            ExpressionAttributeNames={"#request": "request"},
            ExpressionAttributeValues={":damaged": {"S": '{"not": "a request"}'}},
        )
        with pytest.raises(ApprovalsUnavailable, match="cannot read"):
            await asyncio.wait_for(approvals.decided(request.id), timeout=10)

    asyncio.run(scenario())


def test_the_gateway_builds_the_aws_backend_from_its_config(aws: None) -> None:
    key = "k" * 64
    secret = boto3.client("secretsmanager").create_secret(Name="approvals", SecretString=key)
    settings = ApprovalSettings.model_validate(
        {
            "backend": "aws",
            "state_machine_arn": create_state_machine(boto3.client("stepfunctions")),
            "table": TABLE,
            "url": API_URL,
            "key": {"key_secret": secret["ARN"]},
        }
    )
    service = approval_service(settings)
    assert isinstance(service.backend, AwsApprovals)
    assert service.local is None
    assert service.key == key.encode()
    assert service.backend.link("apr-0") == f"{API_URL}/requests/apr-0"
