"""The audit digest Lambda: every hour, the signed digest of the hour before.

Run by an hourly schedule; the scheduled event's `time` says when it fired, and the digest
is of the full hour before that (UTC), also of an hour with no objects: the document of
custos/audit/digests.py, signed by the asymmetric KMS key `DIGEST_KMS_KEY_ID`
(ECC_NIST_P256, ECDSA_SHA_256), written to `digests/dt=.../hour=.../digest.json` in
`AUDIT_BUCKET` (SSE-KMS under `AUDIT_KMS_KEY_ID` if set, else the bucket's default).

A digest once written is never written again: a repeated or retried invocation finds it
and leaves it, since the next hour's digest links to its hash. An hour whose invocation
never ran stays without a digest, and verification names that hour.
Digests and objects hold no raw personal data; the log names only hours and paths.
"""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from custos.audit.digests import digest_key, sign_digest
from custos.audit.s3 import KmsSigner, S3Archive

logger = Logger(service="custos-audit-digest")

BUCKET_ENV = "AUDIT_BUCKET"
DIGEST_KEY_ENV = "DIGEST_KMS_KEY_ID"
AUDIT_KEY_ENV = "AUDIT_KMS_KEY_ID"


@functools.cache
def archive_and_signer() -> tuple[S3Archive, KmsSigner]:
    """The bucket and signing key the environment names, with clients built at first use."""
    bucket, key = os.environ.get(BUCKET_ENV, ""), os.environ.get(DIGEST_KEY_ENV, "")
    if not bucket or not key:
        raise RuntimeError(
            f"set {BUCKET_ENV} (the audit bucket) and {DIGEST_KEY_ENV} (the digest signing"
            " key's id or ARN) in the digest function's environment"
        )
    import boto3

    archive = S3Archive(boto3.client("s3"), bucket, os.environ.get(AUDIT_KEY_ENV) or None)
    return archive, KmsSigner(boto3.client("kms"), key)


def digested_hour(event: dict[str, Any]) -> datetime:
    """The full hour before the one the schedule fired in (now, if the event has no time)."""
    fired = event.get("time")
    moment = datetime.fromisoformat(fired) if isinstance(fired, str) else datetime.now(UTC)
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    hour = digested_hour(event)
    archive, signer = archive_and_signer()
    path = digest_key(hour)
    if archive.read(path) is not None:
        logger.info("digest already written", extra={"hour": hour.isoformat(), "digest": path})
        return {"digest": path, "written": False}
    sign_digest(archive, hour, signer)
    logger.info("digest written", extra={"hour": hour.isoformat(), "digest": path})
    return {"digest": path, "written": True}
