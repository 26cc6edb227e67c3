"""The audit archiver Lambda: the events table's DynamoDB stream, into the audit bucket.

Each INSERT or MODIFY record's item holds an audit record as its exact JSON line (see
custos/audit/dynamo.py); the archiver writes the lines, gzipped JSON Lines, SSE-KMS, to
`events/` or `subject_access/` + `dt=YYYY-MM-DD/hour=HH/`, by each record's own time: the
local store's layout. REMOVE records (TTL expiry of the hot tier) are not evidence of
anything and are skipped. Items are deterministic, so DynamoDB reports a record written
twice only once; a MODIFY is a changed record, and the archive keeps it too.

No event lost or duplicated across retries. Lambda hands over a shard's records in order,
from its checkpoint; on a partial failure it retries from the first failed record, and
after a timeout or an error from the first record of the batch again. The archiver:
1. reads the batch up to its first malformed record (the malformed one and every record
   after it are reported failed, and none of them is written: the retry starts at that
   record, and a record written now and again then would be there twice);
2. writes one object per table and hour of what it read, named after the group's first
   record: its sequence number (zero-padded, so names sort as numbers) and a digest of its
   item's key (Lambda's stream event carries no shard id; with the key the name is unique
   across shards);
3. reports that prefix done only if every object was written; otherwise every record of
   the batch is reported failed, and the retry starts where this invocation did.
A retry that starts where an earlier attempt did meets, for every table and hour, the same
first record, so it writes the same names again: each object's current version is replaced
by what the retry holds of it (more records, or fewer: those it lacks lie past the retry's
end, unconfirmed, and come in a later batch). A retry that starts at a failed record meets
nothing written before. So each record is in the current version of exactly one object:
the one named after the first record of its table and hour at or after the checkpoint of
the invocation that confirmed it. That needs one batch of a shard at a time
(ParallelizationFactor 1); gzip's header carries no time (mtime 0), so a retry of the
same records writes the same bytes. Object Lock keeps every version a retry replaces.

The records hold no raw personal data by design; the log lines still carry only counts,
sequence numbers and object names, never a record.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from custos.audit.dynamo import RECORD_ATTRIBUTE, TABLE_ATTRIBUTE
from custos.audit.events import AuditEvent, SubjectAccess
from custos.audit.local import EVENTS, SUBJECT_ACCESS, hour_directory
from custos.audit.s3 import S3Archive

logger = Logger(service="custos-audit-archiver")
processor = BatchProcessor(
    event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False
)

BUCKET_ENV = "AUDIT_BUCKET"
KMS_KEY_ENV = "AUDIT_KMS_KEY_ID"
MODELS: dict[str, type[AuditEvent] | type[SubjectAccess]] = {
    EVENTS: AuditEvent,
    SUBJECT_ACCESS: SubjectAccess,
}


class MalformedRecord(ValueError):
    """A stream record that is not an audit record's item."""


class NotArchived(RuntimeError):
    """A sound record left for the retry, because of another record or a failed write."""


@dataclass(frozen=True, slots=True)
class ArchivedRecord:
    sequence: str
    table: str
    time: datetime
    line: bytes
    item_key: str


def archived_record(record: dict[str, Any]) -> ArchivedRecord | None:
    """The line an INSERT or MODIFY record adds to the archive; None for a REMOVE."""
    name = record.get("eventName")
    if name == "REMOVE":
        return None
    change = record.get("dynamodb") or {}
    sequence = change.get("SequenceNumber")
    if not isinstance(sequence, str) or not sequence.isdigit():
        raise MalformedRecord("it has no sequence number")
    if name not in ("INSERT", "MODIFY"):
        raise MalformedRecord(f"its event {name!r} is none of INSERT, MODIFY, REMOVE")
    image = change.get("NewImage") or {}
    try:
        table = image[TABLE_ATTRIBUTE]["S"]
        line = image[RECORD_ATTRIBUTE]["S"]
        item_key = f"{image['pk']['S']}\x00{image['sk']['S']}"
    except (KeyError, TypeError) as error:
        raise MalformedRecord(
            f"its new image lacks the string attribute {error}; is the stream's view"
            " NEW_IMAGE, and is the table written by custos' DynamoStore only?"
        ) from error
    model = MODELS.get(table)
    if model is None:
        raise MalformedRecord(f"its table {table!r} is neither {EVENTS} nor {SUBJECT_ACCESS}")
    try:
        parsed = model.model_validate_json(line)
    except ValidationError as error:
        # The problems' names only: a damaged record's values stay out of the log.
        where = sorted({".".join(map(str, problem["loc"])) for problem in error.errors()})
        raise MalformedRecord(
            f"its record is not a {table} record this archiver reads (fields: {where});"
            " if the gateway is newer than the archiver, deploy the archiver of its version"
        ) from None
    return ArchivedRecord(sequence, table, parsed.time, line.encode() + b"\n", item_key)


def object_path(first: ArchivedRecord) -> str:
    """The name of a batch's object of a table and hour, after its first record there."""
    item = hashlib.sha256(first.item_key.encode()).hexdigest()[:16]
    folder = hour_directory(first.time).as_posix()
    return f"{first.table}/{folder}/{int(first.sequence):040d}-{item}.jsonl.gz"


def archive_batch(records: list[dict[str, Any]], archive: S3Archive) -> list[Exception | None]:
    """Writes what the records add to the archive; each record's outcome, in order."""
    groups: dict[tuple[str, str], list[ArchivedRecord]] = {}
    malformed: tuple[int, MalformedRecord] | None = None
    for index, record in enumerate(records):
        try:
            found = archived_record(record)
        except MalformedRecord as error:
            malformed = (index, error)
            break
        if found is not None:
            folder = hour_directory(found.time).as_posix()
            groups.setdefault((found.table, folder), []).append(found)
    for group in groups.values():
        path = object_path(group[0])
        data = gzip.compress(b"".join(record.line for record in group), mtime=0)
        try:
            archive.write(path, data)
        except (BotoCoreError, ClientError) as error:
            logger.warning("archive write failed", extra={"object": path, "error": str(error)})
            failed = NotArchived(
                f"the archive object {path} could not be written ({error}); the whole batch"
                " is retried, so that its objects are written again under the same names"
            )
            return [failed] * len(records)
    logger.info("archived", extra={"records": len(records), "objects": len(groups)})
    if malformed is None:
        return [None] * len(records)
    index, problem = malformed
    sequence = (records[index].get("dynamodb") or {}).get("SequenceNumber")
    logger.warning("malformed stream record", extra={"sequence": sequence, "problem": str(problem)})
    held = NotArchived(
        f"held back behind the malformed stream record {sequence}: the retry starts there"
    )
    return [None] * index + [problem] + [held] * (len(records) - index - 1)


@functools.cache
def audit_archive() -> S3Archive:
    """The bucket the environment names, with an S3 client built at first use."""
    bucket, key = os.environ.get(BUCKET_ENV, ""), os.environ.get(KMS_KEY_ENV, "")
    if not bucket or not key:
        raise RuntimeError(
            f"set {BUCKET_ENV} (the audit bucket) and {KMS_KEY_ENV} (the audit KMS key's id"
            " or ARN) in the archiver's environment"
        )
    import boto3

    return S3Archive(boto3.client("s3"), bucket, key)


@logger.inject_lambda_context(log_event=False)  # explicit: the env var must not turn it on
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcomes = iter(archive_batch(event.get("Records", []), audit_archive()))

    def settle(record: DynamoDBRecord) -> None:
        # The processor calls this once per record, in the batch's order (by keyword).
        del record
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    return dict(
        process_partial_response(
            event=event, record_handler=settle, processor=processor, context=context
        )
    )
