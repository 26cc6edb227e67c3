"""Analysis in worker processes, so that no statement holds the gateway's event loop.

Parsing a long text and walking its tree take the interpreter's lock for hundreds of
milliseconds (a 256 KiB statement: some 45 ms to parse, 270 to load the tree, more to walk
it), and a thread would not hand the loop back meanwhile. The texts the session machine
does not analyse at once (custos/session/texts.py) are analysed here, in processes started
on first use; their sessions wait, the others go on.

A worker that dies (out of memory, a crash in the parser) fails what it was analysing,
which is refused, and the next text starts a new pool.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from custos.sql.analysis import analyze_each
from custos.sql.facts import Analysis

log = logging.getLogger("custos.analysis")


class AnalysisWorkers:
    def __init__(self, processes: int, budget_seconds: float, max_statement_chars: int) -> None:
        self.processes = processes
        self.budget_seconds = budget_seconds
        self.max_statement_chars = max_statement_chars
        self._pool: ProcessPoolExecutor | None = None

    def analyse(self, sql: str, schemas: tuple[str, ...]) -> asyncio.Future[tuple[Analysis, ...]]:
        """The text's analysis under each schema, as analyze_each makes it, in a worker."""
        arguments = (sql, schemas, self.budget_seconds, self.max_statement_chars)
        try:
            submitted = self._started().submit(analyze_each, *arguments)
        except BrokenProcessPool:
            log.warning("an analysis worker had stopped; starting new ones")
            self.close()
            submitted = self._started().submit(analyze_each, *arguments)
        return asyncio.wrap_future(submitted)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

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


def _end_with_gateway(gateway_pid: int) -> None:
    """A worker outlives a gateway that was killed (its queue stays open in the process
    that tracks shared resources): it ends itself once its gateway is gone."""

    def watch() -> None:
        while os.getppid() == gateway_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="custos-gateway-watch", daemon=True).start()
