"""Group commit of audit records: every session's, written together.

Records handed over in one turn of the event loop (the statements of a pipelined chunk,
those of every session that sent something at that moment), and those handed over while
a commit is being written, share the next commit: one write and one fsync however many
statements and sessions they come from. Each caller gets a future that settles once its
records are durable, or fails with the store's error (the statement is then refused:
fail closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from custos.audit.events import AuditEvent, SubjectAccess


class AuditStore(Protocol):
    """Where records go: local segment files, or DynamoDB. `append` returns once they are
    durable, and is called off the event loop."""

    def append(
        self, events: Sequence[AuditEvent], subjects: Sequence[SubjectAccess] = ()
    ) -> None: ...

    def close(self) -> None: ...


class GroupCommitter:
    """Commits records to a store off the event loop, batching those that wait."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store
        self._events: list[AuditEvent] = []
        self._subjects: list[SubjectAccess] = []
        self._next: asyncio.Future[None] | None = None  # settles with the next commit
        self._writing = False
        self._scheduled = False
        self.commits = 0  # commits written, for the benchmark's commits per second
        self.committed_events = 0

    def add(
        self, events: Sequence[AuditEvent], subjects: Sequence[SubjectAccess] = ()
    ) -> asyncio.Future[None]:
        """Queues the records; the future settles once they are durable."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        future = self._next
        self._events.extend(events)
        self._subjects.extend(subjects)
        if not self._writing and not self._scheduled:
            # Not at once: what else this turn of the loop hands over shares the commit.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._write)
        return future

    async def flush(self) -> None:
        """Returns once everything handed over so far is durable (or failed to be)."""
        while self._next is not None or self._writing:
            pending = self._next
            if pending is not None:
                await asyncio.wait([pending])
            else:
                await asyncio.sleep(0.001)

    def _write(self) -> None:
        self._scheduled = False
        events, subjects, future = self._events, self._subjects, self._next
        self._events, self._subjects, self._next = [], [], None
        assert future is not None
        self._writing = True
        written = asyncio.get_running_loop().run_in_executor(
            None, self._store.append, events, subjects
        )
        written.add_done_callback(lambda done: self._written(done, future, len(events)))

    def _written(
        self, done: asyncio.Future[None], future: asyncio.Future[None], count: int
    ) -> None:
        self._writing = False
        self.commits += 1
        error = done.exception()
        if error is not None:
            future.set_exception(error)
        else:
            self.committed_events += count
            future.set_result(None)
        if self._next is not None:
            self._write()
