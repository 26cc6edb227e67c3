"""Masking attack round 12b, closed: a WITH HOLD cursor's query runs at COMMIT, where its
errors quoted values (masked hold cursors are now refused); and the protocol side that
held (DataRow rewriting, errors and notices, COPY TO STDOUT, JSON). Each test asserts the
safe behaviour, by what the client receives: a failure is a leak."""

from __future__ import annotations

# ruff: noqa: F811, E501 - fixtures redefined as arguments; the attacks' SQL kept as sent
import struct
import subprocess

import pytest
from compare import libpq_environment
from gateway_fixtures import client_program
from test_masking_attacks_round8 import blob, raw_session
from test_masking_copy_gateway import found_in
from test_masking_gateway import leaked, personal  # noqa: F401
from test_session_attacks import (  # noqa: F401
    SYNC,
    bind,
    execute,
    governed,
    login,
    parse,
    superuser,
)
from wire import frontend_message, query

C = "SELECT id, email, phone, iban, full_name FROM crm.customers ORDER BY id LIMIT 5"


def describe(kind: bytes, name: str) -> bytes:
    return frontend_message(b"D", kind + name.encode() + b"\x00")


def bind_formats(portal: str, statement: str, formats: tuple[int, ...]) -> bytes:
    body = portal.encode() + b"\x00" + statement.encode() + b"\x00" + struct.pack("!hh", 0, 0)
    body += struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    return frontend_message(b"B", body)


# === finding 1: a WITH HOLD cursor is run to its end by the COMMIT (or Sync) ===============
# DECLARE ... WITH HOLD runs nothing; the transaction's commit materialises the cursor, and
# an error its query raises then is the COMMIT's (or the Sync's), which has no rewriter: its
# message quotes the raw value. In autocommit over the extended protocol, Sync commits.
HOLD = "DECLARE c CURSOR WITH HOLD FOR SELECT {column}::int FROM crm.customers ORDER BY id LIMIT 5"
HOLD_SENDS = {
    "commit": lambda sql: [query("BEGIN"), query(sql), query("COMMIT")],
    "end": lambda sql: [query("BEGIN"), query(sql), query("END")],
    "extended-sync": lambda sql: [parse("", sql) + bind("", "") + execute("") + SYNC],
    "extended-commit": lambda sql: [
        query("BEGIN"),
        parse("", sql) + bind("", "") + execute("") + SYNC,
        parse("", "COMMIT") + bind("", "") + execute("") + SYNC,
    ],
}


@pytest.mark.parametrize("column", ["email", "phone", "iban"])
@pytest.mark.parametrize("how", list(HOLD_SENDS))
@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_with_hold_cursor_error_raised_at_commit_quotes_raw_values(
    governed, personal, role, how, column
):
    # leaks: `invalid input syntax for type integer: "<raw email/phone/iban>"` in the COMMIT's error
    got = raw_session(governed, role, HOLD_SENDS[how](HOLD.format(column=column)))
    assert not found_in(blob(got), personal), blob(got)


# The same through psql, each statement sent as psql sends a script's lines.
@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_psql_with_hold_cursor_error_at_commit(governed, personal, role):
    # leaks: psql prints `ERROR: invalid input syntax for type integer: "<raw email>"` at COMMIT
    subject, groups = ("agent-psql", []) if role == "agent" else ("analyst-psql", ["analysts"])
    token = governed.token(role, subject, groups=groups)
    environment = libpq_environment(governed, "gateway", role=role, token=token)
    script = "BEGIN;\n" + HOLD.format(column="email") + ";\nCOMMIT;\n"
    run = subprocess.run(
        [client_program("psql"), "-X", "-f", "-"],
        input=script.encode(),
        env=environment,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert b"COMMIT" in run.stdout + run.stderr or b"ERROR" in run.stderr, run
    assert not found_in(run.stdout + run.stderr, personal), run.stdout + run.stderr


def test_with_hold_cursor_error_at_commit_quotes_every_email_at_once(governed, personal):
    # leaks: every customer's raw email, comma-joined, in one COMMIT error (analyst has no LIMIT rule)
    sql = "DECLARE c CURSOR WITH HOLD FOR SELECT string_agg(email, ',')::int FROM crm.customers"
    got = raw_session(governed, "analyst", HOLD_SENDS["commit"](sql))
    assert not found_in(blob(got), personal), blob(got)
