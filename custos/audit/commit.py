"""Group commit of audit records: every session's, written together.

Records handed over in one turn of the event loop (the statements of a pipelined chunk,
those of every session that sent something at that moment), and those handed over while
a commit is being written, share the next commit: one write and one fsync however many
statements and sessions they come from. Each caller gets a future that settles once its
records are durable, or fails with the store's error (the statement is then refused:
fail closed). Records nobody waits for (a statement's outcome) start no commit of their
own: they share the next one, at the latest after twice LINGER_SECONDS.

A store that writes quickly (local files: a write and an fsync, a fraction of a
millisecond) is written on the event loop itself, at the end of the loop's turn: a thread
would have to win the interpreter's lock back from the busy loop after each fsync, which
under load costs more than the fsync. A slow store (DynamoDB, a network round trip) is
written on a thread of the committer's own, which takes whatever waits each time it is
free while the loop goes on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Protocol

from custos.audit.chain import EventRecord
from custos.audit.events import SubjectAccess

LINGER_SECONDS = 0.05
"""How long records nobody waits for may wait for a commit someone else starts."""


class AuditStore(Protocol):
    """Where records go: local segment files, or DynamoDB. `append` returns once they are
    durable, and is called off the event loop."""

    def append(
        self, events: Sequence[EventRecord], subjects: Sequence[SubjectAccess] = ()
    ) -> None: ...

    def close(self) -> None: ...

    @property
    def writes_quickly(self) -> bool:
        """Whether a write (and its fsync) takes well under a millisecond."""
        ...


class GroupCommitter:
    """Commits records to a store, batching those that wait."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        # Guarded by the lock: what waits for the next commit, and whether anyone waits.
        self._events: list[EventRecord] = []
        self._subjects: list[SubjectAccess] = []
        self._next: asyncio.Future[None] | None = None
        self._urgent = False
        self._closing = False
        self._announced = False  # a call_soon to wake the writer is pending (loop thread)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        self._on_loop = store.writes_quickly
        self._lingering: asyncio.TimerHandle | None = None  # on the loop: the outcomes' deadline
        self.commits = 0  # commits written, for the benchmark's commits per second
        self.committed_events = 0

    def add(
        self,
        events: Sequence[EventRecord],
        subjects: Sequence[SubjectAccess] = (),
        *,
        waited_for: bool = True,
    ) -> asyncio.Future[None]:
        """Queues the records; the future settles once they are durable."""
        loop = self._loop
        if loop is None:
            loop = self._start()
        with self._lock:
            future = self._next
            if future is None:
                future = self._next = loop.create_future()
            self._events.extend(events)
            self._subjects.extend(subjects)
            if not waited_for and not self._on_loop:
                return future  # the writer looks again within LINGER_SECONDS
        if self._on_loop:
            if waited_for and not self._announced:
                # At the end of this turn of the loop: what else it hands over shares it.
                self._announced = True
                loop.call_soon(self._commit_here)
            elif not waited_for and self._lingering is None and not self._announced:
                self._lingering = loop.call_later(LINGER_SECONDS, self._commit_here)
            return future
        if not self._announced:
            # Not at once: what else this turn of the loop hands over shares the commit.
            self._announced = True
            loop.call_soon(self._announce)
        return future

    async def flush(self) -> None:
        """Returns once everything handed over so far is durable (or failed to be)."""
        if self._loop is None:
            return
        await asyncio.wait([self.add(())])

    def close(self) -> None:
        """Stops the writer once it has written what waits."""
        if self._on_loop:
            if self._next is not None:
                self._commit_here()
            return
        with self._lock:
            self._closing = True
            self._ready.notify()
        if self._writer is not None:
            self._writer.join()

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = self._loop = asyncio.get_running_loop()
        if self._on_loop:
            return loop
        self._writer = threading.Thread(
            target=self._write_forever, name="audit-commit", daemon=True
        )
        self._writer.start()
        return loop

    def _commit_here(self) -> None:
        """Writes what waits, on the loop."""
        self._announced = False
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        events, subjects, future = self._events, self._subjects, self._next
        self._events, self._subjects, self._next = [], [], None
        if future is None:
            return
        error: BaseException | None = None
        try:
            self._store.append(events, subjects)
        except Exception as failure:  # handed to every caller waiting on it
            error = failure
        self._settle(future, error, len(events))

    def _announce(self) -> None:
        self._announced = False
        with self._lock:
            self._urgent = True
            self._ready.notify()

    def _write_forever(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            events, subjects, future = batch
            error: BaseException | None = None
            try:
                self._store.append(events, subjects)
            except BaseException as failure:  # handed to every caller waiting on it
                error = failure
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._settle, future, error, len(events))
            except RuntimeError:
                return  # the loop is closed: nobody waits any more

    def _next_batch(
        self,
    ) -> tuple[list[EventRecord], list[SubjectAccess], asyncio.Future[None]] | None:
        """Waits for records to write, and takes them; None once closing with none left."""
        with self._lock:
            while True:
                while not self._urgent and not self._closing:
                    # Woken for what someone waits for; else it looks again each period,
                    # and writes what lingered a whole one (no wake-up per outcome).
                    lingering = self._next is not None
                    waited_out = not self._ready.wait(LINGER_SECONDS)
                    if waited_out and lingering and self._next is not None:
                        break
                future = self._next
                if future is not None:
                    break
                if self._closing:
                    return None
                self._urgent = False
            events, subjects = self._events, self._subjects
            self._events, self._subjects, self._next = [], [], None
            self._urgent = False
            return events, subjects, future

    def _settle(
        self, future: asyncio.Future[None], error: BaseException | None, count: int
    ) -> None:
        self.commits += 1
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            self.committed_events += count
            future.set_result(None)
