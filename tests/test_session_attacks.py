"""Attacks on the governed session: one test per attack, holes and defences alike.

Each test plays an attacker against a governed gateway (the demo policy): a raw protocol
client, psycopg or psql. It asserts by evidence only: the customer data that came back
(emails, phones, IBANs, more than 100 customers), the rows that changed (read back by the
superuser), what the database's pg_stat_activity showed, or whether the session (and the
others) still answer. A refusal, PostgreSQL's own error, or a session ended with a clear
error all pass; protected data or an unapproved write fails.

Tests whose docstring starts with "Hole:" fail against the gateway as it is: each names the
attack, and the comments say why it works.
"""

from __future__ import annotations

import random
import re
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from compare import libpq_environment, run_program
from gateway_fixtures import GatewayProcess, client_program, psycopg_session, rows_of, start_gateway
from wire import (
    SYNC,
    ConnectionEnded,
    Message,
    WireClient,
    copy_data,
    data_row_values,
    frontend_message,
    query,
)

from custos.demo.postgres import PostgresServer

DEMO_POLICY = Path(__file__).resolve().parent.parent / "custos" / "demo" / "policy.yaml"

# Email is masked for agents (refused until masking exists); crm.customers is read in pages.
# Refused reads with no value in their text (LIMIT ALL is no bound): a Parse of one reaches
# the database and is refused at its Execute, which is what these attacks play with. (A text
# that may carry a value, a number or a quoted string, is refused at its Parse.)
PROTECTED = "SELECT email FROM crm.customers ORDER BY id LIMIT ALL"
PROTECTED_UNQUALIFIED = "SELECT email FROM customers ORDER BY id LIMIT ALL"
HARMLESS = "SELECT 'harmless'"
# A write that needs a data-protection officer's approval: refused.
WRITE = "UPDATE crm.orders SET total_cents = 777777 WHERE id = 1"
_EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@example\.(?:com|org)")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def governed(
    pg: PostgresServer, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    running = start_gateway(
        tmp_path_factory.mktemp("attacks"),
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
    emails = frozenset(row[0].encode() for row in rows)
    assert len(emails) > 100, "the demo database should hold thousands of customers"
    return emails


@pytest.fixture(scope="module")
def customer_names(pg_dsn: str) -> frozenset[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        rows = connection.execute("SELECT DISTINCT full_name FROM crm.customers").fetchall()
    return frozenset(row[0] for row in rows)


@pytest.fixture
def superuser(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def order_total(superuser: psycopg.Connection) -> Iterator[int]:
    """crm.orders row 1's total, put back after the test whatever the gateway let through."""
    (original,) = superuser.execute("SELECT total_cents FROM crm.orders WHERE id = 1").fetchone()
    yield original
    superuser.execute(
        "UPDATE crm.orders SET total_cents = %s WHERE id = 1 AND total_cents <> %s",
        [original, original],
    )


@pytest.fixture
def strings_off_function(superuser: psycopg.Connection) -> Iterator[str]:
    """A function (as a database may have) that turns standard_conforming_strings off."""
    name = "public.custos_attack_strings_off"
    superuser.execute(
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS int LANGUAGE plpgsql AS $$"
        " BEGIN PERFORM set_config('standard_conforming_strings', 'off', false);"
        " RETURN 1; END $$"
    )
    superuser.execute(f"GRANT EXECUTE ON FUNCTION {name}() TO PUBLIC")
    yield name
    superuser.execute(f"DROP FUNCTION {name}()")


# --- the protocol, spelled out ------------------------------------------------------------------


def _cstring(text: str | bytes) -> bytes:
    return (text.encode() if isinstance(text, str) else text) + b"\x00"


def parse(name: str | bytes, sql: str | bytes, types: tuple[int, ...] = ()) -> bytes:
    body = _cstring(name) + _cstring(sql) + struct.pack("!h", len(types))
    body += b"".join(struct.pack("!I", oid) for oid in types)
    return frontend_message(b"P", body)


def bind(portal: str | bytes, statement: str | bytes) -> bytes:
    body = _cstring(portal) + _cstring(statement) + struct.pack("!hhh", 0, 0, 0)
    return frontend_message(b"B", body)


def execute(portal: str | bytes = "", max_rows: int = 0) -> bytes:
    return frontend_message(b"E", _cstring(portal) + struct.pack("!i", max_rows))


def close(kind: bytes, name: str | bytes) -> bytes:
    return frontend_message(b"C", kind + _cstring(name))


def run_unnamed(sql: str | bytes) -> bytes:
    return parse("", sql) + bind("", "") + execute("")


def function_call(oid: int, *arguments: bytes) -> bytes:
    body = struct.pack("!Ihh", oid, 1, 0) + struct.pack("!h", len(arguments))
    body += b"".join(struct.pack("!i", len(argument)) + argument for argument in arguments)
    return frontend_message(b"F", body + struct.pack("!h", 0))


FLUSH = frontend_message(b"H")
COPY_DONE = frontend_message(b"c")
FAILING_BIND = bind("", "custos_no_such_statement")  # 26000: the database skips to Sync


class Raw:
    """A raw session that keeps every message it receives, and notices when it ends."""

    def __init__(self, client: WireClient) -> None:
        self.client = client
        self.received: list[Message] = []
        self.ended = False
        self.timed_out = False

    def exchange(self, data: bytes, readies: int = 1, timeout: float = 5.0) -> list[Message]:
        got: list[Message] = []
        if self.ended:
            return got
        self.client.sock.settimeout(timeout)
        try:
            self.client.send(data)
            while readies:
                message = self.client.read_message()
                got.append(message)
                if message.type == "Z":
                    readies -= 1
        except TimeoutError:
            self.timed_out = True
        except (ConnectionEnded, ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            self.ended = True
        self.received.extend(got)
        return got

    def rows(self, messages: list[Message] | None = None) -> list[list[bytes | None]]:
        return [data_row_values(m) for m in (messages or self.received) if m.type == "D"]

    def alive(self) -> bool:
        """Whether the session still answers a query (after whatever came before)."""
        if self.ended or self.timed_out:
            return False
        answers = self.exchange(SYNC + query("ROLLBACK") + query("SELECT 'alive'"), readies=3)
        return [data_row_values(m) for m in answers if m.type == "D"][-1:] == [[b"alive"]]

    def close(self) -> None:
        self.client.close()


def login(governed: GatewayProcess, role: str = "agent", **startup: str) -> Raw:
    subject = "agent-attack" if role == "agent" else f"{role}-attack"
    groups = {"analyst": ["analysts"], "dba": ["dba"]}.get(role, [])
    client = WireClient.connect(governed.port, timeout=5.0)
    client.login(
        governed.tls.ca_cert,
        role,
        governed.token(role, subject, groups=groups),
        governed.database,
        **startup,
    )
    return Raw(client)


def emails_in(messages: list[Message], emails: frozenset[bytes]) -> set[bytes]:
    """Customer emails found anywhere in the values of the DataRows received."""
    found: set[bytes] = set()
    for message in messages:
        if message.type != "D":
            continue
        for value in data_row_values(message):
            if value is not None:
                found.update(match for match in _EMAIL.findall(value) if match in emails)
    return found


def psycopg_connect(
    governed: GatewayProcess, role: str = "agent", **params: str
) -> psycopg.Connection:
    return psycopg_session(governed, role, f"{role}-attack", **params)


def assert_no_email_in_clear(
    connection: psycopg.Connection, sql: str, emails: frozenset[bytes]
) -> list[tuple]:
    """The statement ran with its emails masked, or was refused by policy: either way no
    customer email comes back in clear. Its rows, if it ran."""
    try:
        rows = connection.execute(sql).fetchall()
    except psycopg.Error as error:
        refusal = error.sqlstate
        rows = []
    else:
        refusal = "42501"
    assert refusal == "42501", f"{sql}: {refusal}"
    assert not emails_in_rows(rows, emails), sql
    return rows


def emails_in_rows(rows: list[tuple], emails: frozenset[bytes]) -> set[bytes]:
    return {
        match
        for row in rows
        for value in row
        if isinstance(value, str)
        for match in _EMAIL.findall(value.encode())
        if match in emails
    }


def states(messages: list[Message]) -> list[str]:
    """The SQLSTATEs of the errors received, in order."""
    return [m.notice.sqlstate for m in messages if m.type == "E"]


def backend_pid(session: Raw) -> int:
    answers = session.exchange(query("SELECT pg_backend_pid()"))
    return int(session.rows(answers)[0][0] or 0)


# === holes: names the gateway keys differently from the database ================================


def test_client_encoding_switch_pipelined_before_a_non_ascii_statement_name(
    governed, customer_emails
):
    """Hole: a name sent right after SET client_encoding is keyed in the old encoding."""
    session = login(governed)
    session.exchange(parse("\u00e9", HARMLESS) + SYNC)  # "é" in UTF-8: c3 a9
    # Pipelined: the gateway reads b"\xe9" under UTF8 (invalid, kept as sent), while the
    # database reads it under LATIN1 as "é": it closes the harmless statement and parses
    # PROTECTED under "é". The gateway records PROTECTED under b"\xe9" instead.
    session.exchange(
        query("SET client_encoding TO 'LATIN1'")
        + close(b"S", b"\xe9")
        + parse(b"\xe9", PROTECTED)
        + SYNC,
        readies=2,
    )
    # Now both read LATIN1: b"\xe9" is "é" to both, the harmless statement to the gateway.
    answers = session.exchange(bind("", b"\xe9") + execute() + SYNC)
    session.close()
    assert not emails_in(answers, customer_emails)


@pytest.mark.parametrize(
    ("encoding", "first", "second"),
    [
        ("SJIS", b"\x87\x90", b"\x81\xe0"),  # both U+2252 to the database (CP932 duplicates)
        ("BIG5", b"\xa1\x5a", b"\xa1\xc3"),  # both U+FFFD to the database
        ("EUC_JP", b"\xa2\xc0", b"\xad\xfc"),  # both U+222A to it; two characters to Python
    ],
)
def test_names_the_database_converts_to_one_character_are_one_statement(
    governed, customer_emails, encoding, first, second
):
    """Hole: two byte strings one character in the database's conversion, two in the gateway's."""
    session = login(governed, client_encoding=encoding)
    # The gateway keys SJIS and BIG5 names by their raw bytes, EUC_JP by Python's codec; the
    # database converts both spellings to one name, so the Close and Parse replace the
    # harmless statement, while the gateway still binds `first` to it.
    answers = session.exchange(
        parse(first, HARMLESS)
        + close(b"S", second)
        + parse(second, PROTECTED)
        + bind("", first)
        + execute()
        + SYNC
    )
    session.close()
    assert not emails_in(answers, customer_emails)


# === holes: what the gateway confirms ==========================================================


def test_execute_of_an_empty_prepared_statement_misattributes_a_failed_prepare(
    governed, customer_emails
):
    """Hole: EXECUTE of an empty statement shifts effects: a PREPARE that failed is recorded."""
    session = login(governed)
    session.exchange(parse("s_empty", "") + parse("s_kept", PROTECTED) + SYNC)
    # The gateway resolves EXECUTE s_empty to no statement at all, so the database's
    # CommandComplete for it confirms the next statement's effect: PREPARE s_kept, which the
    # database then refuses (42P05). The gateway now holds s_kept as the harmless statement.
    session.exchange(query("EXECUTE s_empty; PREPARE s_kept AS SELECT 'harmless'"))
    answers = session.exchange(query("EXECUTE s_kept"))
    session.close()
    assert not emails_in(answers, customer_emails)


# === holes: portals read without an Execute or FETCH ===========================================


def test_cursor_to_xml_reads_a_protocol_portal_that_was_never_decided(governed, customer_emails):
    """Hole: cursor_to_xml() fetches from a Bound portal; only Execute and FETCH are decided."""
    session = login(governed)
    answers = session.exchange(
        parse("s_xml", PROTECTED)
        + bind("p_xml", "s_xml")  # Bind is not decided: the portal exists, undecided
        + run_unnamed("SELECT cursor_to_xml('p_xml', 100, false, false, '')")
        + SYNC
    )
    session.close()
    assert not emails_in(answers, customer_emails)


def test_cursor_to_xml_runs_a_bound_update_that_needs_approval(governed, superuser, order_total):
    """Hole: cursor_to_xml() on a Bound UPDATE ... RETURNING runs the write unapproved."""
    session = login(governed)
    session.exchange(
        parse("s_write", f"{WRITE} RETURNING id")
        + bind("p_write", "s_write")
        + run_unnamed("SELECT cursor_to_xml('p_write', 10, false, false, '')")
        + SYNC
    )
    session.close()
    (after,) = superuser.execute("SELECT total_cents FROM crm.orders WHERE id = 1").fetchone()
    assert after == order_total, "an UPDATE of crm.orders that needs approval ran"


# === holes: refusals seen by the database ======================================================


def test_a_refused_statements_text_reaches_pg_stat_activity_through_its_parse(governed, superuser):
    """Hole: Parse went up undecided, so a refused statement's values showed in
    pg_stat_activity. A text policy refuses whatever the Bind values is refused at Parse."""
    secret = "custos.attack.secret.4711@example.org"
    session = login(governed)
    pid = backend_pid(session)
    shown: list[str] = []
    parsed = session.exchange(
        parse("s_secret", f"SELECT email FROM crm.customers WHERE email = '{secret}'") + SYNC
    )
    shown += [
        row[0] or ""
        for row in superuser.execute(
            "SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchall()
    ]
    answers = session.exchange(bind("", "s_secret") + execute() + SYNC)
    shown += [
        row[0] or ""
        for row in superuser.execute(
            "SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchall()
    ]
    session.close()
    # Refused at its Parse; the Bind then names a statement that was never made.
    assert [m.notice.sqlstate for m in parsed if m.type == "E"] == ["42501"]
    assert [m.notice.sqlstate for m in answers if m.type == "E"] == ["26000"]
    assert not [text for text in shown if secret in text], shown


def test_the_refusal_statement_shows_in_pg_prepared_statements_to_a_pipelined_query(governed):
    """Hole: the refusal block's prepared statement is visible to the client's next segment."""
    session = login(governed)
    answers = session.exchange(
        run_unnamed(PROTECTED) + SYNC + query("SELECT name FROM pg_prepared_statements"),
        readies=2,
    )
    session.close()
    names = [row[0] for row in session.rows(answers)]
    assert names == [], f"the client sees the gateway's own prepared statements: {names}"


# === holes: how the server reads text ==========================================================


def test_standard_conforming_strings_off_by_a_function_in_the_same_extended_segment(
    governed, customer_emails, strings_off_function
):
    """Hole: a function turning standard_conforming_strings off hides a column in its segment."""
    # One statement, two readings: with standard strings the second line is part of one
    # string literal; with them off, \' escapes the quote and `email` is a column.
    hidden = "SELECT 'a\\'\n' , email FROM crm.customers ORDER BY id LIMIT 3 --'"
    session = login(governed)
    answers = session.exchange(
        run_unnamed(f"SELECT {strings_off_function}()") + run_unnamed(hidden) + SYNC
    )
    session.close()
    assert not emails_in(answers, customer_emails)


# === holes: what the policy lets agents read ===================================================


def test_pg_stats_shows_customer_emails(governed, customer_emails):
    """Hole: pg_catalog.pg_stats, readable as a catalog, holds a histogram of customers' emails."""
    with psycopg_connect(governed) as connection:
        rows = rows_of(
            connection,
            "SELECT histogram_bounds::text FROM pg_stats"
            " WHERE schemaname = 'crm' AND tablename = 'customers' AND attname = 'email'",
        )
    assert not emails_in_rows(rows, customer_emails)


def test_pg_stat_get_activity_shows_another_sessions_customer_email(governed, customer_emails):
    """Hole: pg_stat_get_activity() shows what pg_stat_activity (denied) would show."""
    email = sorted(customer_emails)[0].decode()
    with psycopg_connect(governed, "dba") as dba, psycopg_connect(governed) as agent:
        rows_of(dba, f"SELECT id FROM crm.customers WHERE email = '{email}'")
        rows = rows_of(agent, "SELECT query FROM pg_stat_get_activity(NULL)")
    assert not emails_in_rows(rows, customer_emails)


def test_an_aggregate_returns_every_customer_in_one_row_under_limit_1(governed, customer_names):
    """Hole: string_agg(...) LIMIT 1 returns all customers in one row: a page limit of rows only."""
    with psycopg_connect(governed) as connection:
        rows = rows_of(connection, "SELECT string_agg(full_name, '|') FROM crm.customers LIMIT 1")
    names = {name for row in rows for name in (row[0] or "").split("|") if name in customer_names}
    assert len(names) <= 100, f"{len(names)} customers' names in one page"


# === holes: hanging sessions and the gateway ====================================================


def test_a_blocked_message_after_a_skipped_query_deadlocks_the_session(governed):
    """Hole: error, Query, then a message that waits for answers: the gateway holds the Sync."""
    session = login(governed)
    # The database skips the Query after the error (no ReadyForQuery for it) and answers only
    # at the Sync. The Execute of the unnamed portal waits for the Query's segment to be
    # answered, and the Sync waits behind it: neither side moves.
    answers = session.exchange(FAILING_BIND + query("SELECT 1") + execute() + SYNC, timeout=1.5)
    ready = [m for m in answers if m.type == "Z"]
    alive = session.alive()
    session.close()
    assert ready, "the session hangs: no ReadyForQuery came for the Sync"
    assert alive


def test_a_long_search_path_stalls_every_other_session(governed):
    """Hole: each statement is analysed once per schema on the path: 2000 stall the gateway."""
    attacker = login(governed)
    bystander = login(governed)
    attacker.exchange(query("SET search_path TO " + ",".join(f"s{i}" for i in range(2000))))
    statements = ";".join(f"SELECT {random.randint(1, 1 << 30)}" for _ in range(10))
    attacker.client.send(query(statements))  # its answers are read below
    time.sleep(0.05)
    started = time.monotonic()
    answers = bystander.exchange(query("SELECT 'bystander'"), timeout=5.0)
    waited = time.monotonic() - started
    attacker.client.sock.settimeout(10.0)
    attacker.client.read_until("Z")
    attacker.close()
    bystander.close()
    assert bystander.rows(answers) == [[b"bystander"]]
    assert waited < 0.3, f"another session's SELECT waited {waited:.2f} s for the attacker's"


# === defences: names ===========================================================================


def test_sql_names_cut_at_63_bytes_mid_character_resolve_like_the_database(
    governed, customer_emails
):
    """Defence: a SQL name of 62 ASCII bytes and a 2-byte character is cut to 62 bytes."""
    long_name = "a" * 62 + "\u00e9"
    session = login(governed)
    session.exchange(query(f'PREPARE "{long_name}" AS {HARMLESS}'))
    session.exchange(close(b"S", "a" * 62) + parse("a" * 62, PROTECTED) + SYNC)
    answers = session.exchange(query(f'EXECUTE "{long_name}"'))
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)
    assert states(answers) == ["42501"]


def test_portal_names_cut_at_63_bytes_mid_character_resolve_like_the_database(
    governed, customer_emails
):
    """Defence: a cursor with a long multibyte name is the protocol portal PG cuts it to."""
    long_name = "c" * 62 + "\u00e9"
    session = login(governed)
    session.exchange(query("BEGIN"))
    session.exchange(query(f'DECLARE "{long_name}" CURSOR FOR {HARMLESS}'))
    session.exchange(
        parse("s_cursor", PROTECTED) + close(b"P", "c" * 62) + bind("c" * 62, "s_cursor") + SYNC
    )
    answers = session.exchange(query(f'FETCH ALL FROM "{long_name}"'))
    answers += session.exchange(execute("c" * 62) + SYNC)
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)


def test_names_touched_by_earlier_unanswered_segments_wait_for_their_answers(
    governed, customer_emails
):
    """Defence: Bind of a name a pipelined, failing segment touched waits and sees what ran."""
    session = login(governed)
    answers = session.exchange(
        parse("s_wait", HARMLESS)
        + SYNC
        + close(b"S", "s_wait")
        + parse("s_wait", PROTECTED)  # this segment runs: s_wait is PROTECTED now
        + SYNC
        + bind("", "s_wait")
        + execute()
        + SYNC
        + FAILING_BIND
        + close(b"S", "s_wait")  # skipped: s_wait stays PROTECTED
        + parse("s_wait", HARMLESS)
        + SYNC
        + bind("p_wait", "s_wait")
        + execute("p_wait")
        + SYNC,
        readies=5,
    )
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)
    assert [m.notice.sqlstate for m in answers if m.type == "E"] == ["42501", "26000", "42501"]


def test_unnamed_statement_and_portal_reused_across_syncs_are_decided_each_time(
    governed, customer_emails
):
    """Defence: the unnamed statement and portal, reused across Syncs in a transaction."""
    session = login(governed)
    answers = session.exchange(query("BEGIN"))
    answers += session.exchange(parse("", PROTECTED) + bind("", "") + SYNC)
    answers += session.exchange(execute() + SYNC)  # the portal bound in the last segment
    answers += session.exchange(query("ROLLBACK"))
    answers += session.exchange(parse("", PROTECTED) + SYNC)
    answers += session.exchange(bind("", "") + execute() + SYNC)
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)


def test_the_unnamed_portal_after_a_refusal_in_a_savepoint(governed, customer_emails):
    """Defence: a refusal replaces the unnamed portal; ROLLBACK TO and its reuse leak nothing."""
    session = login(governed)
    answers = session.exchange(query("BEGIN"))
    answers += session.exchange(parse("", PROTECTED) + bind("", "") + SYNC)
    answers += session.exchange(query("SAVEPOINT before_refusal"))
    answers += session.exchange(
        parse("s_other", PROTECTED) + bind("p_other", "s_other") + execute("p_other") + SYNC
    )  # refused: the refusal block binds the unnamed portal
    answers += session.exchange(query("ROLLBACK TO SAVEPOINT before_refusal"))
    answers += session.exchange(execute() + SYNC)
    answers += session.exchange(bind("", "") + execute() + SYNC)
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)


# === defences: multi-statement strings, cursors ================================================


def test_multi_statement_strings_mixing_prepare_execute_deallocate(governed, customer_emails):
    """Defence: PREPARE, EXECUTE, DEALLOCATE in one string, against a protocol statement."""
    session = login(governed)
    answers = session.exchange(parse("s_mix", PROTECTED) + SYNC)
    # PREPARE fails (42P05): the rest of the string never runs, s_mix stays PROTECTED.
    answers += session.exchange(query("PREPARE s_mix AS SELECT 'harmless'; EXECUTE s_mix"))
    answers += session.exchange(query("EXECUTE s_mix"))
    answers += session.exchange(
        query("DEALLOCATE s_mix; PREPARE s_mix AS SELECT 'x'; EXECUTE s_mix")
    )
    answers += session.exchange(query("DEALLOCATE ALL; EXECUTE s_mix"))
    answers += session.exchange(bind("", "s_mix") + execute() + SYNC)
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)
    assert [b"x"] in session.rows(answers)


def test_multi_statement_strings_mixing_declare_fetch_close(governed, customer_emails):
    """Defence: DECLARE, FETCH and CLOSE in one string, against a protocol portal of that name."""
    session = login(governed)
    answers = session.exchange(query("BEGIN"))
    answers += session.exchange(parse("s_cur", PROTECTED) + bind("c_mix", "s_cur") + SYNC)
    answers += session.exchange(
        query("CLOSE c_mix; DECLARE c_mix CURSOR FOR SELECT 'x'; FETCH ALL c_mix")
    )
    answers += session.exchange(query("CLOSE ALL; FETCH ALL c_mix"))  # 34000: aborts
    answers += session.exchange(query("ROLLBACK"))
    answers += session.exchange(query("BEGIN"))
    answers += session.exchange(bind("c_mix", "s_cur") + SYNC)
    answers += session.exchange(query("MOVE ALL IN c_mix; FETCH BACKWARD 1 FROM c_mix"))
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)
    assert [b"x"] in session.rows(answers)


@pytest.mark.parametrize("end", ["COMMIT", "ROLLBACK"])
def test_with_hold_cursor_across_the_end_of_its_transaction(governed, customer_emails, end):
    """Defence: a WITH HOLD cursor after COMMIT or ROLLBACK, its name then bound to PROTECTED."""
    session = login(governed)
    answers = session.exchange(query("BEGIN"))
    answers += session.exchange(query(f"DECLARE c_hold CURSOR WITH HOLD FOR {HARMLESS}"))
    answers += session.exchange(query(end))  # ROLLBACK drops it in the database
    answers += session.exchange(query("BEGIN"))
    answers += session.exchange(query("CLOSE c_hold"))  # may fail: then ROLLBACK below
    answers += session.exchange(query("ROLLBACK"))
    answers += session.exchange(query("BEGIN"))
    answers += session.exchange(parse("s_hold", PROTECTED) + bind("c_hold", "s_hold") + SYNC)
    answers += session.exchange(query("FETCH ALL FROM c_hold"))
    answers += session.exchange(query("ROLLBACK"))
    answers += session.exchange(execute("c_hold") + SYNC)
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)


# === defences: search path =====================================================================


def _path_without_crm(session: Raw) -> None:
    session.exchange(query("SET search_path TO information_schema"))


def test_set_local_search_path_inside_a_transaction(governed, customer_emails):
    """Defence: SET LOCAL back to crm inside a transaction, read before and after COMMIT."""
    session = login(governed)
    _path_without_crm(session)
    answers = session.exchange(query("BEGIN"))
    answers += session.exchange(query("SET LOCAL search_path TO crm"))
    answers += session.exchange(query(PROTECTED_UNQUALIFIED))
    answers += session.exchange(query("COMMIT"))
    answers += session.exchange(query(PROTECTED_UNQUALIFIED))
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)


def test_rollback_to_savepoint_with_set_search_path(governed, customer_emails):
    """Defence: SET to crm, SAVEPOINT, SET away, ROLLBACK TO, COMMIT: crm is the path again."""
    session = login(governed)
    _path_without_crm(session)
    answers = session.exchange(
        query("BEGIN")
        + query("SET search_path TO crm")
        + query("SAVEPOINT a")
        + query("SET search_path TO information_schema")
        + query("ROLLBACK TO SAVEPOINT a")
        + query("COMMIT")
        + query(PROTECTED_UNQUALIFIED),
        readies=7,
    )
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)
    assert states(answers) == ["42501"]


def test_search_path_set_and_rolled_back_within_one_query_string(governed, customer_emails):
    """Defence: a string that COMMITs a SET to crm and then fails keeps crm in the database."""
    session = login(governed)
    _path_without_crm(session)
    answers = session.exchange(query("SET search_path TO crm; COMMIT; SELECT 1/0"))
    answers += session.exchange(query(PROTECTED_UNQUALIFIED))
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)
    assert states(answers) == ["22012", "42501"]


def test_local_set_config_by_an_analyst_inside_a_transaction(governed, customer_emails):
    """Defence: an analyst's set_config(search_path, crm, true) in a transaction, then a read."""
    session = login(governed, "analyst")
    _path_without_crm(session)
    answers = session.exchange(query("BEGIN"))
    answers += session.exchange(query("SELECT set_config('search_path', 'crm', true)"))
    answers += session.exchange(query(PROTECTED_UNQUALIFIED))
    answers += session.exchange(query("COMMIT"))
    answers += session.exchange(
        run_unnamed("SELECT set_config('search_path', 'crm', true)")
        + run_unnamed(PROTECTED_UNQUALIFIED)
        + SYNC
    )
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)


@pytest.mark.parametrize("statement", ["RESET ALL", "DISCARD ALL", "RESET search_path"])
def test_reset_all_and_discard_all(governed, customer_emails, statement):
    """Defence: RESET ALL and DISCARD ALL are refused; RESET search_path is followed."""
    session = login(governed)
    answers = session.exchange(parse("s_reset", PROTECTED) + SYNC)
    _path_without_crm(session)
    answers += session.exchange(query(statement))
    answers += session.exchange(query(PROTECTED_UNQUALIFIED))
    answers += session.exchange(query("PREPARE s_reset AS SELECT 'x'"))
    answers += session.exchange(query("EXECUTE s_reset"))
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)


def test_function_call_of_set_config_is_refused(governed, customer_emails, superuser):
    """Defence: a fast-path FunctionCall of set_config(search_path) cannot move the path unseen."""
    (oid,) = superuser.execute(
        "SELECT 'pg_catalog.set_config(text,text,boolean)'::regprocedure::oid"
    ).fetchone()
    session = login(governed)
    _path_without_crm(session)
    answers = session.exchange(function_call(oid, b"search_path", b"crm", b"false"))
    answers += session.exchange(query(PROTECTED_UNQUALIFIED))
    # In a failed segment the database ignores the FunctionCall; so does the gateway.
    answers += session.exchange(FAILING_BIND + function_call(oid, b"x", b"y", b"false") + SYNC)
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)
    assert states(answers)[0] == "42501"


# === defences: lexical settings ================================================================

# Hidden behind a trail byte: C3 81 5C is "Á\" in UTF-8; in SJIS, C3 is a character and
# 81 5C another, so the quote after them closes the literal and PROTECTED runs.
HIDDEN_BEHIND_A_TRAIL_BYTE = {
    "SJIS": f"SELECT E'\u00c1\\'; {PROTECTED}; --'",
    "BIG5": f"SELECT E'\u0861\\'; {PROTECTED}; --'",
    "GBK": f"SELECT E'\u0801\\'; {PROTECTED}; --'",
}
HIDDEN_BEHIND_A_BACKSLASH = f"SELECT 'x\\''; {PROTECTED}; --'"


@pytest.mark.parametrize("encoding", sorted(HIDDEN_BEHIND_A_TRAIL_BYTE))
def test_set_client_encoding_pipelined_before_non_ascii_text(governed, customer_emails, encoding):
    """Defence: SET client_encoding to SJIS/BIG5/GBK pipelined with text hiding a statement."""
    session = login(governed)
    hidden = HIDDEN_BEHIND_A_TRAIL_BYTE[encoding].encode()
    answers = session.exchange(
        query(f"SET client_encoding TO '{encoding}'")
        + frontend_message(b"Q", hidden + b"\x00")
        + run_unnamed(f"SET client_encoding TO '{encoding}'")
        + parse("", hidden.split(b";")[0])  # same segment as the SET: refused
        + bind("", "")
        + execute()
        + SYNC,
        readies=3,
    )
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)
    assert states(answers) == ["0A000", "0A000"]


def test_standard_conforming_strings_off_pipelined_by_set_and_set_config(governed, customer_emails):
    """Defence: strings off by SET or set_config, pipelined with backslash text."""
    found: set[bytes] = set()
    for role, switch in [
        ("agent", "SET standard_conforming_strings = off"),
        ("analyst", "SELECT set_config('standard_conforming_strings', 'off', false)"),
    ]:
        session = login(governed, role)
        hidden = "SELECT 'a\\'\n' , email FROM crm.customers ORDER BY id LIMIT 3 --'"
        answers = session.exchange(query(switch) + query(HIDDEN_BEHIND_A_BACKSLASH), readies=2)
        answers += session.exchange(query("SET standard_conforming_strings = on"))
        answers += session.exchange(run_unnamed(switch) + run_unnamed(hidden) + SYNC)
        assert session.alive()
        session.close()
        found |= emails_in(answers, customer_emails)
        assert states(answers) == ["0A000", "0A000"], role
    assert not found


def test_standard_conforming_strings_off_in_startup_options_pipelined(governed, customer_emails):
    """Defence: strings off from the startup packet, text pipelined at once after login."""
    session = login(governed, options="-c standard_conforming_strings=off")
    hidden = "SELECT 'a\\'\n' , email FROM crm.customers ORDER BY id LIMIT 3 --'"
    answers = session.exchange(
        query(HIDDEN_BEHIND_A_BACKSLASH) + run_unnamed(hidden) + SYNC, readies=2
    )
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)
    assert states(answers) == ["0A000", "0A000"]


def test_psql_switching_to_sjis_mid_script(governed, customer_emails, tmp_path):
    """Defence: psql sets client_encoding SJIS, then runs a line hiding a statement."""
    script = "SET client_encoding TO 'SJIS';\n" + HIDDEN_BEHIND_A_TRAIL_BYTE["SJIS"] + "\n"
    result = run_program(
        client_program("psql"),
        ["-X", "-A", "-t", "-v", "ON_ERROR_STOP=0"],
        libpq_environment(governed, "gateway"),
        input_text=script,
        cwd=str(tmp_path),
        timeout=20,
    )
    found = {m for m in _EMAIL.findall(result.stdout.encode()) if m in customer_emails}
    assert not found, result.stdout
    assert "client_encoding SJIS" in result.stderr, result.stderr


# === defences: COPY, FunctionCall, Flush, cancel, disconnect ===================================


def test_copy_from_stdin_pipelined_with_its_data(governed, superuser):
    """Defence: COPY crm.orders FROM STDIN pipelined with a row and CopyDone adds nothing."""
    row = b"990001\t1\t2024-01-01 00:00:00+00\t100\tGBP\tpaid\n"
    session = login(governed)
    try:
        session.exchange(
            query("COPY crm.orders FROM STDIN")
            + copy_data(row)
            + COPY_DONE
            + run_unnamed("COPY crm.orders FROM STDIN")
            + SYNC  # ignored by the database during a COPY, if one had begun
            + copy_data(row)
            + COPY_DONE
            + SYNC,
            readies=3,
        )
        assert session.alive()
        session.close()
        (count,) = superuser.execute("SELECT count(*) FROM crm.orders WHERE id = 990001").fetchone()
    finally:
        superuser.execute("DELETE FROM crm.orders WHERE id = 990001")
    assert count == 0, "COPY FROM STDIN into crm.orders, which needs approval, added a row"


def test_copy_out_of_customer_data(governed, customer_emails):
    """Defence: COPY (SELECT email ...) TO STDOUT and COPY crm.customers TO STDOUT are refused."""
    session = login(governed)
    answers = session.exchange(query(f"COPY ({PROTECTED}) TO STDOUT"))
    answers += session.exchange(query("COPY crm.customers (email) TO STDOUT"))
    answers += session.exchange(run_unnamed(f"COPY ({PROTECTED}) TO STDOUT") + SYNC)
    assert session.alive()
    session.close()
    copied = [m.body for m in answers if m.type == "d"]
    assert not [line for line in copied for email in customer_emails if email in line]


def test_dba_extended_copy_with_sync_before_copy_fail_keeps_answers_aligned(governed, superuser):
    """Defence: extended COPY FROM STDIN, a Sync before CopyFail, then a pipelined query."""
    session = login(governed, "dba")
    answers = session.exchange(
        run_unnamed("COPY crm.products (id, name, price_cents) FROM STDIN")
        + SYNC  # the database ignores a Sync during COPY
        + copy_data(b"990001\tcustos attack\t100\n")
        + frontend_message(b"f", b"attack abandoned\x00")
        + SYNC
        + query("SELECT 'after copy'"),
        readies=2,
    )
    alive = session.alive()
    session.close()
    (count,) = superuser.execute("SELECT count(*) FROM crm.products WHERE id = 990001").fetchone()
    superuser.execute("DELETE FROM crm.products WHERE id = 990001")
    assert "G" in [m.type for m in answers], "the COPY did not begin"
    assert session.rows(answers) == [[b"after copy"]]
    assert alive
    assert count == 0


def test_a_refusal_answered_before_sync_on_flush(governed, customer_emails):
    """Defence: refused Execute, then Flush: the refusal comes before Sync; the session goes on."""
    session = login(governed)
    session.client.send(
        parse("s_flush", PROTECTED) + bind("p_flush", "s_flush") + execute("p_flush") + FLUSH
    )
    session.client.sock.settimeout(2.0)
    before_sync = [session.client.read_message() for _ in range(3)]
    answers = session.exchange(SYNC)
    assert [m.type for m in before_sync] == ["1", "2", "E"]
    assert before_sync[2].notice.sqlstate == "42501"
    assert [m.type for m in answers] == ["Z"]
    assert session.alive()
    session.close()


def test_a_refusal_pipelined_behind_streaming_rows_keeps_the_stream_whole(governed):
    """Defence: a refusal's error after 2000 streamed rows keeps the stream whole."""
    session = login(governed)
    answers = session.exchange(
        query("SELECT id, status FROM crm.orders ORDER BY id LIMIT 2000")
        + run_unnamed(PROTECTED)
        + execute()
        + SYNC
        + query("SELECT 'after'"),
        readies=3,
    )
    kinds = [m.type for m in answers]
    assert kinds.count("D") == 2001
    assert [m.notice.sqlstate for m in answers if m.type == "E"] == ["42501"]
    assert session.rows(answers)[-1] == [b"after"]
    assert session.alive()
    session.close()


def test_cancel_while_a_refusal_waits(governed, customer_emails):
    """Defence: a CancelRequest racing a refused SELECT * (its hint may wait) returns no data."""
    session = login(governed)
    key = session.client.backend_key
    assert key is not None
    session.client.send(query("SELECT * FROM crm.customers ORDER BY id") + query(PROTECTED))
    with WireClient.connect(governed.port) as canceller:
        canceller.cancel(*key)
    answers = session.exchange(b"", readies=2)
    assert session.alive()
    session.close()
    assert not emails_in(answers, customer_emails)


def test_disconnect_right_after_a_pipelined_write(governed, superuser, order_total):
    """Defence: a refused UPDATE pipelined and the connection reset at once changes nothing."""
    session = login(governed)
    session.client.send(query(WRITE) + run_unnamed(WRITE) + SYNC)
    session.client.abort()
    time.sleep(0.2)
    (after,) = superuser.execute("SELECT total_cents FROM crm.orders WHERE id = 1").fetchone()
    assert after == order_total
    with psycopg_connect(governed) as healthy:
        assert rows_of(healthy, "SELECT 'healthy'") == [("healthy",)]


def test_refused_query_values_stay_out_of_pg_stat_activity(governed, superuser):
    """Defence: a refused simple Query reaches the database only as the constant DO block."""
    secret = "custos.attack.query.0815@example.org"
    session = login(governed)
    pid = backend_pid(session)
    answers = session.exchange(query(f"SELECT email FROM crm.customers WHERE email = '{secret}'"))
    (shown,) = superuser.execute(
        "SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]
    ).fetchone()
    session.close()
    assert [m.notice.sqlstate for m in answers if m.type == "E"] == ["42501"]
    assert secret not in (shown or "")


def test_other_sessions_are_served_while_one_waits_on_the_database(governed):
    """Defence: a session waiting on the database does not hold up the others."""
    stalled = login(governed)
    stalled.client.send(
        parse("s_stall", "SELECT pg_sleep(0.5)") + bind("", "s_stall") + execute() + SYNC
    )
    results: list[list[list[bytes | None]]] = []

    def other() -> None:
        session = login(governed)
        results.append(session.rows(session.exchange(query("SELECT 'other'"), timeout=2.0)))
        session.close()

    threads = [threading.Thread(target=other) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(3.0)
    stalled.exchange(b"", timeout=2.0)
    stalled.close()
    assert results == [[[b"other"]]] * 3
