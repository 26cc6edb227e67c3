"""The local store's hot tier: hours of records older than the retention removed, each
leaving a signed tombstone, so that `custos audit verify` tells an hour expired by
retention from one removed by someone else.

Only an hour its digest signs is removed (records no digest signs are never deleted),
and its tombstone, under `expired/dt=.../hour=.../tombstone.json`, names the hour and the
SHA-256 of that digest, signed with the digest key. The digests themselves stay: the
chain of hours remains whole.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.audit.digests import digest_path, tombstone_document, tombstone_path
from custos.audit.local import TABLES, record_hours, segment_directory


def expire_hours(root: Path, key: Ed25519PrivateKey, before: datetime) -> list[datetime]:
    """Removes the records of every digested hour that began before `before`, leaving a
    tombstone for each; the hours removed."""
    removed: list[datetime] = []
    for hour in record_hours(root):
        if hour >= before:
            break
        digest = digest_path(root, hour)
        if not digest.exists():
            continue  # never delete what no digest signs
        document = tombstone_document(hour, digest.read_bytes())
        tombstone = tombstone_path(root, hour)
        tombstone.parent.mkdir(parents=True, exist_ok=True)
        signed = {"document": document.decode(), "signature": key.sign(document).hex()}
        tombstone.write_text(json.dumps(signed))
        for table in TABLES:
            shutil.rmtree(segment_directory(root, hour, table), ignore_errors=True)
        removed.append(hour)
    return removed
