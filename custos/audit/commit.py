"""Group commit of audit events: every session's events, written together.

Events handed over while a commit is being written wait for the next one, and share it:
one write and one fsync however many statements and sessions they come from. Each caller
gets a future that settles once its events are durable, or fails with the store's error
(the statement is then refused: fail closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from custos.audit.events import AuditEvent
from custos.audit.local import LocalStore


class GroupCommitter:
    """Commits events to a store off the event loop, batching those that wait."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._pending: list[AuditEvent] = []
        self._next: asyncio.Future[None] | None = None  # settles with the next commit
        self._writing = False
        self.commits = 0  # commits written, for the benchmark's commits per second

    def add(self, events: Sequence[AuditEvent]) -> asyncio.Future[None]:
        """Queues the events; the future settles once they are on disk."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        future = self._next
        self._pending.extend(events)
        if not self._writing:
            self._write()
        return future

    def _write(self) -> None:
        batch, future = self._pending, self._next
        self._pending, self._next = [], None
        assert future is not None
        self._writing = True
        written = asyncio.get_running_loop().run_in_executor(None, self._store.append, batch)
        written.add_done_callback(lambda done: self._written(done, future))

    def _written(self, done: asyncio.Future[None], future: asyncio.Future[None]) -> None:
        self._writing = False
        self.commits += 1
        error = done.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(None)
        if self._pending:
            self._write()
