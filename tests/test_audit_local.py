"""The local audit store: segment files in the archive's layout, read back whole, and
`custos audit verify` naming what was changed on disk."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from custos.audit.chain import SessionChain
from custos.audit.events import AuditEvent, EventType
from custos.audit.local import LocalStore, segments, stored_events, verify_store
from custos.cli import main

START = datetime(2026, 12, 6, 9, 58, tzinfo=UTC)


def statements(chain: SessionChain, count: int, start: datetime = START) -> list[AuditEvent]:
    return [
        chain.sealed(
            event_id=f"{chain.session_id}-{number}",
            event_type=EventType.STATEMENT,
            time=start + timedelta(minutes=number),
            statement="SELECT email FROM crm.customers WHERE id = ?",
            decision="mask",
        )
        for number in range(count)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Two sessions' events, written in batches across an hour's turn, by two processes."""
    first, second = SessionChain("s-1"), SessionChain("s-2")
    one, two = statements(first, 4), statements(second, 3)
    writer = LocalStore(tmp_path)
    writer.append([one[0], two[0], one[1]])  # one group commit for both sessions
    writer.append([two[1], one[2]])  # 10:00 and after: the next hour's directory
    writer.close()
    again = LocalStore(tmp_path)  # another process: a segment of its own
    again.append([one[3], two[2]])
    again.close()
    return tmp_path


def test_events_land_by_hour_as_in_the_archive_and_read_back_whole(store: Path) -> None:
    layout = sorted(str(path.parent.relative_to(store)) for path in segments(store))
    hours = ["dt=2026-12-06/hour=09", "dt=2026-12-06/hour=10", "dt=2026-12-06/hour=10"]
    assert layout == [f"events/{hour}" for hour in hours]
    events = [event for event in stored_events(store) if isinstance(event, AuditEvent)]
    assert sorted((event.session_id, event.seq) for event in events) == [
        ("s-1", 0), ("s-1", 1), ("s-1", 2), ("s-1", 3), ("s-2", 0), ("s-2", 1), ("s-2", 2),
    ]  # fmt: skip
    assert verify_store(store) == ([], [])


def test_verify_says_every_chain_holds(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--dir", str(store)]) == 0
    assert "every session's chain holds (3 segment files" in capsys.readouterr().out


def _rewrite(path: Path, change: object) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(change(lines)))  # type: ignore[operator]


def test_an_edited_event_is_named(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = segments(store)[0]

    def edited(lines: list[str]) -> list[str]:
        event = json.loads(lines[2])
        event["decision"] = "allow"
        return [*lines[:2], json.dumps(event) + "\n", *lines[3:]]

    _rewrite(first, edited)
    assert main(["audit", "verify", "--dir", str(store)]) == 1
    assert "session s-1 event 1: changed: its hash does not hold" in capsys.readouterr().out


def test_a_deleted_event_is_named(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _rewrite(segments(store)[1], lambda lines: lines[1:])  # 10:00's first segment: s-1's 2
    assert main(["audit", "verify", "--dir", str(store)]) == 1
    assert "session s-1 event 2: removed: events 2 missing" in capsys.readouterr().out


def test_reordered_and_torn_lines_are_named(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = segments(store)[0]
    _rewrite(first, lambda lines: [lines[2], lines[1], lines[0]])
    last = segments(store)[-1]
    last.write_bytes(last.read_bytes()[:-40])  # a write cut short
    assert main(["audit", "verify", "--dir", str(store)]) == 1
    out = capsys.readouterr().out
    assert "reordered" in out
    assert f"{last.relative_to(store)}:2: not an audit event" in out


def test_a_missing_store_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "verify", "--dir", str(tmp_path / "nowhere")]) == 2
    assert "no audit store at" in capsys.readouterr().out


def test_a_gzipped_store_reads_back_and_names_a_member_cut_short(tmp_path: Path) -> None:
    chain = SessionChain("s-1")
    writer = LocalStore(tmp_path, compress=True)
    nine = datetime(2026, 12, 6, 9, tzinfo=UTC)  # one hour: one segment
    for batch in statements(chain, 4, nine), statements(SessionChain("s-2"), 2, nine):
        writer.append(batch)  # each batch a gzip member of its own
    writer.close()
    (segment,) = segments(tmp_path)
    assert segment.name.endswith(".jsonl.gz")
    assert len([e for e in stored_events(tmp_path) if isinstance(e, AuditEvent)]) == 6
    assert verify_store(tmp_path) == ([], [])
    segment.write_bytes(segment.read_bytes()[:-10])  # the last commit cut short
    problems, unreadable = verify_store(tmp_path)
    assert [line.detail for line in unreadable] == ["its last gzip member is cut short"]
    assert problems == []  # s-2's events are all in the member that is cut


def test_auditor_sql_reads_a_gzipped_store_commit_by_commit(tmp_path: Path) -> None:
    from custos.audit.query import run_query

    writer = LocalStore(tmp_path, compress=True)
    chain = SessionChain("s-1")
    nine = datetime(2026, 12, 6, 9, tzinfo=UTC)
    for _ in range(3):
        writer.append(statements(chain, 5, nine))  # three gzip members in one segment
    writer.close()
    result = run_query(tmp_path, "SELECT count(*), max(seq) FROM custos_audit.events")
    assert result.rows == [(15, 14)]


def test_files_that_are_not_segments_are_named_and_never_read(store: Path) -> None:
    """Attack round 22: a file of another name, or an hour spelt another way, beside the
    segments: no reader may count its records, and verify must name it."""
    from custos.audit.query import run_query

    (first,) = segments(store)[:1]
    before = run_query(store, "SELECT count(*) FROM custos_audit.events").rows
    forged = first.parent / "forged.jsonl"
    forged.write_bytes(first.read_bytes())
    respelt = store / "events" / "dt=20261206" / "hour=09" / first.name
    respelt.parent.mkdir(parents=True)
    respelt.write_bytes(first.read_bytes())
    assert run_query(store, "SELECT count(*) FROM custos_audit.events").rows == before
    problems, unreadable = verify_store(store)
    assert problems == []
    assert {(line.path, line.detail) for line in unreadable} == {
        (forged, "not a segment of this store"),
        (respelt, "not a segment of this store"),
    }
