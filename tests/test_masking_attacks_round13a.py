"""Masking attack round 13a, closed: a schema-qualified `*` shadowed by an inner alias,
SEARCH and CYCLE columns of a recursive CTE, a recursive CTE with its own WITH.
Each test asserts the safe behaviour, by what the client receives: a failure is a leak."""

from __future__ import annotations

# ruff: noqa: F811, E501 - fixtures redefined as arguments; the attacks' SQL kept as sent
import pytest
from test_masking_attacks_round8 import first_customer, raw_rows, raw_session  # noqa: F401
from test_masking_copy_gateway import found_in  # noqa: F401
from test_masking_gateway import leaked, personal  # noqa: F401
from test_session_attacks import governed, superuser  # noqa: F401
from wire import query  # noqa: F401

from custos.demo.embedded import GATEWAY_LOGIN  # noqa: F401

# === finding 1: `schema.table.*` is expanded from the nearest FROM item of that name ========
# Walker.star() (and whole_row_of) take `crm.customers.*` as scope.find_rte('customers'): the
# inner subquery aliased customers, while PostgreSQL reads the unaliased crm.customers of the
# outer level (an aliased item cannot be named schema.table). The walk traces the row to the
# subquery's constant: nothing is masked, the decision is a plain allow.

STAR = [
    "SELECT w.* FROM crm.customers, LATERAL (SELECT crm.customers.* FROM (SELECT 1 AS x) customers) w ORDER BY 1 LIMIT 3",
    "SELECT (SELECT row_to_json(crm.customers.*) FROM (SELECT 1 AS x) customers) FROM crm.customers ORDER BY id LIMIT 3",
]


@pytest.mark.parametrize("role", ["agent", "analyst"])
@pytest.mark.parametrize("sql", STAR, ids=["lateral-star", "row-to-json"])
def test_schema_qualified_star_shadowed_by_an_inner_alias(governed, personal, role, sql):
    # leaks: every column of the first customers raw (emails, phones, IBANs, names)
    rows = raw_rows(governed, role, sql)
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert not leaked(rows, personal), rows


# === finding 2: a recursive CTE's SEARCH / CYCLE columns have no lineage ====================
# Walker.ctes()/with_clause() give a CTE the columns of its query only: the columns that
# `SEARCH ... SET ord` (a record, or an array of records, of the BY columns) and
# `CYCLE ... SET mark USING path` (an array of records of the cycle columns) add are unknown
# names, traced to nothing, so they come back unmasked. The agent is refused (the recursive
# WITH lifts the LIMIT bound); the analyst gets the raw values.

CTE = (
    "WITH RECURSIVE t(id, e, p, i) AS ((SELECT id, email, phone, iban FROM crm.customers ORDER BY id LIMIT 3)"
    " UNION ALL SELECT id, e, p, i FROM t WHERE false)"
)
SEARCH_CYCLE = [
    f"{CTE} SEARCH BREADTH FIRST BY e, p, i SET ord SELECT ord FROM t LIMIT 3",
    f"{CTE} SEARCH DEPTH FIRST BY e, p, i SET ord SELECT ord FROM t LIMIT 3",
    f"{CTE} CYCLE e, p, i SET cyc USING pth SELECT pth FROM t LIMIT 3",
]


@pytest.mark.parametrize("sql", SEARCH_CYCLE, ids=["breadth", "depth", "cycle-path"])
def test_recursive_cte_search_and_cycle_columns_are_untraced(governed, personal, sql):
    # leaks: the analyst reads the first customers' raw emails, phones and IBANs in ord / pth
    rows = raw_rows(governed, "analyst", sql)
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert not leaked(rows, personal), rows


# === finding 3: a recursive CTE whose body has its own WITH is walked as not recursive =====
# Walker.ctes() reads a recursive CTE term by term (every column then carries all sources,
# computed: _iterated) only where its SelectStmt has no withClause; with one, the body is
# walked as one query and with_clause() reruns it until the columns settle, at most
# len(ctes) + 1 = 2 times. A recursive term that rotates values through three columns needs
# three steps: column c is left traced to nothing, and the analyst reads it unmasked.

ROTATE = (
    "WITH RECURSIVE t(n, a, b, c) AS (WITH z AS (SELECT 1) (SELECT 0, {col}, 'x', 'y' FROM crm.customers"
    " ORDER BY id LIMIT 3) UNION ALL SELECT n + 1, c, a, b FROM t WHERE n < 2) SELECT c FROM t WHERE n = 2 LIMIT 3"
)


@pytest.mark.parametrize("col", ["email", "phone", "iban"])
def test_recursive_cte_with_inner_with_rotates_past_the_fixpoint(governed, personal, col):
    # leaks: the analyst reads the first customers' raw emails / phones / IBANs in column c
    rows = raw_rows(governed, "analyst", ROTATE.format(col=col))
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert not leaked(rows, personal), rows
