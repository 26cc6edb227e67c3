"""Masking attack round 9: JSON objects masked key by key, computed values as one
placeholder, the client encoding of masked statements, free-text detection, COPY TO STDOUT.

Each test asserts the safe behaviour, by what the client receives: a failure is a leak."""

from __future__ import annotations

# ruff: noqa: F811, E501 - fixtures redefined as arguments; the attacks' SQL kept as sent
import pytest
from test_masking_attacks_round8 import first_customer, raw_rows
from test_masking_gateway import leaked, personal  # noqa: F401
from test_session_attacks import governed, superuser  # noqa: F401

# === finding 1: a recursive CTE's later iterations are analysed with the first term's columns ===

# The recursive term is walked once, reading r's columns as the non-recursive term made them:
# r.b is `city` (plain) there, so `a` (phone | r.b) is judged a plain phone column. From the
# second iteration on r.b holds what the recursive term computed from r.c = email, and the
# phone pseudonym keeps the layout (spaces) and the length of every run of other characters.
_RUNS = " || ' ' || ".join(f"repeat('x', ascii(substr(c, {n}, 1)))" for n in range(1, 41))
RECURSIVE = (
    "WITH RECURSIVE r(a, b, c, n) AS ("
    " SELECT phone, city, email, 0 FROM crm.customers WHERE id = 1"
    f" UNION ALL SELECT b, {_RUNS}, c, n + 1 FROM r WHERE n < 2"
    ") SELECT a, n FROM r"
)


def test_recursive_cte_makes_a_computed_value_a_plain_phone(governed, superuser):
    # leaks: the analyst's third row is the first customer's email, one run of 'digits' per character
    # (run length = the character's code), kept by the phone pseudonym's layout
    email = first_customer(superuser, "email")
    rows = raw_rows(governed, "analyst", RECURSIVE)
    assert rows, rows
    assert isinstance(rows[-1], list), rows
    runs = rows[-1][0].decode().split(" ") if rows[-1][0] else []
    rebuilt = "".join(chr(len(run)) for run in runs if run)
    assert rebuilt != email, rebuilt


def test_recursive_cte_country_code_keeps_three_digits(governed, superuser):
    # leaks: '+' || ascii(substr(email, n, 1)) in the recursive term comes back as '+116' (= 't'):
    # the phone pseudonym keeps a country code of up to three digits
    email = first_customer(superuser, "email")
    sql = (
        "WITH RECURSIVE r(a, b, c, n) AS (SELECT phone, city, email, 0 FROM crm.customers WHERE id = 1"
        " UNION ALL SELECT b, '+' || ascii(substr(c, n + 1, 1)), c, n + 1 FROM r WHERE n < 40)"
        " SELECT a FROM r WHERE n >= 2"
    )
    rows = raw_rows(governed, "analyst", sql)
    rebuilt = "".join(
        chr(int(row[0][1:]))
        for row in rows
        if isinstance(row, list) and row[0] and row[0][1:].isdigit() and int(row[0][1:]) > 0
    )
    assert rebuilt != email[: len(rebuilt)] or not rebuilt, rebuilt


# === finding 2: a JSON builder's key read through its cast ======================================

# literals.string unwraps TypeCast: the analysis takes 'a '::varchar(1) for the key "a " and
# 'a'::char(2) for "a"; the database writes them the other way round ("a" and "a ", a bpchar
# keeps its padding). Same key set, so the document passes as traced, with the mask on the id.


@pytest.mark.parametrize(
    ("role", "builder"),
    [("analyst", "jsonb_build_object"), ("agent", "json_build_object")],
)
def test_cast_keys_swap_a_personal_value_into_a_plain_key(governed, personal, role, builder):
    # leaks: {"a": null, "a ": "theo.begum1@example.org", "p": null, "p ": "+44 7700 900575", ...}
    sql = (
        f"SELECT {builder}('a '::varchar(1), id, 'a'::char(2), email, 'p '::varchar(1), id,"
        " 'p'::char(2), phone, 'i '::varchar(1), id, 'i'::char(2), iban)"
        " FROM crm.customers ORDER BY id LIMIT 3"
    )
    rows = raw_rows(governed, role, sql)
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert not leaked(rows, personal), rows


# === finding 3: a subquery's whole row is taken for a plain column ==============================

# `SELECT q FROM (SELECT f(email) AS e ...) q`: _computed_column finds the FROM item by its
# name and asks _computed_in(rte, None), which only looks at columns of no name: q's named,
# computed columns do not count, so the record is masked as a plain email / phone, whose
# partial form keeps everything after the last '@' (email) or every non-digit (phone).


def test_whole_row_of_a_subquery_keeps_a_computed_email_after_its_at(governed, superuser):
    # leaks: the agent reads '(***@theo.begum1#example.org)': the email with '@' made '#'
    email = first_customer(superuser, "email")
    rows = raw_rows(
        governed,
        "agent",
        "SELECT q FROM (SELECT 'x@' || replace(email, '@', '#') AS e FROM crm.customers"
        " ORDER BY id LIMIT 2) q LIMIT 2",
    )
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert email.replace("@", "#") not in (rows[0][0] or b"").decode(), rows


def test_whole_row_of_a_subquery_keeps_a_phone_spelled_in_letters(governed, superuser):
    # leaks: the agent reads '("+ee hhaa jaafhf")' for '+44 7700 900575' (digit d spelled as letter d)
    phone = first_customer(superuser, "phone")
    rows = raw_rows(
        governed,
        "agent",
        "SELECT q FROM (SELECT translate(phone, '0123456789', 'abcdefghij') AS p FROM crm.customers"
        " ORDER BY id LIMIT 2) q LIMIT 2",
    )
    assert rows, rows
    assert isinstance(rows[0], list), rows
    spelled = phone.translate(str.maketrans("0123456789", "abcdefghij"))
    assert spelled not in (rows[0][0] or b"").decode(), rows


def test_whole_row_of_a_subquery_keeps_run_lengths_for_the_analyst(governed, superuser):
    # leaks: the analyst's phone pseudonym keeps the length of each run: repeat('x', digit + 1)
    # per digit of the phone, spaces between, gives the phone's digits back
    phone = first_customer(superuser, "phone")
    digits = "".join(ch for ch in phone if ch.isdigit())
    runs = " || ' ' || ".join(
        f"repeat('x', substr(translate(phone, '+ ()-./', ''), {n}, 1)::int + 1)"
        for n in range(1, len(digits) + 1)
    )
    rows = raw_rows(
        governed,
        "analyst",
        f"SELECT q FROM (SELECT {runs} AS p FROM crm.customers ORDER BY id LIMIT 1) q",
    )
    assert rows, rows
    assert isinstance(rows[0], list), rows
    rebuilt = "".join(
        str(len(run) - 1) for run in (rows[0][0] or b"").decode().strip('()"').split(" ")
    )
    assert rebuilt != digits, rebuilt


# === finding 4: SET client_encoding executed earlier in the same extended-protocol segment ========

from test_masking_attacks_round8 import raw_session  # noqa: E402
from test_masking_copy_gateway import found_in  # noqa: E402
from test_session_attacks import SYNC, bind, execute, parse  # noqa: E402
from wire import query  # noqa: E402

SJIS_COPY = (
    "COPY (SELECT chr(12477) AS a, email, 'x' || chr(12509) AS c FROM crm.customers"
    " ORDER BY id LIMIT 3) TO STDOUT (DELIMITER '|')"
)


@pytest.mark.parametrize(
    "setting",
    ["SET client_encoding TO 'SJIS'", "SELECT set_config('client_encoding', 'SJIS', false)"],
)
@pytest.mark.parametrize("then", ["extended", "simple query"])
def test_set_client_encoding_pipelined_without_sync_before_a_masked_copy(
    governed, personal, setting, then
):
    # leaks: Parse/Bind/Execute "SET client_encoding TO 'SJIS'", then Parse/Bind/Execute the COPY,
    # one Sync: the COPY is planned under UTF8 (the server reports SJIS only at the end), runs in
    # SJIS, and 0x83 0x5C (U+30BD) shifts the masker's fields: b'\x83\\|theo.begum1@example.org|\\N|'
    # (or the COPY as a simple Query right after the unsynced Execute)
    first = parse("", setting) + bind("", "") + execute("")
    if then == "extended":
        sends = first + parse("", SJIS_COPY) + bind("", "") + execute("") + SYNC
    else:
        sends = first + query(SJIS_COPY)
    got = raw_session(governed, "analyst", [sends])
    data = b"".join(m.body for m in got if m.type == "d")
    assert not found_in(data, personal), data


# === finding 5: free-text detection misses contact details in forms real tickets use ============

TICKET_FORMS = [
    "+44 (0)7700-900575",  # UK number with the (0) trunk prefix
    "+44\u00a07700\u00a0900575",  # no-break spaces (pasted from a mail client)
    "+44\u20137700\u2013900575",  # en dashes
    # Not here: "7700 900575", without a country code or trunk 0, is not told from an order
    # number's digits (a limit the README states).
    "gb54demo72562953594527",  # IBAN typed in lower case
    "GB54-DEMO-7256-2953-5945-27",  # IBAN grouped with dashes
    "zoë.brontë@exämple.org",  # internationalised email address
]


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_free_text_detection_misses_common_forms(governed, superuser, role):
    # leaks: a ticket quoting '+44 (0)7700-900575', 'gb54demo...', 'GB54-DEMO-...', 'zoë.brontë@exämple.org'
    # comes back as it is (detect.py finds none of these forms)
    body = "Please call me on " + " or ".join(TICKET_FORMS) + ". Thanks"
    superuser.execute(
        "INSERT INTO crm.support_tickets (id, customer_id, opened_at, subject, body)"
        " VALUES (990001, 1, now(), 'Contact change', %s) ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
        (body,),
    )
    superuser.commit() if not superuser.autocommit else None
    try:
        rows = raw_rows(
            governed, role, "SELECT body FROM crm.support_tickets WHERE id = 990001 LIMIT 1"
        )
    finally:
        superuser.execute("DELETE FROM crm.support_tickets WHERE id = 990001")
        superuser.commit() if not superuser.autocommit else None
    text = b" ".join(v for row in rows if isinstance(row, list) for v in row if v).decode()
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert [form for form in TICKET_FORMS if form in text] == [], text
