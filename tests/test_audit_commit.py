"""Group commit: events of many sessions handed over at once share one durable write, each
caller hears when its own are on disk, and a store that cannot write fails them all."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from custos.audit.chain import SessionChain
from custos.audit.commit import LINGER_SECONDS, GroupCommitter
from custos.audit.events import AuditEvent, EventType, SubjectAccess
from custos.audit.local import LocalStore, stored_events, verify_store

NOW = datetime(2026, 12, 6, 10, tzinfo=UTC)


class CountingStore(LocalStore):
    """The real store, counting its appends (each one write and one fsync); `quick` false
    has it written as a slow store is, on the committer's thread."""

    def __init__(self, root: Path, *, quick: bool = True) -> None:
        super().__init__(root)
        self.appends: list[int] = []
        self._quick = quick

    @property
    def writes_quickly(self) -> bool:
        return self._quick

    def append(self, events: Sequence[AuditEvent], subjects: Sequence[SubjectAccess] = ()) -> None:
        self.appends.append(len(events))
        super().append(events, subjects)


def event(chain: SessionChain, number: int) -> AuditEvent:
    return chain.sealed(
        event_id=f"{chain.session_id}-{number}", event_type=EventType.STATEMENT, time=NOW
    )


@pytest.mark.parametrize("quick", [True, False], ids=["on the loop", "on a thread"])
def test_events_waiting_together_share_a_commit(tmp_path: Path, quick: bool) -> None:
    store = CountingStore(tmp_path, quick=quick)
    chains = [SessionChain(f"s-{n}") for n in range(20)]

    async def sessions() -> None:
        committer = GroupCommitter(store)
        waits = [committer.add([event(chain, 0)]) for chain in chains]
        waits += [committer.add([event(chain, 1)]) for chain in chains]
        await asyncio.gather(*waits)

    asyncio.run(sessions())
    store.close()
    assert store.appends == [40]  # handed over in one turn of the loop: one commit
    assert verify_store(tmp_path) == ([], [])
    assert len([e for e in stored_events(tmp_path) if isinstance(e, AuditEvent)]) == 40


def test_events_handed_over_while_a_commit_is_written_share_the_next(tmp_path: Path) -> None:
    store = CountingStore(tmp_path, quick=False)
    chains = [SessionChain(f"s-{n}") for n in range(10)]

    async def sessions() -> None:
        committer = GroupCommitter(store)
        first = committer.add([event(chains[0], 0)])
        await asyncio.sleep(0)  # the first commit starts
        waits = [committer.add([event(chain, 0)]) for chain in chains[1:]]
        for chain in chains[1:]:
            await asyncio.sleep(0)  # one session at a time, each turn of the loop
            waits.append(committer.add([event(chain, 1)]))
        await asyncio.gather(first, *waits)
        await committer.flush()
        assert committer.committed_events == 19

    asyncio.run(sessions())
    store.close()
    assert sum(store.appends) == 19
    assert len(store.appends) < 10  # those that came while one was written waited together
    assert verify_store(tmp_path) == ([], [])


@pytest.mark.parametrize("quick", [True, False], ids=["on the loop", "on a thread"])
def test_a_store_that_cannot_write_fails_every_waiting_caller(tmp_path: Path, quick: bool) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")  # the store's root is a file: nothing can be written under it

    async def session() -> list[BaseException | None]:
        committer = GroupCommitter(CountingStore(blocked, quick=quick))
        chain = SessionChain("s-1")
        waits = [committer.add([event(chain, n)]) for n in range(3)]
        return await asyncio.gather(*waits, return_exceptions=True)

    outcomes = asyncio.run(session())
    assert len(outcomes) == 3
    assert all(isinstance(outcome, OSError) for outcome in outcomes)


@pytest.mark.parametrize("quick", [True, False], ids=["on the loop", "on a thread"])
def test_records_nobody_waits_for_share_the_next_commit_or_linger(
    tmp_path: Path, quick: bool
) -> None:
    store = CountingStore(tmp_path, quick=quick)
    chain = SessionChain("s-1")

    async def session() -> float:
        committer = GroupCommitter(store)
        loop = asyncio.get_running_loop()
        outcome = committer.add([event(chain, 0)], waited_for=False)
        statement = committer.add([event(chain, 1)])
        await asyncio.gather(outcome, statement)  # one commit for both
        started = loop.time()
        await committer.add([event(chain, 2)], waited_for=False)  # alone: it lingers
        lingered = loop.time() - started
        committer.close()
        return lingered

    lingered = asyncio.run(session())
    store.close()
    assert store.appends == [2, 1]
    assert lingered >= LINGER_SECONDS * 0.9
    assert verify_store(tmp_path) == ([], [])
