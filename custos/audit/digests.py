"""Signed hourly digests of the audit store, as CloudTrail signs its logs' digests.

For each hour, also one with no events, a digest lists the segment files written in it
with their SHA-256 and size, the head of every session chain at the hour's end, and the
previous digest's hash and signature, and is signed (Ed25519 here; an asymmetric KMS key
in AWS). Digests live beside the tables, under `digests/dt=YYYY-MM-DD/hour=HH/`.
`verify_digests` checks every signature and every link, that every file listed is there
as it was, that no segment of a digested hour is unlisted, and that no hour between the
first digest and the last is missing one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custos.audit.events import AuditEvent
from custos.audit.local import EVENTS, TABLES, hour_directory, segment_directory

DIGEST_VERSION = 1


def digest_path(root: Path, hour: datetime) -> Path:
    return root / "digests" / hour_directory(hour) / "digest.json"


def _hour_segments(root: Path, hour: datetime) -> list[Path]:
    """The segment files of every table written in an hour."""
    return [
        path
        for table in TABLES
        for path in sorted(segment_directory(root, hour, table).glob("segment-*.jsonl"))
    ]


def _canonical(document: dict[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _file_entry(root: Path, path: Path) -> dict[str, object]:
    data = path.read_bytes()
    return {
        "path": str(path.relative_to(root)),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }


def _heads(paths: list[Path]) -> dict[str, dict[str, object]]:
    """Each session's last event in these segments: its sequence number and hash."""
    heads: dict[str, dict[str, object]] = {}
    for path in paths:
        with path.open("rb") as segment:
            for line in segment:
                event = AuditEvent.model_validate_json(line)
                heads[event.session_id] = {"seq": event.seq, "hash": event.hash}
    return heads


def write_digest(root: Path, hour: datetime, key: Ed25519PrivateKey) -> Path:
    """Signs and writes the digest of one hour (UTC), linked to the one before it."""
    hour = hour.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    paths = _hour_segments(root, hour)
    previous_path = digest_path(root, hour - timedelta(hours=1))
    previous = json.loads(previous_path.read_bytes()) if previous_path.exists() else None
    document: dict[str, object] = {
        "version": DIGEST_VERSION,
        "hour": hour.isoformat(),
        "files": [_file_entry(root, path) for path in paths],
        "chain_heads": _heads([path for path in paths if path.is_relative_to(root / EVENTS)]),
        "previous_digest_hash": None if previous is None else _digest_hash(previous),
        "previous_signature": None if previous is None else previous["signature"],
    }
    signed = {**document, "signature": key.sign(_canonical(document)).hex()}
    path = digest_path(root, hour)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_canonical(signed))
    return path


def _digest_hash(document: dict[str, object]) -> str:
    return hashlib.sha256(_canonical(document)).hexdigest()


@dataclass(frozen=True, slots=True)
class DigestProblem:
    where: str  # the digest's or file's path, relative to the store
    problem: str


def _digests(root: Path) -> Iterator[tuple[datetime, Path]]:
    for path in sorted((root / "digests").glob("dt=*/hour=*/digest.json")):
        day = path.parent.parent.name.removeprefix("dt=")
        hour = path.parent.name.removeprefix("hour=")
        yield datetime.fromisoformat(f"{day}T{hour}:00:00+00:00"), path


def verify_digests(root: Path, public_key: Ed25519PublicKey) -> list[DigestProblem]:
    problems: list[DigestProblem] = []
    listed: set[str] = set()
    digested_hours: list[datetime] = []
    previous: dict[str, object] | None = None
    previous_hour: datetime | None = None
    for hour, path in _digests(root):
        where = str(path.relative_to(root))
        signed = json.loads(path.read_bytes())
        document = {name: value for name, value in signed.items() if name != "signature"}
        try:
            public_key.verify(bytes.fromhex(str(signed.get("signature", ""))), _canonical(document))
        except (InvalidSignature, ValueError):
            problems.append(DigestProblem(where, "its signature does not hold"))
        if previous_hour is not None and hour - previous_hour > timedelta(hours=1):
            gap = f"{(previous_hour + timedelta(hours=1)).isoformat()} to {hour.isoformat()}"
            problems.append(DigestProblem(where, f"no digest for the hours from {gap}"))
        elif previous is not None and document.get("previous_digest_hash") != _digest_hash(
            previous
        ):
            problems.append(DigestProblem(where, "it does not link to the digest before it"))
        for entry in document.get("files", []):
            listed.add(entry["path"])
            file = root / entry["path"]
            if not file.exists():
                problems.append(DigestProblem(entry["path"], "listed in a digest, and missing"))
            elif _file_entry(root, file)["sha256"] != entry["sha256"]:
                problems.append(DigestProblem(entry["path"], "changed since its digest"))
        digested_hours.append(hour)
        previous, previous_hour = signed, hour
    for hour in digested_hours:
        for file in _hour_segments(root, hour):
            relative = str(file.relative_to(root))
            if relative not in listed:
                problems.append(DigestProblem(relative, "not listed in its hour's digest"))
    return problems
