"""Masking attack round 12a, closed: a USING join nested in an aliased join, and a
schema-qualified view column shadowed by an inner alias of the same name.
Each test asserts the safe behaviour, by what the client receives: a failure is a leak."""

from __future__ import annotations

# ruff: noqa: F811, E501 - fixtures redefined as arguments; the attacks' SQL kept as sent
import pytest
from test_masking_attacks_round8 import first_customer, raw_rows, raw_session
from test_masking_copy_gateway import found_in
from test_masking_gateway import leaked, personal  # noqa: F401
from test_session_attacks import governed, superuser  # noqa: F401
from wire import query

from custos.demo.embedded import GATEWAY_LOGIN

# === finding 1: an aliased join lists the columns of a USING join nested in it twice ========
# walker.join(), alias branch: `columns = [c for rte in both for c in rte.columns]` keeps the
# inner USING join's sides (expands=False) besides its merged item (and a USING alias's
# item): PostgreSQL's `(a JOIN b USING (id) JOIN c ON true) AS j(n1, n2, ...)` has
# id, email, phone, iban, z; the walk has a.id, b.id, b.email, ... so n2 is traced to
# customers.id (no mask) and the masks land one or more columns to the right.

NESTED_ALIAS = (
    "SELECT n2, n3, n4 FROM ((VALUES (1)) a(id) JOIN (SELECT id, email, phone, iban FROM crm.customers"
    " ORDER BY id LIMIT 3) b USING (id) JOIN (VALUES (0)) c(z) ON true) AS j(n1, n2, n3, n4) LIMIT 3"
)
NESTED_USING_ALIAS = (
    "SELECT n2, n3, n4 FROM ((VALUES (1)) a(id) JOIN (SELECT id, email, phone, iban FROM crm.customers"
    " ORDER BY id LIMIT 3) b USING (id) AS u CROSS JOIN (VALUES (0)) c(z)) AS j(n1, n2, n3, n4) LIMIT 3"
)
NESTED = [NESTED_ALIAS, NESTED_USING_ALIAS]
NESTED_IDS = ["alias-names", "using-alias-inside"]


@pytest.mark.parametrize("role", ["agent", "analyst"])
@pytest.mark.parametrize("sql", NESTED, ids=NESTED_IDS)
def test_using_join_nested_in_an_aliased_join_shifts_the_masks(governed, personal, role, sql):
    # leaks: the first customers' raw emails (n2 / j's second column), traced to customers.id
    rows = raw_rows(governed, role, sql)
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert not leaked(rows, personal), rows


@pytest.mark.parametrize("sql", NESTED, ids=NESTED_IDS)
def test_copy_out_of_a_using_join_nested_in_an_aliased_join(governed, personal, sql):
    # leaks: the analyst's COPY data carries the raw emails
    got = raw_session(governed, "analyst", [query(f"COPY ({sql}) TO STDOUT")])
    data = b"".join(m.body for m in got if m.type == "d")
    assert data, got
    assert not found_in(data, personal), data


# === finding 2: schema.view.column is judged computed by the innermost FROM item of that name =
# _computed_column (len(names) >= 2) asks scope.find_rte(names[-2]) whether the column is
# computed: for `crm.v.c` that is the nearest item called v, here a subquery aliased v of the
# inner level, while PostgreSQL (and resolve_schema_qualified) reads the unaliased view crm.v
# of the outer level. The view's computed column passes as a plain email: partial keeps what
# follows its last '@'. The view stands for a DBA's (reverse(email), as for a suffix index).

VIEW = "crm.r12a_contacts"


@pytest.fixture
def reversed_view(superuser):
    superuser.execute(
        f"CREATE VIEW {VIEW} AS SELECT id, reverse(email) AS email_reversed, reverse(phone) AS phone_reversed"
        " FROM crm.customers"
    )
    superuser.execute(f"GRANT SELECT ON {VIEW} TO {GATEWAY_LOGIN}")
    try:
        yield VIEW
    finally:
        superuser.execute(f"DROP VIEW IF EXISTS {VIEW}")


def test_schema_qualified_view_column_shadowed_by_an_inner_alias(
    governed, superuser, reversed_view
):
    # leaks: the agent reads '***@1mugeb.oeht', the first email's local part reversed
    email = first_customer(superuser, "email")
    sql = (
        f"SELECT w.email_reversed FROM {VIEW}, LATERAL (SELECT {VIEW}.email_reversed"
        " FROM (SELECT 1 AS email_reversed) r12a_contacts) w LIMIT 3"
    )
    # read directly, the same column comes back '[redacted]' (computed)
    rows = raw_rows(governed, "agent", sql)
    local = email.partition("@")[0][::-1]
    assert rows, rows
    assert isinstance(rows[0], list), rows
    assert not any(local in (row[0] or b"").decode() for row in rows), rows
