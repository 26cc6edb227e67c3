"""The DynamoDB audit store under moto: what it writes, that the chain verifies from what
is stored, TTL, idempotent rewrites, and UnprocessedItems retried until written or refused."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from custos.audit.chain import SessionChain, verify_chain
from custos.audit.dynamo import (
    SECONDS_PER_DAY,
    SUBJECT_INDEX,
    AuditStoreUnavailable,
    DynamoStore,
)
from custos.audit.events import SubjectAccess
from tests.audit_aws_fixtures import HOUR, TABLE, aws, create_events_table, sample_records

__all__ = ["aws"]  # the fixture, used by name


@pytest.fixture
def dynamodb(aws: None) -> Any:
    client = boto3.client("dynamodb")
    create_events_table(client)
    return client


def items(client: Any) -> list[dict[str, Any]]:
    return list(client.scan(TableName=TABLE, ConsistentRead=True)["Items"])


def test_events_read_back_in_chain_order_and_verify(dynamodb: Any) -> None:
    events, subjects = sample_records(sessions=2, statements=15)  # > 25 items: several batches
    store = DynamoStore(TABLE, retention_days=30, client=dynamodb)
    store.append(events, subjects)
    for session in ("session-0", "session-1"):
        stored = store.session_events(session)
        assert stored == [event for event in events if event.session_id == session]
        assert verify_chain(stored) == []
    found = items(dynamodb)
    assert len(found) == len(events) + len(subjects)
    # The stored line is the local store's line, byte for byte.
    lines = {item["record"]["S"] for item in found}
    assert {event.model_dump_json() for event in events} <= lines


def test_keys_table_and_ttl_attributes(dynamodb: Any) -> None:
    events, subjects = sample_records(sessions=1, statements=1)
    DynamoStore(TABLE, retention_days=30, client=dynamodb).append(events, subjects)
    by_table: dict[str, list[dict[str, Any]]] = {}
    for item in items(dynamodb):
        by_table.setdefault(item["table"]["S"], []).append(item)
    first = next(item for item in by_table["events"] if item["sk"]["S"] == "event#0000000000")
    assert first["pk"]["S"] == "session#session-0"
    assert int(first["expires_at"]["N"]) == int(events[0].time.timestamp()) + 30 * SECONDS_PER_DAY
    assert "subject_pk" not in first
    rows = by_table["subject_access"]
    # One subject, returned and named by one outcome: two rows, neither overwriting the other.
    assert len(rows) == 2
    assert len({(row["pk"]["S"], row["sk"]["S"]) for row in rows}) == 2
    for row in rows:
        assert row["pk"]["S"] == f"subject#subject#{0:064x}"
        assert row["sk"]["S"].startswith("2026-12-06T09:53:00.000000Z#s0-o1#")
        assert (row["subject_pk"]["S"], row["subject_sk"]["S"]) == (row["pk"]["S"], row["sk"]["S"])
        assert "expires_at" in row
        SubjectAccess.model_validate_json(row["record"]["S"])


def test_subject_rows_are_found_through_the_gsi_by_time(dynamodb: Any) -> None:
    events, subjects = sample_records(sessions=2, statements=3)
    DynamoStore(TABLE, retention_days=30, client=dynamodb).append(events, subjects)
    found = dynamodb.query(
        TableName=TABLE,
        IndexName=SUBJECT_INDEX,
        KeyConditionExpression="subject_pk = :subject AND subject_sk BETWEEN :since AND :until",
        ExpressionAttributeValues={
            ":subject": {"S": f"subject#subject#{1:064x}"},
            ":since": {"S": "2026-12-06T09:54"},
            ":until": {"S": "2026-12-06T09:58"},
        },
    )["Items"]
    rows = [SubjectAccess.model_validate_json(item["record"]["S"]) for item in found]
    assert {(row.session_id, row.statement_number) for row in rows} == {
        ("session-1", 1),
        ("session-1", 2),
    }


def test_writing_the_same_records_again_changes_nothing(dynamodb: Any) -> None:
    events, subjects = sample_records(sessions=1, statements=2)
    store = DynamoStore(TABLE, retention_days=30, client=dynamodb)
    store.append(events, subjects)
    before = items(dynamodb)
    store.append(events, subjects)
    store.append(events + events[:1], subjects + subjects[:1])  # twice in one batch, too
    assert sorted(map(json.dumps, items(dynamodb))) == sorted(map(json.dumps, before))


def test_two_different_events_at_one_place_in_a_chain_are_refused(dynamodb: Any) -> None:
    first = SessionChain("s").sealed(event_id="a", event_type="session_start", time=HOUR)
    fork = SessionChain("s").sealed(event_id="b", event_type="session_start", time=HOUR)
    with pytest.raises(ValueError, match="share the key"):
        DynamoStore(TABLE, retention_days=30, client=dynamodb).append([first, fork])
    assert items(dynamodb) == []


class Throttling:
    """DynamoDB under pressure: each BatchWriteItem writes only the first `takes` items and
    answers the rest as UnprocessedItems, for the first `times` calls."""

    def __init__(self, client: Any, takes: int, times: int) -> None:
        self.takes, self.times, self.calls = takes, times, 0
        self._left: list[dict[str, Any]] = []
        client.meta.events.register("provide-client-params.dynamodb.BatchWriteItem", self.keep)
        client.meta.events.register("after-call.dynamodb.BatchWriteItem", self.answer)

    def keep(self, params: dict[str, Any], **_: Any) -> None:
        self.calls += 1
        self._left = []
        if self.calls <= self.times:
            [(table, requests)] = params["RequestItems"].items()
            params["RequestItems"] = {table: requests[: self.takes]}
            if requests[self.takes :]:
                self._left = [(table, requests[self.takes :])]

    def answer(self, parsed: dict[str, Any], **_: Any) -> None:
        if self._left:
            [(table, requests)] = self._left
            parsed["UnprocessedItems"] = {table: requests}


def test_unprocessed_items_are_retried_with_backoff_until_written(dynamodb: Any) -> None:
    events, subjects = sample_records(sessions=1, statements=3)
    throttling = Throttling(dynamodb, takes=2, times=4)
    delays: list[float] = []
    store = DynamoStore(TABLE, retention_days=30, client=dynamodb, sleep=delays.append)
    store.append(events, subjects)
    assert len(items(dynamodb)) == len(events) + len(subjects)
    assert throttling.calls > 4
    assert delays[:4] == sorted(delays[:4])  # growing (each within its doubling window)
    assert delays[3] > delays[0]


def test_items_left_unprocessed_raise_a_clear_error(dynamodb: Any) -> None:
    events, _ = sample_records(sessions=1, statements=2)  # five events, one taken a call
    Throttling(dynamodb, takes=1, times=1000)
    store = DynamoStore(TABLE, retention_days=30, client=dynamodb, attempts=3, sleep=lambda _: None)
    with pytest.raises(AuditStoreUnavailable, match=r"left 2 records unwritten after 3 attempts"):
        store.append(events)


def test_a_missing_table_is_a_clear_error(aws: None) -> None:
    events, _ = sample_records(sessions=1, statements=1)
    store = DynamoStore("no-such-table", retention_days=30, client=boto3.client("dynamodb"))
    with pytest.raises(AuditStoreUnavailable, match=r"no-such-table refused a write .*Resource"):
        store.append(events)
