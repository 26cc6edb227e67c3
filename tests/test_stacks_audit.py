"""The audit stack: archiver, digests, Glue tables, Athena workgroup and named queries.

Most tests read the session's synth (tests/cdk_fixtures.py); the context variants synth a
small app of the two audit stacks only, without cdk-nag.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Environment
from aws_cdk.assertions import Template
from cdk_fixtures import (
    BLOCK_ALL,
    TEST_CONTEXT,
    CdkSynth,
    context_with,
    only_resource,
    template_resources,
)
from pydantic import BaseModel

from custos.audit.events import AuditEvent, SubjectAccess
from stacks import named_queries
from stacks.app_builder import CDK_JSON
from stacks.audit import AuditStack
from stacks.audit_storage import AuditStorageStack
from stacks.config import parse_context
from stacks.glue_columns import UnmappedFieldType, athena_type, glue_columns
from stacks.named_queries import QUERIES_DIR, NamedQueryError, read_named_queries

STACK = "Custos-Audit"
REGION = TEST_CONTEXT["region"]
BUCKET_EXPORT = "Custos-AuditStorage-AuditBucketArn"
TABLE_EXPORT = "Custos-AuditStorage-EventsTableArn"


@pytest.fixture(scope="module")
def audit(cdk_synth: CdkSynth) -> dict[str, Any]:
    template: dict[str, Any] = cdk_synth.templates[STACK].to_json()
    return template


def _role_statements(template: dict[str, Any], role_fragment: str) -> list[dict[str, Any]]:
    role, _ = only_resource(template, "AWS::IAM::Role", role_fragment)
    return [
        statement
        for policy in template_resources(template, "AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _grants(statements: list[dict[str, Any]]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Statements by their sorted actions; every one an Allow with no wildcard action."""
    by_actions = {}
    for statement in statements:
        actions = tuple(sorted(_as_list(statement["Action"])))
        assert statement["Effect"] == "Allow"
        assert all("*" not in action for action in actions), actions
        assert "*" not in _as_list(statement["Resource"])
        assert actions not in by_actions
        by_actions[actions] = statement
    return by_actions


def _object_prefixes(resource: Any, export: str = BUCKET_EXPORT) -> list[str]:
    """The key patterns of a (list of) ARN(s) `<imported bucket ARN>/<pattern>`."""
    patterns = []
    for arn in _as_list(resource):
        imported, pattern = arn["Fn::Join"][1]
        assert imported == {"Fn::ImportValue": export}
        patterns.append(pattern)
    return sorted(patterns)


def _audit_key(statement: dict[str, Any], via: str) -> None:
    assert "AuditKey" in statement["Resource"]["Fn::ImportValue"]
    assert statement["Condition"] == {
        "StringEquals": {"kms:ViaService": f"{via}.{REGION}.amazonaws.com"}
    }


def _environment(template: dict[str, Any], function_fragment: str) -> dict[str, Any]:
    _, function = only_resource(template, "AWS::Lambda::Function", function_fragment)
    environment: dict[str, Any] = function["Environment"]["Variables"]
    return environment


# The archiver


def test_archiver_function(audit: dict[str, Any]) -> None:
    _, function = only_resource(audit, "AWS::Lambda::Function", "Archiver")
    assert function["Handler"] == "lambdas.audit_archiver.handler.handler"
    assert function["Runtime"] == "python3.12"
    environment = function["Environment"]["Variables"]
    assert set(environment) == {"AUDIT_BUCKET", "AUDIT_KMS_KEY_ID"}
    assert "RefAuditBucket" in environment["AUDIT_BUCKET"]["Fn::ImportValue"]
    assert "AuditKey" in environment["AUDIT_KMS_KEY_ID"]["Fn::ImportValue"]


def test_archiver_reads_the_events_stream_with_partial_batch_failures(
    audit: dict[str, Any],
) -> None:
    archiver, _ = only_resource(audit, "AWS::Lambda::Function", "Archiver")
    queue, _ = only_resource(audit, "AWS::SQS::Queue")
    _, mapping = only_resource(audit, "AWS::Lambda::EventSourceMapping")
    assert mapping == {
        "FunctionName": {"Ref": archiver},
        "EventSourceArn": mapping["EventSourceArn"],
        "StartingPosition": "TRIM_HORIZON",
        "BatchSize": 100,
        "BisectBatchOnFunctionError": False,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "MaximumRetryAttempts": 10,
        "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": [queue, "Arn"]}}},
    }
    assert "StreamArn" in mapping["EventSourceArn"]["Fn::ImportValue"]


def test_dead_letter_queue_is_encrypted_and_tls_only(audit: dict[str, Any]) -> None:
    queue, properties = only_resource(audit, "AWS::SQS::Queue")
    assert properties["SqsManagedSseEnabled"] is True
    assert properties["MessageRetentionPeriod"] == 14 * 24 * 3600
    _, policy = only_resource(audit, "AWS::SQS::QueuePolicy")
    assert policy["Queues"] == [{"Ref": queue}]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_archiver_may_read_the_stream_and_add_archive_objects_only(
    audit: dict[str, Any],
) -> None:
    grants = _grants(_role_statements(audit, "ArchiverRole"))
    queue, _ = only_resource(audit, "AWS::SQS::Queue")
    log_group, _ = only_resource(audit, "AWS::Logs::LogGroup", "Archiver")
    stream_actions = (
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
    )
    assert set(grants) == {
        ("logs:CreateLogStream", "logs:PutLogEvents"),
        ("sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"),
        stream_actions,
        ("kms:Decrypt",),
        ("s3:PutObject",),
        ("kms:Encrypt", "kms:GenerateDataKey"),
    }
    assert grants[("logs:CreateLogStream", "logs:PutLogEvents")]["Resource"] == {
        "Fn::GetAtt": [log_group, "Arn"]
    }
    assert grants[("sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage")]["Resource"] == {
        "Fn::GetAtt": [queue, "Arn"]
    }
    assert _object_prefixes(grants[stream_actions]["Resource"], TABLE_EXPORT) == ["/stream/*"]
    _audit_key(grants[("kms:Decrypt",)], via="dynamodb")
    assert _object_prefixes(grants[("s3:PutObject",)]["Resource"]) == [
        "/events/*",
        "/subject_access/*",
    ]
    _audit_key(grants[("kms:Encrypt", "kms:GenerateDataKey")], via="s3")


# The digests


def test_signing_key_is_asymmetric_p256_for_signing_and_retained(audit: dict[str, Any]) -> None:
    signing_key, properties = only_resource(audit, "AWS::KMS::Key", "DigestSigningKey")
    assert properties["KeySpec"] == "ECC_NIST_P256"
    assert properties["KeyUsage"] == "SIGN_VERIFY"
    assert audit["Resources"][signing_key]["DeletionPolicy"] == "Retain"
    assert _environment(audit, "Digest")["DIGEST_KMS_KEY_ID"] == {
        "Fn::GetAtt": [signing_key, "Arn"]
    }


def test_digest_function_runs_hourly_by_default(audit: dict[str, Any]) -> None:
    digest, function = only_resource(audit, "AWS::Lambda::Function", "Digest")
    assert function["Handler"] == "lambdas.audit_digest.handler.handler"
    assert set(function["Environment"]["Variables"]) == {"AUDIT_BUCKET", "DIGEST_KMS_KEY_ID"}
    _, rule = only_resource(audit, "AWS::Events::Rule")
    assert rule["ScheduleExpression"] == "rate(1 hour)"
    assert rule["State"] == "ENABLED"
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [digest, "Arn"]}
    _, permission = only_resource(audit, "AWS::Lambda::Permission")
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["Action"] == "lambda:InvokeFunction"


def test_digest_may_read_the_archive_add_digests_and_sign_only(audit: dict[str, Any]) -> None:
    grants = _grants(_role_statements(audit, "DigestRole"))
    signing_key, _ = only_resource(audit, "AWS::KMS::Key", "DigestSigningKey")
    assert set(grants) == {
        ("logs:CreateLogStream", "logs:PutLogEvents"),
        ("s3:ListBucket",),
        ("s3:GetObject",),
        ("s3:PutObject",),
        ("kms:Decrypt", "kms:GenerateDataKey"),
        ("kms:Sign",),
    }
    assert "AuditBucket" in grants[("s3:ListBucket",)]["Resource"]["Fn::ImportValue"]
    assert _object_prefixes(grants[("s3:GetObject",)]["Resource"]) == [
        "/digests/*",
        "/events/*",
        "/subject_access/*",
    ]
    assert _object_prefixes(grants[("s3:PutObject",)]["Resource"]) == ["/digests/*"]
    _audit_key(grants[("kms:Decrypt", "kms:GenerateDataKey")], via="s3")
    assert grants[("kms:Sign",)]["Resource"] == {"Fn::GetAtt": [signing_key, "Arn"]}
    assert "Condition" not in grants[("kms:Sign",)]


# The Glue tables


def test_glue_database(audit: dict[str, Any]) -> None:
    _, database = only_resource(audit, "AWS::Glue::Database")
    assert database["CatalogId"] == TEST_CONTEXT["account"]
    assert database["DatabaseInput"]["Name"] == "custos_audit"


@pytest.mark.parametrize(
    ("table", "model"), [("events", AuditEvent), ("subject_access", SubjectAccess)]
)
def test_glue_table_over_its_prefix_with_partition_projection(
    audit: dict[str, Any], table: str, model: type[BaseModel]
) -> None:
    database, _ = only_resource(audit, "AWS::Glue::Database")
    _, properties = only_resource(audit, "AWS::Glue::Table", f"GlueTable{table.replace('_', '')}")
    assert properties["DatabaseName"] == {"Ref": database}
    table_input = properties["TableInput"]
    assert table_input["Name"] == table
    assert table_input["TableType"] == "EXTERNAL_TABLE"
    assert table_input["PartitionKeys"] == [
        {"Name": "dt", "Type": "string"},
        {"Name": "hour", "Type": "string"},
    ]
    parameters = table_input["Parameters"]
    template = parameters.pop("storage.location.template")
    assert parameters == {
        "classification": "json",
        "compressionType": "gzip",
        "projection.enabled": "true",
        "projection.dt.type": "date",
        "projection.dt.format": "yyyy-MM-dd",
        "projection.dt.range": "2025-01-01,NOW",
        "projection.dt.interval": "1",
        "projection.dt.interval.unit": "DAYS",
        "projection.hour.type": "integer",
        "projection.hour.range": "0,23",
        "projection.hour.digits": "2",
    }
    text, variables = template["Fn::Sub"]
    # ${!dt} is how Fn::Sub writes a literal ${dt}: Athena, not CloudFormation, fills it.
    assert text == f"s3://${{Bucket}}/{table}/dt=${{!dt}}/hour=${{!hour}}/"
    assert "RefAuditBucket" in variables["Bucket"]["Fn::ImportValue"]
    descriptor = table_input["StorageDescriptor"]
    prefix, imported, suffix = descriptor["Location"]["Fn::Join"][1]
    assert (prefix, suffix) == ("s3://", f"/{table}/")
    assert "RefAuditBucket" in imported["Fn::ImportValue"]
    assert descriptor["SerdeInfo"] == {"SerializationLibrary": "org.openx.data.jsonserde.JsonSerDe"}
    assert descriptor["InputFormat"] == "org.apache.hadoop.mapred.TextInputFormat"
    assert descriptor["Compressed"] is True
    # Exactly the model's fields, in its order: a new field is a new column.
    assert [column["Name"] for column in descriptor["Columns"]] == list(model.model_fields)


def test_event_columns_have_athena_types(audit: dict[str, Any]) -> None:
    _, properties = only_resource(audit, "AWS::Glue::Table", "GlueTableevents")
    columns = {
        column["Name"]: column["Type"]
        for column in properties["TableInput"]["StorageDescriptor"]["Columns"]
    }
    assert columns["time"] == "string"
    assert columns["event_type"] == "string"
    assert columns["seq"] == "bigint"
    assert columns["role"] == "string"  # optional: the type of what is there
    assert columns["groups"] == "array<string>"
    assert columns["labels"] == "map<string,string>"
    assert columns["duration_ms"] == "double"
    assert columns["subjects_capped"] == "boolean"
    assert columns["masked"] == (
        "array<struct<statement_index:bigint,position:bigint,category:string,"
        "method:string,values:bigint,nulled:bigint>>"
    )


def test_subject_access_columns_have_athena_types() -> None:
    columns = dict(glue_columns(SubjectAccess))
    assert columns["identifier_type"] == "string"
    assert columns["columns"] == "array<string>"
    assert columns["masked"] == "boolean"
    assert columns["statement_number"] == "bigint"


def test_a_new_model_field_becomes_a_column() -> None:
    class Extended(SubjectAccess):
        reviewed_by: tuple[str, ...] = ()

    assert glue_columns(Extended)[-1] == ("reviewed_by", "array<string>")


def test_a_field_without_a_glue_type_stops_the_synth_naming_it() -> None:
    class Odd(BaseModel):
        payload: bytes | int

    with pytest.raises(UnmappedFieldType, match=r"Odd\.payload: a union"):
        glue_columns(Odd)
    with pytest.raises(UnmappedFieldType, match=r"here\.x: no Glue type for <class 'bytes'>"):
        athena_type(bytes, where="here.x")
    with pytest.raises(UnmappedFieldType, match="tuple"):
        athena_type(tuple[str, int], where="pair")


# Athena


def test_workgroup_enforces_encrypted_results_and_publishes_metrics(
    audit: dict[str, Any],
) -> None:
    results_key, _ = only_resource(audit, "AWS::KMS::Key", "QueryResultsKey")
    results_bucket, _ = only_resource(audit, "AWS::S3::Bucket", "QueryResults")
    _, workgroup = only_resource(audit, "AWS::Athena::WorkGroup")
    assert workgroup["Name"] == "custos-audit"
    assert workgroup["State"] == "ENABLED"
    configuration = workgroup["WorkGroupConfiguration"]
    assert configuration["EnforceWorkGroupConfiguration"] is True
    assert configuration["PublishCloudWatchMetricsEnabled"] is True
    results = configuration["ResultConfiguration"]
    assert results["EncryptionConfiguration"] == {
        "EncryptionOption": "SSE_KMS",
        "KmsKey": {"Fn::GetAtt": [results_key, "Arn"]},
    }
    assert results["OutputLocation"] == {
        "Fn::Join": ["", ["s3://", {"Ref": results_bucket}, "/results/"]]
    }
    assert results["ExpectedBucketOwner"] == TEST_CONTEXT["account"]


def test_results_bucket_is_kms_encrypted_private_logged_expiring(audit: dict[str, Any]) -> None:
    results_key, key = only_resource(audit, "AWS::KMS::Key", "QueryResultsKey")
    assert key["EnableKeyRotation"] is True
    results_bucket, bucket = only_resource(audit, "AWS::S3::Bucket", "QueryResults")
    log_bucket, log = only_resource(audit, "AWS::S3::Bucket", "AccessLogs")
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {
            "BucketKeyEnabled": True,
            "ServerSideEncryptionByDefault": {
                "SSEAlgorithm": "aws:kms",
                "KMSMasterKeyID": {"Fn::GetAtt": [results_key, "Arn"]},
            },
        }
    ]
    assert bucket["PublicAccessBlockConfiguration"] == BLOCK_ALL
    assert log["PublicAccessBlockConfiguration"] == BLOCK_ALL
    assert bucket["LoggingConfiguration"] == {
        "DestinationBucketName": {"Ref": log_bucket},
        "LogFilePrefix": "query-results/",
    }
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["ExpirationInDays"] == 30
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    secure_transport = [
        statement
        for policy in template_resources(audit, "AWS::S3::BucketPolicy").values()
        if policy["Properties"]["Bucket"] == {"Ref": results_bucket}
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Deny"
    ]
    assert [statement["Condition"] for statement in secure_transport] == [
        {"Bool": {"aws:SecureTransport": "false"}}
    ]


def _file_headers(path: Path) -> tuple[str, str]:
    text = path.read_text()
    name = re.search(r"^-- name:\s*(.+?)\s*$", text, re.MULTILINE)
    description = re.search(r"^-- description:\s*(.+?)\s*$", text, re.MULTILINE)
    assert name, path
    assert description, path
    return name[1], description[1]


def test_every_query_file_is_a_named_query_in_the_workgroup(audit: dict[str, Any]) -> None:
    database, _ = only_resource(audit, "AWS::Glue::Database")
    workgroup, _ = only_resource(audit, "AWS::Athena::WorkGroup")
    files = sorted(QUERIES_DIR.glob("*.sql"))
    assert files
    named = {
        properties["Name"]: properties
        for properties in (
            resource["Properties"]
            for resource in template_resources(audit, "AWS::Athena::NamedQuery").values()
        )
    }
    assert len(named) == len(files)
    for path in files:
        name, description = _file_headers(path)
        query = named[name]
        assert query["Description"] == description
        assert query["QueryString"] == path.read_text()
        assert query["Database"] == {"Ref": database}
        assert query["WorkGroup"] == {"Ref": workgroup}


# Named query files


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_query_headers_are_read_and_the_body_is_the_file(tmp_path: Path) -> None:
    text = (
        "-- name: by-principal\n-- description: Statements by one principal\n"
        "-- parameters: principal\nSELECT 1 -- name: not a header\n"
    )
    _write(tmp_path, "b.sql", text)
    _write(tmp_path, "a.sql", "\n-- description: first\n--name:alpha\nSELECT 2\n")
    _write(tmp_path, "notes.txt", "not a query")
    queries = read_named_queries(tmp_path)
    assert [(query.name, query.description) for query in queries] == [
        ("alpha", "first"),
        ("by-principal", "Statements by one principal"),
    ]
    assert queries[1].query == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("-- description: d\nSELECT 1", "no `-- name: <name>` header line"),
        ("-- name: n\nSELECT 1", "no `-- description: <text>` header line"),
        ("SELECT 1\n-- name: n\n-- description: d", "no `-- name: <name>`"),
        (f"-- name: {'n' * 129}\n-- description: d\nSELECT 1", "a name of 129 characters"),
    ],
)
def test_a_query_file_without_its_header_is_named(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path, "broken.sql", text)
    with pytest.raises(NamedQueryError) as caught:
        read_named_queries(tmp_path)
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)


def test_two_files_of_one_name_are_refused(tmp_path: Path) -> None:
    for file_name in ("one.sql", "two.sql"):
        _write(tmp_path, file_name, "-- name: same\n-- description: d\nSELECT 1\n")
    with pytest.raises(NamedQueryError, match="both named 'same'"):
        read_named_queries(tmp_path)


def test_an_empty_queries_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NamedQueryError, match=r"holds no \.sql file"):
        read_named_queries(tmp_path)


# Context variants: the two audit stacks alone, without cdk-nag


@pytest.fixture(scope="module")
def variant() -> Iterator[dict[str, Any]]:
    """Digests every 15 minutes, the archive from 2024-06-01, and one more query file."""
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as queries:
        for path in QUERIES_DIR.glob("*.sql"):
            _write(Path(queries), path.name, path.read_text())
        _write(
            Path(queries),
            "zz_added.sql",
            "-- name: added-at-synth\n-- description: read at synth\nSELECT 1\n",
        )
        patch.setattr(named_queries, "QUERIES_DIR", Path(queries))
        context = parse_context(
            context_with(audit_digest_minutes=15, audit_archive_start="2024-06-01")
        )
        # cdk.json's feature flags, as the real app has them.
        flags = json.loads(CDK_JSON.read_text())["context"]
        app = App(context={**flags, "custos:skip_bundling": True})
        env = Environment(account=context.account, region=context.region)
        storage = AuditStorageStack(app, "Storage", context=context, env=env)
        stack = AuditStack(app, "Audit", context=context, storage=storage, env=env)
        yield Template.from_stack(stack).to_json()


def test_digest_schedule_follows_the_context(variant: dict[str, Any]) -> None:
    _, rule = only_resource(variant, "AWS::Events::Rule")
    assert rule["ScheduleExpression"] == "rate(15 minutes)"


def test_partition_projection_starts_at_the_configured_day(variant: dict[str, Any]) -> None:
    for _, table in template_resources(variant, "AWS::Glue::Table").items():
        parameters = table["Properties"]["TableInput"]["Parameters"]
        assert parameters["projection.dt.range"] == "2024-06-01,NOW"


def test_a_query_file_added_is_a_named_query_at_the_next_synth(variant: dict[str, Any]) -> None:
    names = {
        resource["Properties"]["Name"]
        for resource in template_resources(variant, "AWS::Athena::NamedQuery").values()
    }
    assert "added-at-synth" in names
    assert len(names) == len(list(QUERIES_DIR.glob("*.sql"))) + 1


# cdk-nag

EXPECTED_ACKNOWLEDGEMENTS = {
    ("AwsSolutions-L1", f"{STACK}/Archiver/Resource"),
    ("AwsSolutions-L1", f"{STACK}/Digest/Resource"),
    ("AwsSolutions-SQS3", f"{STACK}/ArchiverFailures/Resource"),
    (
        f"AwsSolutions-IAM5[Resource::{TABLE_EXPORT}/stream/*]",
        f"{STACK}/ArchiverRole/DefaultPolicy/Resource",
    ),
    *(
        (f"AwsSolutions-IAM5[Resource::{BUCKET_EXPORT}/{prefix}/*]", f"{STACK}/{role}")
        for prefix, role in (
            ("events", "ArchiverRole/DefaultPolicy/Resource"),
            ("subject_access", "ArchiverRole/DefaultPolicy/Resource"),
            ("events", "DigestRole/DefaultPolicy/Resource"),
            ("subject_access", "DigestRole/DefaultPolicy/Resource"),
            ("digests", "DigestRole/DefaultPolicy/Resource"),
        )
    ),
}


def test_audit_acknowledgements_are_the_reviewed_ones(cdk_synth: CdkSynth) -> None:
    acknowledged = {
        (finding.rule, finding.path)
        for finding in cdk_synth.acknowledged
        if finding.plugin == "AwsSolutions" and finding.path.startswith(f"{STACK}/")
    }
    assert acknowledged == EXPECTED_ACKNOWLEDGEMENTS


def test_no_role_of_the_stack_holds_a_wildcard_resource_or_action(audit: dict[str, Any]) -> None:
    roles = template_resources(audit, "AWS::IAM::Role")
    assert {
        role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"]
        for role in roles.values()
    } == {"lambda.amazonaws.com"}
    for name in roles:
        assert _grants(_role_statements(audit, name))
        assert "ManagedPolicyArns" not in roles[name]["Properties"]
    assert template_resources(audit, "AWS::IAM::ManagedPolicy") == {}
