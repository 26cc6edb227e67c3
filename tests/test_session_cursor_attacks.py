"""Attacks on the session machine through cursors, FETCH, Describe, and refusals in failed
transactions.

Each test spells out how its attack works: statements run through a FETCH of a FETCH, or an
EXECUTE of one, and Describes that crash PostgreSQL 15. The tests at the end are attacks
that held from the start, kept as evidence.

Sequences that may crash PostgreSQL 15 (a Describe of a FETCH whose cursor is gone) are sent
only through the machine, and only to a throwaway cluster of this module's own
(`crashable`), never to the shared test server: a crash restarts every session of the server
it hits. A test sees the crash in that cluster's log.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator

import psycopg
import pytest
import test_session_attribution as attribution
from playbook import SYNC, bind, close, describe, execute, new_machine, parse, policy_stage, query
from test_session_attacks import customer_emails, governed, login  # noqa: F401 (fixtures)
from test_session_attribution import (
    STALL_SECONDS,
    MachineRun,
    converse,
    messages_of,
    run_through_machine,
    stream_differences,
)

from custos.demo.postgres import PostgresServer, TemporaryPostgres, find_server_binaries
from custos.protocol.messages import parse_notice

# Email is masked for agents, so the demo policy refuses a statement that reads it.
PROTECTED = "SELECT email FROM crm.customers ORDER BY id LIMIT 3"
_EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@example\.(?:com|org)")


# --- helpers ----------------------------------------------------------------------------------


def errors_of(stream: bytes) -> list[str]:
    return [parse_notice(body).sqlstate for kind, body in messages_of(stream) if kind == "E"]


def emails_of(stream: bytes) -> list[bytes]:
    return [
        match for kind, body in messages_of(stream) if kind == "D" for match in _EMAIL.findall(body)
    ]


@pytest.fixture
def agent_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_through_machine and converse use a machine with the demo policy (role agent) first."""
    monkeypatch.setattr(
        attribution, "new_machine", lambda stages: new_machine([policy_stage("agent"), *stages])
    )


@pytest.fixture(scope="module")
def crashable() -> Iterator[TemporaryPostgres]:
    """A throwaway cluster for sequences that may crash the server."""
    cluster = TemporaryPostgres(tls=False, bin_dir=find_server_binaries())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _crashes(cluster: TemporaryPostgres) -> int:
    return cluster.log_file.read_text(errors="replace").count("terminated by signal")


def _wait_until_up(server: PostgresServer) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=2) as connection:
                connection.execute("SELECT 1")
                return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def through_machine_on_crashable(cluster: TemporaryPostgres, data: bytes) -> tuple[MachineRun, int]:
    """Runs the client's bytes through a machine on the throwaway cluster; the run, and how
    many times the server crashed meanwhile."""
    server = cluster.server
    _wait_until_up(server)
    before = _crashes(cluster)
    data += SYNC + query("ROLLBACK") + query(attribution.PROBE)
    run = run_through_machine(server, [data], random.Random(0), STALL_SECONDS)
    time.sleep(0.3)  # the postmaster logs the crash as it notices it
    crashed = _crashes(cluster) - before
    _wait_until_up(server)
    return run, crashed


def converse_on_crashable(cluster: TemporaryPostgres, data: bytes) -> tuple[bytes, MachineRun, int]:
    """converse() on the throwaway cluster: for sequences believed safe directly, checked."""
    server = cluster.server
    _wait_until_up(server)
    before = _crashes(cluster)
    direct, run = converse(server, data)
    time.sleep(0.3)
    crashed = _crashes(cluster) - before
    _wait_until_up(server)
    return direct, run, crashed


CURSOR = query("BEGIN") + query("DECLARE c CURSOR FOR SELECT 1 AS one")
FETCH_PREPARED = parse("f", "FETCH 1 FROM c") + SYNC


# === attacks =====================================================================================


def test_execute_of_a_prepared_fetch_runs_an_undecided_portal(
    pg: PostgresServer, agent_policy
) -> None:
    # (a) A protocol portal bound to PROTECTED is never decided until it is executed, and its
    # Execute (or a FETCH of it) is refused. But a FETCH of it, Parse'd as a prepared
    # statement and run by SQL `EXECUTE f`, is decided as the FETCH alone (FetchStmt, allowed
    # as "decided at DECLARE"): resolve() replaces EXECUTE f by f's text, and does not go on
    # to replace that FETCH by the portal it runs. The customers' emails come back.
    data = (
        query("BEGIN")
        + parse("s", PROTECTED)
        + bind("p", "s")
        + parse("f", "FETCH ALL FROM p")
        + SYNC
        + query("EXECUTE f")
    )
    direct, run = converse(pg, data)
    assert emails_of(direct), "directly, EXECUTE f returns the emails"
    assert run.closed is None
    assert emails_of(run.to_client) == []
    assert errors_of(run.to_client)[:1] == ["42501"]


def test_execute_of_a_prepared_fetch_through_the_gateway(governed, customer_emails) -> None:  # noqa: F811
    # (a) The first attack end to end: an agent through the real gateway and the demo policy.
    session = login(governed)
    answers = session.exchange(query("BEGIN"))
    answers += session.exchange(
        parse("s", PROTECTED) + bind("p", "s") + parse("f", "FETCH ALL FROM p") + SYNC
    )
    answers += session.exchange(query("EXECUTE f"))
    session.close()
    leaked = {value for row in session.rows(answers) for value in row if value in customer_emails}
    assert leaked == set()


def test_fetch_of_a_portal_bound_to_a_fetch_runs_an_undecided_portal(
    pg: PostgresServer, agent_policy
) -> None:
    # (a) The same without EXECUTE: portal q is bound to f, a FETCH of p. `FETCH ALL FROM q`
    # is decided as what q holds, f's FETCH (allowed), not as what that FETCH runs; PostgreSQL
    # fills q's store by running f, and returns p's rows.
    data = (
        query("BEGIN")
        + parse("s", PROTECTED)
        + bind("p", "s")
        + parse("f", "FETCH ALL FROM p")
        + bind("q", "f")
        + SYNC
        + query("FETCH ALL FROM q")
    )
    direct, run = converse(pg, data)
    assert emails_of(direct)
    assert run.closed is None
    assert emails_of(run.to_client) == []


def test_extended_execute_of_a_prepared_fetch_runs_an_undecided_portal(
    pg: PostgresServer, agent_policy
) -> None:
    # (a) As above, with `EXECUTE f` itself Parse'd, bound and executed through the protocol.
    data = (
        query("BEGIN")
        + parse("s", PROTECTED)
        + bind("p", "s")
        + parse("f", "FETCH ALL FROM p")
        + SYNC
        + parse("", "EXECUTE f")
        + bind("", "")
        + execute("")
        + SYNC
    )
    direct, run = converse(pg, data)
    assert emails_of(direct)
    assert run.closed is None
    assert emails_of(run.to_client) == []


# --- crashes: a Describe of a FETCH whose cursor the machine believes open ------------------------


def _assert_no_crash(run: MachineRun, crashed: int) -> None:
    assert crashed == 0, "the Describe crashed PostgreSQL (and restarted every session)"
    assert run.closed is None
    # Refused as unsafe to describe (0A000), with a message that says why.
    assert errors_of(run.to_client)[:1] == ["0A000"]


def test_describe_of_execute_of_a_fetch_whose_cursor_is_closed(crashable) -> None:
    # (c) The guard looks at the described statement only when it is itself a FETCH or MOVE.
    # `EXECUTE f`, f a FETCH, takes its result description from f, and PostgreSQL's
    # FetchStatementTargetList then looks the closed cursor up (NULL) and dereferences it.
    data = CURSOR + FETCH_PREPARED + parse("e", "EXECUTE f") + SYNC + query("CLOSE c")
    data += describe("S", "e") + SYNC
    _assert_no_crash(*through_machine_on_crashable(crashable, data))


@pytest.mark.parametrize("end", ["COMMIT", "ROLLBACK"])
def test_describe_of_a_fetch_after_the_transaction_ends_in_the_same_segment(
    crashable, end: str
) -> None:
    # (c) COMMIT or ROLLBACK run through the protocol ends the transaction, and closes cursor
    # c, in the Describe's own segment: the machine predicts nothing for a transaction's end,
    # finds c confirmed open, and lets the Describe of f through.
    data = CURSOR + FETCH_PREPARED + parse("", end) + bind("", "") + execute("")
    data += describe("S", "f") + SYNC
    _assert_no_crash(*through_machine_on_crashable(crashable, data))


def test_describe_of_a_fetch_after_rollback_to_the_savepoint_before_its_cursor(crashable) -> None:
    # (c) ROLLBACK TO SAVEPOINT closes the cursors opened since the savepoint; the machine
    # keeps them (it only notes the search path may have changed), even once the database
    # has answered.
    data = query("BEGIN") + query("SAVEPOINT a") + query("DECLARE c CURSOR FOR SELECT 1 AS one")
    data += FETCH_PREPARED + query("ROLLBACK TO SAVEPOINT a") + describe("S", "f") + SYNC
    _assert_no_crash(*through_machine_on_crashable(crashable, data))


def test_an_agent_crashes_the_server_under_the_demo_policy(crashable, agent_policy) -> None:
    # (c) Every step is one the demo policy lets an agent take (transactions, a DECLARE of a
    # harmless SELECT, FETCH, and Parse and Describe, which are not decided): the savepoint
    # attack above, through a machine with the policy stage.
    data = query("BEGIN") + query("SAVEPOINT a") + query("DECLARE c CURSOR FOR SELECT 1 AS one")
    data += FETCH_PREPARED + query("ROLLBACK TO SAVEPOINT a") + describe("S", "f") + SYNC
    run, crashed = through_machine_on_crashable(crashable, data)
    assert errors_of(run.to_client)[:1] != ["42501"], "the policy refused a step"
    _assert_no_crash(run, crashed)


def test_describe_of_a_fetch_after_discard_all_closed_a_hold_cursor(crashable) -> None:
    # (c) DISCARD ALL closes every cursor, WITH HOLD ones included; the machine takes it for
    # DEALLOCATE ALL only (which keeps the unnamed statement, as DISCARD ALL does) and keeps
    # the cursor. The unnamed statement, a FETCH of it, is then described.
    data = query("DECLARE c CURSOR WITH HOLD FOR SELECT 1 AS one")
    data += parse("", "FETCH 1 FROM c") + SYNC
    data += parse("d", "DISCARD ALL") + bind("", "d") + execute("") + SYNC
    data += describe("S", "") + SYNC
    _assert_no_crash(*through_machine_on_crashable(crashable, data))


CLOSE_C_IN_A_DO_BLOCK = query("DO $$DECLARE r refcursor := 'c'; BEGIN CLOSE r; END$$")


@pytest.mark.parametrize("target", ["S", "P"])
def test_describe_of_a_fetch_after_a_do_block_closed_its_cursor(crashable, target: str) -> None:
    # (c) A PL/pgSQL CLOSE of a refcursor whose value is 'c' closes the SQL cursor c; the
    # machine cannot see into the block (nor into a function that does it), and keeps c. The
    # portal q, a FETCH of c bound while c was open, outlives c in the same transaction.
    data = CURSOR + parse("f", "FETCH 1 FROM c") + bind("q", "f") + SYNC + CLOSE_C_IN_A_DO_BLOCK
    data += describe(target, "f" if target == "S" else "q") + SYNC
    _assert_no_crash(*through_machine_on_crashable(crashable, data))


def test_the_gateways_own_describe_of_a_fetch_portal_crashes_the_server(crashable) -> None:
    # (c) The client sends no Describe at all: a stage that rewrites results (the tests'
    # JournalStage; masking will) makes the machine Describe the portal before its Execute,
    # and that Describe of q, a FETCH of the closed cursor c, crashes the server. The Execute
    # alone would fail with 34000.
    data = CURSOR + parse("f", "FETCH 1 FROM c") + bind("q", "f") + SYNC + CLOSE_C_IN_A_DO_BLOCK
    data += execute("q") + SYNC
    _assert_no_crash(*through_machine_on_crashable(crashable, data))


# --- the Describe guard refuses what PostgreSQL answers -------------------------------------------


def test_describe_of_a_move_whose_cursor_is_closed_is_refused_as_unsafe(crashable) -> None:
    # PostgreSQL would answer this one (MOVE returns no rows); the gateway does not tell a
    # MOVE from a FETCH, and refuses to describe either once statements ran since its Parse.
    data = CURSOR + parse("m", "MOVE 1 IN c") + SYNC + query("CLOSE c") + describe("S", "m")
    data += SYNC + query("SELECT 1")
    run, crashed = through_machine_on_crashable(crashable, data)
    _assert_no_crash(run, crashed)


def test_describe_of_a_fetch_prepared_before_its_cursor_existed(crashable) -> None:
    # (b) A FETCH prepared while its cursor does not exist has no result description:
    # PostgreSQL describes it as NoData (it never looks the cursor up). The guard refuses it
    # with 34000.
    data = query("BEGIN") + parse("f", "FETCH 1 FROM c") + describe("S", "f") + SYNC
    data += query("SELECT 1")
    direct, run, crashed = converse_on_crashable(crashable, data)
    assert crashed == 0
    assert stream_differences(direct, run.to_client) == []


def test_the_describe_guard_in_a_failed_transaction(crashable) -> None:
    # (b) In a failed transaction PostgreSQL refuses the Describe of a statement that returns
    # rows with 25P02 before it could look at the cursor; the guard's 34000 counts as found
    # first (a "missing portal" named by the message) and replaces it.
    data = CURSOR + FETCH_PREPARED + query("CLOSE c") + query("SELECT 1/0")
    data += describe("S", "f") + SYNC
    direct, run, crashed = converse_on_crashable(crashable, data)
    assert crashed == 0
    assert errors_of(direct) == ["22012", "25P02"]
    assert stream_differences(direct, run.to_client) == []


# --- refusals in a failed transaction -------------------------------------------------------------


def test_a_refused_string_that_starts_by_ending_the_failed_transaction(
    pg: PostgresServer, agent_policy
) -> None:
    # (b) PostgreSQL runs a string that begins with ROLLBACK in a failed transaction: the
    # ROLLBACK ends it and what follows runs. The gateway refuses the string (it reads email),
    # but its refusal block cannot run in the failed transaction, and the client gets 25P02
    # ("commands ignored until end of transaction block") for a statement that ends the
    # transaction, instead of the refusal (42501), which it gets once it rolls back first.
    data = query("BEGIN") + query("SELECT 1/0") + query(f"ROLLBACK; {PROTECTED}")
    _, run = converse(pg, data)
    assert run.closed is None
    assert errors_of(run.to_client)[:2] == ["22012", "42501"]


# === tried, and held ==============================================================================


def test_held_protocol_execute_of_a_portal_bound_to_a_prepared_fetch(
    pg: PostgresServer, agent_policy
) -> None:
    # The protocol Execute of q (bound to f, a FETCH of p) resolves the FETCH to p's SELECT.
    data = (
        query("BEGIN")
        + parse("s", PROTECTED)
        + bind("p", "s")
        + parse("f", "FETCH ALL FROM p")
        + bind("q", "f")
        + SYNC
        + execute("q")
        + SYNC
        + query("FETCH ALL FROM p")
    )
    _, run = converse(pg, data)
    assert run.closed is None
    assert emails_of(run.to_client) == []
    assert errors_of(run.to_client)[:1] == ["42501"]


@pytest.mark.parametrize(
    "closing",
    [
        parse("x", "CLOSE c") + bind("", "x") + execute(""),
        parse("x", "CLOSE ALL") + bind("", "x") + execute(""),
        close("P", "c"),
        SYNC + query("CLOSE c"),
        SYNC + query("COMMIT") + query("BEGIN"),
        SYNC + query("ROLLBACK; BEGIN"),
    ],
    ids=[
        "close_executed",
        "close_all_executed",
        "protocol_close",
        "close_query",
        "commit",
        "rollback",
    ],
)
def test_held_describe_of_a_fetch_after_a_close_the_machine_sees(crashable, closing: bytes) -> None:
    data = CURSOR + parse("f", "FETCH 1 FROM c") + closing + describe("S", "f") + SYNC
    _assert_no_crash(*through_machine_on_crashable(crashable, data))


def test_held_describe_of_a_fetch_whose_cursor_is_declared_in_an_unanswered_segment(
    crashable,
) -> None:
    # The Describe waits for the DECLARE's answer, then goes: the database answers as direct.
    data = query("BEGIN") + query("DECLARE c CURSOR FOR SELECT 1 AS one")
    data += parse("f", "FETCH 1 FROM c") + describe("S", "f") + bind("q", "f") + describe("P", "q")
    data += execute("q") + SYNC + parse("m", "MOVE 1 IN c") + describe("S", "m") + SYNC
    direct, run, crashed = converse_on_crashable(crashable, data)
    assert crashed == 0
    assert stream_differences(direct, run.to_client) == []


@pytest.mark.parametrize(
    "conversation",
    [
        # A refused Parse of the unnamed statement that the database skips keeps it.
        parse("", "SELECT 1")
        + SYNC
        + bind("", "nope")
        + parse("", "SELEC 1")
        + SYNC
        + bind("", "")
        + execute("")
        + SYNC,
        # In a failed transaction, it still drops it.
        parse("", "SELECT 1")
        + SYNC
        + query("BEGIN")
        + query("SELECT 1/0")
        + parse("", "SELEC 1")
        + SYNC
        + query("ROLLBACK")
        + bind("", "")
        + execute("")
        + SYNC,
        # The machine's own Describe (JournalStage rewrites) failing in a failed transaction.
        query("BEGIN")
        + parse("s", "SELECT 1")
        + bind("p", "s")
        + SYNC
        + query("SELECT 1/0")
        + execute("p")
        + SYNC,
        # Its own Describe of a portal the database has dropped (COMMIT in the segment).
        query("BEGIN")
        + parse("s", "SELECT 1")
        + bind("p", "s")
        + SYNC
        + parse("", "COMMIT")
        + bind("", "")
        + execute("")
        + execute("p")
        + SYNC,
        # Refusals of each kind in a failed transaction, pipelined without Sync between.
        query("BEGIN")
        + query("SELECT 1/0")
        + bind("", "nope")
        + execute("nope")
        + parse("", "SELEC")
        + SYNC
        + execute("nope")
        + SYNC
        + parse("", "SELEC")
        + SYNC,
    ],
    ids=["skipped_parse", "failed_transaction", "own_describe", "own_describe_dropped", "mixed"],
)
def test_held_refusals_answer_as_postgresql(pg: PostgresServer, conversation: bytes) -> None:
    direct, run = converse(pg, conversation)
    assert run.closed is None
    assert stream_differences(direct, run.to_client) == []
