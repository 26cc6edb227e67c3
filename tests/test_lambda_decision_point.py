"""The proxy's Lambda decision point, talking to the real policy evaluation handler in-process.

moto runs Lambda functions in Docker, which is absent here; so the client given to the
decision point calls ``lambdas.policy_eval.handler.handler`` itself and answers as boto3's
``invoke`` does. Both sides of the wire are our real code.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from custos.policy.engine import Decision, DecisionRequest, Effect, PolicyEngine
from custos.policy.lambda_point import (
    TOO_LARGE_MESSAGE,
    UNAVAILABLE_VERSION,
    UNREACHABLE_MESSAGE,
    LambdaDecisionPoint,
)
from custos.policy.source import load_policy
from custos.sql.analysis import analyze
from lambdas.policy_eval import handler as policy_eval
from lambdas.policy_eval.handler import PolicyInForce
from tests.test_lambda_policy_eval import (
    NO_METRICS,
    POLICY,
    SECRET,
    SECRET_QUERY,
    STRICTER,
    Clock,
    LambdaContext,
)

FUNCTION = "custos-policy-eval"
PATH = ("public",)


class InProcessLambda:
    """boto3's Lambda client, as far as the decision point uses it, running the real handler.

    Like Lambda, an exception in the handler becomes a ``FunctionError`` answer.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.requests: list[dict[str, Any]] = []

    def invoke(self, *, FunctionName: str, Payload: bytes) -> dict[str, Any]:
        assert FunctionName == FUNCTION
        self.calls += 1
        request = json.loads(Payload)
        self.requests.append(request)
        try:
            result = policy_eval.handler(request, LambdaContext())
        except Exception as error:
            failure = {"errorMessage": str(error), "errorType": type(error).__name__}
            return {
                "StatusCode": 200,
                "FunctionError": "Unhandled",
                "Payload": io.BytesIO(json.dumps(failure).encode()),
            }
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(result).encode())}


class AnsweringLambda:
    """A client whose function answers with fixed bytes, or fails with a function error."""

    def __init__(self, payload: bytes, function_error: str | None = None) -> None:
        self.calls = 0
        self.payload = payload
        self.function_error = function_error

    def invoke(self, *, FunctionName: str, Payload: bytes) -> dict[str, Any]:
        self.calls += 1
        response: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(self.payload)}
        if self.function_error:
            response["FunctionError"] = self.function_error
        return response


class StalledLambda:
    """A client whose invocation does not return until the test releases it."""

    def __init__(self) -> None:
        self.calls = 0
        self.released = threading.Event()

    def invoke(self, *, FunctionName: str, Payload: bytes) -> dict[str, Any]:
        self.calls += 1
        self.released.wait(30)
        return {"StatusCode": 200, "Payload": io.BytesIO(b"{}")}


@pytest.fixture
def function_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The function's policy is POLICY in a bundled file; the clock sets when it re-reads."""
    clock = Clock()
    monkeypatch.setattr(policy_eval, "policy", PolicyInForce(clock=clock))
    for name in ("CUSTOS_POLICY_BUCKET", "CUSTOS_POLICY_KEY"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    monkeypatch.setenv("CUSTOS_POLICY_FILE", str(path))
    return clock


@pytest.fixture
def function(function_clock: Clock) -> InProcessLambda:
    return InProcessLambda()


def point_for(client: Any, **options: Any) -> LambdaDecisionPoint:
    return LambdaDecisionPoint(FUNCTION, client_factory=lambda: client, **options)


async def wait(outcome: Decision | Awaitable[Decision]) -> Decision:
    assert not isinstance(outcome, Decision), "expected a miss"
    return await outcome


def resolve(outcome: Decision | Awaitable[Decision]) -> Decision:
    return asyncio.run(wait(outcome))


def decide(
    point: LambdaDecisionPoint,
    sql: str,
    *params: str | None,
    role: str = "agent",
    path: tuple[str, ...] = PATH,
) -> Decision | Awaitable[Decision]:
    return point.decide(role, analyze(sql, path), params, path)


# --- cache ------------------------------------------------------------------------------------


def test_miss_invokes_the_function_and_hit_is_synchronous(function: InProcessLambda) -> None:
    point = point_for(function)
    sql = "SELECT name FROM crm.products WHERE price_cents > $1"

    first = resolve(decide(point, sql, "100"))
    assert first.effect is Effect.ALLOW
    assert first.deciding_rule == "agents-read-crm"
    assert function.calls == 1

    again = decide(point, sql, "100")
    assert again == first
    assert function.calls == 1


def test_request_carries_role_sql_parameters_and_path(function: InProcessLambda) -> None:
    point = point_for(function)
    resolve(decide(point, "SELECT 1; SELECT name FROM products", "7", None, path=("crm",)))
    assert function.requests == [
        {
            "principal": None,
            "role": "agent",
            "sql": "SELECT 1;\nSELECT name FROM products",
            "params": ["7", None],
            "session": {"search_path": ["crm"]},
            "reached": [
                {"functions": [], "unknown": False},
                {"functions": [], "unknown": False},
            ],
        }
    ]


def test_every_part_of_the_key_matters(function: InProcessLambda) -> None:
    point = point_for(function)
    sql = "SELECT full_name, email FROM customers WHERE id = $1"
    masked = resolve(decide(point, sql, "1", path=("crm",)))
    assert masked.effect is Effect.MASK
    assert masked.masks[0].rule == "agents-mask-contact"

    # Another schema, another table: no rule covers public.customers.
    assert resolve(decide(point, sql, "1", path=("public",))).effect is Effect.DENY
    assert resolve(decide(point, sql, "2", path=("crm",))).effect is Effect.MASK
    assert resolve(decide(point, sql, "1", role="intern", path=("crm",))).effect is Effect.DENY
    assert function.calls == 4
    assert decide(point, sql, "1", path=("crm",)) == masked


def test_multiple_statements_are_decided_together(function: InProcessLambda) -> None:
    point = point_for(function)
    decision = resolve(decide(point, "SELECT name FROM crm.products; DELETE FROM crm.orders"))
    assert decision.effect is Effect.DENY
    assert decision.deciding_rule == "no-unbounded-writes"
    assert decision.facts.statements == 2


def test_require_approval_survives_the_wire(function: InProcessLambda) -> None:
    point = point_for(function)
    decision = resolve(decide(point, "UPDATE crm.orders SET status = $1 WHERE id = $2", "x", "1"))
    assert decision.effect is Effect.REQUIRE_APPROVAL
    assert decision.approval is not None
    assert (decision.approval.group, decision.approval.approvals) == ("dpo", 1)


def test_identical_concurrent_misses_share_one_invocation(function: InProcessLambda) -> None:
    point = point_for(function)
    sql = "SELECT name FROM crm.products"
    first, second = decide(point, sql), decide(point, sql)
    other = decide(point, "SELECT id FROM crm.orders")

    async def together() -> list[Decision]:
        return await asyncio.gather(first, second, other)  # type: ignore[arg-type]

    one, two, three = asyncio.run(together())
    assert one == two
    assert one.effect is three.effect is Effect.ALLOW
    assert function.calls == 2


def test_a_new_policy_version_empties_the_cache(
    function: InProcessLambda, function_clock: Clock, tmp_path: Path
) -> None:
    point = point_for(function)
    products = "SELECT name FROM crm.products"
    before = resolve(decide(point, products))
    assert before.effect is Effect.ALLOW
    assert isinstance(decide(point, products), Decision)

    (tmp_path / "policy.yaml").write_text(STRICTER)
    function_clock.now += 30
    after = resolve(decide(point, "SELECT id FROM crm.orders"))
    assert after.policy_version != before.policy_version

    # The cached allow was made under the old policy: asked again, the new one denies.
    now = resolve(decide(point, products))
    assert now.effect is Effect.DENY
    assert now.policy_version == after.policy_version


def test_entries_expire(function: InProcessLambda) -> None:
    clock = Clock()
    point = point_for(function, cache_seconds=60, clock=clock)
    resolve(decide(point, "SELECT 1"))
    clock.now += 60
    assert isinstance(decide(point, "SELECT 1"), Decision)
    clock.now += 1
    resolve(decide(point, "SELECT 1"))
    assert function.calls == 2


def test_least_recently_used_entry_is_evicted(function: InProcessLambda) -> None:
    point = point_for(function, cache_entries=2)
    resolve(decide(point, "SELECT 1"))
    resolve(decide(point, "SELECT 2"))
    assert isinstance(decide(point, "SELECT 1"), Decision)  # now the most recent
    resolve(decide(point, "SELECT 3"))
    assert isinstance(decide(point, "SELECT 1"), Decision)
    resolve(decide(point, "SELECT 2"))
    assert function.calls == 4


# --- decided without the function --------------------------------------------------------


def test_unparsable_statement_is_denied_locally_with_the_engines_message(
    function: InProcessLambda,
) -> None:
    point = point_for(function)
    analysis = analyze("SELEC email FROM crm.customers", PATH)
    expected = PolicyEngine(load_policy(POLICY)).decide(DecisionRequest("agent", analysis))

    decision = point.decide("agent", analysis, (), PATH)
    assert isinstance(decision, Decision)
    assert decision.effect is Effect.DENY
    assert decision.message == expected.message
    assert decision.facts == expected.facts
    assert decision.policy_version == UNAVAILABLE_VERSION

    # Once the function has named its policy, local denies name it too.
    resolve(decide(point, "SELECT 1"))
    assert point.decide("agent", analysis, (), PATH) == expected
    assert function.calls == 1


def test_oversized_statement_is_refused_without_a_call(function: InProcessLambda) -> None:
    point = point_for(function)
    # A text past the analysis' limit is refused by the analysis, before any call.
    huge = decide(point, "SELECT '" + "x" * (1 << 20) + "'")
    assert isinstance(huge, Decision)
    assert huge.effect is Effect.DENY
    assert "characters long" in huge.message
    too_many = resolve(decide(point, "SELECT $1", *(["1"] * 65536)))
    assert too_many.effect is Effect.DENY
    assert too_many.message == TOO_LARGE_MESSAGE
    assert function.calls == 0


# --- fail closed ------------------------------------------------------------------------------


def assert_refused_and_not_cached(point: LambdaDecisionPoint, client: Any) -> Decision:
    sql = SECRET_QUERY + " AND phone = $1"
    decision = resolve(decide(point, sql, SECRET))
    assert decision.effect is Effect.DENY
    assert decision.message == UNREACHABLE_MESSAGE
    assert decision.policy_version == UNAVAILABLE_VERSION
    assert decision.deciding_rule is None
    assert decision.facts.relations_read == ("crm.customers",)
    calls = client.calls
    resolve(decide(point, sql, SECRET))  # not cached: asked again
    assert client.calls == calls + 1
    return decision


def stubbed_client(error_code: str, status: int) -> Any:
    client = boto3.client(
        "lambda",
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    stubber = Stubber(client)
    for _ in range(2):
        stubber.add_client_error(
            "invoke", service_error_code=error_code, service_message="", http_status_code=status
        )
    stubber.activate()
    return client


class CountingClient:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls = 0

    def invoke(self, **arguments: Any) -> Any:
        self.calls += 1
        return self.client.invoke(**arguments)


@pytest.mark.parametrize(
    ("error_code", "status"),
    [("TooManyRequestsException", 429), ("ServiceException", 500)],
)
def test_service_errors_refuse_the_statement(
    error_code: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    client = CountingClient(stubbed_client(error_code, status))
    with caplog.at_level(logging.ERROR, logger="custos.policy"):
        assert_refused_and_not_cached(point_for(client), client)
    assert error_code in caplog.text
    assert SECRET not in caplog.text


def test_function_error_refuses_the_statement(caplog: pytest.LogCaptureFixture) -> None:
    client = AnsweringLambda(
        json.dumps({"errorMessage": SECRET, "errorType": "KeyError"}).encode(), "Unhandled"
    )
    with caplog.at_level(logging.ERROR, logger="custos.policy"):
        assert_refused_and_not_cached(point_for(client), client)
    assert "the function failed (Unhandled)" in caplog.text
    assert SECRET not in caplog.text


@NO_METRICS
def test_function_without_a_policy_refuses_the_statement(
    function: InProcessLambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUSTOS_POLICY_FILE")
    assert_refused_and_not_cached(point_for(function), function)


def test_timeout_refuses_the_statement(caplog: pytest.LogCaptureFixture) -> None:
    client = StalledLambda()
    point = point_for(client, timeout_seconds=0.05)
    sql = SECRET_QUERY
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="custos.policy"):
            refused = [loop.run_until_complete(wait(decide(point, sql))) for _ in range(2)]
    finally:
        # The stalled invocations' threads end only when released; the loop waits for them.
        client.released.set()
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    for decision in refused:
        assert decision.effect is Effect.DENY
        assert decision.message == UNREACHABLE_MESSAGE
    assert client.calls == 2  # the first refusal was not cached
    assert "no answer within 0.05 s" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b'{"effect": "allow"}',
        b'{"error": "invalid policy evaluation request: role: Field required"}',
    ],
)
def test_garbage_payload_refuses_the_statement(
    payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    client = AnsweringLambda(payload)
    with caplog.at_level(logging.ERROR, logger="custos.policy"):
        assert_refused_and_not_cached(point_for(client), client)
    assert SECRET not in caplog.text


def test_decision_with_unknown_fields_or_effect_refuses_the_statement(
    function: InProcessLambda,
) -> None:
    good = resolve(decide(point_for(function), "SELECT 1"))
    shapes = [
        {**good.as_dict(), "conditions": ["only on tuesdays"]},
        {**good.as_dict(), "effect": "allow_with_reservations"},
        {**good.as_dict(), "effect": "require_approval"},  # and no approval named
    ]
    for shape in shapes:
        client = AnsweringLambda(json.dumps(shape).encode())
        assert_refused_and_not_cached(point_for(client), client)


def test_function_refusing_the_request_refuses_the_statement(
    function: InProcessLambda, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="custos.policy"):
        decision = resolve(decide(point_for(function), "SELECT 1", role="r" * 64))
    assert decision.message == UNREACHABLE_MESSAGE
    assert "role: String should have at most 63 characters" in caplog.text


def test_default_client_reaches_aws_and_fails_closed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws(), caplog.at_level(logging.ERROR, logger="custos.policy"):
        point = LambdaDecisionPoint("no-such-function")
        decision = resolve(decide(point, "SELECT 1"))
    assert decision.message == UNREACHABLE_MESSAGE
    assert "ResourceNotFoundException" in caplog.text
