"""Signed hourly digests of the audit store, as CloudTrail signs its logs' digests.

For each hour, also one with no events, a digest lists the files written in it with
their SHA-256 and size, the head of every session chain at the hour's end, and the
previous digest's hash and signature, and is signed (Ed25519 here; an asymmetric KMS key
in AWS). Digests live beside the tables, under `digests/dt=YYYY-MM-DD/hour=HH/`.
`verify_digests` checks every signature and every link, that every file listed is there
as it was, that no file of a digested hour is unlisted, and that no hour between the
first digest and the last is missing one.

The document is built and checked once, over an `Archive` (the local store's folder, or
the S3 bucket: custos/audit/s3.py) with a `Signer` or `Verifier` (Ed25519 here, KMS there).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custos.audit.events import AuditEvent
from custos.audit.local import (
    EVENTS,
    TABLES,
    folder_hour,
    hour_directory,
    record_hours,
    segment_directory,
)

DIGEST_VERSION = 1
DIGESTS = "digests"


class Archive(Protocol):
    """The archive's files, by their paths relative to its root (`events/dt=.../...`)."""

    def files(self, hour: datetime) -> list[str]:
        """Every table's files of an hour, in a stable order."""
        ...

    def read(self, path: str) -> bytes | None:
        """A file's bytes, or None if there is no such file."""
        ...

    def write(self, path: str, data: bytes) -> None: ...

    def digests(self) -> list[str]:
        """Every digest's path, oldest first."""
        ...


class Signer(Protocol):
    def sign(self, message: bytes) -> bytes: ...


class Verifier(Protocol):
    def verify(self, signature: bytes, message: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class Ed25519Signer:
    key: Ed25519PrivateKey

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


@dataclass(frozen=True, slots=True)
class Ed25519Verifier:
    key: Ed25519PublicKey

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class LocalArchive:
    """The local store's folder as an archive."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def files(self, hour: datetime) -> list[str]:
        return [
            path.relative_to(self.root).as_posix()
            for table in TABLES
            for pattern in ("segment-*.jsonl", "segment-*.jsonl.gz")
            for path in sorted(segment_directory(self.root, hour, table).glob(pattern))
        ]

    def read(self, path: str) -> bytes | None:
        file = self.root / path
        return file.read_bytes() if file.exists() else None

    def write(self, path: str, data: bytes) -> None:
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)

    def digests(self) -> list[str]:
        found = (self.root / DIGESTS).glob("dt=*/hour=*/digest.json")
        return sorted(path.relative_to(self.root).as_posix() for path in found)


def digest_key(hour: datetime) -> str:
    """Where an hour's digest is, relative to the archive's root."""
    return f"{DIGESTS}/{hour_directory(hour).as_posix()}/digest.json"


def digest_path(root: Path, hour: datetime) -> Path:
    return root / digest_key(hour)


def records(path: str, data: bytes) -> list[bytes]:
    """The JSON lines of a file of the archive, gzipped (`.gz`) or not."""
    return (gzip.decompress(data) if path.endswith(".gz") else data).splitlines()


def _canonical(document: dict[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _file_entry(path: str, data: bytes) -> dict[str, object]:
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _heads(files: dict[str, bytes]) -> dict[str, dict[str, object]]:
    """Each session's last event in these files: its sequence number and hash."""
    latest: dict[str, AuditEvent] = {}
    for path, data in files.items():
        for line in records(path, data):
            event = AuditEvent.model_validate_json(line)
            head = latest.get(event.session_id)
            # In S3, files do not follow a session's order: the head is its highest seq.
            if head is None or event.seq > head.seq:
                latest[event.session_id] = event
    return {session: {"seq": head.seq, "hash": head.hash} for session, head in latest.items()}


def sign_digest(archive: Archive, hour: datetime, signer: Signer) -> str:
    """Signs and writes the digest of one hour (UTC), linked to the one before it; its
    path."""
    hour = hour.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    files: dict[str, bytes] = {}
    for path in archive.files(hour):
        data = archive.read(path)
        if data is not None:  # gone since it was listed: then it is not the hour's
            files[path] = data
    previous_bytes = archive.read(digest_key(hour - timedelta(hours=1)))
    previous = None if previous_bytes is None else json.loads(previous_bytes)
    document: dict[str, object] = {
        "version": DIGEST_VERSION,
        "hour": hour.isoformat(),
        "files": [_file_entry(path, data) for path, data in files.items()],
        "chain_heads": _heads(
            {path: data for path, data in files.items() if path.startswith(f"{EVENTS}/")}
        ),
        "previous_digest_hash": None if previous is None else _digest_hash(previous),
        "previous_signature": None if previous is None else previous["signature"],
    }
    signed = {**document, "signature": signer.sign(_canonical(document)).hex()}
    path = digest_key(hour)
    archive.write(path, _canonical(signed))
    return path


def write_digest(root: Path, hour: datetime, key: Ed25519PrivateKey) -> Path:
    """Signs and writes the digest of one hour of the local store with an Ed25519 key."""
    return root / sign_digest(LocalArchive(root), hour, Ed25519Signer(key))


def _digest_hash(document: dict[str, object]) -> str:
    return hashlib.sha256(_canonical(document)).hexdigest()


@dataclass(frozen=True, slots=True)
class DigestProblem:
    where: str  # the digest's or file's path, relative to the store
    problem: str


UNDIGESTED_AFTER = timedelta(hours=1, minutes=5)
"""How long after an hour begins its digest is due (the gateway writes it a minute after
the hour ends): records of an hour older than that, and no digest, are not signed."""


def verify_digests(
    root: Path, public_key: Ed25519PublicKey, now: datetime | None = None
) -> list[DigestProblem]:
    """Every problem with the local store's digests and the files they list, and every
    hour of records over long enough ago that no digest covers (a store whose digests
    were removed with its records rewritten, or whose newest hours were cut off with
    their digests, shows there)."""
    archive = LocalArchive(root)
    problems = [
        problem
        for problem in verify_archive(archive, Ed25519Verifier(public_key))
        if problem.problem != "listed in a digest, and missing"
        or not expired_by_retention(root, folder_hour(PurePosixPath(problem.where)), public_key)
    ]
    digested = {folder_hour(PurePosixPath(where)) for where in archive.digests()}
    due_before = (now or datetime.now(UTC)) - UNDIGESTED_AFTER
    for hour in record_hours(root):
        if hour not in digested and hour <= due_before:
            where = f"{hour_directory(hour).as_posix()}"
            problems.append(DigestProblem(where, "records of an hour no digest signs"))
    return problems


EXPIRED = "expired"


def tombstone_path(root: Path, hour: datetime) -> Path:
    return root / EXPIRED / hour_directory(hour) / "tombstone.json"


def tombstone_document(hour: datetime, digest: bytes) -> bytes:
    fields = {"hour": hour.isoformat(), "digest_sha256": hashlib.sha256(digest).hexdigest()}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def expired_by_retention(root: Path, hour: datetime, public_key: Ed25519PublicKey) -> bool:
    """Whether the hour's records were removed by retention: its tombstone is signed and
    names the hour's digest as it is."""
    tombstone = tombstone_path(root, hour)
    digest = digest_path(root, hour)
    if not tombstone.exists() or not digest.exists():
        return False
    try:
        signed = json.loads(tombstone.read_text())
        document = str(signed["document"]).encode()
        public_key.verify(bytes.fromhex(str(signed["signature"])), document)
    except (ValueError, KeyError, TypeError, InvalidSignature):
        return False
    return document == tombstone_document(hour, digest.read_bytes())


def digest_anchor(root: Path) -> tuple[str, str] | None:
    """The newest digest's path and SHA-256: kept elsewhere (a ticket, a log, another
    machine), it shows later whether the newest hours were cut off with their digests."""
    archive = LocalArchive(root)
    found = archive.digests()
    if not found:
        return None
    data = archive.read(found[-1]) or b""
    return found[-1], hashlib.sha256(data).hexdigest()


def verify_archive(archive: Archive, verifier: Verifier) -> list[DigestProblem]:
    problems: list[DigestProblem] = []
    listed: set[str] = set()
    digested_hours: list[datetime] = []
    previous: dict[str, object] | None = None
    previous_hour: datetime | None = None
    for where in archive.digests():
        hour = folder_hour(PurePosixPath(where))
        signed = json.loads(archive.read(where) or b"{}")
        document = {name: value for name, value in signed.items() if name != "signature"}
        try:
            signature = bytes.fromhex(str(signed.get("signature", "")))
        except ValueError:
            signature = b""
        if not signature or not verifier.verify(signature, _canonical(document)):
            problems.append(DigestProblem(where, "its signature does not hold"))
        if previous_hour is None and document.get("previous_digest_hash") is not None:
            # The first digest found links to one before it: that one is gone.
            problems.append(
                DigestProblem(where, "the digest it links to, of the hour before, is missing")
            )
        if previous_hour is not None and hour - previous_hour > timedelta(hours=1):
            gap = f"{(previous_hour + timedelta(hours=1)).isoformat()} to {hour.isoformat()}"
            problems.append(DigestProblem(where, f"no digest for the hours from {gap}"))
        elif previous is not None and document.get("previous_digest_hash") != _digest_hash(
            previous
        ):
            problems.append(DigestProblem(where, "it does not link to the digest before it"))
        for entry in document.get("files", []):
            listed.add(entry["path"])
            data = archive.read(entry["path"])
            if data is None:
                problems.append(DigestProblem(entry["path"], "listed in a digest, and missing"))
            elif hashlib.sha256(data).hexdigest() != entry["sha256"]:
                problems.append(DigestProblem(entry["path"], "changed since its digest"))
        digested_hours.append(hour)
        previous, previous_hour = signed, hour
    for hour in digested_hours:
        for path in archive.files(hour):
            if path not in listed:
                problems.append(DigestProblem(path, "not listed in its hour's digest"))
    return problems
