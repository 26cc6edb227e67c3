"""The audit archive in S3: the Object-Locked bucket as a digests.Archive, and digests
signed and verified with an asymmetric KMS key.

Objects are written SSE-KMS under the audit key (or, with no key named, under the bucket's
default encryption: naming `aws:kms` without a key would pick the AWS-managed key). The
bucket's default retention locks
every version (COMPLIANCE), so a rewrite leaves the version before it in place; a reader,
the digests included, sees each key's current version.

The signing key is ECC_NIST_P256 (KeyUsage SIGN_VERIFY) with ECDSA_SHA_256. KMS signs at
most 4 KB of message, and a digest of a busy hour lists more files than that: it signs the
document's SHA-256 (MessageType DIGEST), which is the same signature as over the document.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from custos.audit.digests import DIGESTS
from custos.audit.local import TABLES, hour_directory

SIGNING_ALGORITHM = "ECDSA_SHA_256"
SIGNING_KEY_SPEC = "ECC_NIST_P256"


class S3Archive:
    """The archive's objects under `prefix` in `bucket`, by their paths below it."""

    def __init__(
        self, client: Any, bucket: str, kms_key_id: str | None = None, prefix: str = ""
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.kms_key_id = kms_key_id
        self.prefix = prefix

    def files(self, hour: datetime) -> list[str]:
        folder = hour_directory(hour).as_posix()
        return [path for table in TABLES for path in self._listed(f"{table}/{folder}/")]

    def read(self, path: str) -> bytes | None:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.prefix + path)
        except self._client.exceptions.NoSuchKey:
            return None
        return bytes(response["Body"].read())

    def write(self, path: str, data: bytes) -> None:
        encryption = (
            {}
            if self.kms_key_id is None
            else {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        )
        self._client.put_object(Bucket=self.bucket, Key=self.prefix + path, Body=data, **encryption)

    def digests(self) -> list[str]:
        return [path for path in self._listed(f"{DIGESTS}/") if path.endswith("/digest.json")]

    def _listed(self, folder: str) -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        keys = [
            entry["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + folder)
            for entry in page.get("Contents", [])
        ]
        return sorted(key.removeprefix(self.prefix) for key in keys)


class KmsSigner:
    def __init__(self, client: Any, key_id: str) -> None:
        self._client = client
        self.key_id = key_id

    def sign(self, message: bytes) -> bytes:
        response = self._client.sign(
            KeyId=self.key_id,
            Message=hashlib.sha256(message).digest(),
            MessageType="DIGEST",
            SigningAlgorithm=SIGNING_ALGORITHM,
        )
        return bytes(response["Signature"])


class KmsVerifier:
    def __init__(self, client: Any, key_id: str) -> None:
        self._client = client
        self.key_id = key_id

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            response = self._client.verify(
                KeyId=self.key_id,
                Message=hashlib.sha256(message).digest(),
                MessageType="DIGEST",
                Signature=signature,
                SigningAlgorithm=SIGNING_ALGORITHM,
            )
        except self._client.exceptions.KMSInvalidSignatureException:
            return False
        return bool(response["SignatureValid"])
