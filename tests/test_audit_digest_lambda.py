"""The audit digest Lambda under moto: hourly digests of the S3 archive signed with an
asymmetric KMS key, and a verifier that names a changed or added object, a missing hour
and a forged signature."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest

from custos.audit.digests import digest_key, verify_archive
from custos.audit.dynamo import DynamoStore
from custos.audit.s3 import SIGNING_KEY_SPEC, KmsSigner, KmsVerifier, S3Archive
from lambdas.audit_archiver import handler as archiver
from lambdas.audit_digest import handler as digester
from tests.audit_aws_fixtures import (
    BUCKET,
    HOUR,
    TABLE,
    LambdaContext,
    aws,
    create_audit_bucket,
    create_events_table,
    lambda_event,
    sample_records,
    stream_records,
)

__all__ = ["aws"]  # the fixture, used by name


class Archive:
    """Three sessions archived through the stream, over 09:00 and 10:00; the keys."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        kms = boto3.client("kms")
        self.kms = kms
        self.audit_key = kms.create_key(Description="audit")["KeyMetadata"]["KeyId"]
        self.digest_key = self.signing_key()
        for name, value in {
            "AUDIT_BUCKET": BUCKET,
            "AUDIT_KMS_KEY_ID": self.audit_key,
            "DIGEST_KMS_KEY_ID": self.digest_key,
        }.items():
            monkeypatch.setenv(name, value)
        dynamodb = boto3.client("dynamodb")
        stream = create_events_table(dynamodb)
        self.s3 = boto3.client("s3")
        create_audit_bucket(self.s3)
        events, subjects = sample_records(sessions=3, statements=4)
        DynamoStore(TABLE, retention_days=30, client=dynamodb).append(events, subjects)
        response = archiver.handler(lambda_event(stream_records(stream)), LambdaContext())
        assert response["batchItemFailures"] == []
        self.archive = S3Archive(self.s3, BUCKET, self.audit_key)

    def signing_key(self) -> str:
        created = self.kms.create_key(KeySpec=SIGNING_KEY_SPEC, KeyUsage="SIGN_VERIFY")
        return str(created["KeyMetadata"]["KeyId"])

    def run(self, hours_after: int, minutes: int = 5) -> dict[str, Any]:
        fired = HOUR + timedelta(hours=hours_after, minutes=minutes)
        scheduled = {
            "version": "0",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "time": fired.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "detail": {},
        }
        return dict(digester.handler(scheduled, LambdaContext()))

    def digest(self, hours_after: int) -> dict[str, Any]:
        data = self.archive.read(digest_key(HOUR + timedelta(hours=hours_after)))
        assert data is not None
        return dict(json.loads(data))

    def problems(self) -> list[tuple[str, str]]:
        found = verify_archive(self.archive, KmsVerifier(self.kms, self.digest_key))
        return [(problem.where, problem.problem) for problem in found]


@pytest.fixture
def archive(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Archive]:
    archiver.audit_archive.cache_clear()
    digester.archive_and_signer.cache_clear()
    made = Archive(monkeypatch)
    for hours_after in (1, 2, 3):  # the digests of 09:00, 10:00 and the empty 11:00
        assert made.run(hours_after)["written"]
    yield made
    archiver.audit_archive.cache_clear()
    digester.archive_and_signer.cache_clear()


def test_every_hour_is_digested_and_verifies(archive: Archive) -> None:
    assert archive.problems() == []
    first = archive.digest(0)
    assert first["previous_digest_hash"] is None
    assert {entry["path"].split("/")[0] for entry in first["files"]} == {
        "events",
        "subject_access",
    }
    for entry in first["files"]:
        body = archive.s3.get_object(Bucket=BUCKET, Key=entry["path"])["Body"].read()
        assert entry["bytes"] == len(body)
    second = archive.digest(1)
    assert second["chain_heads"]["session-2"]["seq"] == 8  # start, then 4 statements x 2
    assert second["previous_signature"] == first["signature"]
    empty = archive.digest(2)
    assert (empty["files"], empty["chain_heads"]) == ([], {})
    head = archive.s3.head_object(Bucket=BUCKET, Key=digest_key(HOUR))
    assert head["ServerSideEncryption"] == "aws:kms"


def test_a_repeated_invocation_leaves_the_digest_as_it_was(archive: Archive) -> None:
    assert archive.run(1, minutes=40) == {"digest": digest_key(HOUR), "written": False}
    versions = archive.s3.list_object_versions(Bucket=BUCKET, Prefix=digest_key(HOUR))
    assert len(versions["Versions"]) == 1


def test_a_changed_object_is_named(archive: Archive) -> None:
    path = archive.digest(0)["files"][0]["path"]
    archive.s3.put_object(Bucket=BUCKET, Key=path, Body=b"rewritten")  # a new version
    assert archive.problems() == [(path, "changed since its digest")]


def test_an_object_added_to_a_digested_hour_is_named(archive: Archive) -> None:
    path = "events/dt=2026-12-06/hour=10/0000-late.jsonl.gz"
    archive.archive.write(path, b"")
    assert archive.problems() == [(path, "not listed in its hour's digest")]


def test_a_missing_hour_is_named(archive: Archive) -> None:
    # Without a version id, a delete in a locked bucket adds a delete marker: the digest
    # is gone from what readers see, though its locked version stays.
    archive.s3.delete_object(Bucket=BUCKET, Key=digest_key(HOUR + timedelta(hours=1)))
    [(where, problem)] = archive.problems()
    assert where == digest_key(HOUR + timedelta(hours=2))
    assert problem.startswith("no digest for the hours from 2026-12-06T10:00:00+00:00")


def test_a_forged_signature_is_named(archive: Archive) -> None:
    path = digest_key(HOUR + timedelta(hours=1))
    forged = archive.digest(1)
    forged["chain_heads"] = {}
    archive.archive.write(path, json.dumps(forged).encode())
    assert archive.problems() == [
        (path, "its signature does not hold"),
        (digest_key(HOUR + timedelta(hours=2)), "it does not link to the digest before it"),
    ]


def test_a_digest_signed_again_with_another_key_is_named(archive: Archive) -> None:
    path = digest_key(HOUR + timedelta(hours=1))
    archive.s3.delete_object(Bucket=BUCKET, Key=path)
    other = KmsSigner(archive.kms, archive.signing_key())
    digester.sign_digest(archive.archive, HOUR + timedelta(hours=1), other)
    assert (path, "its signature does not hold") in archive.problems()


def test_a_missing_environment_is_a_clear_error(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGEST_KMS_KEY_ID", raising=False)
    monkeypatch.setenv("AUDIT_BUCKET", BUCKET)
    digester.archive_and_signer.cache_clear()
    with pytest.raises(RuntimeError, match=r"set AUDIT_BUCKET .* and DIGEST_KMS_KEY_ID"):
        digester.handler({"time": "2026-12-06T10:05:00Z"}, LambdaContext())
    digester.archive_and_signer.cache_clear()
