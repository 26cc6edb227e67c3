"""Signed digests of the local store, written by the gateway as each hour ends.

Every hour gets a digest once it is over and a grace period has passed (records sealed
in its last moments are written in it), also an hour without records, and also the hours
the gateway was not running, written when it starts again: so `custos audit verify
--public-key` can tell a missing hour from a quiet one. The first hour digested is the
hour of the store's first record, or the hour the gateway first started with digests on.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from custos.audit.digests import DIGESTS, write_digest
from custos.audit.local import folder_hour, record_hours
from custos.audit.retention import expire_hours

log = logging.getLogger("custos.audit")

HOUR = timedelta(hours=1)
GRACE = timedelta(minutes=1)


class DigestKeyError(Exception):
    """The digest signing key cannot be used; the message says why."""


def digest_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise DigestKeyError(f"cannot read the digest key {path}: {error.strerror}") from None
    except ValueError:
        raise DigestKeyError(
            f"{path} is not a PEM private key: make one with"
            " `openssl genpkey -algorithm ed25519 -out FILE`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DigestKeyError(f"the digest key {path} is not an Ed25519 key")
    return key


def _first_hour(root: Path, started: datetime) -> datetime:
    """The hour digests start from: after the last one written, else the first record's,
    else the one the gateway started in."""
    digested = sorted((root / DIGESTS).glob("dt=*/hour=*"))
    if digested:
        return folder_hour(digested[-1]) + HOUR
    start = min([*record_hours(root), started])
    return start.replace(minute=0, second=0, microsecond=0)


def due_hours(root: Path, now: datetime, started: datetime) -> list[datetime]:
    """The hours over (and past their grace) that have no digest yet, oldest first."""
    hour = _first_hour(root, started)
    due: list[datetime] = []
    while hour + HOUR + GRACE <= now:
        due.append(hour)
        hour += HOUR
    return due


class DigestSchedule:
    """Writes each hour's digest as it falls due, until cancelled."""

    def __init__(
        self,
        root: Path,
        key: Ed25519PrivateKey,
        expire_after: timedelta | None = None,
        started: datetime | None = None,
    ) -> None:
        self._root = root
        self._key = key
        self._expire_after = expire_after  # the hot tier's length, if records expire
        # The newest hour signed, in this run or before: an hour up to it found without its
        # digest lost it to someone, and is never signed again (what it holds now may not
        # be what was signed).
        digested = sorted((root / DIGESTS).glob("dt=*/hour=*/digest.json"))
        self._newest: datetime | None = folder_hour(digested[-1]) if digested else None
        # The first hour: the one the gateway starts in, if the store has nothing older.
        self._started = started or datetime.now(UTC)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = datetime.now(UTC)
            try:
                written = await loop.run_in_executor(None, self.hourly, now)
            except Exception:
                log.exception("audit: the hourly digest could not be written; trying again")
                written = []
            for path in written:
                log.info("audit: digest written %s", path.relative_to(self._root))
            next_due = now.replace(minute=0, second=0, microsecond=0) + HOUR + GRACE
            await asyncio.sleep(max((next_due - now).total_seconds(), 1.0))

    def hourly(self, now: datetime) -> list[Path]:
        """The digests due, then the hours past the hot tier removed."""
        due = due_hours(self._root, now, self._started)
        newest = self._newest
        gone = [hour for hour in due if newest is not None and hour <= newest]
        if gone:
            log.error(
                "audit: the digests of %d hours this gateway signed are gone (from %s); it"
                " does not sign them again: run `custos audit verify` on the store",
                len(gone),
                gone[0].isoformat(),
            )
        written = [write_digest(self._root, hour, self._key) for hour in due if hour not in gone]
        if written:
            self._newest = max(hour for hour in due if hour not in gone)
        if self._expire_after is not None:
            for hour in expire_hours(self._root, self._key, now - self._expire_after):
                log.info("audit: records of %s removed (retention)", hour.isoformat())
        return written
