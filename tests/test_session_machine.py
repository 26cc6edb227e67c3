"""Playbooks for the session machine: events in, exact actions out, no network.

Each playbook feeds the machine what a client and a database would send and checks what it
asks the adapter to do, and to which statement it attributes every answer.
"""

from __future__ import annotations

import pytest
from playbook import (
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    COPY_DONE,
    EMPTY_QUERY,
    FLUSH,
    NO_DATA,
    PARSE_COMPLETE,
    PORTAL_SUSPENDED,
    SERVER_COPY_DONE,
    SYNC,
    TERMINATE,
    RecordingStage,
    bind,
    close,
    command_complete,
    copy_data,
    copy_in_response,
    copy_out_response,
    data_row,
    describe,
    error,
    execute,
    function_call,
    new_machine,
    notice,
    notification,
    parameter_description,
    parameter_status,
    parse,
    policy_stage,
    query,
    ready,
    refusal_block_error,
    row_description,
    sent_to_client,
    sent_to_server,
    split,
    types,
)

from custos.protocol.backend import row_description as decode_row_description
from custos.protocol.messages import parse_notice
from custos.session.actions import (
    FORWARD_CANCEL,
    PAUSE_CLIENT,
    PAUSE_SERVER,
    RESUME_CLIENT,
    RESUME_SERVER,
    CloseSession,
    SendToClient,
    SendToServer,
    StartWait,
)
from custos.session.machine import SessionLimits, SessionState
from custos.session.own_messages import REFUSAL_CLEANUP, REFUSAL_EXECUTION, REFUSAL_QUERY
from custos.session.refusal import Refusal
from custos.session.stages import FORWARD, Refuse, Settled, Stage, Status, WaitFor
from custos.session.statement import Statement


def outcomes(stage: RecordingStage) -> list[tuple[int, Status, tuple[str, ...], int]]:
    return [
        (statement.number, outcome.status, outcome.tags, outcome.rows)
        for statement, outcome in stage.outcomes
    ]


def recorded(rewrite: bool = False) -> tuple[RecordingStage, object]:
    stage = RecordingStage(rewrite=rewrite)
    return stage, new_machine([policy_stage(), stage])


# --- relaying and attribution ------------------------------------------------------------


def test_a_simple_query_goes_through_untouched_and_its_answers_are_attributed():
    stage, machine = recorded(rewrite=True)
    request = query("SELECT id FROM crm.orders LIMIT 2")
    assert machine.client_data(request) == [SendToServer(request)]
    answer = (
        row_description("id", type_oid=23)
        + data_row(b"1")
        + data_row(b"2")
        + command_complete("SELECT 2")
        + ready()
    )
    assert machine.server_data(answer) == [SendToClient(answer)]
    assert outcomes(stage) == [(1, Status.COMPLETED, ("SELECT 2",), 2)]
    ((_, outcome),) = stage.outcomes
    assert outcome.bytes == len(answer)  # a simple query's answers end with its ReadyForQuery
    assert [(number, index, columns[0].type_oid) for number, index, columns in stage.results] == [
        (1, 0, 23)
    ]
    assert [number for number, _ in stage.rows] == [1, 1]
    assert machine.idle


def test_every_statement_of_a_query_string_gets_its_own_answers():
    stage, machine = recorded(rewrite=True)
    machine.client_data(query("SELECT 1; SELECT 2, 3; SET search_path TO crm"))
    machine.server_data(
        row_description("a")
        + data_row(b"1")
        + command_complete("SELECT 1")
        + row_description("b", "c")
        + data_row(b"2", b"3")
        + command_complete("SELECT 1")
        + command_complete("SET")
        + ready()
    )
    assert [(index, len(columns)) for _, index, columns in stage.results] == [(0, 1), (1, 2)]
    assert outcomes(stage) == [(1, Status.COMPLETED, ("SELECT 1", "SELECT 1", "SET"), 2)]


def test_the_extended_protocol_is_followed_message_by_message():
    stage, machine = recorded(rewrite=True)
    request = (
        parse("s1", "SELECT id FROM crm.orders WHERE id = $1", [23])
        + bind("p1", "s1", [b"7"], [1])
        + describe("P", "p1")
        + execute("p1")
        + SYNC
    )
    assert machine.client_data(request) == [SendToServer(request)]
    answer = (
        PARSE_COMPLETE
        + BIND_COMPLETE
        + row_description("id", type_oid=23, format_code=1)
        + data_row(b"\x00\x00\x00\x07")
        + command_complete("SELECT 1")
        + ready()
    )
    assert machine.server_data(answer) == [SendToClient(answer)]
    assert outcomes(stage) == [(1, Status.COMPLETED, ("SELECT 1",), 1)]
    ((_, _, columns),) = stage.results
    assert [(column.type_oid, column.format) for column in columns] == [(23, 1)]
    assert set(machine.prepared_statements) == {b"s1"}
    # The portal ended with its implicit transaction at Sync.
    assert machine.portals == {}


def test_a_described_statement_gives_its_columns_to_later_executions():
    stage, machine = recorded(rewrite=True)
    machine.client_data(
        parse("s", "SELECT id, status FROM crm.orders LIMIT 1") + describe("S", "s") + SYNC
    )
    machine.server_data(
        PARSE_COMPLETE + parameter_description() + row_description("id", "status") + ready()
    )
    description = machine.prepared_statements[b"s"].row_description
    assert [column.name for column in decode_row_description(description)] == [b"id", b"status"]
    # An Execute of a portal of s needs no Describe of its own: the formats come from Bind.
    request = bind("", "s", result_formats=[1, 0]) + execute("") + SYNC
    assert machine.client_data(request) == [SendToServer(request)]
    machine.server_data(
        BIND_COMPLETE + data_row(b"\0\0\0\1", b"new") + command_complete("SELECT 1") + ready()
    )
    ((_, _, columns),) = stage.results
    assert [(column.name, column.format) for column in columns] == [(b"id", 1), (b"status", 0)]


def test_a_rewriter_without_columns_gets_them_from_a_describe_the_client_never_sees():
    stage, machine = recorded(rewrite=True)
    request = parse("", "SELECT status FROM crm.orders LIMIT 1") + bind("", "") + execute("")
    sent = sent_to_server(machine.client_data(request + SYNC))
    assert types(sent) == "PBDES"
    answer = machine.server_data(
        PARSE_COMPLETE
        + BIND_COMPLETE
        + row_description("status")
        + data_row(b"new")
        + command_complete("SELECT 1")
        + ready()
    )
    assert types(sent_to_client(answer)) == "12DCZ"
    ((_, _, columns),) = stage.results
    assert [column.name for column in columns] == [b"status"]


def test_pipelined_statements_each_get_their_answers():
    stage, machine = recorded(rewrite=True)
    request = query("SELECT 1") + query("SELECT 2")
    assert machine.client_data(request) == [SendToServer(request)]
    machine.server_data(
        row_description("a")
        + data_row(b"1")
        + command_complete("SELECT 1")
        + ready()
        + row_description("a")
        + data_row(b"2")
        + command_complete("SELECT 1")
        + ready()
    )
    assert [(number, body[-1:]) for number, body in stage.rows] == [(1, b"1"), (2, b"2")]
    assert outcomes(stage) == [
        (1, Status.COMPLETED, ("SELECT 1",), 1),
        (2, Status.COMPLETED, ("SELECT 1",), 1),
    ]


def test_an_error_mid_pipeline_skips_the_rest_of_its_segment_only():
    stage, machine = recorded()
    machine.client_data(
        parse("", "SELECT 1/0")
        + bind("", "")
        + execute("")
        + parse("", "SELECT 2")
        + bind("", "")
        + execute("")
        + SYNC
        + parse("", "SELECT 3")
        + bind("", "")
        + execute("")
        + SYNC
    )
    answer = (
        PARSE_COMPLETE
        + BIND_COMPLETE
        + error("22012", "division by zero")
        + ready()
        + PARSE_COMPLETE
        + BIND_COMPLETE
        + data_row(b"3")
        + command_complete("SELECT 1")
        + ready()
    )
    assert machine.server_data(answer) == [SendToClient(answer)]
    assert outcomes(stage) == [
        (1, Status.FAILED, (), 0),
        (2, Status.SKIPPED, (), 0),
        (3, Status.COMPLETED, ("SELECT 1",), 1),
    ]
    assert machine.idle


def test_an_error_in_a_query_string_abandons_its_later_statements():
    stage, machine = recorded()
    machine.client_data(query("SELECT 1; SELECT 1/0; SET search_path TO public"))
    machine.server_data(
        row_description("a")
        + data_row(b"1")
        + command_complete("SELECT 1")
        + row_description("b")
        + error("22012", "division by zero")
        + ready()
    )
    assert outcomes(stage) == [(1, Status.FAILED, ("SELECT 1",), 1)]
    assert machine.search_path_schemas == ("crm", "public")


def test_a_portal_with_a_row_limit_is_suspended_then_resumed():
    stage, machine = recorded()
    machine.client_data(
        query("BEGIN")
        + parse("", "SELECT id FROM crm.orders LIMIT 3")
        + bind("c", "")
        + execute("c", 2)
        + SYNC
    )
    machine.server_data(
        command_complete("BEGIN")
        + ready("T")
        + PARSE_COMPLETE
        + BIND_COMPLETE
        + data_row(b"1")
        + data_row(b"2")
        + PORTAL_SUSPENDED
        + ready("T")
    )
    assert b"c" in machine.portals
    # The portal was bound in an earlier segment, now confirmed: the next Execute may run it.
    request = execute("c", 2) + SYNC
    assert machine.client_data(request) == [SendToServer(request)]
    machine.server_data(data_row(b"3") + command_complete("SELECT 1") + ready("T"))
    assert outcomes(stage)[1:] == [
        (2, Status.SUSPENDED, (), 2),
        (3, Status.COMPLETED, ("SELECT 1",), 1),
    ]


def test_describe_of_a_statement_and_a_portal_and_no_data():
    machine = new_machine()
    request = (
        parse("s", "SELECT id FROM crm.orders WHERE id = $1")
        + describe("S", "s")
        + parse("u", "SET search_path TO crm")
        + describe("S", "u")
        + bind("", "s", [b"1"])
        + describe("P", "")
        + SYNC
    )
    assert machine.client_data(request) == [SendToServer(request)]
    answer = (
        PARSE_COMPLETE
        + parameter_description(23)
        + row_description("id")
        + PARSE_COMPLETE
        + parameter_description()
        + NO_DATA
        + BIND_COMPLETE
        + row_description("id")
        + ready()
    )
    assert machine.server_data(answer) == [SendToClient(answer)]
    assert machine.prepared_statements[b"u"].row_description == b""
    assert machine.idle


def test_copy_from_stdin_in_the_simple_protocol():
    stage = RecordingStage()
    machine = new_machine([stage])  # no policy: the ledger alone
    machine.client_data(query("COPY t (status) FROM STDIN"))
    machine.server_data(copy_in_response())
    data = copy_data(b"x\n") + copy_data(b"y\n") + COPY_DONE
    assert machine.client_data(data) == [SendToServer(data)]
    machine.server_data(command_complete("COPY 2") + ready())
    assert outcomes(stage) == [(1, Status.COMPLETED, ("COPY 2",), 0)]
    assert machine.idle


def test_a_copy_that_fails_mid_stream_drops_the_data_the_client_still_sends():
    stage = RecordingStage()
    machine = new_machine([stage])
    machine.client_data(query("COPY t FROM STDIN"))
    machine.server_data(copy_in_response())
    machine.client_data(copy_data(b"bad\n"))
    failed = error("22P02", "invalid input syntax") + ready()
    assert machine.server_data(failed) == [SendToClient(failed)]
    machine.client_data(copy_data(b"more\n") + COPY_DONE + query("SELECT 1"))
    machine.server_data(
        row_description("a") + data_row(b"1") + command_complete("SELECT 1") + ready()
    )
    assert [outcome[1] for outcome in outcomes(stage)] == [Status.FAILED, Status.COMPLETED]
    assert machine.idle


def test_copy_from_stdin_in_the_extended_protocol_ignores_the_sync_sent_with_it():
    stage = RecordingStage()
    machine = new_machine([stage])  # no policy: the ledger alone
    machine.client_data(parse("", "COPY t FROM STDIN") + bind("", "") + execute("") + SYNC)
    machine.server_data(PARSE_COMPLETE + BIND_COMPLETE + copy_in_response())
    machine.client_data(copy_data(b"1\n") + COPY_DONE + SYNC)
    answer = command_complete("COPY 1") + ready()
    assert machine.server_data(answer) == [SendToClient(answer)]
    assert outcomes(stage) == [(1, Status.COMPLETED, ("COPY 1",), 0)]
    assert machine.idle


def test_copy_to_stdout_streams_its_data_to_the_statement():
    stage = RecordingStage()
    machine = new_machine([stage])
    machine.client_data(query("COPY t TO STDOUT"))
    answer = (
        copy_out_response()
        + copy_data(b"1\n")
        + copy_data(b"2\n")
        + SERVER_COPY_DONE
        + command_complete("COPY 2")
        + ready()
    )
    assert machine.server_data(answer) == [SendToClient(answer)]
    assert outcomes(stage) == [(1, Status.COMPLETED, ("COPY 2",), 0)]


def test_notices_notifications_and_settings_pass_at_any_point():
    stage, machine = recorded()
    machine.client_data(query("SELECT 1"))
    answer = (
        notice("first")
        + row_description("a")
        + notification("channel", "hello")
        + data_row(b"1")
        + parameter_status("application_name", "x")
        + command_complete("SELECT 1")
        + notice("last")
        + ready()
    )
    assert machine.server_data(answer) == [SendToClient(answer)]
    assert outcomes(stage) == [(1, Status.COMPLETED, ("SELECT 1",), 1)]
    # Outside any statement, too.
    idle = notification("channel", "later") + parameter_status("TimeZone", "UTC")
    assert machine.server_data(idle) == [SendToClient(idle)]


def test_empty_queries():
    stage, machine = recorded()
    machine.client_data(query("") + parse("", "") + bind("", "") + execute("") + SYNC)
    answer = EMPTY_QUERY + ready() + PARSE_COMPLETE + BIND_COMPLETE + EMPTY_QUERY + ready()
    assert machine.server_data(answer) == [SendToClient(answer)]
    assert [outcome[1] for outcome in outcomes(stage)] == [Status.COMPLETED, Status.COMPLETED]


# --- refusals --------------------------------------------------------------------------


def test_a_refused_query_is_replaced_and_the_client_gets_the_refusal():
    recording, machine = recorded()
    assert machine.client_data(query("SELECT email FROM crm.customers")) == [
        SendToServer(REFUSAL_QUERY)
    ]
    (answer,) = machine.server_data(refusal_block_error() + ready())
    (error_message, ready_message) = split(answer.data)
    fields = parse_notice(error_message[1]).fields
    assert fields["C"] == "42501"
    assert "agents-no-bulk-export" in fields["M"]
    assert fields["H"].startswith("decided by rule agents-no-bulk-export")
    assert "W" not in fields
    assert ready_message == ("Z", b"I")
    assert outcomes(recording) == [(1, Status.REFUSED, (), 0)]


def test_a_refused_execute_leaves_the_unnamed_statement_to_the_client():
    recording, machine = recorded()
    request = parse("", "SELECT email FROM crm.customers") + bind("", "") + execute("") + SYNC
    (sent,) = machine.client_data(request)
    parse_and_bind = parse("", "SELECT email FROM crm.customers") + bind("", "")
    # The block's own statement is closed again right after the Sync, before anything of
    # the client's that follows could see it.
    assert sent == SendToServer(parse_and_bind + REFUSAL_EXECUTION + SYNC + REFUSAL_CLEANUP)
    answers = machine.server_data(
        PARSE_COMPLETE
        + BIND_COMPLETE
        + CLOSE_COMPLETE
        + PARSE_COMPLETE
        + BIND_COMPLETE
        + refusal_block_error()
        + ready()
        + CLOSE_COMPLETE
    )
    assert types(sent_to_client(answers)) == "12EZ"
    assert sent_to_server(answers) == b""
    assert set(machine.prepared_statements) == {b""}
    assert outcomes(recording) == [(1, Status.REFUSED, (), 0)]
    assert machine.idle


def test_a_policy_refusal_in_a_failed_transaction_keeps_its_reason():
    # The refusal block cannot run in a failed transaction; the statement would not have run
    # either way, and the client hears the policy's reason, not 25P02.
    machine = new_machine()
    machine.client_data(query("SELECT email FROM crm.customers"))
    aborted = error("25P02", "current transaction is aborted")
    (answer,) = machine.server_data(aborted + ready("E"))
    (error_message, ready_message) = split(answer.data)
    assert parse_notice(error_message[1]).sqlstate == "42501"
    assert ready_message == ("Z", b"E")


def test_a_refusal_the_database_would_have_preempted_keeps_the_databases_error():
    # SQL's EXECUTE of a missing statement: PostgreSQL checks the failed transaction first.
    machine = new_machine()
    machine.client_data(query("EXECUTE nowhere"))
    aborted = error("25P02", "current transaction is aborted")
    (answer,) = machine.server_data(aborted + ready("E"))
    assert answer.data == aborted + ready("E")


def test_an_unknown_portal_or_statement_is_refused_as_postgresql_would():
    machine = new_machine()
    (sent,) = machine.client_data(bind("", "nowhere") + execute("") + SYNC)
    # The Execute of the portal the refused Bind did not make is refused too (the database
    # skips it after the first error).
    assert sent == SendToServer(REFUSAL_EXECUTION + REFUSAL_EXECUTION + SYNC + REFUSAL_CLEANUP)
    answers = machine.server_data(
        CLOSE_COMPLETE
        + PARSE_COMPLETE
        + BIND_COMPLETE
        + refusal_block_error()
        + ready()
        + CLOSE_COMPLETE
    )
    (error_message, _) = split(sent_to_client(answers))
    fields = parse_notice(error_message[1]).fields
    assert (fields["C"], fields["M"]) == ("26000", 'prepared statement "nowhere" does not exist')


def test_fast_path_function_calls_are_refused():
    machine = new_machine()
    assert machine.client_data(function_call()) == [SendToServer(REFUSAL_QUERY)]
    (answer,) = machine.server_data(refusal_block_error() + ready())
    assert parse_notice(split(answer.data)[0][1]).sqlstate == "42501"


# --- waiting, cancel, disconnect ---------------------------------------------------------


class WaitingStage(Stage):
    """Makes every statement wait on one shared awaitable, then lets it through or not."""

    hears_outcomes = True

    def __init__(self) -> None:
        self.awaitable = object()
        self.outcomes: list[Status] = []

    def plan(self, statement: Statement):  # type: ignore[no-untyped-def]
        return WaitFor(self.awaitable, self._resume)  # type: ignore[arg-type]

    def _resume(self, settled: Settled):  # type: ignore[no-untyped-def]
        if settled.value == "deny":
            return Refuse(Refusal("42501", "no"))
        return FORWARD

    def finished(self, statement: Statement, outcome) -> None:  # type: ignore[no-untyped-def]
        self.outcomes.append(outcome.status)


def test_statements_of_one_chunk_wait_together_behind_one_awaitable():
    stage = WaitingStage()
    machine = new_machine([stage])
    request = query("SELECT 1") + query("SELECT 2")
    assert machine.client_data(request) == [StartWait(stage.awaitable)]
    assert machine.state is SessionState.HOLDING
    assert machine.settled(stage.awaitable, Settled("ok")) == [SendToServer(request)]
    assert machine.state is SessionState.RELAYING


def test_the_client_is_read_while_a_statement_waits_until_too_much_is_held():
    stage = WaitingStage()
    machine = new_machine([stage], limits=SessionLimits(max_held_client_bytes=100))
    assert machine.client_data(query("SELECT 1")) == [StartWait(stage.awaitable)]
    assert machine.client_data(query("SELECT 'x' || '" + "y" * 100 + "'")) == [PAUSE_CLIENT]
    assert machine.settled(stage.awaitable, Settled("ok"))[-1] == RESUME_CLIENT


def test_messages_behind_a_waiting_statement_keep_their_order():
    stage = WaitingStage()
    machine = new_machine([stage])
    ahead = parse("", "SELECT 1") + bind("", "")
    assert machine.client_data(ahead + execute("")) == [
        SendToServer(ahead),
        StartWait(stage.awaitable),
    ]
    assert machine.client_data(SYNC) == []  # queued behind the wait
    assert machine.settled(stage.awaitable, Settled("ok")) == [SendToServer(execute("") + SYNC)]


def test_a_cancel_withdraws_a_waiting_statement_as_postgresql_would_cancel_it():
    stage = WaitingStage()
    machine = new_machine([stage])
    machine.client_data(query("SELECT pg_sleep(10)"))
    assert machine.cancel_requested() == [SendToServer(REFUSAL_QUERY)]
    (answer,) = machine.server_data(refusal_block_error() + ready())
    fields = parse_notice(split(answer.data)[0][1]).fields
    assert (fields["C"], fields["M"]) == ("57014", "canceling statement due to user request")
    assert stage.outcomes == [Status.WITHDRAWN]
    # The wait settling later changes nothing.
    assert machine.settled(stage.awaitable, Settled("ok")) == []


def test_a_cancel_while_the_database_runs_a_statement_goes_to_the_database():
    machine = new_machine([])
    machine.client_data(query("SELECT pg_sleep(10)"))
    assert machine.cancel_requested() == [FORWARD_CANCEL]


def test_a_disconnect_withdraws_a_waiting_statement_that_never_runs():
    stage = WaitingStage()
    machine = new_machine([stage])
    machine.client_data(query("DELETE FROM crm.orders"))
    assert machine.client_lost() == [CloseSession("client ended the session")]
    assert stage.outcomes == [Status.WITHDRAWN]
    assert machine.settled(stage.awaitable, Settled("ok")) == []


def test_a_refusal_after_a_wait():
    stage = WaitingStage()
    machine = new_machine([stage])
    machine.client_data(query("SELECT 1"))
    assert machine.settled(stage.awaitable, Settled("deny")) == [SendToServer(REFUSAL_QUERY)]


def test_a_terminate_behind_a_waiting_statement_withdraws_it():
    stage = WaitingStage()
    machine = new_machine([stage])
    machine.client_data(query("DELETE FROM crm.orders"))
    assert machine.client_data(TERMINATE) == [CloseSession("client ended the session")]
    assert stage.outcomes == [Status.WITHDRAWN]
    assert machine.settled(stage.awaitable, Settled("ok")) == []


# --- the gateway's own messages ---------------------------------------------------------


def test_a_close_waits_for_the_row_under_way_to_end():
    machine = new_machine([])
    machine.client_data(query("SELECT repeat('x', 100)"))
    row = data_row(b"x" * 100)
    first = row_description("r") + row[:20]
    assert machine.server_data(first) == [SendToClient(first)]
    assert machine.close("57P01", "the gateway is shutting down") == []
    actions = machine.server_data(row[20:50])
    assert actions == [SendToClient(row[20:50])]
    actions = machine.server_data(row[50:] + command_complete("SELECT 1"))
    sent = first + row[20:50] + sent_to_client(actions)
    assert types(sent) == "TDCE"
    fatal = split(sent)[-1]
    assert parse_notice(fatal[1]).sqlstate == "57P01"
    assert parse_notice(fatal[1]).severity == "FATAL"
    assert actions[-1] == CloseSession("the gateway is shutting down")


def test_terminate_ends_the_session_after_forwarding():
    machine = new_machine([])
    assert machine.client_data(TERMINATE) == [
        SendToServer(TERMINATE),
        CloseSession("client ended the session"),
    ]
    assert machine.state is SessionState.CLOSED


def test_flow_control_pauses_the_other_side():
    machine = new_machine([])
    assert machine.client_write_paused(True) == [PAUSE_SERVER]
    assert machine.client_write_paused(True) == []
    assert machine.client_write_paused(False) == [RESUME_SERVER]
    assert machine.server_write_paused(True) == [PAUSE_CLIENT]
    assert machine.server_write_paused(False) == [RESUME_CLIENT]


def test_flush_is_forwarded_and_answers_nothing():
    machine = new_machine([])
    request = parse("", "SELECT 1") + FLUSH
    assert machine.client_data(request) == [SendToServer(request)]
    assert machine.server_data(PARSE_COMPLETE) == [SendToClient(PARSE_COMPLETE)]
    machine.client_data(close("S", "") + SYNC)
    machine.server_data(CLOSE_COMPLETE + ready())
    assert machine.prepared_statements == {}
    assert machine.idle


@pytest.mark.parametrize(
    "answer",
    [
        PARSE_COMPLETE,
        data_row(b"1"),
        command_complete("SELECT 1"),
        ready(),
        b"\x7f\x00\x00\x00\x04",
    ],
)
def test_an_answer_nobody_asked_for_ends_the_session(answer):
    machine = new_machine([])
    actions = machine.server_data(answer)
    fatal = split(sent_to_client(actions))[-1]
    assert parse_notice(fatal[1]).sqlstate == "08P01"
    assert isinstance(actions[-1], CloseSession)


# --- large answers --------------------------------------------------------------------------


def test_a_large_row_a_rewriter_reads_is_gathered_once_and_goes_on_whole():
    stage = RecordingStage(rewrite=True)
    machine = new_machine([stage])
    machine.client_data(query("SELECT big FROM t"))
    row = data_row(b"x" * (16 << 20))
    answer = row_description("big") + row + command_complete("SELECT 1") + ready()
    sent = b"".join(
        sent_to_client(machine.server_data(answer[start : start + 65536]))
        for start in range(0, len(answer), 65536)
    )
    assert sent == answer
    assert [len(body) for _, body in stage.rows] == [len(row) - 5]


def test_a_large_row_nobody_reads_streams_through_without_being_held():
    stage = RecordingStage()
    machine = new_machine([stage])
    machine.client_data(query("SELECT big FROM t"))
    row = data_row(b"x" * (4 << 20))
    answer = row_description("big") + row + command_complete("SELECT 1") + ready()
    first = machine.server_data(answer[:1000])
    # The first kilobyte goes on at once, though the row is not whole yet.
    assert sent_to_client(first) == answer[:1000]
    rest = sent_to_client(machine.server_data(answer[1000:]))
    assert rest == answer[1000:]
    assert outcomes(stage) == [(1, Status.COMPLETED, ("SELECT 1",), 1)]


def test_a_message_larger_than_the_session_may_hold_ends_it_cleanly():
    stage = RecordingStage(rewrite=True)
    machine = new_machine([stage], limits=SessionLimits(max_held_message_bytes=1000))
    machine.client_data(query("SELECT big FROM t"))
    actions = machine.server_data(row_description("big") + data_row(b"x" * 2000)[:1500])
    fatal = split(sent_to_client(actions))[-1]
    notice = parse_notice(fatal[1])
    assert (notice.sqlstate, notice.severity) == ("54000", "FATAL")
    assert "limits.max_message_bytes" in notice.message
    assert actions[-1] == CloseSession(notice.message)


def test_the_parse_memo_holds_a_bounded_number_of_bytes():
    # A client that sends ever new Parse messages (each a different 12 KiB text) must not
    # make the session keep them all: the memo holds at most 1 MiB of bodies.
    machine = new_machine([RecordingStage()])
    for number in range(300):
        text = f"SELECT {number} AS n, '" + "x" * (12 << 10) + "' AS filler"
        machine.client_data(parse("", text) + SYNC)
        machine.server_data(PARSE_COMPLETE + ready())
    assert 0 < machine._parse_memo_bytes <= 1 << 20


@pytest.mark.parametrize(
    ("text", "at_parse"),
    [
        ("SELECT id FROM crm.customers WHERE email = 'a.secret@example.org'", True),
        ("SELECT id FROM crm.customers WHERE email = $$a.secret@example.org$$", True),
        ("SELECT id FROM crm.customers WHERE email = E'a.secret@example.org'", True),
        ("SELECT email FROM crm.customers WHERE birth_date = 19741022::text::date", True),
        ("SELECT email FROM crm.customers ORDER BY id LIMIT 3", True),  # a number
        ("SELECT email FROM crm.customers ORDER BY id", False),  # no value to show
        ("SELECT id FROM crm.customers WHERE full_name LIKE $1", False),  # decided with $1
        ("SELECT id FROM crm.customers WHERE id = '5'::int LIMIT 1", False),  # allowed
    ],
)
def test_a_refused_text_carrying_values_is_refused_at_its_parse(text: str, at_parse: bool):
    # The database shows a Parse's text in pg_stat_activity and its log: a text that may
    # carry values, and that policy refuses whatever the Bind values, never reaches it.
    machine = new_machine([policy_stage()])
    sent = sent_to_server(machine.client_data(parse("s", text) + SYNC))
    reached = text.encode() in sent
    assert reached is not at_parse
    if at_parse:
        assert REFUSAL_EXECUTION in sent
