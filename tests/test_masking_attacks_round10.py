"""Masking attack round 10, closed: a bare name checked against the wrong FROM item,
alias names after a `*` taking the star's lineage, a recursive WITH's forward reference.
Each test asserts the safe behaviour, by what the client receives: a failure is a leak."""

from __future__ import annotations

# ruff: noqa: F811, E501 - fixtures redefined as arguments; the attacks' SQL kept as sent
import pytest
from test_masking_attacks_round8 import first_customer, raw_rows, raw_session
from test_masking_copy_gateway import found_in
from test_masking_gateway import leaked, personal  # noqa: F401
from test_session_attacks import SYNC, bind, execute, governed, parse, superuser  # noqa: F401
from wire import query

# === finding 1: a FROM item with a guessed column name hides the computed one after it ======
# _computed_column (one bare name) stops at the first non-base FROM item that has the name
# OR any guessed / unknown-named column: `(SELECT 1) z` (its column's name is guessed) is
# asked, says "not computed", and q's computed `e` is masked as a plain email / phone.

SHADOW = "(SELECT 1) z, "


def test_guessed_column_shadow_email_partial_keeps_all(governed, superuser):
    # leaks: the agent reads '***@theo.begum1#example.org': the whole email after 'x@'
    email = first_customer(superuser, "email")
    rows = raw_rows(
        governed,
        "agent",
        f"SELECT e FROM {SHADOW}(SELECT 'x@' || replace(email, '@', '#') AS e FROM crm.customers"
        " ORDER BY id LIMIT 2) q LIMIT 2",
    )
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert email.replace("@", "#") not in (rows[0][0] or b"").decode(), rows


def test_guessed_column_shadow_phone_in_letters(governed, superuser):
    # leaks: the agent reads the phone spelled in letters ('+ee hhaa jaafhf'): partial keeps non-digits
    phone = first_customer(superuser, "phone")
    rows = raw_rows(
        governed,
        "agent",
        f"SELECT p FROM {SHADOW}(SELECT translate(phone, '0123456789', 'abcdefghij') AS p"
        " FROM crm.customers ORDER BY id LIMIT 2) q LIMIT 2",
    )
    assert rows, rows
    assert isinstance(rows[0], list), rows
    spelled = phone.translate(str.maketrans("0123456789", "abcdefghij"))
    assert spelled not in (rows[0][0] or b"").decode(), rows


def test_guessed_column_shadow_analyst_run_lengths(governed, superuser):
    # leaks: the analyst's phone pseudonym keeps run lengths: repeat('x', digit + 1) per digit
    phone = first_customer(superuser, "phone")
    digits = "".join(ch for ch in phone if ch.isdigit())
    runs = " || ' ' || ".join(
        f"repeat('x', substr(translate(phone, '+ ()-./', ''), {n}, 1)::int + 1)"
        for n in range(1, len(digits) + 1)
    )
    rows = raw_rows(
        governed,
        "analyst",
        f"SELECT p FROM {SHADOW}(SELECT {runs} AS p FROM crm.customers ORDER BY id LIMIT 1) q",
    )
    assert rows, rows
    assert isinstance(rows[0], list), rows
    rebuilt = "".join(str(len(run) - 1) for run in (rows[0][0] or b"").decode().split(" "))
    assert rebuilt != digits, rebuilt


# === finding 2: alias column names past a `*` take the star's lineage, not the column's ========
# renamed() gives every alias name after a `*` of unknown width the star's sources (here
# crm.orders.*, no personal data): q(a1..a6, e) names the seventh column, c.email, `e`, and
# the analysis traces `e` to crm.orders.* alone: nothing is masked.

STAR_RENAME = (
    "SELECT e, p, i, n FROM (SELECT o.*, c.email, c.phone, c.iban, c.full_name FROM crm.orders o"
    " JOIN crm.customers c ON c.id = o.customer_id ORDER BY o.id LIMIT 3)"
    " q(a1, a2, a3, a4, a5, a6, e, p, i, n) LIMIT 3"
)


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_alias_names_past_a_star_unmask_columns(governed, personal, role):
    # leaks: raw email, phone, IBAN and full name of the orders' customers, unmasked
    rows = raw_rows(governed, role, STAR_RENAME)
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert not leaked(rows, personal), rows


# === finding 3: WITH RECURSIVE lets a CTE read a later one, seen as an empty placeholder ========
# In a recursive WITH every CTE starts as [Col(None, NO_SOURCES)]; `a` is walked before `b`
# is, so a's columns have no lineage at all and nothing is masked. (The agent is refused:
# a recursive WITH voids its LIMIT, agents-no-bulk-export.)

FORWARD = (
    "WITH RECURSIVE a AS (SELECT e, p, i, n FROM b),"
    " b AS (SELECT email AS e, phone AS p, iban AS i, full_name AS n FROM crm.customers ORDER BY id LIMIT 3)"
    " SELECT e, p, i, n FROM a"
)


def test_recursive_with_forward_reference_has_no_lineage(governed, personal):
    # leaks: the analyst reads raw emails, phones, IBANs and names
    rows = raw_rows(governed, "analyst", FORWARD)
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert not leaked(rows, personal), rows


# The same two holes through COPY TO STDOUT (the analyst may COPY): rows arrive raw.
@pytest.mark.parametrize("sql", [STAR_RENAME, FORWARD], ids=["star-rename", "forward-cte"])
def test_copy_out_of_untraced_columns(governed, personal, sql):
    # leaks: raw emails, phones, IBANs and names in the COPY data
    got = raw_session(governed, "analyst", [query(f"COPY ({sql}) TO STDOUT")])
    data = b"".join(m.body for m in got if m.type == "d")
    assert data, got
    assert not found_in(data, personal), data


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_listen_stays_refused(governed, role):
    # holds (regression): LISTEN is denied for the masked roles
    rows = raw_rows(governed, role, "LISTEN custos_probe")
    assert rows, rows
    assert not isinstance(rows[0], list), rows
    assert b"42501" in rows[0], rows
