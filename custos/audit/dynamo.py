"""The AWS hot tier of the audit store: the events table in DynamoDB.

One item per record. An event is keyed by its session and sequence number
(`pk = session#<session_id>`, `sk = event#<seq:010d>`), so a session reads back in chain
order; a data-subject index row by its subject and time (`pk = subject#<type>#<pseudonym>`,
`sk = <time>#<event_id>#<digest>`), and again as `subject_pk`/`subject_sk` for the
`by_subject` GSI. The digest of the row's own JSON ends its sort key because one outcome
event can touch one subject more than once (named in a predicate and returned, or in two
tables): without it, the second row would overwrite the first.

Each item holds the record as the exact JSON line the local store writes (`record`), so
the archiver copies it byte for byte and the hash chain verifies from what is stored;
beside it the key attributes, the record's `table` (events / subject_access) and
`expires_at` for TTL. `expires_at` counts from the record's own time, not the clock: an
item is a function of its record alone, so writing a record again writes the same item,
which DynamoDB Streams does not report again.

boto3 is imported only when no client is given, at construction: never at import.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from custos.audit.chain import EventRecord, record_line
from custos.audit.events import AuditEvent, SubjectAccess
from custos.audit.local import EVENTS, SUBJECT_ACCESS

RECORD_ATTRIBUTE = "record"
TABLE_ATTRIBUTE = "table"
TTL_ATTRIBUTE = "expires_at"
SUBJECT_INDEX = "by_subject"
SUBJECT_PK = "subject_pk"
SUBJECT_SK = "subject_sk"

BATCH_ITEMS = 25  # BatchWriteItem's limit per request
SECONDS_PER_DAY = 86_400

Item = dict[str, dict[str, str]]  # an item in DynamoDB's JSON: {"pk": {"S": "..."}}


class AuditStoreUnavailable(RuntimeError):
    """The events table could not take a batch of records; none of its statements may run."""


def event_key(event: EventRecord) -> tuple[str, str]:
    return f"session#{event.session_id}", f"event#{event.seq:010d}"


def subject_key(row: SubjectAccess, line: str) -> tuple[str, str]:
    digest = hashlib.sha256(line.encode()).hexdigest()[:16]
    return (
        f"subject#{row.identifier_type.value}#{row.pseudonym}",
        f"{sortable_time(row.time)}#{row.event_id}#{digest}",
    )


def sortable_time(moment: datetime) -> str:
    """ISO 8601 in UTC at a fixed width, so that sort keys order as times do."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_item(event: EventRecord, retention_days: int) -> Item:
    line = record_line(event).decode().removesuffix("\n")
    pk, sk = event_key(event)
    return _item(pk, sk, EVENTS, line, event.time, retention_days)


def subject_item(row: SubjectAccess, retention_days: int) -> Item:
    line = row.model_dump_json()
    pk, sk = subject_key(row, line)
    item = _item(pk, sk, SUBJECT_ACCESS, line, row.time, retention_days)
    item[SUBJECT_PK] = {"S": pk}
    item[SUBJECT_SK] = {"S": sk}
    return item


def _item(pk: str, sk: str, table: str, line: str, moment: datetime, retention_days: int) -> Item:
    expires_at = int(moment.timestamp()) + retention_days * SECONDS_PER_DAY
    return {
        "pk": {"S": pk},
        "sk": {"S": sk},
        TABLE_ATTRIBUTE: {"S": table},
        RECORD_ATTRIBUTE: {"S": line},
        TTL_ATTRIBUTE: {"N": str(expires_at)},
    }


class DynamoStore:
    """Writes audit records to the events table; `append` returns once every item is in."""

    def __init__(
        self,
        table_name: str,
        retention_days: int,
        client: Any = None,
        *,
        attempts: int = 8,
        first_delay: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb")
        self.table_name = table_name
        self.retention_days = retention_days
        self._client = client
        self._attempts = attempts
        self._first_delay = first_delay
        self._sleep = sleep

    def append(self, events: Sequence[EventRecord], subjects: Sequence[SubjectAccess] = ()) -> None:
        """Writes the records; raises AuditStoreUnavailable if any of them is not written."""
        items: dict[tuple[str, str], Item] = {}
        for item in [event_item(event, self.retention_days) for event in events] + [
            subject_item(row, self.retention_days) for row in subjects
        ]:
            key = (item["pk"]["S"], item["sk"]["S"])
            if items.setdefault(key, item) != item:
                # Two different events at one place in a session's chain: a fork, never
                # something to settle by letting the last one win.
                raise ValueError(f"two different audit records share the key {key}")
        requests = [{"PutRequest": {"Item": item}} for item in items.values()]
        for start in range(0, len(requests), BATCH_ITEMS):
            self._write(requests[start : start + BATCH_ITEMS])

    def _write(self, requests: list[dict[str, Any]]) -> None:
        """One BatchWriteItem, and again for what DynamoDB left unprocessed, with backoff."""
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(self._attempts):
            if attempt:
                delay = self._first_delay * 2 ** (attempt - 1)
                self._sleep(random.uniform(delay / 2, delay))  # jitter: writers spread out
            try:
                response = self._client.batch_write_item(RequestItems={self.table_name: requests})
            except ClientError as error:
                details = error.response.get("Error", {})
                raise AuditStoreUnavailable(
                    f"the audit table {self.table_name} refused a write"
                    f" ({details.get('Code', 'unknown')}: {details.get('Message', '')});"
                    " check that the table exists and the gateway's role may write to it"
                ) from error
            except BotoCoreError as error:
                raise AuditStoreUnavailable(
                    f"the audit table {self.table_name} could not be written ({error});"
                    " check the gateway's network path to DynamoDB and its credentials"
                ) from error
            requests = response.get("UnprocessedItems", {}).get(self.table_name, [])
            if not requests:
                return
        raise AuditStoreUnavailable(
            f"the audit table {self.table_name} left {len(requests)} records unwritten after"
            f" {self._attempts} attempts (throttled); raise its capacity or wait and retry"
        )

    @property
    def writes_quickly(self) -> bool:
        return False  # each write is a network round trip

    def close(self) -> None:
        """Nothing is held open: every append is durable when it returns."""

    def session_events(self, session_id: str) -> list[AuditEvent]:
        """A session's events as stored, in sequence order (a strongly consistent read)."""
        paginator = self._client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": f"session#{session_id}"}},
            ConsistentRead=True,
        )
        return [
            AuditEvent.model_validate_json(item[RECORD_ATTRIBUTE]["S"])
            for page in pages
            for item in page["Items"]
        ]
