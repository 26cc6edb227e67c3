"""The audit store's AWS side under moto: the events table as the CDK app declares it, the
Object-Locked audit bucket, sample records, and the table's stream as Lambda delivers it."""

from __future__ import annotations

import calendar
import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto_credentials import use_fake_credentials

from custos.audit.chain import SessionChain
from custos.audit.dynamo import SUBJECT_INDEX, SUBJECT_PK, SUBJECT_SK
from custos.audit.events import (
    Access,
    AuditEvent,
    EventType,
    IdentifierType,
    SubjectAccess,
)

TABLE = "custos-audit-events"
BUCKET = "custos-audit-archive"
HOUR = datetime(2026, 12, 6, 9, tzinfo=UTC)


@dataclass
class LambdaContext:
    """The Powertools docs' stand-in for the Lambda context."""

    function_name: str = "custos-audit"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:custos-audit"
    aws_request_id: str = "da658bd3-2d6f-4e7b-8ec2-937234644fdc"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    use_fake_credentials(monkeypatch, "eu-west-1")
    with mock_aws():
        yield


def create_events_table(client: Any) -> str:
    """The events table of stacks/audit_storage.py, with the `by_subject` GSI; its stream's
    ARN."""
    attributes = ("pk", "sk", SUBJECT_PK, SUBJECT_SK)
    description = client.create_table(
        TableName=TABLE,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"} for name in attributes],
        GlobalSecondaryIndexes=[
            {
                "IndexName": SUBJECT_INDEX,
                "KeySchema": [
                    {"AttributeName": SUBJECT_PK, "KeyType": "HASH"},
                    {"AttributeName": SUBJECT_SK, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )
    client.update_time_to_live(
        TableName=TABLE,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
    )
    return str(description["TableDescription"]["LatestStreamArn"])


def create_audit_bucket(s3: Any) -> None:
    """The audit bucket: Object Lock, COMPLIANCE by default."""
    s3.create_bucket(
        Bucket=BUCKET,
        CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        ObjectLockEnabledForBucket=True,
    )
    s3.put_object_lock_configuration(
        Bucket=BUCKET,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 365}},
        },
    )


def sample_records(
    sessions: int = 3, statements: int = 4, start: datetime = HOUR
) -> tuple[list[AuditEvent], list[SubjectAccess]]:
    """Sessions of statements and outcomes, two subject rows per outcome (one subject both
    returned and named), spread over two hours."""
    events: list[AuditEvent] = []
    subjects: list[SubjectAccess] = []
    for number in range(sessions):
        chain = SessionChain(f"session-{number}")
        moment = start + timedelta(minutes=50 + number)
        events.append(
            chain.sealed(
                event_id=f"s{number}-start", event_type="session_start", time=moment, role="agent"
            )
        )
        for statement in range(1, statements + 1):
            moment += timedelta(minutes=3)
            events.append(
                chain.sealed(
                    event_id=f"s{number}-q{statement}",
                    event_type=EventType.STATEMENT,
                    time=moment,
                    statement_number=statement,
                    statement="SELECT email FROM crm.customers WHERE id = ?",
                )
            )
            outcome = chain.sealed(
                event_id=f"s{number}-o{statement}",
                event_type=EventType.STATEMENT_OUTCOME,
                time=moment,
                statement_number=statement,
                status="completed",
                rows=1,
                subjects=2,
            )
            events.append(outcome)
            for access in (Access.RETURNED, Access.NAMED):
                subjects.append(
                    SubjectAccess(
                        event_id=outcome.event_id,
                        session_id=outcome.session_id,
                        statement_number=statement,
                        time=moment,
                        role="agent",
                        identifier_type=IdentifierType.SUBJECT,
                        pseudonym=f"{number:064x}",
                        relation="crm.customers",
                        columns=("email",) if access is Access.RETURNED else (),
                        access=access,
                    )
                )
    return events, subjects


def stream_records(stream_arn: str) -> list[dict[str, Any]]:
    """Every record of the table's stream, as Lambda hands them to a function."""
    streams = boto3.client("dynamodbstreams")
    records: list[dict[str, Any]] = []
    for shard in streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for record in streams.get_records(ShardIterator=iterator)["Records"]:
            change = dict(record["dynamodb"])
            created = change["ApproximateCreationDateTime"]
            change["ApproximateCreationDateTime"] = calendar.timegm(created.utctimetuple())
            records.append({**record, "dynamodb": change, "eventSourceARN": stream_arn})
    return records


def lambda_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": records}


def archived_lines(s3: Any, table: str) -> list[bytes]:
    """Every line of every current object of a table in the archive."""
    lines: list[bytes] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{table}/"):
        for entry in page.get("Contents", []):
            body = s3.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read()
            lines.extend(gzip.decompress(body).splitlines(keepends=True))
    return lines
