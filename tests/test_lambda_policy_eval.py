"""The policy evaluation Lambda, called as Lambda calls it, with its policy in S3 under moto."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto_credentials import use_fake_credentials

from custos.policy.source import PolicyError
from lambdas.policy_eval import handler as policy_eval
from lambdas.policy_eval.handler import PolicyInForce, PolicyNotConfigured, handler
from lambdas.policy_eval.models import PolicyEvaluationError, PolicyEvaluationResponse

BUCKET = "custos-policy-test"
KEY = "policy/policy.yaml"

# A value from the SQL and the parameters: it must never reach a log line.
SECRET = "alice.secret@example.com"
SECRET_QUERY = f"SELECT full_name FROM crm.customers WHERE email = '{SECRET}'"

POLICY = """
catalog:
  crm.customers:
    subject: id
    columns: {full_name: name, email: email, phone: phone, iban: iban}
  crm.orders: {subject: customer_id}
rules:
  - id: no-unbounded-writes
    match: {kinds: [update, delete], risks: {without_where: true}}
    effect: deny
    message: add a WHERE clause that names the rows to change
  - id: no-copies-of-personal-data
    match: {roles: [agent], risks: {copies_personal_data: true}}
    effect: deny
    message: personal data may not be copied where masking cannot follow it
  - id: agents-mask-contact
    match: {roles: [agent], relations: [crm.customers], reads: [email, phone]}
    effect: mask
    mask: {categories: [email, phone], method: partial}
  - id: agents-read-crm
    match: {roles: [agent], kinds: [select], relations: ["crm.*"]}
    effect: allow
  - id: agents-change-orders
    match: {roles: [agent], kinds: [update], relations: [crm.orders]}
    effect: require_approval
    approval: {group: dpo, approvals: 1}
    message: changing orders needs a data-protection officer's approval
"""

# The same policy, but agents may no longer read crm.products.
# A function that fails before deciding publishes no metric; Powertools warns of that.
NO_METRICS = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")

STRICTER = POLICY.replace('relations: ["crm.*"]', "relations: [crm.customers, crm.orders]")


@dataclass
class LambdaContext:
    """The Powertools docs' stand-in for the Lambda context."""

    function_name: str = "custos-policy-eval"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:custos-policy-eval"
    aws_request_id: str = "da658bd3-2d6f-4e7b-8ec2-937234644fdc"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


class CurrentStdout:
    """Writes to whatever sys.stdout is now: capsys swaps it only when the test runs."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@pytest.fixture
def log_output(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """What the function writes to stdout (CloudWatch, in Lambda), as capsys sees it.

    The Powertools handler holds the stdout of import time; point it at the test's.
    """
    stream_handler = policy_eval.logger.logger_handler
    assert isinstance(stream_handler, logging.StreamHandler)
    monkeypatch.setattr(stream_handler, "stream", CurrentStdout())
    return capsys


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A fresh policy slot, as in a new execution environment, on a clock the test moves."""
    clock = Clock()
    monkeypatch.setattr(policy_eval, "policy", PolicyInForce(clock=clock))
    for name in ("CUSTOS_POLICY_BUCKET", "CUSTOS_POLICY_KEY", "CUSTOS_POLICY_FILE"):
        monkeypatch.delenv(name, raising=False)
    return clock


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> Iterator[Any]:
    """A versioned bucket holding POLICY, named in the function's environment."""
    use_fake_credentials(monkeypatch, "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        client.put_object(Bucket=BUCKET, Key=KEY, Body=POLICY.encode())
        monkeypatch.setenv("CUSTOS_POLICY_BUCKET", BUCKET)
        monkeypatch.setenv("CUSTOS_POLICY_KEY", KEY)
        yield client


def event(sql: str, *params: str | None, role: str = "agent", **extra: Any) -> dict[str, Any]:
    return {
        "principal": {
            "subject": "agent-7",
            "issuer": "https://issuer.example",
            "groups": ["agents"],
        },
        "role": role,
        "sql": sql,
        "params": list(params),
        "session": {"search_path": ["public"]},
        **extra,
    }


def decide(lambda_context: LambdaContext, *args: Any, **kwargs: Any) -> dict[str, Any]:
    result = handler(event(*args, **kwargs), lambda_context)
    # What the proxy reads must accept every answer the function gives.
    PolicyEvaluationResponse.model_validate(result)
    return result


def log_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


# --- decisions --------------------------------------------------------------------------------


def test_allowed_statement(s3: Any, lambda_context: LambdaContext) -> None:
    result = decide(
        lambda_context, "SELECT id, name FROM crm.products WHERE price_cents > $1", "100"
    )
    assert result["effect"] == "allow"
    assert result["deciding_rule"] == "agents-read-crm"
    assert result["facts"]["relations_read"] == ["crm.products"]
    assert len(result["policy_version"]) == 64


def test_denied_statement(s3: Any, lambda_context: LambdaContext) -> None:
    result = decide(lambda_context, "DELETE FROM crm.orders")
    assert result["effect"] == "deny"
    assert result["deciding_rule"] == "no-unbounded-writes"
    assert "add a WHERE clause" in result["message"]


def test_copies_of_personal_data_travel_as_a_risk(s3: Any, lambda_context: LambdaContext) -> None:
    result = decide(lambda_context, "CREATE TABLE public.t AS SELECT email FROM crm.customers")
    assert result["effect"] == "deny"
    assert result["deciding_rule"] == "no-copies-of-personal-data"
    assert "masking cannot follow" in result["message"]
    assert result["facts"]["risks"] == ["copies personal data (email) into public.t.email"]


def test_functions_the_gateway_says_a_statement_reaches_are_decided_as_called(
    s3: Any, lambda_context: LambdaContext
) -> None:
    # A view over lo_creat(-1): the text names no function; the gateway's catalog does.
    plain = decide(lambda_context, "SELECT * FROM crm.products")
    assert plain["effect"] == "allow"
    reached = [{"functions": ["lo_creat", "pg_catalog.lo_creat"], "unknown": False}]
    through_view = decide(lambda_context, "SELECT * FROM crm.products", reached=reached)
    assert through_view["effect"] == "deny"
    assert "it calls lo_creat" in through_view["message"]
    unknown = [{"functions": [], "unknown": True}]
    assert decide(lambda_context, "SELECT * FROM crm.products", reached=unknown)["effect"] == "deny"
    # A list that does not match the statements is read as reaching the unknown.
    mismatched = [{"functions": []}, {"functions": []}]
    result = decide(lambda_context, "SELECT * FROM crm.products", reached=mismatched)
    assert result["effect"] == "deny"


def test_statement_no_rule_covers_is_denied_by_default(
    s3: Any, lambda_context: LambdaContext
) -> None:
    result = decide(lambda_context, "DROP TABLE crm.customers")
    assert result["effect"] == "deny"
    assert result["deciding_rule"] is None
    assert "ask the policy owner" in result["message"]


def test_statement_requiring_approval(s3: Any, lambda_context: LambdaContext) -> None:
    result = decide(lambda_context, "UPDATE crm.orders SET status = $1 WHERE id = $2", "x", "42")
    assert result["effect"] == "require_approval"
    assert result["approval"] == {
        "rule": "agents-change-orders",
        "group": "dpo",
        "approvals": 1,
        "grant_for_seconds": None,
        "mode": "wait",
        "expires_seconds": 900,
        "estimate_rows": False,
    }


def test_masked_statement_resolves_names_on_the_search_path(
    s3: Any, lambda_context: LambdaContext
) -> None:
    result = decide(
        lambda_context,
        "SELECT full_name, email FROM customers WHERE id = $1",
        "7",
        session={"search_path": ["crm"]},
    )
    assert result["effect"] == "mask"
    assert result["masks"] == [
        {"rule": "agents-mask-contact", "categories": ["email", "phone"], "method": "partial"}
    ]
    assert result["facts"]["relations_read"] == ["crm.customers"]


def test_unparsable_statement_is_an_ordinary_deny(s3: Any, lambda_context: LambdaContext) -> None:
    result = decide(lambda_context, "SELEC email FROM crm.customers")
    assert result["effect"] == "deny"
    assert result["facts"]["unparsable"] is True
    assert "could not parse" in result["message"]


def test_event_may_arrive_as_json_text(s3: Any, lambda_context: LambdaContext) -> None:
    result = handler(json.dumps(event("SELECT 1")), lambda_context)  # type: ignore[arg-type]
    assert result["effect"] == "allow"


def test_principal_is_optional(s3: Any, lambda_context: LambdaContext) -> None:
    result = handler({"role": "agent", "sql": "SELECT * FROM crm.products"}, lambda_context)
    assert result["effect"] == "allow"


# --- the policy in force ----------------------------------------------------------------------


def test_new_policy_version_is_picked_up_after_the_poll_interval(
    s3: Any, clock: Clock, lambda_context: LambdaContext
) -> None:
    sql = "SELECT name FROM crm.products"
    first = decide(lambda_context, sql)
    assert first["effect"] == "allow"

    s3.put_object(Bucket=BUCKET, Key=KEY, Body=STRICTER.encode())
    clock.now += 29
    assert decide(lambda_context, sql) == first  # not yet checked

    clock.now += 1
    second = decide(lambda_context, sql)
    assert second["effect"] == "deny"
    assert second["policy_version"] != first["policy_version"]


def test_broken_new_version_leaves_the_last_good_policy_in_force(
    s3: Any, clock: Clock, lambda_context: LambdaContext
) -> None:
    first = decide(lambda_context, "SELECT name FROM crm.products")
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=b"rules: [{id: Bad Id, effect: allow}]")
    clock.now += 30
    assert decide(lambda_context, "SELECT name FROM crm.products") == first


def test_policy_from_a_bundled_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock, lambda_context: LambdaContext
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    monkeypatch.setenv("CUSTOS_POLICY_FILE", str(path))
    assert decide(lambda_context, "SELECT name FROM crm.products")["effect"] == "allow"

    path.write_text(STRICTER)
    clock.now += 30
    assert decide(lambda_context, "SELECT name FROM crm.products")["effect"] == "deny"


@NO_METRICS
def test_no_policy_configured_is_a_clear_error(clock: Clock, lambda_context: LambdaContext) -> None:
    with pytest.raises(PolicyNotConfigured, match="CUSTOS_POLICY_BUCKET and CUSTOS_POLICY_KEY"):
        handler(event("SELECT 1"), lambda_context)


@NO_METRICS
def test_half_an_s3_location_is_a_clear_error(
    clock: Clock, monkeypatch: pytest.MonkeyPatch, lambda_context: LambdaContext
) -> None:
    monkeypatch.setenv("CUSTOS_POLICY_BUCKET", BUCKET)
    with pytest.raises(PolicyNotConfigured, match="CUSTOS_POLICY_KEY is not set"):
        handler(event("SELECT 1"), lambda_context)


@NO_METRICS
def test_two_policy_locations_are_a_clear_error(
    s3: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: LambdaContext
) -> None:
    monkeypatch.setenv("CUSTOS_POLICY_FILE", "policy.yaml")
    with pytest.raises(PolicyNotConfigured, match="set only one"):
        handler(event("SELECT 1"), lambda_context)


@NO_METRICS
def test_missing_policy_object_is_a_clear_error(
    s3: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: LambdaContext
) -> None:
    monkeypatch.setenv("CUSTOS_POLICY_KEY", "policy/missing.yaml")
    with pytest.raises(PolicyError, match=r"s3://custos-policy-test/policy/missing\.yaml"):
        handler(event("SELECT 1"), lambda_context)


def test_import_reads_no_policy() -> None:
    # Were the policy read at import, this import would fail: S3 is a closed port away,
    # and there are no credentials.
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "CUSTOS_POLICY_BUCKET": BUCKET,
        "CUSTOS_POLICY_KEY": KEY,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    subprocess.run(
        [sys.executable, "-c", "import lambdas.policy_eval.handler"],
        env=environment,
        cwd=Path(__file__).parent.parent,
        check=True,
        timeout=60,
    )


# --- invalid events ---------------------------------------------------------------------------


def error_of(result: dict[str, Any]) -> str:
    return PolicyEvaluationError.model_validate(result).error


@pytest.mark.parametrize(
    ("bad_event", "expected"),
    [
        ({"sql": "SELECT 1"}, "role: Field required"),
        ({"role": 7, "sql": "SELECT 1"}, "role: Input should be a valid string"),
        ({"role": "", "sql": "SELECT 1"}, "role: String should have at least 1 character"),
        ({"role": "r" * 64, "sql": "SELECT 1"}, "role: String should have at most 63"),
        ({"role": "agent"}, "sql: Field required"),
        ({"role": "agent", "sql": ["SELECT 1"]}, "sql: Input should be a valid string"),
        (
            {"role": "agent", "sql": "SELECT 1", "params": "42"},
            "params: Input should be a valid list",
        ),
        (
            {"role": "agent", "sql": "SELECT $1", "params": [42]},
            "params.0: Input should be a valid string",
        ),
        (
            {"role": "agent", "sql": "SELECT $1", "params": ["1"] * 65536},
            "params: List should have at most 65535 items",
        ),
        (
            {"role": "agent", "sql": "SELECT 1", "session": {"search_path": "crm"}},
            "session.search_path: Input should be a valid list",
        ),
        (
            {"role": "agent", "sql": "SELECT 1", "principal": {"subject": "s"}},
            "principal.issuer: Field required",
        ),
        ({"role": "agent", "sql": "SELECT 1", "user": "x"}, "user: unknown field"),
        ([], "Input should be a valid dictionary"),
        ("{not json", "Invalid JSON"),
    ],
)
def test_invalid_event_gets_a_clear_error(
    s3: Any, lambda_context: LambdaContext, bad_event: Any, expected: str
) -> None:
    message = error_of(handler(bad_event, lambda_context))
    assert message.startswith("invalid policy evaluation request: ")
    assert expected in message


def test_oversized_sql_gets_a_clear_error_without_its_text(
    s3: Any, lambda_context: LambdaContext
) -> None:
    sql = f"SELECT '{SECRET}' " + "-" * (1 << 20)
    message = error_of(handler(event(sql), lambda_context))
    size = len(sql.encode())
    assert f"sql: the SQL text is {size} bytes; at most 1048576 (1 MiB) is accepted" in message
    assert SECRET not in message


def test_invalid_values_are_not_echoed(s3: Any, lambda_context: LambdaContext) -> None:
    message = error_of(
        handler({"role": "agent", "sql": "SELECT $1", "params": [{"v": SECRET}]}, lambda_context)
    )
    assert SECRET not in message


# --- logs and metrics -------------------------------------------------------------------------


def test_logs_name_the_decision_but_never_the_sql_or_parameters(
    s3: Any, lambda_context: LambdaContext, log_output: pytest.CaptureFixture[str]
) -> None:
    decide(lambda_context, SECRET_QUERY, SECRET)
    decide(lambda_context, "SELECT full_name FROM crm.customers WHERE email = $1", SECRET)
    handler({"role": "agent", "sql": SECRET, "params": [SECRET], "extra": SECRET}, lambda_context)
    handler(event(f"SELEC '{SECRET}'", SECRET), lambda_context)

    output = log_output.readouterr().out
    assert SECRET not in output
    lines = log_lines(output)
    decisions = [line for line in lines if line.get("message") == "policy decision"]
    assert len(decisions) == 3
    first = decisions[0]
    assert first["service"] == "custos-policy"
    assert first["role"] == "agent"
    assert first["relations_read"] == ["crm.customers"]
    assert first["kinds"] == ["select"]
    assert first["effect"] in {"allow", "mask"}
    assert first["policy_version"]
    assert first["function_request_id"] == lambda_context.aws_request_id
    invalid = [line for line in lines if line.get("message") == "invalid policy evaluation request"]
    assert invalid[0]["problems"] == [
        "extra: unknown field; the request has principal, role, sql, params and session"
    ]


def test_decisions_are_counted_by_effect(
    s3: Any, lambda_context: LambdaContext, log_output: pytest.CaptureFixture[str]
) -> None:
    decide(lambda_context, "DELETE FROM crm.orders")
    metrics = [line for line in log_lines(log_output.readouterr().out) if "_aws" in line]
    assert len(metrics) == 1
    emitted = metrics[0]
    assert emitted["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Custos"
    assert emitted["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["effect"]]
    assert emitted["effect"] == "deny"
    assert emitted["Decisions"] == [1.0]


def test_a_parse_error_quoting_the_statement_reaches_the_caller_but_not_the_log(
    s3: Any, lambda_context: LambdaContext, log_output: pytest.CaptureFixture[str]
) -> None:
    # PostgreSQL's parser names the token it stopped at, here a value from the statement.
    result = decide(lambda_context, f"SELECT id FROM crm.customers WHERE email = 'a' '{SECRET}'")
    assert result["effect"] == "deny"
    assert SECRET in result["message"]  # the caller sent it and needs it to fix the statement
    assert SECRET not in log_output.readouterr().out
