"""The session's view follows the database's answers: names, the search path, lexical settings.

Sans-IO: the machine is fed the client's messages and the answers a database would give,
and each test checks what it believes afterwards and what it decides on.
"""

from __future__ import annotations

import pytest
from playbook import (
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    PARSE_COMPLETE,
    SYNC,
    bind,
    close,
    command_complete,
    data_row,
    error,
    execute,
    new_machine,
    parameter_status,
    parse,
    query,
    ready,
    row_description,
    sent_to_client,
    sent_to_server,
    split,
)

from custos.protocol.messages import parse_notice
from custos.session.actions import SendToServer
from custos.session.lexical import LexicalSettings
from custos.session.machine import SessionLimits, SessionMachine, SessionState
from custos.session.own_messages import REFUSAL_EXECUTION, REFUSAL_QUERY
from custos.session.texts import TextAnalyser
from custos.sql.cache import AnalysisCache

PROTECTED = "SELECT email FROM crm.customers"  # the demo policy refuses it to agents
HARMLESS = "SELECT id FROM crm.orders LIMIT 1"


def forwarded(machine, request: bytes) -> bool:
    """Whether the request went to the database as it was (not refused, not held)."""
    return machine.client_data(request) == [SendToServer(request)]


def refused(machine, request: bytes) -> bool:
    sent = sent_to_server(machine.client_data(request))
    return REFUSAL_QUERY in sent or REFUSAL_EXECUTION in sent


# --- the search path ---------------------------------------------------------------------


def test_unqualified_names_are_decided_under_every_schema_of_the_path():
    machine = new_machine(search_path=("public", "crm"))
    assert refused(machine, query("SELECT email FROM customers"))


def test_a_set_search_path_counts_from_when_it_is_sent_until_the_database_settles_it():
    machine = new_machine(search_path=("public",))
    assert forwarded(machine, query("SET search_path TO crm"))
    # Pipelined behind it: either path may be in force, and each is decided.
    assert machine.search_path_schemas == ("public", "crm")
    machine.server_data(command_complete("SET") + ready())
    assert machine.search_path_schemas == ("crm",)


@pytest.mark.parametrize(
    ("requests", "answers"),
    [
        # An error later in the same implicit transaction rolls the SET back.
        (
            [query("SET search_path TO public; SELECT 1/0")],
            command_complete("SET") + error("22012", "division by zero") + ready(),
        ),
        # ROLLBACK undoes it.
        (
            [query("BEGIN"), query("SET search_path TO public"), query("ROLLBACK")],
            command_complete("BEGIN")
            + ready("T")
            + command_complete("SET")
            + ready("T")
            + command_complete("ROLLBACK")
            + ready(),
        ),
        # SET LOCAL ends with its transaction; outside one it does nothing at all.
        (
            [query("SET LOCAL search_path TO public")],
            command_complete("SET") + ready(),
        ),
        # A SET the database skipped after an earlier error never happened.
        (
            [
                parse("", "SELECT 1/0")
                + bind("", "")
                + execute("")
                + query("SET search_path TO public")
                + SYNC
            ],
            PARSE_COMPLETE + BIND_COMPLETE + error("22012", "division by zero") + ready(),
        ),
        # A SET rolled back in the same extended segment.
        (
            [
                parse("", "BEGIN")
                + bind("", "")
                + execute("")
                + parse("", "SET search_path TO public")
                + bind("", "")
                + execute("")
                + parse("", "ROLLBACK")
                + bind("", "")
                + execute("")
                + SYNC
            ],
            PARSE_COMPLETE
            + BIND_COMPLETE
            + command_complete("BEGIN")
            + PARSE_COMPLETE
            + BIND_COMPLETE
            + command_complete("SET")
            + PARSE_COMPLETE
            + BIND_COMPLETE
            + command_complete("ROLLBACK")
            + ready(),
        ),
    ],
    ids=["error", "rollback", "set-local", "skipped", "rolled-back-in-segment"],
)
def test_a_search_path_the_database_did_not_keep_is_forgotten(requests, answers):
    machine = new_machine(search_path=("crm",))
    for request in requests:
        machine.client_data(request)
    machine.server_data(answers)
    assert machine.search_path_schemas == ("crm",)


def test_a_committed_set_replaces_the_path():
    machine = new_machine(search_path=("crm",))
    machine.client_data(query("BEGIN") + query("SET search_path TO public") + query("COMMIT"))
    machine.server_data(
        command_complete("BEGIN")
        + ready("T")
        + command_complete("SET")
        + ready("T")
        + command_complete("COMMIT")
        + ready()
    )
    assert machine.search_path_schemas == ("public",)


def test_user_in_a_path_stands_for_the_login():
    machine = SessionMachine(
        stages=[],
        analyser=TextAnalyser(AnalysisCache(), exact_texts=True),
        search_path=("public",),
        lexical=LexicalSettings(),
        limits=SessionLimits(),
        login="crm",
    )
    machine.client_data(query('SET search_path TO "$user", public'))
    machine.server_data(command_complete("SET") + ready())
    assert machine.search_path_schemas == ("crm", "public")


def test_inside_one_query_string_a_statement_after_a_set_resolves_against_the_new_path():
    machine = new_machine(search_path=("public",))
    assert refused(machine, query("SET search_path TO crm; SELECT email FROM customers"))


def test_a_path_a_savepoint_may_have_undone_stays_a_candidate():
    machine = new_machine(search_path=("crm",))
    machine.client_data(
        query("BEGIN")
        + query("SAVEPOINT a")
        + query("SET search_path TO public")
        + query("ROLLBACK TO SAVEPOINT a")
        + query("COMMIT")
    )
    machine.server_data(
        command_complete("BEGIN")
        + ready("T")
        + command_complete("SAVEPOINT")
        + ready("T")
        + command_complete("SET")
        + ready("T")
        + command_complete("ROLLBACK")
        + ready("T")
        + command_complete("COMMIT")
        + ready()
    )
    assert set(machine.search_path_schemas) == {"crm", "public"}


# --- prepared statements and portals -------------------------------------------------------


def test_a_statement_exists_once_the_database_says_so():
    machine = new_machine()
    machine.client_data(parse("s", HARMLESS) + SYNC)
    assert machine.prepared_statements == {}
    machine.server_data(PARSE_COMPLETE + ready())
    assert set(machine.prepared_statements) == {b"s"}


def test_a_parse_the_database_rejected_creates_nothing():
    machine = new_machine()
    machine.client_data(parse("s", PROTECTED) + SYNC)
    machine.server_data(PARSE_COMPLETE + ready())
    machine.client_data(parse("s", HARMLESS) + SYNC)
    machine.server_data(error("42P05", 'prepared statement "s" already exists') + ready())
    # Still the protected one: binding it is decided on that.
    assert refused(machine, bind("", "s") + execute("") + SYNC)


def test_a_bind_in_a_later_segment_waits_for_the_answers_that_decide_what_it_binds():
    machine = new_machine()
    machine.client_data(parse("s", PROTECTED) + SYNC)
    # Whether the second Parse succeeds decides what s is: wait for the database.
    machine.client_data(parse("s", HARMLESS) + SYNC)
    assert machine.client_data(bind("", "s") + execute("") + SYNC) == []
    assert machine.state is SessionState.HOLDING
    actions = machine.server_data(
        PARSE_COMPLETE + ready() + error("42P05", "prepared statement already exists") + ready()
    )
    sent = sent_to_server(actions)
    assert REFUSAL_EXECUTION in sent, "decided on the statement the database kept"


def test_a_close_the_database_skipped_forgets_nothing():
    machine = new_machine()
    machine.client_data(parse("s", PROTECTED) + SYNC)
    machine.server_data(PARSE_COMPLETE + ready())
    machine.client_data(bind("", "nowhere") + close("S", "s") + SYNC)
    machine.server_data(sent_answers_for_refused_bind() + ready())
    assert set(machine.prepared_statements) == {b"s"}


def sent_answers_for_refused_bind() -> bytes:
    from playbook import refusal_block_error

    return CLOSE_COMPLETE + PARSE_COMPLETE + BIND_COMPLETE + refusal_block_error()


def test_sql_prepare_and_protocol_parse_share_one_namespace():
    machine = new_machine()
    machine.client_data(query(f"PREPARE s AS {PROTECTED}"))
    machine.server_data(command_complete("PREPARE") + ready())
    # EXECUTE and Bind reach it alike; both are decided on its SQL.
    assert refused(machine, query("EXECUTE s"))
    machine.server_data(sent_answers_for_refused_query() + ready())
    assert refused(machine, bind("", "s") + execute("") + SYNC)


def sent_answers_for_refused_query() -> bytes:
    from playbook import refusal_block_error

    return refusal_block_error()


def test_names_longer_than_63_bytes_are_one_name_as_in_postgresql():
    machine = new_machine()
    long_name = "s" * 63
    machine.client_data(parse(long_name + "_protected", PROTECTED) + SYNC)
    machine.server_data(PARSE_COMPLETE + ready())
    assert refused(machine, bind("", long_name + "_other") + execute("") + SYNC)


def test_fetch_of_a_protocol_portal_is_decided_on_the_portals_statement():
    machine = new_machine()
    machine.client_data(query("BEGIN") + parse("", PROTECTED) + bind("p", "") + SYNC)
    machine.server_data(
        command_complete("BEGIN") + ready("T") + PARSE_COMPLETE + BIND_COMPLETE + ready("T")
    )
    assert refused(machine, query("FETCH ALL FROM p"))


def test_a_declared_cursor_executed_through_the_protocol_is_decided_on_its_query():
    machine = new_machine()
    machine.client_data(query("BEGIN") + query("DECLARE c CURSOR FOR SELECT 1"))
    machine.server_data(
        command_complete("BEGIN") + ready("T") + command_complete("DECLARE CURSOR") + ready("T")
    )
    assert forwarded(machine, execute("c") + SYNC)
    machine.server_data(data_row(b"1") + command_complete("SELECT 1") + ready("T"))
    machine.client_data(query(f"DECLARE d CURSOR FOR {PROTECTED}"))
    assert set(machine.portals) == {b"c"}


def test_portals_end_with_their_transaction_but_held_cursors_remain():
    machine = new_machine()
    machine.client_data(
        query("BEGIN")
        + query("DECLARE kept CURSOR WITH HOLD FOR SELECT 1")
        + query("DECLARE gone CURSOR FOR SELECT 1")
        + query("COMMIT")
    )
    machine.server_data(
        command_complete("BEGIN")
        + ready("T")
        + command_complete("DECLARE CURSOR")
        + ready("T")
        + command_complete("DECLARE CURSOR")
        + ready("T")
        + command_complete("COMMIT")
        + ready()
    )
    assert set(machine.portals) == {b"kept"}


def test_a_fetch_of_an_unknown_cursor_is_refused_as_postgresql_would():
    machine = new_machine()
    assert refused(machine, query("FETCH ALL FROM nowhere"))
    answer = sent_to_client(machine.server_data(sent_answers_for_refused_query() + ready()))
    fields = parse_notice(split(answer)[0][1]).fields
    assert (fields["C"], fields["M"]) == ("34000", 'cursor "nowhere" does not exist')


# --- lexical settings --------------------------------------------------------------------


HIDDEN = "SELECT 'x\\'; SELECT email FROM crm.customers; --'"


def test_standard_conforming_strings_off_refuses_text_with_a_backslash():
    machine = new_machine(lexical=LexicalSettings(standard_conforming_strings=False))
    assert refused(machine, query(HIDDEN))
    answer = sent_to_client(machine.server_data(sent_answers_for_refused_query() + ready()))
    assert "standard_conforming_strings" in parse_notice(split(answer)[0][1]).message
    # Text without a backslash reads alike either way.
    assert forwarded(machine, query(HARMLESS))


def test_the_settings_follow_the_servers_reports():
    machine = new_machine()
    machine.client_data(query("SET standard_conforming_strings = off"))
    machine.server_data(
        command_complete("SET") + parameter_status("standard_conforming_strings", "off") + ready()
    )
    assert not machine.lexical.standard_conforming_strings
    assert refused(machine, query(HIDDEN))


def test_text_that_could_read_differently_waits_for_settings_under_way():
    machine = new_machine()
    machine.client_data(query("SET standard_conforming_strings = off"))
    # Behind a statement that may change them, the text waits for the server's answers.
    assert sent_to_server(machine.client_data(query(HIDDEN))) == b""
    actions = machine.server_data(
        command_complete("SET") + parameter_status("standard_conforming_strings", "off") + ready()
    )
    assert REFUSAL_QUERY in sent_to_server(actions)


def test_in_one_segment_text_that_could_read_differently_cannot_follow_a_set():
    machine = new_machine()
    request = (
        parse("", "SET standard_conforming_strings = off")
        + bind("", "")
        + execute("")
        + parse("", HIDDEN)
    )
    assert REFUSAL_EXECUTION in sent_to_server(machine.client_data(request))


@pytest.mark.parametrize("encoding", ["SJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"])
def test_encodings_that_hide_ascii_in_multibyte_characters_refuse_non_ascii_text(encoding):
    machine = new_machine(lexical=LexicalSettings(client_encoding=encoding))
    text = "SELECT E'\u00c1\\'; SELECT email FROM crm.customers; --'"
    request = b"Q" + (len(text.encode("utf-8")) + 5).to_bytes(4, "big") + text.encode() + b"\0"
    assert REFUSAL_QUERY in sent_to_server(machine.client_data(request))
    assert forwarded(machine, query(HARMLESS))


def test_text_in_a_single_byte_encoding_is_decoded_as_the_server_does():
    machine = new_machine(lexical=LexicalSettings(client_encoding="LATIN9"))
    text = "SELECT 'd\u00e9j\u00e0 \u20ac' FROM crm.orders LIMIT 1".encode("iso8859-15")
    request = b"Q" + (len(text) + 5).to_bytes(4, "big") + text + b"\0"
    assert machine.client_data(request) == [SendToServer(request)]
    machine.server_data(
        row_description("x") + data_row(b"y") + command_complete("SELECT 1") + ready()
    )


def test_under_a_path_of_too_many_schemas_only_qualified_names_go_on():
    machine = new_machine(search_path=tuple(f"s{index}" for index in range(40)))
    assert forwarded(machine, query("SELECT id FROM crm.orders LIMIT 1"))
    machine.server_data(
        row_description("id") + data_row(b"1") + command_complete("SELECT 1") + ready()
    )
    assert forwarded(machine, query("SET search_path TO crm"))
    machine.server_data(command_complete("SET") + ready())
    assert refused(
        new_machine(search_path=tuple(f"s{i}" for i in range(40))), query("SELECT 1 FROM t")
    )
