"""The gateway stack: what clients reach, what the tasks may do, how it scales and alarms.

Two contexts: the session's (tests/cdk_fixtures.py: the first target's secret is created by
the stack, the second exists, an alarm email is set) and, synthesized here, its mirror image
(the first target's secret exists, the second is created, no alarm email).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsii.errors
import pytest
from aws_cdk import assertions
from cdk_fixtures import TEST_CONTEXT, CdkSynth, context_with

from custos.config import GatewayConfig
from stacks.app_builder import build_app
from stacks.gateway import START_SCRIPT

STACK = "Custos-Gateway"
EXISTING_SECRET = "custos/crm-existing"
ALARM_EMAIL = TEST_CONTEXT["alarm_email"]
REGION = TEST_CONTEXT["region"]
ACCOUNT = TEST_CONTEXT["account"]


class Synth:
    """The gateway template of one synthesized app and cdk-nag's findings on it."""

    def __init__(self, template_json: dict[str, Any], report: dict[str, Any]) -> None:
        self.json = template_json
        self.template = assertions.Template.from_json(template_json)
        self.findings = [
            f"{violation['ruleName']} at {construct['constructPath']}"
            for plugin in report.get("pluginReports", [])
            for violation in plugin.get("violations", [])
            for construct in violation["violatingConstructs"]
            if construct["constructPath"].startswith(f"{STACK}/")
        ]

    @classmethod
    def from_outdir(cls, outdir: Path) -> Synth:
        report_file = outdir / "validation-report.json"
        report = json.loads(report_file.read_text()) if report_file.exists() else {}
        return cls(json.loads((outdir / f"{STACK}.template.json").read_text()), report)

    def resources(self, resource_type: str) -> dict[str, Any]:
        found: dict[str, Any] = self.template.find_resources(resource_type)
        return found

    def only(self, resource_type: str) -> dict[str, Any]:
        found = list(self.resources(resource_type).values())
        assert len(found) == 1, f"expected one {resource_type}, found {len(found)}"
        properties: dict[str, Any] = found[0]["Properties"]
        return properties


@pytest.fixture(scope="module")
def default(cdk_synth: CdkSynth) -> Synth:
    return Synth.from_outdir(cdk_synth.outdir)


@pytest.fixture(scope="module")
def mirrored() -> Iterator[Synth]:
    crm, billing = TEST_CONTEXT["targets"]
    targets = [{**crm, "secret_name": EXISTING_SECRET}, {**billing, "secret_name": None}]
    context = context_with(targets=targets, alarm_email=None)
    with tempfile.TemporaryDirectory() as outdir:
        app = build_app({"custos": context, "custos:skip_bundling": True}, outdir=outdir)
        # Another stack's unacknowledged findings fail the synth after the templates and the
        # report are written; that stack's own tests report them.
        with contextlib.suppress(jsii.errors.JSIIError):
            app.synth()
        yield Synth.from_outdir(Path(outdir))


def _import_names(value: Any) -> list[str]:
    """The export names a (list of) Fn::ImportValue refers to."""
    values = value if isinstance(value, list) else [value]
    return [item["Fn::ImportValue"] for item in values]


def _attributes(properties: dict[str, Any], key: str) -> dict[str, str]:
    return {item["Key"]: item["Value"] for item in properties[key]}


def _resolve(value: Any, placeholders: dict[str, str]) -> str:
    """A Fn::Join of literals and references, with each reference as a placeholder text."""
    if isinstance(value, str):
        return value
    parts = value["Fn::Join"][1]
    text = ""
    for part in parts:
        if isinstance(part, str):
            text += part
        else:
            text += placeholders[json.dumps(part, sort_keys=True)]
    return text


def _container(synth: Synth) -> dict[str, Any]:
    definitions = synth.only("AWS::ECS::TaskDefinition")["ContainerDefinitions"]
    assert len(definitions) == 1
    container: dict[str, Any] = definitions[0]
    return container


def _role_statements(synth: Synth, role_fragment: str) -> list[dict[str, Any]]:
    roles = [name for name in synth.resources("AWS::IAM::Role") if role_fragment in name]
    assert len(roles) == 1, roles
    statements: list[dict[str, Any]] = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        if {"Ref": roles[0]} in policy["Properties"]["Roles"]:
            statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return statements


def _listed(value: Any) -> list[Any]:
    """A policy statement's Action or Resource as a list (CloudFormation writes one alone)."""
    return value if isinstance(value, list) else [value]


def _actions(statement: dict[str, Any]) -> list[str]:
    return sorted(_listed(statement["Action"]))


def test_load_balancer_is_internal_in_private_subnets_with_cross_zone(default: Synth) -> None:
    balancer = default.only("AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert balancer["Type"] == "network"
    assert balancer["Scheme"] == "internal"
    subnets = _import_names(balancer["Subnets"])
    assert len(subnets) == 2
    assert all("PrivateSubnet" in name for name in subnets)
    assert _attributes(balancer, "LoadBalancerAttributes")["load_balancing.cross_zone.enabled"] == (
        "true"
    )


def test_tcp_listener_forwards_to_ip_targets_with_tcp_health_check(default: Synth) -> None:
    listener = default.only("AWS::ElasticLoadBalancingV2::Listener")
    assert listener["Port"] == 5432
    assert listener["Protocol"] == "TCP"
    (target_group_name,) = default.resources("AWS::ElasticLoadBalancingV2::TargetGroup")
    assert listener["DefaultActions"] == [
        {"Type": "forward", "TargetGroupArn": {"Ref": target_group_name}}
    ]
    group = default.only("AWS::ElasticLoadBalancingV2::TargetGroup")
    assert group["TargetType"] == "ip"
    assert group["Port"] == 5432
    assert group["Protocol"] == "TCP"
    assert group["HealthCheckProtocol"] == "TCP"
    assert group["HealthCheckPort"] == "traffic-port"
    attributes = _attributes(group, "TargetGroupAttributes")
    assert attributes["deregistration_delay.timeout_seconds"] == "30"
    assert attributes["preserve_client_ip.enabled"] == "false"


def test_service_runs_in_private_subnets_without_public_ip(default: Synth) -> None:
    service = default.only("AWS::ECS::Service")
    assert service["LaunchType"] == "FARGATE"
    assert service["DesiredCount"] == 2
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    subnets = _import_names(network["Subnets"])
    assert len(subnets) == 2
    assert all("PrivateSubnet" in name for name in subnets)
    assert service["LoadBalancers"][0]["ContainerPort"] == 5432
    # The first deploy must be able to wait for the operator's certificate.
    assert "DeploymentCircuitBreaker" not in service.get("DeploymentConfiguration", {})
    cluster = default.only("AWS::ECS::Cluster")
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]


def test_container_runs_as_non_root_on_a_read_only_filesystem(default: Synth) -> None:
    task = default.only("AWS::ECS::TaskDefinition")
    assert task["Cpu"] == "512"
    assert task["Memory"] == "1024"
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    container = _container(default)
    assert container["PortMappings"] == [{"ContainerPort": 5432, "Protocol": "tcp"}]
    assert container["User"] == "10001"
    assert container["ReadonlyRootFilesystem"] is True
    assert container["EntryPoint"] == ["sh", "-c"]
    assert container["Command"] == [START_SCRIPT]
    # Longer than the gateway's 30 s drain, so ECS does not SIGKILL a draining task.
    assert container["StopTimeout"] > 30


def test_tls_material_arrives_as_ecs_secrets_never_plain_environment(default: Synth) -> None:
    container = _container(default)
    (tls_secret,) = [
        name
        for name, secret in default.resources("AWS::SecretsManager::Secret").items()
        if secret["Properties"].get("Name") == "custos/gateway-tls"
    ]
    assert container["Secrets"] == [
        {
            "Name": "CUSTOS_TLS_CERTIFICATE",
            "ValueFrom": {"Fn::Join": ["", [{"Ref": tls_secret}, ":certificate::"]]},
        },
        {
            "Name": "CUSTOS_TLS_PRIVATE_KEY",
            "ValueFrom": {"Fn::Join": ["", [{"Ref": tls_secret}, ":private_key::"]]},
        },
    ]
    environment = {item["Name"] for item in container["Environment"]}
    assert environment == {
        "CUSTOS_CONFIG",
        "CUSTOS_CONFIG_DOCUMENT",
        "CUSTOS_AUDIT_TABLE",
        "PYTHONDONTWRITEBYTECODE",
    }


def test_audit_table_is_named_to_the_task(default: Synth) -> None:
    environment = {item["Name"]: item["Value"] for item in _container(default)["Environment"]}
    (table_name,) = _import_names(environment["CUSTOS_AUDIT_TABLE"])
    assert "RefEvents" in table_name


def _key_secret(name: str) -> bool:
    """Whether a secret is one of the gateway's own keys (audit, masking), not a target's."""
    return "AuditKeySecret" in name or "MaskingKeySecret" in name


def test_config_document_is_a_valid_gateway_config(default: Synth) -> None:
    environment = {item["Name"]: item["Value"] for item in _container(default)["Environment"]}
    assert environment["CUSTOS_CONFIG"] == "/dev/stdin"
    (target_secret,) = [
        name
        for name, secret in default.resources("AWS::SecretsManager::Secret").items()
        if secret["Properties"].get("Name") != "custos/gateway-tls" and not _key_secret(name)
    ]
    bucket_ref = {
        "Fn::ImportValue": next(
            part["Fn::ImportValue"]
            for part in environment["CUSTOS_CONFIG_DOCUMENT"]["Fn::Join"][1]
            if isinstance(part, dict) and "Fn::ImportValue" in part
        )
    }
    assert "PolicyBucket" in bucket_ref["Fn::ImportValue"]
    imports = [
        part
        for part in environment["CUSTOS_CONFIG_DOCUMENT"]["Fn::Join"][1]
        if isinstance(part, dict) and "Fn::ImportValue" in part
    ]
    (table_ref,) = [part for part in imports if "EventsD" in part["Fn::ImportValue"]]
    (audit_secret,) = [
        name for name in default.resources("AWS::SecretsManager::Secret") if "AuditKey" in name
    ]
    (masking_secret,) = [
        name for name in default.resources("AWS::SecretsManager::Secret") if "MaskingKey" in name
    ]
    document = _resolve(
        environment["CUSTOS_CONFIG_DOCUMENT"],
        {
            json.dumps({"Ref": target_secret}): f"arn:aws:secretsmanager:{REGION}:1:secret:crm",
            json.dumps(bucket_ref, sort_keys=True): "custos-policy-bucket",
            json.dumps(table_ref, sort_keys=True): "custos-events",
            json.dumps({"Ref": audit_secret}): f"arn:aws:secretsmanager:{REGION}:1:secret:key",
            json.dumps({"Ref": masking_secret}): f"arn:aws:secretsmanager:{REGION}:1:secret:mk",
        },
    )
    config = GatewayConfig.model_validate(json.loads(document))
    assert config.listen == "0.0.0.0:5432"
    assert config.upstream is not None
    assert config.upstream.secret_id == f"arn:aws:secretsmanager:{REGION}:1:secret:crm"
    assert config.tls is not None
    assert (str(config.tls.cert_file), str(config.tls.key_file)) == ("/dev/fd/3", "/dev/fd/4")
    assert [issuer.issuer for issuer in config.issuers] == ["https://issuer.example"]
    assert config.policy is not None
    assert (config.policy.s3_bucket, config.policy.s3_key) == (
        "custos-policy-bucket",
        "policy.yaml",
    )
    assert config.policy.decision_point == "in_process"
    # Every session and statement recorded in the events table, keyed by a secret of its own.
    assert config.audit is not None
    assert (config.audit.store, config.audit.table) == ("dynamodb", "custos-events")
    assert config.audit.key.key_secret == f"arn:aws:secretsmanager:{REGION}:1:secret:key"
    # Pseudonyms keyed by the masking key's own secret (the task role reads it: below).
    assert config.masking.key_secret == f"arn:aws:secretsmanager:{REGION}:1:secret:mk"


def test_start_script_hands_over_config_and_tls_without_shell_interpretation(
    tmp_path: Path,
) -> None:
    # A stand-in `python` on PATH shows what the real one would read; the script under
    # test is the container's, run by the same kind of POSIX sh.
    recorder = tmp_path / "python"
    recorder.write_text(
        "#!/bin/sh\n"
        'cat > "$OUT/config"\n'
        'cat <&3 > "$OUT/cert"\n'
        'cat <&4 > "$OUT/key"\n'
        'printf "%s" "$*" > "$OUT/argv"\n'
    )
    recorder.chmod(recorder.stat().st_mode | stat.S_IXUSR)
    # Command substitutions, a backslash, a variable and a line equal to a here-document
    # terminator: the shell must pass all of it through untouched.
    hostile = f'x $(touch {tmp_path}/ran) `touch {tmp_path}/ran` \\ $HOME\nCUSTOS_CONFIG\n"q"'
    values = {
        "CUSTOS_CONFIG_DOCUMENT": hostile,
        "CUSTOS_TLS_CERTIFICATE": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "CUSTOS_TLS_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
    }
    environment = {
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "OUT": str(tmp_path),
        **values,
    }
    subprocess.run(["sh", "-c", START_SCRIPT], env=environment, check=True, timeout=30)
    assert (tmp_path / "argv").read_text() == "-m proxy_task"
    assert (tmp_path / "config").read_text() == values["CUSTOS_CONFIG_DOCUMENT"] + "\n"
    assert (tmp_path / "cert").read_text() == values["CUSTOS_TLS_CERTIFICATE"] + "\n"
    assert (tmp_path / "key").read_text() == values["CUSTOS_TLS_PRIVATE_KEY"] + "\n"
    assert not (tmp_path / "ran").exists()


def test_task_role_holds_exactly_the_least_privilege_statements(default: Synth) -> None:
    statements = _role_statements(default, "TaskRole")
    (target_secret,) = [
        name
        for name, secret in default.resources("AWS::SecretsManager::Secret").items()
        if secret["Properties"].get("Name") != "custos/gateway-tls" and not _key_secret(name)
    ]
    by_actions = {tuple(_actions(statement)): statement for statement in statements}
    assert set(by_actions) == {
        ("secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"),
        ("dynamodb:BatchWriteItem", "dynamodb:PutItem"),
        ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"),
        ("s3:GetObject", "s3:GetObjectVersion"),
        ("lambda:InvokeFunction",),
    }
    assert all(statement["Effect"] == "Allow" for statement in statements)
    assert all(statement["Resource"] != "*" for statement in statements)
    resource = {key: statement["Resource"] for key, statement in by_actions.items()}
    (audit_secret,) = [
        name for name in default.resources("AWS::SecretsManager::Secret") if "AuditKey" in name
    ]
    (masking_secret,) = [
        name for name in default.resources("AWS::SecretsManager::Secret") if "MaskingKey" in name
    ]
    assert resource[("secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue")] == [
        {"Ref": audit_secret},
        {"Ref": masking_secret},
        {"Ref": target_secret},
    ]
    assert "EventsD" in resource[("dynamodb:BatchWriteItem", "dynamodb:PutItem")]["Fn::ImportValue"]
    kms = by_actions[("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey")]
    assert "AuditKey" in kms["Resource"]["Fn::ImportValue"]
    assert kms["Condition"] == {
        "StringEquals": {"kms:ViaService": f"dynamodb.{REGION}.amazonaws.com"}
    }
    policy_object = resource[("s3:GetObject", "s3:GetObjectVersion")]["Fn::Join"][1]
    assert "PolicyBucket" in policy_object[0]["Fn::ImportValue"]
    assert policy_object[1] == "/policy.yaml"
    assert "PolicyFunction" in resource[("lambda:InvokeFunction",)]["Fn::ImportValue"]


def test_execution_role_reads_only_the_tls_secret_and_its_own_logs(default: Synth) -> None:
    statements = _role_statements(default, "ExecutionRole")
    (tls_secret,) = [
        name
        for name, secret in default.resources("AWS::SecretsManager::Secret").items()
        if secret["Properties"].get("Name") == "custos/gateway-tls"
    ]
    secret_reads = [s for s in statements if "secretsmanager:GetSecretValue" in _actions(s)]
    assert [s["Resource"] for s in secret_reads] == [{"Ref": tls_secret}]
    wildcards = [s for s in statements if s["Resource"] == "*"]
    assert [_actions(s) for s in wildcards] == [["ecr:GetAuthorizationToken"]]
    (log_group,) = default.resources("AWS::Logs::LogGroup")
    logs = [s for s in statements if "logs:PutLogEvents" in _actions(s)]
    assert [s["Resource"] for s in logs] == [{"Fn::GetAtt": [log_group, "Arn"]}]


def test_existing_target_secret_is_referenced_by_name_and_read_by_its_arn(
    mirrored: Synth,
) -> None:
    environment = {item["Name"]: item["Value"] for item in _container(mirrored)["Environment"]}
    document = json.dumps(environment["CUSTOS_CONFIG_DOCUMENT"])
    assert f'\\"secret_id\\":\\"{EXISTING_SECRET}\\"' in document
    statements = _role_statements(mirrored, "TaskRole")
    reads = [s for s in statements if "secretsmanager:GetSecretValue" in _actions(s)]
    assert len(reads) == 1
    (existing,) = [r for r in reads[0]["Resource"] if not _key_secret(json.dumps(r))]
    arn = "".join(
        part if isinstance(part, str) else "<partition>" for part in existing["Fn::Join"][1]
    )
    assert arn == (
        f"arn:<partition>:secretsmanager:{REGION}:{ACCOUNT}:secret:{EXISTING_SECRET}-??????"
    )


def test_created_target_secret_is_a_template_the_role_cannot_read_unless_served(
    mirrored: Synth,
) -> None:
    # The gateway serves the first target only, so the second target's secret, created for
    # the operator to fill, is not in the task role's policy.
    (created_name,) = [
        name
        for name, secret in mirrored.resources("AWS::SecretsManager::Secret").items()
        if secret["Properties"].get("Name") != "custos/gateway-tls" and not _key_secret(name)
    ]
    created = mirrored.resources("AWS::SecretsManager::Secret")[created_name]["Properties"]
    template = json.loads(created["GenerateSecretString"]["SecretStringTemplate"])
    assert template == {
        "engine": "postgres",
        "host": "billing.internal.example",
        "port": 6432,
        "dbname": "billing",
        "username": "custos_gateway",
    }
    assert created["GenerateSecretString"]["GenerateStringKey"] == "password"
    assert {"Ref": created_name} not in [
        s["Resource"] for s in _role_statements(mirrored, "TaskRole")
    ]


def test_task_security_group_admits_the_vpc_only_on_the_gateway_port(default: Synth) -> None:
    group = default.only("AWS::EC2::SecurityGroup")
    (ingress,) = group["SecurityGroupIngress"]
    assert (ingress["FromPort"], ingress["ToPort"], ingress["IpProtocol"]) == (5432, 5432, "tcp")
    assert "CidrBlock" in ingress["CidrIp"]["Fn::ImportValue"]
    # One egress rule per distinct target port, and HTTPS.
    egress = sorted((rule["FromPort"], rule["ToPort"]) for rule in group["SecurityGroupEgress"])
    assert egress == [(443, 443), (5432, 5432), (6432, 6432)]


def test_autoscaling_tracks_cpu_and_connections_per_task(default: Synth) -> None:
    target = default.only("AWS::ApplicationAutoScaling::ScalableTarget")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 6)
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    policies = {
        name: properties["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        for name, properties in default.resources(
            "AWS::ApplicationAutoScaling::ScalingPolicy"
        ).items()
    }
    assert len(policies) == 2
    (cpu,) = [p for p in policies.values() if "PredefinedMetricSpecification" in p]
    assert cpu["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "ECSServiceAverageCPUUtilization"
    }
    assert cpu["TargetValue"] == 60
    (connections,) = [p for p in policies.values() if "CustomizedMetricSpecification" in p]
    assert connections["TargetValue"] == 500
    queries = {q["Id"]: q for q in connections["CustomizedMetricSpecification"]["Metrics"]}
    assert queries["per_task"]["Expression"] == "flows / healthy"
    assert [q["Id"] for q in queries.values() if q["ReturnData"]] == ["per_task"]
    flows = queries["flows"]["MetricStat"]["Metric"]
    assert (flows["Namespace"], flows["MetricName"]) == ("AWS/NetworkELB", "ActiveFlowCount_TCP")
    healthy = queries["healthy"]["MetricStat"]["Metric"]
    assert healthy["MetricName"] == "HealthyHostCount"
    for metric in (flows, healthy):
        assert [d["Name"] for d in metric["Dimensions"]] == ["LoadBalancer", "TargetGroup"]


def test_alarms_exist_without_actions_when_no_email_is_set(mirrored: Synth) -> None:
    alarms = mirrored.resources("AWS::CloudWatch::Alarm")
    assert len(alarms) == 3
    metrics = json.dumps(alarms)
    for name in ("CPUUtilization", "UnHealthyHostCount", "RunningTaskCount", "DesiredTaskCount"):
        assert name in metrics
    assert all("AlarmActions" not in alarm["Properties"] for alarm in alarms.values())
    mirrored.template.resource_count_is("AWS::SNS::Topic", 0)


def test_alarms_notify_an_encrypted_topic_when_an_email_is_set(default: Synth) -> None:
    (topic_name,) = default.resources("AWS::SNS::Topic")
    topic = default.only("AWS::SNS::Topic")
    (key_name,) = default.resources("AWS::KMS::Key")
    assert topic["KmsMasterKeyId"] == {"Fn::GetAtt": [key_name, "Arn"]}
    assert default.only("AWS::KMS::Key")["EnableKeyRotation"] is True
    subscription = default.only("AWS::SNS::Subscription")
    assert (subscription["Protocol"], subscription["Endpoint"]) == ("email", ALARM_EMAIL)
    alarms = default.resources("AWS::CloudWatch::Alarm").values()
    assert [alarm["Properties"]["AlarmActions"] for alarm in alarms] == [[{"Ref": topic_name}]] * 3


def test_gateway_log_group_keeps_a_year(default: Synth) -> None:
    assert default.only("AWS::Logs::LogGroup")["RetentionInDays"] == 365
    log_options = _container(default)["LogConfiguration"]
    assert log_options["LogDriver"] == "awslogs"


@pytest.mark.parametrize("variant", ["default", "mirrored"])
def test_no_unacknowledged_cdk_nag_findings(variant: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(variant)
    assert synth.findings == []
