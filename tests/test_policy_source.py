"""Policy sources: a file and a versioned S3 object, reloaded safely when they change."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto_credentials import use_fake_credentials

from custos.policy import FilePolicySource, PolicyEngine, PolicyError, S3PolicySource

FIRST = "rules:\n  - id: first\n    effect: allow\n"
SECOND = "rules:\n  - id: second\n    effect: allow\n"
BROKEN = "rules:\n  - id: broken\n    match: {kinds: [selec]}\n    effect: allow\n"
SECOND_REFORMATTED = (
    "# the same policy, written differently\nrules: [{effect: allow, id: second}]\n"
)


def rule_ids(engine: PolicyEngine) -> list[str]:
    return [rule.id for rule in engine.document.rules]


def replace(path: Path, text: str) -> None:
    """Writes the file as editors and deploy tools do: a new file renamed over the old."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def policy_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "custos.policy"]


# --- files ------------------------------------------------------------------------------------


def test_file_source_loads_at_start(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(FIRST)
    source = FilePolicySource(path)
    assert rule_ids(source.current()) == ["first"]
    assert source.check() is False


def test_file_source_refuses_to_start_without_a_valid_policy(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        FilePolicySource(tmp_path / "missing.yaml")
    assert caught.value.problems == ("cannot read the file: No such file or directory",)
    path = tmp_path / "policy.yaml"
    path.write_text(BROKEN)
    with pytest.raises(PolicyError) as caught:
        FilePolicySource(path)
    assert caught.value.problems[0].startswith("rules[0].match.kinds[0]: 'selec'")


def test_file_source_reloads_keeps_the_last_good_policy_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="custos.policy")
    path = tmp_path / "policy.yaml"
    path.write_text(FIRST)
    source = FilePolicySource(path)
    first = source.current()

    replace(path, SECOND)
    assert source.check() is True
    second = source.current()
    assert rule_ids(second) == ["second"]
    assert policy_logs(caplog) == [
        f"policy {first.version[:12]} -> {second.version[:12]} loaded from {path}"
    ]

    caplog.clear()
    replace(path, BROKEN)
    assert source.check() is False
    assert source.check() is False
    assert source.current() is second
    [message] = policy_logs(caplog)  # once, not once per poll
    assert message.startswith(f"policy file {path} rejected (content sha256 ")
    assert "rules[0].match.kinds[0]: 'selec' is not a statement kind" in message
    assert message.endswith(f"policy {second.version[:12]} stays in force")

    caplog.clear()
    replace(path, FIRST)
    assert source.check() is True
    assert rule_ids(source.current()) == ["first"]
    assert policy_logs(caplog) == [
        f"policy {second.version[:12]} -> {first.version[:12]} loaded from {path}"
    ]


def test_file_source_sees_an_in_place_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(FIRST)
    source = FilePolicySource(path)
    before = os.stat(path)
    path.write_text(FIRST.replace("first", "other"))  # same size, same inode
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert source.check() is True
    assert rule_ids(source.current()) == ["other"]


def test_reformatting_keeps_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(SECOND)
    source = FilePolicySource(path)
    engine = source.current()
    replace(path, SECOND_REFORMATTED)
    assert source.check() is False
    assert source.current() is engine


def test_deleted_file_keeps_the_policy_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(FIRST)
    source = FilePolicySource(path)
    engine = source.current()
    path.unlink()
    assert source.check() is False
    assert source.check() is False
    assert source.current() is engine
    assert policy_logs(caplog) == [f"cannot read policy file {path}: No such file or directory"]
    path.write_text(SECOND)
    assert source.check() is True


def test_watch_reloads_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(FIRST)
    source = FilePolicySource(path, poll_seconds=0.01)

    async def scenario() -> list[str]:
        watcher = asyncio.create_task(source.watch())
        replace(path, SECOND)
        for _ in range(1000):
            if rule_ids(source.current()) == ["second"]:
                break
            await asyncio.sleep(0.01)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        return rule_ids(source.current())

    assert asyncio.run(scenario()) == ["second"]


# --- S3 ---------------------------------------------------------------------------------------

BUCKET = "custos-policies"
KEY = "gateway/policy.yaml"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    use_fake_credentials(monkeypatch, "eu-central-1")
    with mock_aws():
        client = boto3.client("s3", region_name="eu-central-1")
        client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
        )
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield client


def put(client: Any, text: str | bytes) -> str:
    body = text.encode() if isinstance(text, str) else text
    response = client.put_object(Bucket=BUCKET, Key=KEY, Body=body)
    version: str = response["VersionId"]
    return version


def test_s3_source_loads_reloads_and_keeps_the_last_good_version(
    s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="custos.policy")
    put(s3, FIRST)
    source = S3PolicySource(BUCKET, KEY, client_factory=lambda: s3)
    first = source.current()
    assert rule_ids(first) == ["first"]
    assert source.check() is False

    put(s3, SECOND)
    assert source.check() is True
    second = source.current()
    assert rule_ids(second) == ["second"]
    assert policy_logs(caplog) == [
        f"policy {first.version[:12]} -> {second.version[:12]} loaded from s3://{BUCKET}/{KEY}"
    ]

    caplog.clear()
    broken_version = put(s3, BROKEN)
    assert source.check() is False
    assert source.check() is False
    assert source.current() is second
    [message] = policy_logs(caplog)
    assert message.startswith(
        f"policy s3://{BUCKET}/{KEY} rejected (object version {broken_version}, etag "
    )
    assert "'selec' is not a statement kind" in message
    assert message.endswith(f"policy {second.version[:12]} stays in force")

    put(s3, FIRST)
    assert source.check() is True
    assert rule_ids(source.current()) == ["first"]


def test_s3_source_refuses_to_start_without_a_valid_policy(s3: Any) -> None:
    with pytest.raises(PolicyError) as caught:
        S3PolicySource(BUCKET, KEY, client_factory=lambda: s3)
    assert caught.value.origin == f"s3://{BUCKET}/{KEY}"
    assert caught.value.problems[0].startswith("cannot read the object: ")
    assert "NoSuchKey" in caught.value.problems[0]
    put(s3, BROKEN)
    with pytest.raises(PolicyError) as caught:
        S3PolicySource(BUCKET, KEY, client_factory=lambda: s3)
    assert caught.value.problems[0].startswith("rules[0].match.kinds[0]")
    put(s3, b"\xff\xfe")
    with pytest.raises(PolicyError) as caught:
        S3PolicySource(BUCKET, KEY, client_factory=lambda: s3)
    assert caught.value.problems == ("the object is not UTF-8 text",)


def test_s3_source_survives_a_deleted_object(s3: Any, caplog: pytest.LogCaptureFixture) -> None:
    put(s3, FIRST)
    source = S3PolicySource(BUCKET, KEY, client_factory=lambda: s3)
    engine = source.current()
    s3.delete_object(Bucket=BUCKET, Key=KEY)
    assert source.check() is False
    assert source.check() is False
    assert source.current() is engine
    [message] = policy_logs(caplog)
    assert message.startswith(f"cannot read policy s3://{BUCKET}/{KEY}: ")
    put(s3, SECOND)
    assert source.check() is True


def test_s3_source_builds_its_own_client(s3: Any) -> None:
    put(s3, FIRST)
    source = S3PolicySource(BUCKET, KEY)
    assert rule_ids(source.current()) == ["first"]


def test_s3_watch_reloads_in_the_background(s3: Any) -> None:
    put(s3, FIRST)
    source = S3PolicySource(BUCKET, KEY, client_factory=lambda: s3, poll_seconds=0.01)

    async def scenario() -> list[str]:
        watcher = asyncio.create_task(source.watch())
        put(s3, SECOND)
        for _ in range(1000):
            if rule_ids(source.current()) == ["second"]:
                break
            await asyncio.sleep(0.01)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        return rule_ids(source.current())

    assert asyncio.run(scenario()) == ["second"]
