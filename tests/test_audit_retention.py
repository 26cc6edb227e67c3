"""The local store's hot tier: hours past it removed once digested, each leaving a signed
tombstone that verify accepts; a removal without one, a forged one, or one for an hour no
digest signs is named."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.audit.chain import SessionChain
from custos.audit.digest_schedule import DigestSchedule
from custos.audit.digests import tombstone_path, verify_digests
from custos.audit.events import EventType
from custos.audit.local import LocalStore, record_hours
from custos.audit.retention import expire_hours
from custos.audit.settings import AuditSettings

NINE = datetime(2026, 12, 6, 9, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
LATER = NINE + timedelta(hours=4)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Records at 09:05, 10:05 and 12:05, digested up to 12:00's hour."""
    chain = SessionChain("s-1")
    writer = LocalStore(tmp_path)
    for hours in (0, 1, 3):
        moment = NINE + timedelta(hours=hours, minutes=5)
        writer.append(
            [chain.sealed(event_id=f"e-{hours}", event_type=EventType.STATEMENT, time=moment)]
        )
    writer.close()
    DigestSchedule(tmp_path, KEY, started=NINE).hourly(LATER + timedelta(minutes=2))
    return tmp_path


def problems(root: Path) -> list[tuple[str, str]]:
    return [(p.where, p.problem) for p in verify_digests(root, KEY.public_key(), LATER)]


def test_hours_past_the_hot_tier_are_removed_and_verify_accepts_them(store: Path) -> None:
    removed = expire_hours(store, KEY, NINE + timedelta(hours=2))
    assert removed == [NINE, NINE + timedelta(hours=1)]
    assert record_hours(store) == [NINE + timedelta(hours=3)]
    assert problems(store) == []


def test_a_removal_without_a_tombstone_is_named(store: Path) -> None:
    expire_hours(store, KEY, NINE + timedelta(hours=1))
    tombstone_path(store, NINE).unlink()
    assert [problem for _, problem in problems(store)] == ["listed in a digest, and missing"]


def test_a_forged_tombstone_is_named(store: Path) -> None:
    expire_hours(store, KEY, NINE + timedelta(hours=1))
    tombstone = tombstone_path(store, NINE)
    signed = json.loads(tombstone.read_text())
    signed["signature"] = Ed25519PrivateKey.generate().sign(signed["document"].encode()).hex()
    tombstone.write_text(json.dumps(signed))
    assert [problem for _, problem in problems(store)] == ["listed in a digest, and missing"]


def test_an_hour_no_digest_signs_is_never_removed(tmp_path: Path) -> None:
    chain = SessionChain("s-1")
    writer = LocalStore(tmp_path)
    writer.append([chain.sealed(event_id="e", event_type=EventType.STATEMENT, time=NINE)])
    writer.close()
    assert expire_hours(tmp_path, KEY, LATER) == []
    assert record_hours(tmp_path) == [NINE]


def test_expiry_needs_the_digest_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set digest_key_file too"):
        AuditSettings(dir=tmp_path, expire_local_after_days=7)
