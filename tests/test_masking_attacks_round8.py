"""Masking attack round 8, closed: COPY TO STDOUT in other client encodings and with
options of an earlier text of the same shape; computed values whose form (an array's
bounds, a number's scale, an address's prefix, infinity, NULL) carried their source.

Each test asserts the safe behaviour, by what the client receives: a failure is a leak."""

from __future__ import annotations

# ruff: noqa: F811, E501 - fixtures redefined as arguments; the attacks' SQL kept as sent
import psycopg
import pytest
from test_masking_copy_gateway import copied, found_in
from test_masking_gateway import leaked, personal  # noqa: F401
from test_session_attacks import (  # noqa: F401
    SYNC,
    bind,
    customer_emails,
    customer_names,
    execute,
    governed,
    login,
    parse,
    psycopg_connect,
    superuser,
)
from wire import query


def copy_or_error(connection, sql):
    try:
        return copied(connection, sql)
    except psycopg.Error as error:
        connection.rollback() if not connection.autocommit else None
        return f"ERROR {error.sqlstate}: {error}".encode()


def run_as(governed, sql, role="agent", binary=False):
    with psycopg_connect(governed, role) as c:
        try:
            cur = c.cursor(binary=binary)
            cur.execute(sql)
            out = []
            while True:
                if cur.description is not None:
                    out.extend(cur.fetchall())
                if not cur.nextset():
                    break
            return out
        except psycopg.Error as e:
            return f"ERROR {e.sqlstate}: {e}"


def raw_rows(governed, role, sql):
    session = login(governed, role)
    try:
        got = session.exchange(query(sql))
    finally:
        session.close()
    errors = [m.body for m in got if m.type == "E"]
    return session.rows(got) + errors


def first_customer(superuser, column):
    return superuser.execute(f"SELECT {column} FROM crm.customers ORDER BY id LIMIT 1").fetchone()[
        0
    ]


# === finding 1: COPY TO STDOUT in a session whose client_encoding is SJIS ==========================


def test_copy_out_in_an_sjis_session_passes_emails_unmasked(governed, superuser, personal):
    # leaks: the analyst's COPY data carries every email raw: SJIS trail bytes 0x5C/0x7C shift the
    # masker's field boundaries (U+30BD ends in a backslash, U+30DD in the '|' delimiter)
    with psycopg_connect(governed, role="analyst") as analyst:
        analyst.autocommit = True
        analyst.execute("SET client_encoding = 'SJIS'")
        try:
            data = copied(
                analyst,
                "COPY (SELECT chr(12477) AS a, email, 'x' || chr(12509) AS c FROM crm.customers"
                " ORDER BY id LIMIT 3) TO STDOUT (DELIMITER '|')",
            )
        except psycopg.Error:
            data = b""
    # evidence: b'\x83\\|theo.begum1@example.org|\\N|\n...'
    assert not found_in(data, personal), data


def test_copy_out_with_sjis_at_startup_passes_emails_unmasked(governed, superuser, personal):
    # leaks: the same, with client_encoding=SJIS as a startup parameter (no SET to notice)
    session = login(governed, "analyst", client_encoding="SJIS")
    try:
        got = session.exchange(
            query(
                "COPY (SELECT chr(12477) AS a, email, 'x' || chr(12509) AS b, 1 AS c FROM crm.customers"
                " ORDER BY id LIMIT 3) TO STDOUT (DELIMITER '|')"
            )
        )
    finally:
        session.close()
    data = b"".join(m.body for m in got if m.type == "d")
    assert not found_in(data, personal), data


# === finding 2: typed masks keep an array's bounds ===============================================


def _bounds_columns(column, count=8):
    """SQL columns: arrays whose lower bound packs 4 characters of `column` each."""
    parts = []
    for n in range(count):
        packed = " + ".join(
            f"ascii(substr({column}, {4 * n + k + 1}, 1)) * {256 ** (3 - k)}" for k in range(4)
        )
        parts.append(f"array_fill(0, ARRAY[1], ARRAY[{packed}])")
    return ", ".join(parts)


def _unpack_bounds(row):
    import re as _re

    text = ""
    if None in row:
        return ""  # NULL: no bounds
    for value in row:
        bound = int(_re.match(rb"\[(-?\d+):", value).group(1))
        text += bound.to_bytes(4, "big").decode("latin-1")
    return text.rstrip("\x00")


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_array_lower_bounds_carry_four_characters_each(governed, superuser, role):
    # leaks: masked int[] keep their dimensions and bounds; array_fill(0, '{1}', '{<4 chars>}')
    # puts 4 characters of the email in each lower bound: '[1952998767:1952998767]={..}' = 'theo'
    email = first_customer(superuser, "email")
    rows = raw_rows(
        governed, role, f"SELECT {_bounds_columns('email')} FROM crm.customers ORDER BY id LIMIT 1"
    )
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert _unpack_bounds(rows[0]) != email, rows


# === finding 3: typed masks keep a numeric's scale (and digit count) =============================


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_numeric_scale_carries_one_character_per_column(governed, superuser, role):
    # leaks: redact/pseudonym of a numeric keep its scale; round(0::numeric, ascii(substr(email, n, 1)))
    # has ascii(char) fraction digits
    email = first_customer(superuser, "email")
    columns = ", ".join(
        f"round(0::numeric, ascii(substr(email, {n}, 1)))" for n in range(1, len(email) + 1)
    )
    rows = raw_rows(governed, role, f"SELECT {columns} FROM crm.customers ORDER BY id LIMIT 1")
    assert rows, rows
    assert isinstance(rows[0], list), rows
    rebuilt = "".join(chr(len(v.partition(b".")[2])) for v in rows[0])
    assert rebuilt != email, rebuilt


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_inet_prefix_length_carries_one_character_per_column(governed, superuser, role):
    # leaks: masked inet keeps family and prefix length; set_masklen('::1'::inet, ascii(substr(email, n, 1)))
    # comes back as '::/116' (agent) or '<keyed>/116' (analyst): 116 = 't'
    email = first_customer(superuser, "email")
    columns = ", ".join(
        f"set_masklen('::1'::inet, ascii(substr(email, {n}, 1)))" for n in range(1, len(email) + 1)
    )
    rows = raw_rows(governed, role, f"SELECT {columns} FROM crm.customers ORDER BY id LIMIT 1")
    assert rows, rows
    assert isinstance(rows[0], list), rows
    rebuilt = "".join(chr(int(v.rpartition(b"/")[2])) for v in rows[0] if v is not None)
    assert rebuilt != email, rebuilt


def test_pseudonym_keeps_infinity_as_one_bit_per_column(governed, superuser):
    # leaks: the analyst's date pseudonyms keep 'infinity': a CASE on each bit of each character
    # of the email returns infinity or a keyed date, 7 columns a character
    email = first_customer(superuser, "email")
    columns = ", ".join(
        f"CASE WHEN ascii(substr(email, {n}, 1)) & {1 << b} = {1 << b} THEN 'infinity'::date"
        " ELSE current_date END"
        for n in range(1, len(email) + 1)
        for b in range(7)
    )
    rows = raw_rows(governed, "analyst", f"SELECT {columns} FROM crm.customers ORDER BY id LIMIT 1")
    assert rows, rows
    assert isinstance(rows[0], list), rows
    bits = [v == b"infinity" for v in rows[0]]
    rebuilt = "".join(
        chr(sum(1 << b for b in range(7) if bits[7 * n + b])) for n in range(len(bits) // 7)
    )
    assert rebuilt != email, rebuilt


# === finding 4: COPY options read from the first text of the statement's shape ==================

SHAPED = (
    "COPY (SELECT 'x' AS a, email, 'a;b;c' AS c FROM crm.customers ORDER BY id LIMIT 3)"
    " TO STDOUT (DELIMITER '{}')"
)


def test_copy_options_come_from_an_earlier_text_of_the_same_shape(governed, personal):
    # leaks: the masker parses DELIMITER ';' from the first text of the shape (the cached,
    # catalog-expanded analysis keeps its texts) while the server writes '|': raw emails in field 0
    got = raw_session(governed, "analyst", [query(SHAPED.format(";")), query(SHAPED.format("|"))])
    data = b"".join(m.body for m in got if m.type == "d")
    # evidence: b'x|theo.begum1@example.org|a;c56496a7d2@80b26e.example;c\n'
    assert not found_in(data, personal), data


def test_copy_options_primed_by_another_session(governed, personal):
    # leaks: the analysis cache is process-wide: one session primes the shape with ENCODING 'UTF8',
    # another runs ENCODING 'SJIS' (refused on its own) and the SJIS trail bytes shift the fields
    sjis = (
        "COPY (SELECT chr(12477) AS a, email, 'x' || chr(12509) AS c FROM crm.customers"
        " ORDER BY id LIMIT 3) TO STDOUT (DELIMITER '|', ENCODING '{}')"
    )
    raw_session(governed, "analyst", [query(sjis.format("UTF8"))])
    got = raw_session(governed, "analyst", [query(sjis.format("SJIS"))])
    data = b"".join(m.body for m in got if m.type == "d")
    assert not found_in(data, personal), data


def raw_session(governed, role, sends, **startup):
    session = login(governed, role, **startup)
    got = []
    try:
        for data in sends:
            got += session.exchange(data, readies=data.count(b"S\x00\x00\x00\x04") or 1)
    finally:
        session.close()
    return got


def blob(got):
    return b"".join(m.type.encode() + m.body for m in got)


# === held (regression probes): nothing personal reaches the client or the log =================

C = "SELECT id, email, phone, iban, full_name FROM crm.customers ORDER BY id LIMIT 3"
HELD = [
    (
        "analyst",
        [
            query(
                f"SELECT 1; COPY ({C}) TO STDOUT; COPY crm.customers (id, email, full_name) TO STDOUT (FORMAT csv, HEADER)"
            )
        ],
        {},
    ),
    ("analyst", [query(f"COPY ({C}) TO STDOUT (FORMAT text, HEADER)")], {}),
    ("analyst", [query(f"BEGIN; COPY ({C}) TO STDOUT; COMMIT")], {}),
    ("analyst", [parse("s", f"COPY ({C}) TO STDOUT") + bind("p", "s") + execute("p") + SYNC], {}),
    (
        "analyst",
        [parse("", f"COPY ({C}) TO STDOUT (FORMAT binary)") + bind("", "") + execute("") + SYNC],
        {},
    ),
    (
        "analyst",
        [
            query(
                "SELECT ROW(chr(12477), email), ARRAY[chr(12477), email], ARRAY[chr(12509), full_name] FROM crm.customers ORDER BY id LIMIT 2"
            )
        ],
        {"client_encoding": "SJIS"},
    ),
    (
        "agent",
        [
            query(
                "SELECT ARRAY[chr(12477), email], ARRAY[ROW(chr(12477), email)] FROM crm.customers ORDER BY id LIMIT 2"
            )
        ],
        {"client_encoding": "SJIS"},
    ),
    ("analyst", [query(f"COPY ({C}) TO STDOUT (FORMAT 'literal-in-log-1')")], {}),
    ("analyst", [query(f"COPY ({C}) TO STDOUT (DELIMITER 'literal-in-log-2')")], {}),
    (
        "analyst",
        [query("COPY (SELECT email, chr(12477) FROM crm.customers ORDER BY id LIMIT 2) TO STDOUT")],
        {"client_encoding": "SJIS"},
    ),
    # an unhandled RecursionError in typed.py ends the session (robustness, no leak)
    (
        "analyst",
        [
            query(
                "SELECT (repeat('[', 3000) || to_json(email)::text || repeat(']', 3000))::jsonb FROM crm.customers ORDER BY id LIMIT 1"
            )
        ],
        {},
    ),
]


@pytest.mark.parametrize("case", range(len(HELD)))
def test_held(governed, personal, case):
    role, sends, startup = HELD[case]
    got = raw_session(governed, role, sends, **startup)
    assert not found_in(blob(got), personal)
    log = governed.log()
    assert not [v for v in personal if len(v) > 6 and v in log]
    assert "literal-in-log" not in log
