"""A session's prepared statements are bounded in bytes: what it holds stays in the
gateway's memory for as long as it lasts, and one session sending distinct named Parses
(100,000 of them took the gateway from 76 MB to 618 MB) must not exhaust what every
session shares.
"""

from __future__ import annotations

from playbook import (
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    PARSE_COMPLETE,
    SYNC,
    bind,
    close,
    command_complete,
    new_machine,
    parse,
    query,
    ready,
    refusal_block_error,
    sent_to_client,
    sent_to_server,
    split,
)

from custos.protocol.messages import parse_notice
from custos.session.machine import SessionLimits, SessionMachine
from custos.session.own_messages import REFUSAL_CLEANUP, REFUSAL_EXECUTION, REFUSAL_QUERY

LIMIT = 1 << 20


def statement(number: int) -> str:
    return f"SELECT {number} AS c{number}, '{'x' * 200}' AS pad"


def limited() -> SessionMachine:
    # A generous analysis budget: on a busy machine the analysis must not be what refuses.
    return new_machine([], limits=SessionLimits(max_prepared_bytes=LIMIT), budget_seconds=10.0)


def prepare_until_refused(machine: SessionMachine, start: int = 0) -> int:
    """Named Parses, each answered, until one is refused; how many were taken."""
    for number in range(start, start + 10_000):
        actions = machine.client_data(parse(f"s{number}", statement(number)) + SYNC)
        sent = b"".join(getattr(action, "data", b"") for action in actions)
        if REFUSAL_EXECUTION in sent:
            refused = CLOSE_COMPLETE + PARSE_COMPLETE + BIND_COMPLETE + refusal_block_error()
            # The block's own statement is closed again right after the Sync.
            cleanup = CLOSE_COMPLETE if REFUSAL_CLEANUP in sent else b""
            answer = machine.server_data(refused + ready() + cleanup)
            (kind, body), *_ = split(sent_to_client(answer))
            assert kind == "E"
            fields = parse_notice(body).fields
            assert fields["C"] == "54000"
            assert "limits.max_prepared_bytes_per_session" in fields["M"]
            return number - start
        machine.server_data(PARSE_COMPLETE + ready())
    raise AssertionError("no Parse was refused")


def test_named_parses_past_the_bytes_a_session_may_hold_are_refused() -> None:
    machine = limited()
    taken = prepare_until_refused(machine)
    assert 100 < taken < 1000  # each holds a few kilobytes of analysis
    # The session goes on: an unnamed Parse and plain queries are not held.
    request = query("SELECT 1")
    assert machine.client_data(request)[0].data == request  # type: ignore[attr-defined]


def test_closing_prepared_statements_makes_room_again() -> None:
    machine = limited()
    taken = prepare_until_refused(machine)
    closes = b"".join(close("S", f"s{number}") for number in range(taken))
    machine.client_data(closes + SYNC)
    machine.server_data(CLOSE_COMPLETE * taken + ready())
    assert prepare_until_refused(machine, start=taken + 1) > 100


def test_prepare_in_sql_counts_too() -> None:
    machine = limited()
    for number in range(10_000):
        actions = machine.client_data(query(f"PREPARE p{number} AS {statement(number)}"))
        sent = b"".join(getattr(action, "data", b"") for action in actions)
        if sent == REFUSAL_QUERY:
            answer = machine.server_data(refusal_block_error() + ready())
            (kind, body), *_ = split(sent_to_client(answer))
            assert kind == "E"
            assert parse_notice(body).fields["C"] == "54000"
            assert number > 100
            return
        machine.server_data(b"C\x00\x00\x00\x0cPREPARE\x00" + ready())
    raise AssertionError("no PREPARE was refused")


def test_named_portals_count_too_and_the_unnamed_one_does_not() -> None:
    machine = limited()
    machine.client_data(parse("s", "SELECT $1::text IS NULL AS n") + SYNC)
    machine.server_data(PARSE_COMPLETE + ready())
    large = b"x" * (LIMIT // 4)
    # The unnamed portal, however large its values, is replaced by the next Bind.
    for _ in range(8):
        sent = machine.client_data(bind("", "s", [large]) + SYNC)
        assert sent_to_server(sent).startswith(bind("", "s", [large]))
        machine.server_data(BIND_COMPLETE + ready())
    machine.client_data(query("BEGIN"))
    machine.server_data(command_complete("BEGIN") + ready("T"))
    refused = None
    for number in range(8):
        sent = sent_to_server(machine.client_data(bind(f"p{number}", "s", [large]) + SYNC))
        if not sent.startswith(bind(f"p{number}", "s", [large])):
            refused = number
            break
        machine.server_data(BIND_COMPLETE + ready("T"))
    assert refused is not None
    assert 1 <= refused < 4  # a quarter of the budget each, with the statement's own share


def test_cursors_declared_in_sql_count_too() -> None:
    machine = limited()
    for number in range(10_000):
        sql = f"DECLARE c{number} CURSOR WITH HOLD FOR {statement(number)}"
        if machine.client_data(query(sql))[0].data == REFUSAL_QUERY:  # type: ignore[attr-defined]
            answer = machine.server_data(refusal_block_error() + ready())
            (kind, body), *_ = split(sent_to_client(answer))
            assert kind == "E"
            assert parse_notice(body).fields["C"] == "54000"
            assert number > 100
            return
        machine.server_data(command_complete("DECLARE CURSOR") + ready())
    raise AssertionError("no DECLARE was refused")
