"""Masking attack round 14: no leak found. Views (computed columns, renamed columns, frozen `*`,
USING joins, nested, whole rows), alias column lists over tables, joins and views, LATERAL
VALUES, multi-argument unnest WITH ORDINALITY, DISTINCT ON / GROUP BY / window outputs through
a subquery, quoted and U& names. Held probes kept as regressions: a failure is a leak."""

from __future__ import annotations

# ruff: noqa: F811, E501 - fixtures redefined as arguments; the attacks' SQL kept as sent
import pytest
from test_masking_attacks_round8 import raw_rows
from test_masking_gateway import leaked, personal  # noqa: F401
from test_session_attacks import governed, superuser  # noqa: F401

from custos.demo.embedded import GATEWAY_LOGIN

VIEWS = {
    "crm.r14_computed": "SELECT id, lower(email) AS e, reverse(phone) AS p, replace(iban, ' ', '') AS i, upper(full_name) AS n FROM crm.customers",
    "crm.r14_renamed(a, b, c2, d)": "SELECT email, phone, iban, full_name FROM crm.customers",
    "crm.r14_using": "SELECT * FROM crm.customers JOIN (SELECT id, 1 AS z FROM crm.orders) o USING (id)",
    "crm.r14_swapped": "SELECT email AS phone, 'x'::text AS email, full_name AS id FROM crm.customers",
    "crm.r14_nested": "SELECT e AS x, n AS y FROM crm.r14_computed",
    "crm.r14_unnest": "SELECT x.* FROM crm.customers c, unnest(ARRAY[c.email], ARRAY[c.iban]) WITH ORDINALITY AS x(a, b, n)",
}

HELD = [
    "SELECT * FROM crm.r14_computed ORDER BY id LIMIT 3",
    "SELECT * FROM crm.r14_renamed LIMIT 3",
    "SELECT email FROM crm.r14_renamed AS v(email) LIMIT 3",
    "SELECT * FROM crm.r14_using ORDER BY id LIMIT 3",
    "SELECT iban FROM crm.r14_swapped AS v(iban) LIMIT 3",
    "SELECT x.phone FROM (SELECT DISTINCT ON (id) phone, id FROM crm.r14_swapped) x LIMIT 3",
    "SELECT x, y FROM (SELECT * FROM crm.r14_nested) s LIMIT 3",
    "SELECT * FROM crm.r14_unnest LIMIT 3",
    "SELECT x.k FROM crm.r14_renamed v JOIN (SELECT b AS k, a FROM crm.r14_renamed) x USING (a) LIMIT 3",
    "SELECT j.email, j.phone FROM (crm.customers c JOIN crm.orders o ON o.customer_id = c.id) AS j(a, b, phone, email) LIMIT 3",
    "SELECT email, phone, y FROM crm.customers AS a(x, y, phone, email) LIMIT 3",
    "SELECT email FROM (TABLE crm.customers) t(id, full_name, phone, email) LIMIT 3",
    'SELECT "y" FROM crm.customers AS a(x, "Y", y) LIMIT 3',
    "SELECT column2 FROM crm.customers c, LATERAL (VALUES (1, c.email)) v(a) LIMIT 3",
    "SELECT x.* FROM crm.customers c, ROWS FROM (unnest(ARRAY[c.email]), unnest(ARRAY[c.iban])) WITH ORDINALITY AS x(a, b, n) LIMIT 3",
    "SELECT x.* FROM crm.customers c, xmltable('/r' PASSING xmlelement(name r, c.email) COLUMNS e text PATH '.', n FOR ORDINALITY) x LIMIT 3",
    "SELECT x.* FROM crm.customers c, jsonb_to_recordset(jsonb_build_array(jsonb_build_object('e', c.email))) AS x(e text) LIMIT 3",
    "SELECT g FROM (SELECT lower(email) AS g FROM crm.customers GROUP BY 1) s LIMIT 3",
    'SELECT U&"\\0045" FROM (SELECT email AS "E", \'x\' AS e FROM crm.customers) a LIMIT 3',
]


@pytest.fixture
def views(superuser):
    for name, body in VIEWS.items():
        superuser.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
        superuser.execute(f"GRANT SELECT ON {name.split('(')[0]} TO {GATEWAY_LOGIN}")
    try:
        yield
    finally:
        for name in reversed(list(VIEWS)):
            superuser.execute(f"DROP VIEW IF EXISTS {name.split('(')[0]} CASCADE")


@pytest.mark.parametrize("role", ["agent", "analyst"])
def test_views_and_renamed_columns_stay_masked(governed, superuser, personal, views, role):
    names = {
        r[0] for r in superuser.execute("SELECT full_name FROM crm.customers ORDER BY id LIMIT 5")
    }
    for sql in HELD:
        rows = raw_rows(governed, role, sql)
        assert not leaked(rows, personal), (sql, rows)
        if role == "analyst":
            text = " ".join(
                str(v) for row in rows for v in (row if isinstance(row, list) else [row])
            )
            assert not [n for n in names if n in text or n.upper() in text], (sql, rows)
