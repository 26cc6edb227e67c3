"""Analysis in worker processes, so that no statement holds the gateway's event loop.

Parsing a long text and walking its tree take the interpreter's lock for hundreds of
milliseconds (a 256 KiB statement: some 45 ms to parse, 270 to load the tree, more to walk
it), and a thread would not hand the loop back meanwhile. The texts the session machine
does not analyse at once (custos/session/texts.py), and statements read through views whose
analysis would take long (custos/session/reached.py), are analysed here, in processes
started on first use; their sessions wait, the others go on.

A worker that dies (out of memory, a crash in the parser) fails what it was analysing,
which is refused, and the next text starts a new pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from custos.sql.analysis import analyze_each
from custos.sql.facts import Analysis
from custos.sql.views import through_views

_T = TypeVar("_T")

log = logging.getLogger("custos.analysis")

# Identities whose last turn is remembered; forgetting them all only resets the order.
_REMEMBERED_IDENTITIES = 10_000


class AnalysisWorkers:
    """The gateway's worker processes, shared fairly: each identity's texts wait in a queue
    of its own, and the queues take turns, so that one agent's many sessions sending long
    texts delay another identity's by one analysis at most."""

    def __init__(self, processes: int, budget_seconds: float, max_statement_chars: int) -> None:
        self.processes = processes
        self.budget_seconds = budget_seconds
        self.max_statement_chars = max_statement_chars
        self._pool: ProcessPoolExecutor | None = None
        self._queues: dict[str, deque[_Request]] = {}
        self._served: dict[str, int] = {}  # identity -> the turn it was last served in
        self._turns = 0
        self._running = 0

    def for_identity(self, identity: str) -> IdentityWorkers:
        """What one identity's sessions analyse through (texts.AnalysisWorkers)."""
        return IdentityWorkers(self, identity)

    def analyse(
        self, sql: str, schemas: tuple[str, ...], identity: str = ""
    ) -> asyncio.Future[tuple[Analysis, ...]]:
        """The text's analysis under each schema, as analyze_each makes it, in a worker."""
        arguments = (sql, schemas, self.budget_seconds, self.max_statement_chars)
        return self._queued(identity, analyze_each, arguments)

    def through_views(
        self,
        analysis: Analysis,
        search_path: tuple[str, ...],
        definitions: Mapping[str, str],
        identity: str = "",
    ) -> asyncio.Future[Analysis]:
        """The analysis read through these views (custos/sql/views.py), in a worker."""
        arguments = (analysis, search_path, dict(definitions), self.budget_seconds)
        return self._queued(identity, through_views, arguments)

    def _queued(
        self, identity: str, job: Callable[..., _T], arguments: tuple[object, ...]
    ) -> asyncio.Future[_T]:
        answer: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(identity, deque()).append((job, arguments, answer))
        self._dispatch()
        return answer

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _dispatch(self) -> None:
        queues = self._queues
        while self._running < self.processes and queues:
            # The identity served longest ago (or never) goes next.
            identity = min(queues, key=lambda waiting: self._served.get(waiting, -1))
            waiting = queues[identity]
            job, arguments, answer = waiting.popleft()
            if not waiting:
                del queues[identity]
            if answer.done():
                continue  # its session stopped waiting
            self._turns += 1
            self._served[identity] = self._turns
            if len(self._served) > _REMEMBERED_IDENTITIES:
                self._served.clear()
            self._running += 1
            running = asyncio.wrap_future(self._submit(job, arguments))
            running.add_done_callback(functools.partial(self._finished, answer=answer))

    def _submit(self, job: Callable[..., object], arguments: tuple[object, ...]) -> Future[Any]:
        try:
            return self._started().submit(job, *arguments)
        except BrokenProcessPool:
            log.warning("an analysis worker had stopped; starting new ones")
            self.close()
            return self._started().submit(job, *arguments)

    def _finished(self, done: asyncio.Future[Any], answer: asyncio.Future[Any]) -> None:
        self._running -= 1
        if not answer.done():
            error = None if done.cancelled() else done.exception()
            if done.cancelled():
                answer.cancel()
            elif error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(done.result())
        self._dispatch()

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Spawned, not forked: the gateway's threads (the AWS SDK's among them) must not
            # be copied mid-operation into a worker.
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_end_with_gateway,
                initargs=(os.getpid(),),
            )
        return self._pool


# What to run, with what, and the future its session waits on.
_Request = tuple[Callable[..., Any], tuple[object, ...], "asyncio.Future[Any]"]


class IdentityWorkers:
    """The workers as one identity's sessions see them."""

    __slots__ = ("_identity", "_workers")

    def __init__(self, workers: AnalysisWorkers, identity: str) -> None:
        self._workers = workers
        self._identity = identity

    def analyse(self, sql: str, schemas: tuple[str, ...]) -> asyncio.Future[tuple[Analysis, ...]]:
        return self._workers.analyse(sql, schemas, self._identity)

    def through_views(
        self, analysis: Analysis, search_path: tuple[str, ...], definitions: Mapping[str, str]
    ) -> asyncio.Future[Analysis]:
        return self._workers.through_views(analysis, search_path, definitions, self._identity)


def _end_with_gateway(gateway_pid: int) -> None:
    """A worker outlives a gateway that was killed (its queue stays open in the process
    that tracks shared resources): it ends itself once its gateway is gone."""

    def watch() -> None:
        while os.getppid() == gateway_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="custos-gateway-watch", daemon=True).start()
