"""Signed hourly digests of the local audit store: every signature, link and file
checked, and every change, removal, forgery and missing hour named."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.audit.chain import SessionChain
from custos.audit.digests import digest_path, verify_digests, write_digest
from custos.audit.events import EventType
from custos.audit.local import LocalStore, segments

HOUR = datetime(2026, 12, 6, 9, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Three hours: events in the first and last, none in the second; each digested."""
    chain = SessionChain("s-1")
    writer = LocalStore(tmp_path)
    for minutes in (5, 10, 125):
        event = chain.sealed(
            event_id=f"e-{minutes}",
            event_type=EventType.STATEMENT,
            time=HOUR + timedelta(minutes=minutes),
        )
        writer.append([event])
    writer.close()
    for hours in range(3):
        write_digest(tmp_path, HOUR + timedelta(hours=hours), KEY)
    return tmp_path


def problems(root: Path) -> list[tuple[str, str]]:
    return [(p.where, p.problem) for p in verify_digests(root, KEY.public_key())]


def test_an_untouched_store_verifies_an_empty_hour_included(store: Path) -> None:
    assert problems(store) == []
    empty = json.loads(digest_path(store, HOUR + timedelta(hours=1)).read_bytes())
    assert empty["files"] == []
    assert empty["chain_heads"] == {}  # no events in that hour
    last = json.loads(digest_path(store, HOUR + timedelta(hours=2)).read_bytes())
    assert last["chain_heads"]["s-1"]["seq"] == 2


def test_a_changed_segment_is_named(store: Path) -> None:
    first = segments(store)[0]
    first.write_bytes(first.read_bytes().replace(b'"statement"', b'"session_end"', 1))
    assert problems(store) == [(str(first.relative_to(store)), "changed since its digest")]


def test_a_removed_segment_and_an_unlisted_one_are_named(store: Path) -> None:
    first = segments(store)[0]
    first.unlink()
    extra = first.parent / "segment-99999999999999999999-feedfeedfeed.jsonl"
    extra.write_text("")
    assert set(problems(store)) == {
        (str(first.relative_to(store)), "listed in a digest, and missing"),
        (str(extra.relative_to(store)), "not listed in its hour's digest"),
    }


def test_a_missing_hour_is_named(store: Path) -> None:
    digest_path(store, HOUR + timedelta(hours=1)).unlink()
    [(_where, problem)] = problems(store)
    assert problem.startswith("no digest for the hours from 2026-12-06T10:00:00+00:00")


def test_a_forged_or_rewritten_digest_is_named(store: Path) -> None:
    path = digest_path(store, HOUR + timedelta(hours=1))
    forged = json.loads(path.read_bytes())
    forged["chain_heads"] = {"s-9": {"seq": 0, "hash": "0" * 64}}
    path.write_text(json.dumps(forged))
    found = problems(store)
    assert (str(path.relative_to(store)), "its signature does not hold") in found
    # Signed again with another key, it still breaks the next digest's link.
    write_digest(store, HOUR + timedelta(hours=1), Ed25519PrivateKey.generate())
    after = digest_path(store, HOUR + timedelta(hours=2))
    assert (str(after.relative_to(store)), "it does not link to the digest before it") in problems(
        store
    )
