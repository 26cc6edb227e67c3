"""The approvals stack, and what the gateway stack gains with it: assertions on the
templates, the workflow's definition run under moto, cdk-nag and cfn-lint.

The app is synthesized here with `approvals` in the context (the session's test context,
tests/cdk_fixtures.py, has none, and its app no approvals stack).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import jsii.errors
import pytest
from cdk_fixtures import TEST_CONTEXT, CdkSynth, context_with, only_resource, template_resources
from moto import mock_aws
from moto.core.config import DefaultConfig

from custos.config import GatewayConfig
from stacks.app_builder import APPROVALS_STACK, build_app
from stacks.config import ContextError, parse_context

STACK = APPROVALS_STACK
GATEWAY = "Custos-Gateway"
REGION = TEST_CONTEXT["region"]
ACCOUNT = TEST_CONTEXT["account"]
WORKFLOW_NAME = f"{STACK}-Workflow"
APPROVALS = {
    "approvers": {
        "dpo": [
            {"id": "dpo-1", "email": "dpo-1@example.com"},
            {"id": "dpo-2", "email": "dpo-2@example.com"},
        ],
        # dpo-1 is in both groups: one subscription, one address.
        "dba": [
            {"id": "dba-1", "email": "dba-1@example.com"},
            {"id": "dpo-1", "email": "dpo-1@example.com"},
        ],
    },
    "decide_minutes": 5,
    "api_rate_limit": 7,
    "api_burst_limit": 9,
}
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
CFN_LINT_IGNORES = ("W3005", "W3010")  # as tests/test_stacks_nag_and_lint.py explains


@dataclass(frozen=True)
class Synth:
    templates: dict[str, dict[str, Any]]
    files: dict[str, Path]
    violations: list[tuple[str, str]]
    acknowledged: list[tuple[str, str, str]]  # rule, path, reason

    def template(self, stack: str = STACK) -> dict[str, Any]:
        return self.templates[stack]


@pytest.fixture(scope="module")
def synth() -> Iterator[Synth]:
    context = context_with(approvals=APPROVALS)
    with tempfile.TemporaryDirectory() as outdir:
        app = build_app({"custos": context, "custos:skip_bundling": True}, outdir=outdir)
        # Unacknowledged findings fail the synth after writing the templates and the
        # report; the nag test below names them.
        with contextlib.suppress(jsii.errors.JSIIError):
            app.synth()
        out = Path(outdir)
        report_file = out / "validation-report.json"
        report = json.loads(report_file.read_text()) if report_file.exists() else {}

        def findings(key: str) -> list[dict[str, Any]]:
            return [
                {"rule": v["ruleName"], "path": c["constructPath"], "reason": v.get("reason")}
                for plugin in report.get("pluginReports", [])
                for v in plugin.get(key, [])
                for c in v["violatingConstructs"]
            ]

        files = {p.name.removesuffix(".template.json"): p for p in out.glob("*.template.json")}
        yield Synth(
            templates={name: json.loads(path.read_text()) for name, path in files.items()},
            files=files,
            violations=[(f["rule"], f["path"]) for f in findings("violations")],
            acknowledged=[
                (f["rule"], f["path"], f["reason"]) for f in findings("suppressedViolations")
            ],
        )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _grants(template: dict[str, Any], role_fragment: str) -> dict[tuple[str, ...], Any]:
    """A role's statements by their sorted actions; each an Allow, no wildcard action."""
    role, _ = only_resource(template, "AWS::IAM::Role", role_fragment)
    by_actions: dict[tuple[str, ...], Any] = {}
    for policy in template_resources(template, "AWS::IAM::Policy").values():
        if {"Ref": role} not in policy["Properties"]["Roles"]:
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = tuple(sorted(_as_list(statement["Action"])))
            assert statement["Effect"] == "Allow"
            assert all("*" not in action for action in actions), actions
            assert actions not in by_actions
            by_actions[actions] = statement
    return by_actions


def _joined(value: Any, parts: dict[str, str] | None = None) -> str:
    """A Fn::Join as text: references as `<Logical.Attribute>`, or as `parts` name them."""
    if isinstance(value, str):
        return value
    pieces = []
    for part in value["Fn::Join"][1]:
        if isinstance(part, str):
            pieces.append(part)
            continue
        key = json.dumps(part, sort_keys=True)
        if parts is not None and key in parts:
            pieces.append(parts[key])
        elif "Ref" in part:
            pieces.append({"AWS::Partition": "aws"}.get(part["Ref"], f"<{part['Ref']}>"))
        elif "Fn::GetAtt" in part:
            pieces.append(f"<{'.'.join(part['Fn::GetAtt'])}>")
        else:
            pieces.append(f"<{part['Fn::ImportValue']}>")
    return "".join(pieces)


def _function(template: dict[str, Any], fragment: str) -> tuple[str, dict[str, Any]]:
    found = [
        (name, resource["Properties"])
        for name, resource in template_resources(template, "AWS::Lambda::Function").items()
        if name.startswith(fragment)
    ]
    assert len(found) == 1
    return found[0]


def _definition(template: dict[str, Any]) -> dict[str, Any]:
    _, machine = only_resource(template, "AWS::StepFunctions::StateMachine")
    definition: dict[str, Any] = json.loads(_joined(machine["DefinitionString"]))
    return definition


# --- with and without approvals in the context ------------------------------------------------


def test_without_approvals_there_is_no_stack_and_the_gateway_refuses_them(
    cdk_synth: CdkSynth,
) -> None:
    assert STACK not in cdk_synth.templates
    gateway: dict[str, Any] = dict(cdk_synth.templates[GATEWAY].to_json())
    _, task = only_resource(gateway, "AWS::ECS::TaskDefinition")
    document = json.dumps(task["ContainerDefinitions"][0]["Environment"])
    assert "approvals" not in document
    assert not any(
        action.startswith("states:")
        for policy in template_resources(gateway, "AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        for action in _as_list(statement["Action"])
    )


def test_cdk_json_holds_an_example_of_approvers() -> None:
    cdk_json = json.loads((Path(__file__).resolve().parent.parent / "cdk.json").read_text())
    approvals = parse_context(cdk_json["context"]["custos"]).approvals
    assert approvals is not None
    assert set(approvals.approvers) == {"dpo", "dba"}


@pytest.mark.parametrize(
    ("approvals", "problem"),
    [
        ({"approvers": {}}, "approvals.approvers: List should have at least 1 item|at least 1"),
        ({"approvers": {"dpo": []}}, "group dpo lists no approver"),
        (
            {
                "approvers": {
                    "dpo": [{"id": "a", "email": "a@x.example"}],
                    "dba": [{"id": "a", "email": "other@x.example"}],
                }
            },
            "approver a has two email addresses",
        ),
        (
            {
                "approvers": {
                    "dpo": [
                        {"id": "a", "email": "same@x.example"},
                        {"id": "b", "email": "SAME@x.example"},
                    ]
                }
            },
            "approvers a and b share an email address",
        ),
        ({"approvers": {"dpo": [{"id": "a", "email": "not-an-address"}]}}, "approvers.dpo.0.email"),
        (
            {"approvers": {"dpo": [{"id": "has space", "email": "a@x.example"}]}},
            "approvers.dpo.0.id",
        ),
        ({"approvers": {"dp o": [{"id": "a", "email": "a@x.example"}]}}, "not a policy group name"),
        ({"approvers": {"dpo": [{"id": "a", "email": "a@x.example"}]}, "extra": 1}, "unknown key"),
        (
            {"approvers": {"dpo": [{"id": "a", "email": "a@x.example"}]}, "decide_minutes": 0},
            "decide_minutes",
        ),
    ],
)
def test_bad_approvals_context_is_named(approvals: dict[str, Any], problem: str) -> None:
    with pytest.raises(ContextError, match=problem):
        parse_context(context_with(approvals=approvals))


# --- the table, the key, the topic ------------------------------------------------------------


def test_requests_table(synth: Synth) -> None:
    template = synth.template()
    name, table = only_resource(template, "AWS::DynamoDB::Table")
    assert template["Resources"][name]["DeletionPolicy"] == "Retain"
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"] == {"SSEEnabled": True}
    assert table["TimeToLiveSpecification"] == {"AttributeName": "delete_after", "Enabled": True}
    (index,) = table["GlobalSecondaryIndexes"]
    assert index == {
        "IndexName": "by_binding",
        "KeySchema": [
            {"AttributeName": "binding", "KeyType": "HASH"},
            {"AttributeName": "created_at", "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    }


def test_link_key_is_a_generated_secret(synth: Synth) -> None:
    _, secret = only_resource(synth.template(), "AWS::SecretsManager::Secret")
    assert secret["GenerateSecretString"] == {"ExcludePunctuation": True, "PasswordLength": 64}
    assert "SecretString" not in secret


def test_topic_is_encrypted_and_tls_only(synth: Synth) -> None:
    template = synth.template()
    key, key_properties = only_resource(template, "AWS::KMS::Key")
    assert key_properties["EnableKeyRotation"] is True
    topic, properties = only_resource(template, "AWS::SNS::Topic")
    assert properties["KmsMasterKeyId"] == {"Fn::GetAtt": [key, "Arn"]}
    _, policy = only_resource(template, "AWS::SNS::TopicPolicy")
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement["Resource"] == {"Ref": topic}


def test_each_approver_has_one_email_subscription_filtered_to_them(synth: Synth) -> None:
    template = synth.template()
    topic, _ = only_resource(template, "AWS::SNS::Topic")
    subscriptions = [
        resource["Properties"]
        for resource in template_resources(template, "AWS::SNS::Subscription").values()
    ]
    assert sorted((s["Endpoint"], json.dumps(s["FilterPolicy"])) for s in subscriptions) == sorted(
        (f"{approver}@example.com", json.dumps({"approver": [approver]}))
        for approver in ("dpo-1", "dpo-2", "dba-1")
    )
    assert {s["Protocol"] for s in subscriptions} == {"email"}
    assert all(s["TopicArn"] == {"Ref": topic} for s in subscriptions)


# --- the functions ----------------------------------------------------------------------------


def test_functions_run_their_handlers_with_their_settings(synth: Synth) -> None:
    template = synth.template()
    table, _ = only_resource(template, "AWS::DynamoDB::Table")
    topic, _ = only_resource(template, "AWS::SNS::Topic")
    secret, _ = only_resource(template, "AWS::SecretsManager::Secret")
    directory = json.dumps(APPROVALS["approvers"], separators=(",", ":"))
    shared = {
        "APPROVALS_TABLE": {"Ref": table},
        "APPROVALS_TOPIC": {"Ref": topic},
        "APPROVERS": directory,
    }
    expected = {
        "Notifier": ("lambdas.approvals_notify.handler.handler", {"LINK_KEY_SECRET", "API_URL"}),
        "Callback": (
            "lambdas.approvals_callback.handler.handler",
            {"LINK_KEY_SECRET", "DECIDE_MINUTES"},
        ),
        "Recorder": (
            "lambdas.approvals_record.handler.handler",
            {"AUDIT_TABLE", "AUDIT_RETENTION_DAYS"},
        ),
    }
    for fragment, (handler, own) in expected.items():
        _, function = _function(template, fragment)
        assert function["Handler"] == handler
        assert function["Runtime"] == "python3.12"
        environment = function["Environment"]["Variables"]
        assert set(environment) == set(shared) | own
        assert {name: environment[name] for name in shared} == shared
        if "LINK_KEY_SECRET" in own:
            assert environment["LINK_KEY_SECRET"] == {"Ref": secret}
    _, callback = _function(template, "Callback")
    assert callback["Environment"]["Variables"]["DECIDE_MINUTES"] == "5"
    _, notifier = _function(template, "Notifier")
    url = _joined(notifier["Environment"]["Variables"]["API_URL"])
    assert url.startswith("https://<Api")
    assert ".execute-api.eu-central-1." in url
    assert url.endswith("/")
    _, recorder = _function(template, "Recorder")
    recording = recorder["Environment"]["Variables"]
    assert "RefEvents" in recording["AUDIT_TABLE"]["Fn::ImportValue"]
    assert recording["AUDIT_RETENTION_DAYS"] == str(TEST_CONTEXT["events_ttl_days"])


def _kms_via_sns(statement: dict[str, Any], key: str) -> None:
    assert statement["Resource"] == {"Fn::GetAtt": [key, "Arn"]}
    assert statement["Condition"] == {
        "StringEquals": {"kms:ViaService": f"sns.{REGION}.amazonaws.com"}
    }


def test_each_function_may_do_exactly_what_it_calls(synth: Synth) -> None:
    template = synth.template()
    table, _ = only_resource(template, "AWS::DynamoDB::Table")
    topic, _ = only_resource(template, "AWS::SNS::Topic")
    key, _ = only_resource(template, "AWS::KMS::Key")
    secret, _ = only_resource(template, "AWS::SecretsManager::Secret")
    logs = ("logs:CreateLogStream", "logs:PutLogEvents")
    read_secret = ("secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue")
    publish, topic_key = ("sns:Publish",), ("kms:Decrypt", "kms:GenerateDataKey")
    table_arn = {"Fn::GetAtt": [table, "Arn"]}

    notifier = _grants(template, "NotifierRole")
    assert set(notifier) == {
        logs,
        ("dynamodb:GetItem", "dynamodb:UpdateItem"),
        publish,
        topic_key,
        read_secret,
    }
    callback = _grants(template, "CallbackRole")
    sends = ("states:SendTaskFailure", "states:SendTaskSuccess")
    assert set(callback) == {
        logs,
        ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"),
        publish,
        topic_key,
        read_secret,
        sends,
    }
    recorder = _grants(template, "RecorderRole")
    events_write = ("dynamodb:BatchWriteItem", "dynamodb:PutItem")
    audit_key = ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey")
    assert set(recorder) == {
        logs,
        ("dynamodb:GetItem", "dynamodb:UpdateItem"),
        publish,
        topic_key,
        events_write,
        audit_key,
    }
    for grants in (notifier, callback, recorder):
        dynamodb = next(s for actions, s in grants.items() if "dynamodb:GetItem" in actions)
        assert dynamodb["Resource"] == table_arn
        assert grants[publish]["Resource"] == {"Ref": topic}
        _kms_via_sns(grants[topic_key], key)
    for grants in (notifier, callback):
        assert grants[read_secret]["Resource"] == {"Ref": secret}
    assert _joined(callback[sends]["Resource"]) == (
        f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{WORKFLOW_NAME}"
    )
    assert "EventsD" in recorder[events_write]["Resource"]["Fn::ImportValue"]
    assert "AuditKey" in recorder[audit_key]["Resource"]["Fn::ImportValue"]
    assert recorder[audit_key]["Condition"] == {
        "StringEquals": {"kms:ViaService": f"dynamodb.{REGION}.amazonaws.com"}
    }
    roles = template_resources(template, "AWS::IAM::Role")
    assert not any(
        "ManagedPolicyArns" in role["Properties"]
        for name, role in roles.items()
        if not name.startswith("ApiCloudWatchRole")
    )


# --- the API ----------------------------------------------------------------------------------


def test_api_has_the_two_routes_on_the_callback_and_nothing_else(synth: Synth) -> None:
    template = synth.template()
    api, rest = only_resource(template, "AWS::ApiGateway::RestApi")
    assert rest["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    callback, _ = _function(template, "Callback")
    validator, validation = only_resource(template, "AWS::ApiGateway::RequestValidator")
    assert (validation["ValidateRequestParameters"], validation["ValidateRequestBody"]) == (
        True,
        True,
    )
    paths = {
        name: resource["Properties"]["PathPart"]
        for name, resource in template_resources(template, "AWS::ApiGateway::Resource").items()
    }
    methods = {}
    for method in template_resources(template, "AWS::ApiGateway::Method").values():
        properties = method["Properties"]
        methods[(properties["HttpMethod"], paths[properties["ResourceId"]["Ref"]])] = properties
    assert set(methods) == {("GET", "{id}"), ("POST", "decision")}
    for properties in methods.values():
        assert properties["Integration"]["Type"] == "AWS_PROXY"
        assert callback in json.dumps(properties["Integration"]["Uri"])
        assert properties["RequestValidatorId"] == {"Ref": validator}
    assert methods[("GET", "{id}")]["RequestParameters"] == {"method.request.querystring.t": False}
    # Invoked from the stage's two routes only (no console test invocations).
    sources = sorted(
        _joined(permission["Properties"]["SourceArn"]).split("/", 2)[2]
        for permission in template_resources(template, "AWS::Lambda::Permission").values()
    )
    assert sources == ["GET/requests/*", "POST/requests/*/decision"]
    assert api


def test_stage_logs_access_without_query_strings_and_is_throttled(synth: Synth) -> None:
    template = synth.template()
    access_logs, _ = only_resource(template, "AWS::Logs::LogGroup", "ApiAccessLogs")
    _, stage = only_resource(template, "AWS::ApiGateway::Stage")
    assert stage["StageName"] == "approvals"
    setting = stage["AccessLogSetting"]
    assert setting["DestinationArn"] == {"Fn::GetAtt": [access_logs, "Arn"]}
    logged = json.loads(setting["Format"])
    assert logged["resourcePath"] == "$context.resourcePath"  # the route, never the query
    assert not any("path" in value.lower() and "resource" not in value for value in logged.values())
    (method,) = stage["MethodSettings"]
    assert method == {
        "DataTraceEnabled": False,
        "HttpMethod": "*",
        "LoggingLevel": "ERROR",
        "MetricsEnabled": True,
        "ResourcePath": "/*",
        "ThrottlingBurstLimit": 9,
        "ThrottlingRateLimit": 7,
    }
    _, account = only_resource(template, "AWS::ApiGateway::Account")
    assert "CloudWatchRole" in account["CloudWatchRoleArn"]["Fn::GetAtt"][0]


# --- the workflow -----------------------------------------------------------------------------


def test_workflow_notifies_waits_on_its_token_and_records_each_outcome(synth: Synth) -> None:
    template = synth.template()
    notifier, _ = _function(template, "Notifier")
    recorder, _ = _function(template, "Recorder")
    definition = _definition(template)
    assert definition["StartAt"] == "Notify"
    states = definition["States"]
    assert set(states) == {"Notify", "Record decision", "Record denial", "Record expiry"}
    notify = states["Notify"]
    assert notify["Resource"] == "arn:aws:states:::lambda:invoke.waitForTaskToken"
    assert notify["Parameters"] == {
        "FunctionName": f"<{notifier}.Arn>",
        "Payload": {"request_id.$": "$.request_id", "task_token.$": "$$.Task.Token"},
    }
    assert notify["TimeoutSecondsPath"] == "$.timeout_seconds"
    assert "TimeoutSeconds" not in notify
    assert notify["Next"] == "Record decision"
    assert [(c["ErrorEquals"], c["Next"]) for c in notify["Catch"]] == [
        (["States.Timeout"], "Record expiry"),
        (["Denied"], "Record denial"),
        (["States.ALL"], "Record expiry"),
    ]
    retried = [retry["ErrorEquals"] for retry in notify["Retry"]]
    assert ["ApprovalsUnavailable", "NotificationFailed"] in retried
    # No retry of Notify may match a denial or a timeout: either would mail everyone again.
    assert not any(
        {"Denied", "States.ALL", "States.TaskFailed", "States.Timeout"} & set(r) for r in retried
    )
    for name, outcome in (
        ("Record decision", "decided"),
        ("Record denial", "denied"),
        ("Record expiry", "expired"),
    ):
        state = states[name]
        assert state["Resource"] == "arn:aws:states:::lambda:invoke"
        assert state["Parameters"] == {
            "FunctionName": f"<{recorder}.Arn>",
            "Payload": {"request_id.$": "$.request_id", "outcome": outcome},
        }
        assert state["End"] is True
        assert ["States.TaskFailed"] in [retry["ErrorEquals"] for retry in state["Retry"]]


def test_workflow_is_standard_logged_without_data_and_traced(synth: Synth) -> None:
    template = synth.template()
    log_group, _ = only_resource(template, "AWS::Logs::LogGroup", "WorkflowLogs")
    _, machine = only_resource(template, "AWS::StepFunctions::StateMachine")
    assert machine["StateMachineName"] == WORKFLOW_NAME
    assert machine["StateMachineType"] == "STANDARD"
    assert machine["LoggingConfiguration"] == {
        "Destinations": [
            {"CloudWatchLogsLogGroup": {"LogGroupArn": {"Fn::GetAtt": [log_group, "Arn"]}}}
        ],
        "IncludeExecutionData": False,
        "Level": "ALL",
    }
    assert machine["TracingConfiguration"] == {"Enabled": True}


def test_workflow_may_invoke_the_notifier_and_recorder_only(synth: Synth) -> None:
    template = synth.template()
    notifier, _ = _function(template, "Notifier")
    recorder, _ = _function(template, "Recorder")
    role, _ = only_resource(template, "AWS::IAM::Role", "WorkflowRole")
    invoked = sorted(
        arn if isinstance(arn, str) else _joined(arn) if "Fn::Join" in arn else json.dumps(arn)
        for policy in template_resources(template, "AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if "lambda:InvokeFunction" in _as_list(statement["Action"])
        for arn in _as_list(statement["Resource"])
    )
    assert invoked == sorted(
        [
            json.dumps({"Fn::GetAtt": [notifier, "Arn"]}),
            json.dumps({"Fn::GetAtt": [recorder, "Arn"]}),
            f"<{notifier}.Arn>:*",
            f"<{recorder}.Arn>:*",
        ]
    )


@pytest.mark.parametrize("answer", ["approve", "deny", "none"])
def test_the_synthesized_workflow_runs_under_moto(
    synth: Synth, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """The definition as synthesized, executed by moto, with stand-ins for its Lambdas:
    the task waits on its token, and each answer (and none) leads to its record step."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    template = synth.template()
    notifier, _ = _function(template, "Notifier")
    recorder, _ = _function(template, "Recorder")
    config: DefaultConfig = {
        "stepfunctions": {"execute_state_machine": True},
        "lambda": {"use_docker": False},
    }
    with mock_aws(config=config):
        role = boto3.client("iam").create_role(RoleName="workflow", AssumeRolePolicyDocument="{}")
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("stand_in.py", "def handler(event, context):\n    return event\n")
        stand_in = boto3.client("lambda").create_function(
            FunctionName="stand-in",
            Runtime="python3.12",
            Role=role["Role"]["Arn"],
            Handler="stand_in.handler",
            Code={"ZipFile": code.getvalue()},
        )["FunctionArn"]
        _, machine = only_resource(template, "AWS::StepFunctions::StateMachine")
        parts = {
            json.dumps({"Fn::GetAtt": [function, "Arn"]}, sort_keys=True): stand_in
            for function in (notifier, recorder)
        }
        definition = _joined(machine["DefinitionString"], parts)
        states = boto3.client("stepfunctions")
        workflow = states.create_state_machine(
            name=WORKFLOW_NAME, definition=definition, roleArn=role["Role"]["Arn"]
        )["stateMachineArn"]
        request_id = "apr-" + "a" * 20
        execution = states.start_execution(
            stateMachineArn=workflow,
            name=request_id,
            input=json.dumps(
                {"request_id": request_id, "timeout_seconds": 2 if answer == "none" else 60}
            ),
        )["executionArn"]

        def entered() -> dict[str, dict[str, Any]]:
            """Each state entered, with the payload its Lambda was given."""
            found: dict[str, dict[str, Any]] = {}
            current = None
            for event in states.get_execution_history(executionArn=execution)["events"]:
                if "stateEnteredEventDetails" in event:
                    current = event["stateEnteredEventDetails"]["name"]
                details = event.get("taskScheduledEventDetails")
                if details and current:
                    found[current] = json.loads(details["parameters"])["Payload"]
            return found

        deadline = time.monotonic() + 10
        while "Notify" not in entered() and time.monotonic() < deadline:
            time.sleep(0.05)
        token = entered()["Notify"]["task_token"]
        assert entered()["Notify"]["request_id"] == request_id
        if answer == "approve":
            states.send_task_success(taskToken=token, output=json.dumps({"status": "approved"}))
        elif answer == "deny":
            states.send_task_failure(taskToken=token, error="Denied", cause="denied by dpo-1")
        while time.monotonic() < deadline:
            status = states.describe_execution(executionArn=execution)["status"]
            if status != "RUNNING":
                break
            time.sleep(0.05)
        assert status == "SUCCEEDED"
        step, outcome = {
            "approve": ("Record decision", "decided"),
            "deny": ("Record denial", "denied"),
            "none": ("Record expiry", "expired"),
        }[answer]
        recorded = entered()
        assert set(recorded) == {"Notify", step}
        assert recorded[step] == {"request_id": request_id, "outcome": outcome}


# --- the gateway with approvals ---------------------------------------------------------------


def _config_document(synth: Synth) -> tuple[GatewayConfig, dict[str, str]]:
    """The gateway's config, every reference replaced by a name that says what it is."""
    gateway = synth.template(GATEWAY)
    _, task = only_resource(gateway, "AWS::ECS::TaskDefinition")
    environment = {
        item["Name"]: item["Value"] for item in task["ContainerDefinitions"][0]["Environment"]
    }
    document = environment["CUSTOS_CONFIG_DOCUMENT"]
    parts: dict[str, str] = {}
    for part in document["Fn::Join"][1]:
        if isinstance(part, dict):
            label = next(iter(part.values()))
            named = label if isinstance(label, str) else ".".join(label)
            parts[json.dumps(part, sort_keys=True)] = f"ref:{named}"
    config = GatewayConfig.model_validate(json.loads(_joined(document, parts)))
    return config, parts


def test_gateway_config_names_the_workflow_table_api_and_key(synth: Synth) -> None:
    config, _ = _config_document(synth)
    approvals = config.approvals
    assert approvals is not None
    assert approvals.backend == "aws"
    assert approvals.state_machine_arn is not None
    assert "RefWorkflow" in approvals.state_machine_arn
    assert approvals.table is not None
    assert "RefRequests" in approvals.table
    assert approvals.url is not None
    assert "Api" in approvals.url
    assert approvals.key.key_secret is not None
    assert "RefLinkKeySecret" in approvals.key.key_secret
    assert approvals.poll_seconds == 0.5


def test_gateway_task_may_start_and_stop_its_workflow_and_use_its_table(synth: Synth) -> None:
    gateway = synth.template(GATEWAY)
    role, _ = only_resource(gateway, "AWS::IAM::Role", "TaskRole")
    statements = {
        tuple(sorted(_as_list(statement["Action"]))): statement
        for policy in template_resources(gateway, "AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    }
    start = statements[("states:StartExecution",)]
    assert "RefWorkflow" in start["Resource"]["Fn::ImportValue"]
    stop = statements[("states:StopExecution",)]
    assert _joined(stop["Resource"]) == (
        f"arn:aws:states:{REGION}:{ACCOUNT}:execution:{WORKFLOW_NAME}:*"
    )
    table = statements[
        ("dynamodb:BatchGetItem", "dynamodb:DeleteItem", "dynamodb:PutItem", "dynamodb:UpdateItem")
    ]
    assert "RequestsC42AC379Arn" in table["Resource"]["Fn::ImportValue"]
    query = statements[("dynamodb:Query",)]
    assert _joined(query["Resource"]).endswith("/index/by_binding")
    secrets = statements[("secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue")]
    assert any(
        "LinkKeySecret" in json.dumps(resource) for resource in _as_list(secrets["Resource"])
    )
    assert all(statement["Resource"] != "*" for statement in statements.values())


# --- cdk-nag and cfn-lint ---------------------------------------------------------------------

EXPECTED_ACKNOWLEDGEMENTS = {
    ("AwsSolutions-L1", f"{STACK}/Callback/Resource"),
    ("AwsSolutions-L1", f"{STACK}/Notifier/Resource"),
    ("AwsSolutions-L1", f"{STACK}/Recorder/Resource"),
    ("AwsSolutions-SMG4", f"{STACK}/LinkKeySecret/Resource"),
    ("AwsSolutions-IAM5[Resource::*]", f"{STACK}/Workflow/Role/DefaultPolicy/Resource"),
    (
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AmazonAPIGatewayPushToCloudWatchLogs]",
        f"{STACK}/Api/CloudWatchRole/Resource",
    ),
    ("AwsSolutions-APIG3", f"{STACK}/Api/DeploymentStage.approvals/Resource"),
    *(
        (rule, f"{STACK}/Api/Default/requests/{{id}}/{route}/Resource")
        for rule in ("AwsSolutions-APIG4", "AwsSolutions-COG4")
        for route in ("GET", "decision/POST")
    ),
}


def test_no_unacknowledged_nag_findings(synth: Synth) -> None:
    assert synth.violations == []


def test_approvals_acknowledgements_are_the_reviewed_ones(synth: Synth) -> None:
    template = synth.template()
    notifier, _ = _function(template, "Notifier")
    recorder, _ = _function(template, "Recorder")
    expected = EXPECTED_ACKNOWLEDGEMENTS | {
        (
            f"AwsSolutions-IAM5[Resource::<{function}.Arn>:*]",
            f"{STACK}/Workflow/Role/DefaultPolicy/Resource",
        )
        for function in (notifier, recorder)
    }
    acknowledged = {
        (rule, path) for rule, path, _ in synth.acknowledged if path.startswith(f"{STACK}/")
    }
    assert acknowledged == expected
    assert all(reason and len(reason) > 30 for _, _, reason in synth.acknowledged)


@pytest.mark.parametrize("stack", [STACK, GATEWAY])
def test_cfn_lint_is_clean(synth: Synth, stack: str) -> None:
    result = subprocess.run(
        [
            str(CFN_LINT),
            "--format",
            "json",
            "--regions",
            REGION,
            "--ignore-checks",
            *CFN_LINT_IGNORES,
            "--",
            str(synth.files[stack]),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [
        f"{match['Rule']['Id']} {match['Message']}" for match in json.loads(result.stdout or "[]")
    ]
    assert problems == [], result.stderr
