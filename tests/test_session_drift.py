"""Where the gateway's view of a session drifts from the database's.

The gate follows the session (prepared statements, portals, search_path, the lexical
settings its parser assumes) so that it decides each statement on what the database will
really run. Each test below makes the two views disagree and then shows, by the data that
comes back or by what changed in the database, that a statement ran that policy never
decided, or decided on another text. A fixed gateway may refuse (42501, 26000) or let
PostgreSQL raise its own error; what it must never do is return customer data the policy
protects or change CRM rows.

The evidence: every DataRow the client receives is checked against the real customer emails
(read by the superuser). The demo policy refuses email for role `agent` (mask, which the
gateway cannot do yet, so refused) and unbounded reads of crm.customers.
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from gateway_fixtures import GatewayProcess, psycopg_session, rows_of, start_gateway
from wire import (
    SYNC,
    ConnectionEnded,
    Message,
    WireClient,
    data_row_values,
    frontend_message,
    login_as_agent,
    query,
)

from custos.demo.postgres import PostgresServer

# What policy refuses the agent: email is masked (refused today), and crm.customers is read.
PROTECTED = "SELECT email FROM crm.customers ORDER BY id LIMIT 3"
# The same read, unqualified: crm is on the session's search path (crm, public).
PROTECTED_UNQUALIFIED = "SELECT email FROM customers ORDER BY id LIMIT 3"
# A refused read with no value in its text: a Parse of it reaches the database, and the
# refusal comes at its Execute (a text that may carry values is refused at its Parse).
REFUSED_AT_EXECUTE = "SELECT email FROM crm.customers ORDER BY id"
HARMLESS = "SELECT 'harmless'"
DEMO_POLICY = Path(__file__).resolve().parent.parent / "custos" / "demo" / "policy.yaml"


@pytest.fixture(scope="module")
def governed(
    pg: PostgresServer, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    running = start_gateway(
        tmp_path_factory.mktemp("drift"),
        pg,
        upstream_dsn=gateway.upstream_dsn,
        extra_config={"roles": [], "policy": {"file": str(DEMO_POLICY), "poll_seconds": 0.2}},
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def customer_emails(pg_dsn: str) -> frozenset[bytes]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        rows = connection.execute("SELECT email FROM crm.customers").fetchall()
    emails = frozenset(row[0].encode() for row in rows if row[0])
    assert emails, "the demo database has no customer emails to look for"
    return emails


# --- the protocol, spelled out ---------------------------------------------------------------


def _cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def parse(statement: str, sql: str) -> bytes:
    return frontend_message(b"P", _cstring(statement) + _cstring(sql) + struct.pack("!h", 0))


def bind(portal: str, statement: str) -> bytes:
    body = _cstring(portal) + _cstring(statement) + struct.pack("!hhh", 0, 0, 0)
    return frontend_message(b"B", body)


def execute(portal: str) -> bytes:
    return frontend_message(b"E", _cstring(portal) + struct.pack("!i", 0))


def close(kind: bytes, name: str) -> bytes:
    return frontend_message(b"C", kind + _cstring(name))


def run_unnamed(sql: str) -> bytes:
    return parse("", sql) + bind("", "") + execute("")


# An error the database raises on its own (26000), which makes it skip the rest of the segment.
FAILING_BIND = bind("", "no_such_statement")


class RawSession:
    """A raw agent session that keeps every message the gateway answers.

    An exchange reads up to the number of ReadyForQuery the database sends for it. A gateway
    that closes the connection instead (a refusal) ends the session; what came before stays.
    """

    def __init__(self, client: WireClient) -> None:
        self.client = client
        self.received: list[Message] = []
        self.ended = False

    def exchange(self, data: bytes, readies: int = 1) -> list[Message]:
        got: list[Message] = []
        if self.ended:
            return got
        try:
            self.client.send(data)
            while readies:
                message = self.client.read_message()
                got.append(message)
                if message.type == "Z":
                    readies -= 1
        except (ConnectionEnded, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
            self.ended = True
        self.received.extend(got)
        return got

    def drain(self) -> None:
        """Reads anything still on its way, so no answer escapes the evidence."""
        if self.ended:
            return
        self.exchange(SYNC + query("ROLLBACK") + query("SELECT 'custos-drained'"))
        while not self.ended and not any(
            message.type == "D" and data_row_values(message) == [b"custos-drained"]
            for message in self.received
        ):
            self.exchange(b"")
        self.client.close()


def agent_session(governed: GatewayProcess, **startup: str) -> RawSession:
    """A raw session as role `agent`; one whose startup parameters the gateway refuses is ended."""
    if not startup:
        return RawSession(login_as_agent(governed, timeout=5.0))
    client = WireClient.connect(governed.port, timeout=5.0)
    session = RawSession(client)
    try:
        client.login(governed.tls.ca_cert, "agent", governed.token(), governed.database, **startup)
    except (AssertionError, ConnectionEnded, ConnectionResetError, ssl.SSLEOFError):
        session.ended = True
        client.close()
    return session


def leaked(messages: list[Message], emails: frozenset[bytes]) -> list[bytes]:
    """The customer emails among the values of the DataRows received."""
    return [
        value
        for message in messages
        if message.type == "D"
        for value in data_row_values(message)
        if value in emails
    ]


def assert_nothing_leaked(session: RawSession, emails: frozenset[bytes]) -> None:
    session.drain()
    found = leaked(session.received, emails)
    assert not found, f"customer emails came back through the gateway: {found}"


def psycopg_connect(
    gateway: GatewayProcess, role: str = "agent", **params: str
) -> psycopg.Connection:
    return psycopg_session(gateway, role, f"{role}-drift", **params)


def emails_in(rows: list[tuple], emails: frozenset[bytes]) -> list[str]:
    return [
        value
        for row in rows
        for value in row
        if isinstance(value, str) and value.encode() in emails
    ]


# --- prepared statements and portals ---------------------------------------------------------


def test_a_parse_the_database_rejects_as_duplicate_still_replaces_the_statement(
    governed, customer_emails
):
    """Hole: a Parse refused with 42P05 is recorded, so Execute is decided on the new text."""
    session = agent_session(governed)
    session.exchange(parse("s_dup", PROTECTED) + SYNC)
    session.exchange(parse("s_dup", HARMLESS) + SYNC)  # 42P05: the database keeps PROTECTED
    session.exchange(bind("", "s_dup") + execute("") + SYNC)
    assert_nothing_leaked(session, customer_emails)


def test_a_parse_skipped_after_an_error_still_replaces_the_unnamed_statement(
    governed, customer_emails
):
    """Hole: a Parse the database skips (error earlier in the segment) is recorded anyway."""
    session = agent_session(governed)
    session.exchange(parse("", PROTECTED) + SYNC)
    session.exchange(FAILING_BIND + parse("", HARMLESS) + SYNC)  # the Parse is skipped
    session.exchange(bind("", "") + execute("") + SYNC)
    assert_nothing_leaked(session, customer_emails)


def test_a_close_skipped_after_an_error_leaves_a_statement_the_gate_forgot(
    governed, customer_emails
):
    """Hole: a skipped Close makes the gate forget a live statement; its portal runs undecided."""
    session = agent_session(governed)
    session.exchange(parse("s_kept", PROTECTED) + SYNC)
    session.exchange(FAILING_BIND + close(b"S", "s_kept") + SYNC)  # the Close is skipped
    session.exchange(bind("", "s_kept") + execute("") + SYNC)
    assert_nothing_leaked(session, customer_emails)


def test_a_portal_close_skipped_after_an_error_leaves_a_portal_the_gate_forgot(
    governed, customer_emails
):
    """Hole: a skipped Close of a portal makes the gate forget it; Execute of it runs undecided."""
    session = agent_session(governed)
    session.exchange(query("BEGIN"))
    session.exchange(parse("s_portal", PROTECTED) + bind("p_kept", "s_portal") + SYNC)
    session.exchange(query("SAVEPOINT before_error"))
    session.exchange(FAILING_BIND + close(b"P", "p_kept") + SYNC)  # the Close is skipped
    session.exchange(query("ROLLBACK TO SAVEPOINT before_error"))  # p_kept predates it: kept
    session.exchange(execute("p_kept") + SYNC)
    assert_nothing_leaked(session, customer_emails)


def test_a_bind_the_database_rejects_as_duplicate_portal_still_rebinds_it(
    governed, customer_emails
):
    """Hole: a Bind refused with 42P03 (portal exists) is recorded; Execute runs the old portal."""
    session = agent_session(governed)
    session.exchange(query("BEGIN"))
    session.exchange(
        parse("s_old", PROTECTED) + parse("s_new", HARMLESS) + bind("p_dup", "s_old") + SYNC
    )
    session.exchange(query("SAVEPOINT before_error"))
    session.exchange(bind("p_dup", "s_new") + SYNC)  # 42P03: p_dup stays bound to s_old
    session.exchange(query("ROLLBACK TO SAVEPOINT before_error"))
    session.exchange(execute("p_dup") + SYNC)
    assert_nothing_leaked(session, customer_emails)


def test_fetch_from_a_protocol_portal_runs_a_statement_never_decided(governed, customer_emails):
    """Hole: SQL FETCH reads a protocol-level portal, whose statement is decided only at Execute."""
    session = agent_session(governed)
    session.exchange(query("BEGIN"))
    session.exchange(parse("s_fetched", PROTECTED) + bind("p_fetched", "s_fetched") + SYNC)
    session.exchange(query("FETCH ALL FROM p_fetched"))
    assert_nothing_leaked(session, customer_emails)


def test_prepare_rejected_as_duplicate_of_a_protocol_statement_is_still_recorded(
    governed, customer_emails
):
    """Hole: PREPARE of a name a Parse holds fails (42P05), yet EXECUTE is decided on its text."""
    session = agent_session(governed)
    session.exchange(parse("s_shared", PROTECTED) + SYNC)
    session.exchange(query("PREPARE s_shared AS SELECT 1"))  # 42P05: s_shared stays PROTECTED
    session.exchange(query("EXECUTE s_shared"))
    assert_nothing_leaked(session, customer_emails)


def test_a_protocol_close_of_a_sql_prepared_statement_is_not_followed(governed, customer_emails):
    """Hole: Close ('S') deallocates a PREPAREd statement; EXECUTE still decides its old text."""
    session = agent_session(governed)
    session.exchange(query("PREPARE s_closed AS SELECT 1"))
    session.exchange(close(b"S", "s_closed") + SYNC)
    session.exchange(parse("s_closed", PROTECTED) + SYNC)
    session.exchange(query("EXECUTE s_closed"))
    assert_nothing_leaked(session, customer_emails)


def test_a_prepare_the_database_skipped_is_still_recorded(governed, customer_emails):
    """Hole: PREPARE after a failing statement of the same string never runs, but is recorded."""
    session = agent_session(governed)
    session.exchange(query("SELECT 1/0; PREPARE s_skipped AS SELECT 1"))
    session.exchange(parse("s_skipped", PROTECTED) + SYNC)
    session.exchange(query("EXECUTE s_skipped"))
    assert_nothing_leaked(session, customer_emails)


def test_statement_names_longer_than_63_bytes_are_one_statement_in_the_database(
    governed, customer_emails
):
    """Hole: the database keys statements by their first 63 bytes; the gate by the whole name."""
    stem = "s" * 63
    session = agent_session(governed)
    session.exchange(
        parse(stem + "_harmless", HARMLESS)
        + close(b"S", stem + "_other")  # the database closes stem: the harmless statement
        + parse(stem + "_other", PROTECTED)  # and stores PROTECTED under stem
        + bind("", stem + "_harmless")  # the gate still sees the harmless one
        + execute("")
        + SYNC
    )
    assert_nothing_leaked(session, customer_emails)


def test_portal_names_longer_than_63_bytes_are_one_portal_in_the_database(
    governed, customer_emails
):
    """Hole: the database keys portals by their first 63 bytes; the gate by the whole name."""
    stem = "p" * 63
    session = agent_session(governed)
    session.exchange(
        parse("s_harmless", HARMLESS)
        + parse("s_protected", PROTECTED)
        + bind(stem + "_harmless", "s_harmless")
        + close(b"P", stem + "_other")
        + bind(stem + "_other", "s_protected")
        + execute(stem + "_harmless")
        + SYNC
    )
    assert_nothing_leaked(session, customer_emails)


# --- search_path -----------------------------------------------------------------------------
# The session starts with search_path crm, public. The gate resolves an unqualified name in
# every schema of its path; information_schema.* is readable by the agent, so a gate that
# believes the path is information_schema alone lets `customers` through, while the database
# still reads crm.customers.


def test_set_local_search_path_outside_a_transaction_changes_nothing_in_the_database(
    governed, customer_emails
):
    """Hole: SET LOCAL outside a transaction is a no-op (25P01 warning), but the gate follows it."""
    with psycopg_connect(governed) as connection:
        rows_of(connection, "SET LOCAL search_path TO information_schema")
        rows = rows_of(connection, PROTECTED_UNQUALIFIED)
    assert not emails_in(rows, customer_emails), rows


def test_local_set_config_of_search_path_outside_a_transaction_is_followed(
    governed, customer_emails
):
    """Hole: set_config(..., true) lasts one statement outside a transaction; the gate keeps it."""
    with psycopg_connect(governed, "analyst") as connection:
        rows_of(connection, "SELECT set_config('search_path', 'information_schema', true)")
        # Analysts see emails only as keyed pseudonyms (refused today), never raw.
        rows = rows_of(connection, PROTECTED_UNQUALIFIED)
    assert not emails_in(rows, customer_emails), rows


def test_search_path_set_skipped_after_an_error_in_its_segment_is_followed(
    governed, customer_emails
):
    """Hole: an Execute of SET the database skips (error earlier in the segment) is followed."""
    session = agent_session(governed)
    session.exchange(FAILING_BIND + run_unnamed("SET search_path TO information_schema") + SYNC)
    session.exchange(query(PROTECTED_UNQUALIFIED))
    assert_nothing_leaked(session, customer_emails)


def test_search_path_set_rolled_back_within_one_extended_segment_is_followed(
    governed, customer_emails
):
    """Hole: BEGIN, SET, ROLLBACK in one segment: the gate takes the SET as settled."""
    session = agent_session(governed)
    session.exchange(
        run_unnamed("BEGIN")
        + run_unnamed("SET search_path TO information_schema")
        + run_unnamed("ROLLBACK")
        + SYNC
    )
    session.exchange(query(PROTECTED_UNQUALIFIED))
    assert_nothing_leaked(session, customer_emails)


def test_a_query_skipped_in_a_failed_extended_segment_is_followed(governed, customer_emails):
    """Hole: a simple Query sent after an error, before Sync, is discarded; the gate follows it."""
    session = agent_session(governed)
    # One ReadyForQuery: the database discards the Query along with the rest of the segment.
    session.exchange(FAILING_BIND + query("SET search_path TO information_schema") + SYNC)
    session.exchange(query(PROTECTED_UNQUALIFIED))
    assert_nothing_leaked(session, customer_emails)


# --- lexical settings: the gate's parser must read the text as the database does -------------
# Under standard_conforming_strings = off a backslash escapes a quote, so the text below is
# one harmless string literal to a parser with the default settings, and two statements to
# the database.
HIDDEN_BEHIND_BACKSLASH = f"SELECT 'x\\''; {PROTECTED}; --'"
HIDDEN_WRITE = "SELECT 'x\\''; UPDATE crm.orders SET total_cents = 777777 WHERE id = 1; --'"


def test_standard_conforming_strings_off_by_set_hides_a_statement(governed, customer_emails):
    """Hole: after SET standard_conforming_strings = off, \\' hides a statement from the gate."""
    session = agent_session(governed)
    session.exchange(query("SET standard_conforming_strings = off"))
    session.exchange(query(HIDDEN_BEHIND_BACKSLASH))
    assert_nothing_leaked(session, customer_emails)


def test_standard_conforming_strings_off_in_startup_options_hides_a_write(governed, pg_dsn):
    """Hole: startup options=-c standard_conforming_strings=off hide an UPDATE of crm.orders."""
    with psycopg.connect(pg_dsn, autocommit=True) as superuser:
        (original,) = superuser.execute(
            "SELECT total_cents FROM crm.orders WHERE id = 1"
        ).fetchone()
        try:
            try:
                connection = psycopg_connect(governed, options="-c standard_conforming_strings=off")
            except psycopg.OperationalError:
                pass  # refusing the setting at startup is a fine fix
            else:
                with connection:
                    rows_of(connection, HIDDEN_WRITE)
            (after,) = superuser.execute(
                "SELECT total_cents FROM crm.orders WHERE id = 1"
            ).fetchone()
        finally:
            superuser.execute(
                "UPDATE crm.orders SET total_cents = %s WHERE id = 1 AND total_cents <> %s",
                [original, original],
            )
    assert after == original, "an UPDATE of crm.orders that needs approval ran unrefused"


@pytest.fixture
def strings_off_function(pg_dsn: str) -> Iterator[str]:
    """A function that turns standard_conforming_strings off for the rest of the session."""
    name = "public.custos_test_strings_off"
    with psycopg.connect(pg_dsn, autocommit=True) as superuser:
        superuser.execute(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS int LANGUAGE plpgsql AS $$"
            " BEGIN SET standard_conforming_strings = off; RETURN 1; END $$"
        )
        superuser.execute(f"GRANT EXECUTE ON FUNCTION {name}() TO PUBLIC")
        yield name
        superuser.execute(f"DROP FUNCTION {name}()")


@pytest.mark.parametrize("pipelined", [False, True], ids=["in-turn", "pipelined"])
def test_standard_conforming_strings_off_by_a_function_hides_a_statement(
    governed, customer_emails, strings_off_function, pipelined
):
    """A function whose body changes a setting does more than read: its body is not seen
    whole, so the call is refused (dynamic), and the setting stays as it was."""
    session = agent_session(governed)
    calls = query(f"SELECT {strings_off_function}()")
    if pipelined:
        answers = session.exchange(calls + query(HIDDEN_BEHIND_BACKSLASH), readies=2)
    else:
        answers = session.exchange(calls)
        answers += session.exchange(query(HIDDEN_BEHIND_BACKSLASH))
    assert [m.notice.sqlstate for m in answers if m.type == "E"][:1] == ["42501"]
    reported = [m.body for m in session.received if m.type == "S"]
    assert b"standard_conforming_strings\x00off\x00" not in reported
    assert_nothing_leaked(session, customer_emails)


def test_sjis_client_encoding_hides_a_statement_behind_a_trail_byte(governed, customer_emails):
    """Hole: in SJIS the bytes C3 81 5C are two characters with no backslash; in UTF-8, 'Á\\'."""
    session = agent_session(governed)
    session.exchange(query("SET client_encoding TO 'SJIS'"))
    # The gate reads E'Á\'; ...; --' as one literal; the database reads E'ﾃ―' and a statement.
    session.exchange(query(f"SELECT E'\u00c1\\'; {PROTECTED}; --'"))
    assert_nothing_leaked(session, customer_emails)


@pytest.mark.parametrize(
    ("encoding", "character"),
    [("BIG5", "\u0861"), ("GBK", "\u0801"), ("GB18030", "\u0801")],
)
def test_client_encoding_in_the_startup_packet_hides_a_statement(
    governed, customer_emails, encoding, character
):
    """Hole: client_encoding from the startup packet is not followed by the gate's parser."""
    session = agent_session(governed, client_encoding=encoding)
    session.exchange(query(f"SELECT E'{character}\\'; {PROTECTED}; --'"))
    assert_nothing_leaked(session, customer_emails)


# --- the gateway's own statements in the client's namespaces ----------------------------------


def test_a_refusal_leaves_the_clients_unnamed_statement_alone(governed):
    """Drift: a refusal is sent as Parse of the unnamed statement, replacing the client's own."""
    session = agent_session(governed)
    session.exchange(
        parse("", "SELECT 'mine'")
        + parse("s_refused", PROTECTED)
        + bind("p_refused", "s_refused")
        + execute("p_refused")  # refused: the unnamed statement must still be 'mine'
        + SYNC
    )
    answers = session.exchange(bind("", "") + execute("") + SYNC)
    session.drain()
    rows = [data_row_values(message) for message in answers if message.type == "D"]
    assert rows == [[b"mine"]], [message.type for message in answers]


def test_answers_stay_aligned_after_a_query_the_database_discarded(governed):
    """Drift: a discarded Query counts as a sync point; the next refusal's answers misalign."""
    session = agent_session(governed)
    session.exchange(FAILING_BIND + query("SELECT 1") + SYNC)  # one ReadyForQuery, not two
    answers = session.exchange(run_unnamed("SELECT 1") + run_unnamed(REFUSED_AT_EXECUTE) + SYNC)
    session.drain()
    kinds = [message.type for message in answers]
    # As from PostgreSQL: one ParseComplete and one BindComplete per Parse and Bind sent.
    assert kinds.count("1") == 2, kinds
    assert kinds.count("2") == 2, kinds


# --- close relatives that hold today ---------------------------------------------------------


def test_execute_of_a_statement_parsed_through_the_protocol_is_decided_on_it(
    governed, customer_emails
):
    """EXECUTE reaches a Parse'd statement (one namespace), and is decided on its SQL."""
    session = agent_session(governed)
    session.exchange(parse("s_protocol_only", REFUSED_AT_EXECUTE) + SYNC)
    answers = session.exchange(query("EXECUTE s_protocol_only"))
    refused = [m.notice for m in answers if m.type == "E"]
    assert [notice.sqlstate for notice in refused] == ["42501"], answers
    assert "agents-no-bulk-export" in refused[0].fields["H"]
    assert_nothing_leaked(session, customer_emails)


def test_a_search_path_set_in_a_rolled_back_transaction_still_counts(governed, customer_emails):
    """Holds: a SET that ROLLBACK may undo stays among the gate's candidate schemas."""
    session = agent_session(governed)
    session.exchange(query("BEGIN"))
    session.exchange(query("SET search_path TO information_schema"))
    session.exchange(query("ROLLBACK"))
    session.exchange(query(PROTECTED_UNQUALIFIED))
    assert_nothing_leaked(session, customer_emails)


def test_a_backslash_quote_with_standard_strings_stays_one_literal(governed, customer_emails):
    """Holds: with standard_conforming_strings on, gate and database both read one literal."""
    session = agent_session(governed)
    answers = session.exchange(query(HIDDEN_BEHIND_BACKSLASH))
    rows = [data_row_values(message) for message in answers if message.type == "D"]
    assert rows == [[f"x\\'; {PROTECTED}; --".encode()]], rows
    assert_nothing_leaked(session, customer_emails)
