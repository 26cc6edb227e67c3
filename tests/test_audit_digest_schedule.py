"""The gateway's hourly digests of the local store: every hour over gets one, quiet hours
and hours the gateway was down too, each once; what they sign verifies, and a key that
is not an Ed25519 private key is refused with a clear message."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from custos.audit.chain import SessionChain
from custos.audit.digest_schedule import (
    GRACE,
    DigestKeyError,
    DigestSchedule,
    digest_signing_key,
    due_hours,
)
from custos.audit.digests import verify_digests
from custos.audit.events import EventType
from custos.audit.local import LocalStore
from custos.demo.embedded import write_digest_keys

NINE = datetime(2026, 12, 6, 9, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()


def record_at(root: Path, chain: SessionChain, moment: datetime) -> None:
    store = LocalStore(root)
    store.append(
        [chain.sealed(event_id=f"e-{moment:%H%M}", event_type=EventType.STATEMENT, time=moment)]
    )
    store.close()


def test_every_hour_over_gets_one_digest_quiet_ones_too(tmp_path: Path) -> None:
    chain = SessionChain("s-1")
    record_at(tmp_path, chain, NINE + timedelta(minutes=5))
    record_at(tmp_path, chain, NINE + timedelta(hours=2, minutes=1))
    started = NINE + timedelta(minutes=1)
    # 11:00 is not over: only 09:00 and 10:00 (quiet) are due.
    now = NINE + timedelta(hours=2, minutes=30)
    assert due_hours(tmp_path, now, started) == [NINE, NINE + timedelta(hours=1)]
    written = DigestSchedule(tmp_path, KEY, started=started).hourly(now)
    assert [path.parent.name for path in written] == ["hour=09", "hour=10"]
    assert DigestSchedule(tmp_path, KEY, started=started).hourly(now) == []  # each hour once
    # Within its grace an hour is not due yet (records sealed at its end still land in it).
    assert due_hours(tmp_path, NINE + timedelta(hours=3) + GRACE / 2, started) == []
    assert verify_digests(tmp_path, KEY.public_key(), now) == []
    # An hour later, 11:00's records are due a digest: without one, verify says so.
    later = NINE + timedelta(hours=3, minutes=10)
    assert [(p.where, p.problem) for p in verify_digests(tmp_path, KEY.public_key(), later)] == [
        ("dt=2026-12-06/hour=11", "records of an hour no digest signs")
    ]


def test_hours_the_gateway_was_down_are_digested_when_it_starts(tmp_path: Path) -> None:
    chain = SessionChain("s-1")
    record_at(tmp_path, chain, NINE + timedelta(minutes=5))
    DigestSchedule(tmp_path, KEY, started=NINE).hourly(NINE + timedelta(hours=1, minutes=2))
    # Down from 10:00 to 15:30; started again at 15:30.
    later = NINE + timedelta(hours=6, minutes=30)
    written = DigestSchedule(tmp_path, KEY, started=later).hourly(later)
    assert [path.parent.name for path in written] == [f"hour={h}" for h in range(10, 15)]
    assert verify_digests(tmp_path, KEY.public_key(), later) == []


def test_an_empty_store_starts_with_the_hour_the_gateway_started(tmp_path: Path) -> None:
    started = NINE + timedelta(minutes=20)
    assert due_hours(tmp_path, NINE + timedelta(minutes=50), started) == []
    assert due_hours(tmp_path, NINE + timedelta(hours=1, minutes=5), started) == [NINE]


def test_the_demo_keys_sign_what_the_public_one_verifies(tmp_path: Path) -> None:
    chain = SessionChain("s-1")
    record_at(tmp_path / "store", chain, NINE + timedelta(minutes=5))
    key = digest_signing_key(write_digest_keys(tmp_path / "digest"))
    DigestSchedule(tmp_path / "store", key, started=NINE).hourly(NINE + timedelta(hours=2))
    public = load_pem_public_key((tmp_path / "digest.pub.pem").read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    now = NINE + timedelta(hours=2)
    assert verify_digests(tmp_path / "store", public, now) == []
    assert verify_digests(tmp_path / "store", KEY.public_key(), now) != []  # another key's


def test_a_key_that_is_not_an_ed25519_private_key_is_refused(tmp_path: Path) -> None:
    public = tmp_path / "digest.pub.pem"
    write_digest_keys(tmp_path / "digest")
    with pytest.raises(DigestKeyError, match="not a PEM private key"):
        digest_signing_key(public)
    with pytest.raises(DigestKeyError, match="cannot read the digest key"):
        digest_signing_key(tmp_path / "missing.pem")


def test_hours_whose_digests_went_missing_are_never_signed_again(tmp_path: Path) -> None:
    """Attack round 22: with an hour's digest gone, the gateway signing it again would
    bless whatever the hour holds now."""
    chain = SessionChain("s-1")
    for hours in (0, 1, 2):
        record_at(tmp_path, chain, NINE + timedelta(hours=hours, minutes=5))
    schedule = DigestSchedule(tmp_path, KEY)
    now = NINE + timedelta(hours=3, minutes=2)
    assert len(schedule.hourly(now)) == 3
    for hour in ("hour=10", "hour=11"):
        shutil.rmtree(tmp_path / "digests" / "dt=2026-12-06" / hour)
    assert schedule.hourly(now) == []  # not signed again
    problems = {p.problem for p in verify_digests(tmp_path, KEY.public_key(), now)}
    assert "records of an hour no digest signs" in problems
