"""The audit archiver Lambda under moto, end to end: DynamoStore writes, the table's stream
delivers, the handler archives into an Object-Locked bucket; every event lands there
exactly once across retries, timeouts, failed writes and malformed records."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from custos.audit.chain import verify_chain
from custos.audit.dynamo import DynamoStore
from custos.audit.events import AuditEvent, SubjectAccess
from lambdas.audit_archiver import handler as archiver
from tests.audit_aws_fixtures import (
    BUCKET,
    TABLE,
    LambdaContext,
    archived_lines,
    aws,
    create_audit_bucket,
    create_events_table,
    lambda_event,
    sample_records,
    stream_records,
)

__all__ = ["aws"]  # the fixture, used by name

SECRET = "alice.secret@example.com"


class CurrentStdout:
    """Writes to whatever sys.stdout is now: capsys swaps it only when the test runs."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@pytest.fixture
def log_output(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(archiver.logger.logger_handler, "stream", CurrentStdout())
    return capsys


class Audit:
    """The table with its records written, its stream, and the audit bucket."""

    def __init__(self) -> None:
        dynamodb = boto3.client("dynamodb")
        self.stream_arn = create_events_table(dynamodb)
        self.s3 = boto3.client("s3")
        create_audit_bucket(self.s3)
        self.events, self.subjects = sample_records(sessions=3, statements=4)
        DynamoStore(TABLE, retention_days=30, client=dynamodb).append(self.events, self.subjects)
        self.records = stream_records(self.stream_arn)

    def deliver(self, records: list[dict[str, Any]]) -> list[str]:
        """The sequence numbers the handler reports failed."""
        response = archiver.handler(lambda_event(records), LambdaContext())
        return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]

    def assert_archived_exactly_once(self) -> None:
        events = archived_lines(self.s3, "events")
        subjects = archived_lines(self.s3, "subject_access")
        expected_events = Counter(e.model_dump_json().encode() + b"\n" for e in self.events)
        expected_subjects = Counter(s.model_dump_json().encode() + b"\n" for s in self.subjects)
        assert Counter(events) == expected_events
        assert Counter(subjects) == expected_subjects
        sessions: dict[str, list[AuditEvent]] = {}
        for line in events:
            event = AuditEvent.model_validate_json(line)
            sessions.setdefault(event.session_id, []).append(event)
        for stored in sessions.values():
            assert verify_chain(sorted(stored, key=lambda event: event.seq)) == []
        for line in subjects:
            SubjectAccess.model_validate_json(line)


@pytest.fixture
def audit(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Audit]:
    key = boto3.client("kms").create_key(Description="audit")["KeyMetadata"]["KeyId"]
    monkeypatch.setenv("AUDIT_BUCKET", BUCKET)
    monkeypatch.setenv("AUDIT_KMS_KEY_ID", key)
    archiver.audit_archive.cache_clear()
    yield Audit()
    archiver.audit_archive.cache_clear()


def sequence(record: dict[str, Any]) -> str:
    return str(record["dynamodb"]["SequenceNumber"])


def damaged(delivered: dict[str, Any], **image: Any) -> dict[str, Any]:
    copied = copy.deepcopy(delivered)
    copied["dynamodb"]["NewImage"].update(image)
    return copied


def test_every_record_is_archived_once_in_the_local_layout_encrypted(audit: Audit) -> None:
    assert len(audit.records) == len(audit.events) + len(audit.subjects)
    assert audit.deliver(audit.records) == []
    audit.assert_archived_exactly_once()
    keys = [entry["Key"] for entry in audit.s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    folders = sorted({key.rsplit("/", 1)[0] for key in keys})
    assert folders == [
        "events/dt=2026-12-06/hour=09",
        "events/dt=2026-12-06/hour=10",
        "subject_access/dt=2026-12-06/hour=09",
        "subject_access/dt=2026-12-06/hour=10",
    ]
    for key in keys:
        assert key.endswith(".jsonl.gz")
        head = audit.s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["ObjectLockMode"] == "COMPLIANCE"


def test_a_batch_delivered_twice_is_archived_once(audit: Audit) -> None:
    assert audit.deliver(audit.records) == []
    assert audit.deliver(audit.records) == []
    audit.assert_archived_exactly_once()


def test_a_timeout_after_writing_then_longer_and_shorter_retries(audit: Audit) -> None:
    records = audit.records
    audit.deliver(records[:20])  # wrote, then timed out: Lambda saw no answer
    audit.deliver(records[:30])  # the retry, from the same record, with more after it
    assert audit.deliver(records[:9]) == []  # again, with fewer: confirms up to 9
    assert audit.deliver(records[9:]) == []
    audit.assert_archived_exactly_once()


def test_a_failed_record_then_the_retry_from_it(audit: Audit) -> None:
    records = audit.records
    first_delivery = list(records)
    first_delivery[12] = damaged(records[12], record={"S": "{not json"})
    failed = audit.deliver(first_delivery[:25])
    # The damaged record and those after it; never those before it.
    assert failed == [sequence(record) for record in records[12:25]]
    assert audit.deliver(records[12:]) == []  # the retry starts at the failed record
    audit.assert_archived_exactly_once()


def test_a_failed_write_fails_the_whole_batch(audit: Audit) -> None:
    client = archiver.audit_archive()._client
    writes = 0

    def fail_the_second(**_: Any) -> None:
        nonlocal writes
        writes += 1
        if writes == 2:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "injected"}}, "PutObject")

    client.meta.events.register("before-parameter-build.s3.PutObject", fail_the_second)
    failed = audit.deliver(audit.records)
    assert failed == [sequence(record) for record in audit.records]
    client.meta.events.unregister("before-parameter-build.s3.PutObject", fail_the_second)
    assert audit.deliver(audit.records) == []
    audit.assert_archived_exactly_once()


@pytest.mark.parametrize("seed", range(4))
def test_lambdas_retries_in_any_order_lose_and_duplicate_nothing(audit: Audit, seed: int) -> None:
    """Lambda's semantics played at random: batches of any size from the checkpoint,
    timeouts after writing, records damaged in one delivery, failed writes."""
    shuffle = random.Random(seed)
    records = audit.records
    checkpoint = 0
    client = archiver.audit_archive()._client

    def write_fails(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "SlowDown", "Message": "injected"}}, "PutObject")

    while checkpoint < len(records):
        batch = list(records[checkpoint : checkpoint + shuffle.randint(1, 20)])
        trouble = shuffle.choice(["none", "none", "timeout", "damaged", "write"])
        if trouble == "damaged":
            batch[shuffle.randrange(len(batch))] = damaged(batch[0], table={"S": "somewhere_else"})
        if trouble == "write":
            client.meta.events.register("before-parameter-build.s3.PutObject", write_fails)
        failed = audit.deliver(batch)
        client.meta.events.unregister("before-parameter-build.s3.PutObject", write_fails)
        if trouble == "timeout":
            continue
        positions = [index for index, record in enumerate(batch) if sequence(record) in failed]
        checkpoint += positions[0] if positions else len(batch)
    audit.assert_archived_exactly_once()


def test_remove_records_of_ttl_expiry_are_skipped(audit: Audit) -> None:
    boto3.client("dynamodb").delete_item(
        TableName=TABLE, Key={"pk": {"S": "session#session-0"}, "sk": {"S": "event#0000000000"}}
    )
    [remove] = [
        record for record in stream_records(audit.stream_arn) if record["eventName"] == "REMOVE"
    ]
    assert audit.deliver([remove]) == []
    assert "Contents" not in audit.s3.list_objects_v2(Bucket=BUCKET)


@pytest.mark.parametrize(
    "damage",
    [
        {"record": {"S": json.dumps({"email": SECRET})}},
        {"record": {"S": SECRET}},
        {"table": {"S": "customers"}},
        {"table": {"N": "1"}},
    ],
)
def test_malformed_records_are_reported_never_logged_and_block_nothing_before(
    audit: Audit, log_output: Any, damage: dict[str, Any]
) -> None:
    batch = [audit.records[0], damaged(audit.records[1], **damage), audit.records[2]]
    assert audit.deliver(batch) == [sequence(batch[1]), sequence(batch[2])]
    assert archived_lines(audit.s3, "events") == [
        audit.events[0].model_dump_json().encode() + b"\n"
    ]
    output = log_output.readouterr().out
    assert "malformed stream record" in output
    assert SECRET not in output


def test_records_without_an_image_or_sequence_are_malformed(audit: Audit) -> None:
    no_image = copy.deepcopy(audit.records[1])
    del no_image["dynamodb"]["NewImage"]
    assert audit.deliver([audit.records[0], no_image]) == [sequence(no_image)]
    no_sequence = copy.deepcopy(audit.records[0])
    del no_sequence["dynamodb"]["SequenceNumber"]
    response = archiver.handler(lambda_event([no_sequence]), LambdaContext())
    assert len(response["batchItemFailures"]) == 1


def test_a_locked_object_version_cannot_be_deleted(audit: Audit) -> None:
    audit.deliver(audit.records)
    key = audit.s3.list_objects_v2(Bucket=BUCKET)["Contents"][0]["Key"]
    [version] = audit.s3.list_object_versions(Bucket=BUCKET, Prefix=key)["Versions"]
    with pytest.raises(ClientError, match="AccessDenied"):
        audit.s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version["VersionId"])
    audit.s3.get_object(Bucket=BUCKET, Key=key, VersionId=version["VersionId"])


def test_a_missing_environment_is_a_clear_error(
    audit: Audit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUDIT_BUCKET")
    archiver.audit_archive.cache_clear()
    with pytest.raises(RuntimeError, match="set AUDIT_BUCKET"):
        archiver.handler(lambda_event(audit.records), LambdaContext())


def test_import_builds_no_client_and_reads_no_environment() -> None:
    # Were the environment read or a KMS client built at import, these imports would fail:
    # no region, no credentials, no bucket.
    environment = {"PATH": os.environ["PATH"], "PYTHONPATH": os.getcwd()}
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import lambdas.audit_archiver.handler, lambdas.audit_digest.handler",
        ],
        check=True,
        env=environment,
        timeout=60,
    )
