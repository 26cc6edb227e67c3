"""Masking attack round 11, closed: a JOIN ... USING's columns, listed by `*` and named by
an alias in PostgreSQL's order (the merged columns once, first). Each test asserts the
safe behaviour, by what the client receives: a failure is a leak."""

from __future__ import annotations

# ruff: noqa: F811 - fixtures redefined as arguments; the attacks' SQL kept as sent
import pytest
from test_masking_attacks_round8 import raw_rows, raw_session
from test_masking_copy_gateway import found_in
from test_masking_gateway import leaked, personal  # noqa: F401
from test_session_attacks import governed, superuser  # noqa: F401
from wire import query

# === finding 1: an unqualified `*` over a JOIN USING lists the join columns twice ============
# PostgreSQL's `*` over `q JOIN r USING (id, k1, k2, k3)` lists the four merged columns once,
# first, then the others; the walk (star() on merged rtes) lists both sides in full, so
# every column of r after the USING columns is placed four positions too far right. A
# column of unknown width after it (generate_series(1, 1) g) makes the count check pass:
# the masks land on g and nothing, r's email, phone, IBAN and name come out raw.

USING_STAR = (
    "SELECT * FROM (VALUES (1, 1, 2, 3)) q(id, k1, k2, k3) JOIN (SELECT id, 1 AS k1, 2 AS k2,"
    " 3 AS k3, email, phone, iban, full_name FROM crm.customers ORDER BY id LIMIT 3) r"
    " USING (id, k1, k2, k3), generate_series(1, 1) g LIMIT 3"
)


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_star_over_join_using_shifts_the_masks(governed, personal, role):
    # leaks: the first customer's raw email, phone and IBAN (and name) in columns 5-8
    rows = raw_rows(governed, role, USING_STAR)
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert not leaked(rows, personal), rows


# === finding 2: alias column names of a JOIN USING are given in the wrong order ===============
# PostgreSQL names a joined relation's columns `AS j(a, b, ...)` in its order: the USING
# columns first (once), then the left's others, then the right's. The walk (join(), alias)
# renames both sides' columns in full: b is taken for r.id, d, f, h for the constants, when
# they are r's email, phone, IBAN and name. One column per name: no count check trips.

USING_ALIAS = (
    "SELECT b, d, f, h FROM ((VALUES (1)) q(id) JOIN (SELECT id, email, 0 AS z1, phone, 0 AS z2,"
    " iban, 0 AS z3, full_name FROM crm.customers ORDER BY id LIMIT 3) r USING (id))"
    " AS j(a, b, c, d, e, f, g, h) LIMIT 3"
)


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_join_alias_names_after_using_trace_the_wrong_columns(governed, personal, role):
    # leaks: the customers' raw email, phone, IBAN and full name, unmasked
    rows = raw_rows(governed, role, USING_ALIAS)
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert not leaked(rows, personal), rows


# The same two holes through COPY TO STDOUT (the analyst may COPY): rows arrive raw.
@pytest.mark.parametrize("sql", [USING_STAR, USING_ALIAS], ids=["using-star", "using-alias"])
def test_copy_out_of_join_using_columns(governed, personal, sql):
    # leaks: raw emails, phones and IBANs in the COPY data
    got = raw_session(governed, "analyst", [query(f"COPY ({sql}) TO STDOUT")])
    data = b"".join(m.body for m in got if m.type == "d")
    assert data, got
    assert not found_in(data, personal), data
