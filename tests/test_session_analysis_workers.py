"""Analysis off the event loop: a long or slow text waits for a worker, its session alone.

Playbooks (events in, exact actions out) with a stand-in for the worker pool that hands
the machine something to wait for; the test settles it with the analysis the workers
would make (analyze_each, run here). Then the worker pool itself, with real processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from playbook import (
    SYNC,
    bind,
    command_complete,
    data_row,
    execute,
    new_machine,
    parse,
    query,
    ready,
    refusal_block_error,
    row_description,
    sent_to_client,
    sent_to_server,
    split,
)

from custos.protocol.messages import parse_notice
from custos.session.actions import SendToServer, StartWait
from custos.session.machine import SessionMachine, SessionState
from custos.session.own_messages import REFUSAL_QUERY
from custos.session.stages import Settled
from custos.session.texts import INLINE_CHARS
from custos.sql import budget
from custos.sql.analysis import analyze_each
from custos.sql.facts import Analysis
from custos.sql.workers import AnalysisWorkers

REPOSITORY = Path(__file__).resolve().parent.parent
SCHEMAS = ("crm", "public")
LONG = "SELECT " + ", ".join(f"{n} AS c{n}" for n in range(1500))  # over INLINE_CHARS
LONG_PERSONAL = "SELECT " + ", ".join(["full_name"] * 1500) + " FROM crm.customers"
# Short, but its analysis outlasts what the event loop may spend on one: each subquery
# expands a star of 1600 columns.
SLOW = (
    "WITH c0 AS (SELECT "
    + ", ".join(f"1 a{n}" for n in range(100))
    + ")"
    + "".join(f", c{n} AS (SELECT * FROM c{n - 1} x, c{n - 1} y)" for n in range(1, 5))
    + " SELECT "
    + ", ".join(f"(SELECT count(*) FROM (SELECT * FROM c4) s{n})" for n in range(155))
)


class WorkerStandIn:
    """Takes the machine's requests; the test settles each with what the workers make."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, tuple[str, ...], object]] = []

    def analyse(self, sql: str, schemas: tuple[str, ...]) -> object:
        handle = object()
        self.requests.append((sql, schemas, handle))
        return handle

    def settle(self, machine: SessionMachine, index: int = -1) -> list[object]:
        sql, schemas, handle = self.requests[index]
        # A generous budget: these playbooks are about the wait, not the budget, and a busy
        # machine must not turn an analysis into a refusal.
        made = analyze_each(sql, schemas, 10.0, budget.MAX_STATEMENT_CHARS)
        return list(machine.settled(handle, Settled(made)))  # type: ignore[arg-type]


def with_workers() -> tuple[SessionMachine, WorkerStandIn]:
    workers = WorkerStandIn()
    return new_machine(workers=workers), workers  # type: ignore[arg-type]


def error_fields(data: bytes) -> dict[str, str]:
    (kind, body), *_ = split(data)
    assert kind == "E"
    return parse_notice(body).fields


def test_a_short_text_is_analysed_at_once():
    machine, workers = with_workers()
    request = query("SELECT 1")
    assert machine.client_data(request) == [SendToServer(request)]
    assert workers.requests == []


def test_a_long_text_waits_for_a_worker_and_what_follows_it_waits_behind():
    machine, workers = with_workers()
    assert len(LONG) > INLINE_CHARS
    first, second = query(LONG), query("SELECT 2")
    assert machine.client_data(first) == [StartWait(workers.requests[0][2])]  # type: ignore[arg-type]
    assert workers.requests[0][:2] == (LONG, SCHEMAS)
    assert machine.state is SessionState.HOLDING
    assert machine.client_data(second) == []  # in order, behind it
    assert workers.settle(machine) == [SendToServer(first + second)]
    assert machine.state is SessionState.RELAYING


def test_a_long_text_seen_before_is_not_analysed_again():
    machine, workers = with_workers()
    machine.client_data(query(LONG))
    workers.settle(machine)
    machine.server_data(row_description("c0") + data_row(b"0") + command_complete("SELECT 1"))
    machine.server_data(ready())
    request = query(LONG)
    assert machine.client_data(request) == [SendToServer(request)]
    assert len(workers.requests) == 1


def test_a_long_text_policy_refuses_is_refused_once_analysed():
    machine, workers = with_workers()
    assert machine.client_data(query(LONG_PERSONAL)) == [
        StartWait(workers.requests[0][2])  # type: ignore[arg-type]
    ]
    assert workers.settle(machine) == [SendToServer(REFUSAL_QUERY)]
    (answer,) = machine.server_data(refusal_block_error() + ready())
    assert error_fields(answer.data)["C"] == "42501"


def test_a_short_text_whose_analysis_runs_long_goes_to_a_worker():
    machine, workers = with_workers()
    assert len(SLOW) < INLINE_CHARS
    request = query(SLOW)
    machine.client_data(request)
    assert [request[:2] for request in workers.requests] == [(SLOW, SCHEMAS)]
    assert workers.settle(machine) == [SendToServer(request)]
    machine.server_data(row_description("count") + data_row(b"1") + command_complete("SELECT 1"))
    machine.server_data(ready())
    # Held from now on: the same text is not analysed again.
    assert machine.client_data(request) == [SendToServer(request)]
    assert len(workers.requests) == 1


def test_a_long_parse_waits_and_the_messages_after_it_keep_their_order():
    machine, workers = with_workers()
    pipeline = parse("", LONG) + bind("", "") + execute() + SYNC
    assert machine.client_data(pipeline) == [StartWait(workers.requests[0][2])]  # type: ignore[arg-type]
    assert machine.client_data(query("SELECT 3")) == []
    assert workers.settle(machine) == [SendToServer(pipeline + query("SELECT 3"))]


def test_answers_arriving_meanwhile_do_not_start_a_second_analysis():
    machine, workers = with_workers()
    ahead = query("SELECT 1")
    assert machine.client_data(ahead + query(LONG)) == [
        SendToServer(ahead),
        StartWait(workers.requests[0][2]),  # type: ignore[arg-type]
    ]
    answer = row_description("x") + data_row(b"1") + command_complete("SELECT 1") + ready()
    assert sent_to_client(machine.server_data(answer)) == answer
    assert len(workers.requests) == 1
    assert workers.settle(machine) == [SendToServer(query(LONG))]


def test_a_cancel_refuses_the_text_under_analysis_at_once():
    machine, workers = with_workers()
    machine.client_data(query(LONG))
    assert machine.cancel_requested() == [SendToServer(REFUSAL_QUERY)]
    (answer,) = machine.server_data(refusal_block_error() + ready())
    assert error_fields(answer.data)["C"] == "57014"
    # What the worker finds later is no longer waited for.
    assert workers.settle(machine) == []
    request = query("SELECT 2")
    assert machine.client_data(request) == [SendToServer(request)]


def test_a_worker_that_fails_refuses_the_statement_and_the_session_goes_on():
    machine, workers = with_workers()
    machine.client_data(query(LONG))
    handle = workers.requests[0][2]
    failed = Settled(error=BrokenProcessPool("a worker stopped"))
    assert machine.settled(handle, failed) == [SendToServer(REFUSAL_QUERY)]  # type: ignore[arg-type]
    (answer,) = machine.server_data(refusal_block_error() + ready())
    assert error_fields(answer.data)["C"] == "XX000"
    request = query("SELECT 2")
    assert machine.client_data(request) == [SendToServer(request)]


@pytest.mark.parametrize("split_at", ["whole", "byte by byte"])
def test_a_long_text_fed_in_pieces_is_analysed_once(split_at: str):
    machine, workers = with_workers()
    data = query(LONG) + query("SELECT 2")
    pieces = [data] if split_at == "whole" else [data[i : i + 1] for i in range(len(data))]
    for piece in pieces:
        machine.client_data(piece)
    assert len(workers.requests) == 1
    assert sent_to_server(workers.settle(machine)) == data  # type: ignore[arg-type]


# --- the worker pool, with real processes ------------------------------------------------


def test_workers_analyse_as_the_event_loop_would():
    async def scenario() -> tuple[tuple[Analysis, ...], tuple[Analysis, ...]]:
        workers = AnalysisWorkers(1, 10.0, budget.MAX_STATEMENT_CHARS)
        try:
            made = await workers.analyse(LONG_PERSONAL, SCHEMAS)
            slow = await workers.analyse(SLOW, SCHEMAS)
        finally:
            workers.close()
        return made, slow

    made, slow = asyncio.run(scenario())
    here = analyze_each(LONG_PERSONAL, SCHEMAS, 10.0, budget.MAX_STATEMENT_CHARS)
    assert made == here
    assert [next(iter(a.statements[0].relations_read)) for a in made] == ["crm.customers"] * 2
    assert [a.error for a in slow] == [None, None]


def test_a_worker_that_dies_fails_its_text_and_new_workers_take_the_next():
    async def scenario() -> tuple[BaseException | None, tuple[Analysis, ...]]:
        workers = AnalysisWorkers(1, 5.0, budget.MAX_STATEMENT_CHARS)
        try:
            await workers.analyse("SELECT 1", SCHEMAS)  # the worker is up
            pool = workers._started()
            (pid,) = [process.pid for process in pool._processes.values()]
            # Some seconds of work (its budget is 5 s): it is still under way when killed.
            crossing = ", ".join(f"t{n}" for n in range(20000))
            dying = workers.analyse(f"SELECT x FROM {crossing}", SCHEMAS)
            os.kill(pid, signal.SIGKILL)
            failure: BaseException | None = None
            try:
                await dying
            except BrokenProcessPool as broken:
                failure = broken
            return failure, await workers.analyse(LONG, SCHEMAS)
        finally:
            workers.close()

    failure, after = asyncio.run(scenario())
    assert isinstance(failure, BrokenProcessPool)
    assert [analysis.error for analysis in after] == [None, None]


def test_workers_end_with_a_gateway_that_was_killed(tmp_path):
    script = tmp_path / "gateway.py"
    script.write_text(
        "import asyncio, os\n"
        "from custos.sql.workers import AnalysisWorkers\n"
        "async def main():\n"
        "    workers = AnalysisWorkers(1, 10.0, 1 << 18)\n"
        "    await workers.analyse('SELECT 1', ('public',))\n"
        "    print(*workers._started()._processes, flush=True)\n"
        "    os.kill(os.getpid(), 9)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    command = [sys.executable, str(script)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY)
    assert run.returncode == -signal.SIGKILL
    (worker,) = (int(pid) for pid in run.stdout.split())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{worker}").exists(), "the worker outlived its gateway"


def test_identities_take_turns_at_the_workers():
    # One agent's sessions send three long texts, then another identity one: it waits for
    # one analysis at most, not for all three.
    crossing = "SELECT x FROM " + ", ".join(f"t{n}" for n in range(3000))

    async def scenario() -> list[str]:
        workers = AnalysisWorkers(1, 10.0, budget.MAX_STATEMENT_CHARS)
        finished: list[str] = []
        try:
            await workers.analyse("SELECT 1", SCHEMAS)  # the worker is up
            busy, patient = workers.for_identity("busy"), workers.for_identity("patient")
            waits = [busy.analyse(f"{crossing} /* {n} */", SCHEMAS) for n in range(3)]
            waits.append(patient.analyse(crossing, SCHEMAS))
            for wait, who in zip(waits, ["busy", "busy", "busy", "patient"], strict=True):
                wait.add_done_callback(lambda _, who=who: finished.append(who))
            await asyncio.gather(*waits)
        finally:
            workers.close()
        return finished

    assert asyncio.run(scenario()) == ["busy", "patient", "busy", "busy"]


def test_a_text_nobody_waits_for_any_more_is_not_analysed():
    async def scenario() -> tuple[bool, int]:
        workers = AnalysisWorkers(1, 10.0, budget.MAX_STATEMENT_CHARS)
        try:
            first = workers.analyse(LONG, SCHEMAS)
            dropped = workers.analyse(LONG_PERSONAL, SCHEMAS)
            dropped.cancel()  # its session closed
            await first
            await asyncio.sleep(0)
            return dropped.cancelled(), workers._running
        finally:
            workers.close()

    assert asyncio.run(scenario()) == (True, 0)
