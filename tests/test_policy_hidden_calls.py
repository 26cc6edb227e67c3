"""Functions the database runs that a statement does not name, and what their bodies read.

The eleventh attack round: a function made in information_schema or pg_catalog, a body
whose own search path finds a view in its second schema, a cast to text through a
user-defined function, `o.f` where crm.orders has no column f (the call f(o)), a body that
reads a view, and a default operator class that ranks rows by a name, all returned
customers' emails or ranked Smiths first, or wrote without approval. Each case is judged
by evidence: what the superuser gets, against what the agent gets, and rows written.
"""

from __future__ import annotations

# ruff: noqa: F811 - the fixtures of test_session_attacks, imported, are redefined as arguments
from collections.abc import Iterator

import psycopg
import pytest
from gateway_fixtures import GatewayProcess
from test_policy_attacks import refused
from test_policy_evasions import KC, assert_smiths_found_and_refused
from test_session_attacks import (  # noqa: F401 - fixtures
    assert_no_email_in_clear,
    customer_emails,
    emails_in_rows,
    governed,
    psycopg_connect,
    superuser,
)

from custos.demo.embedded import GATEWAY_LOGIN

CONTACTS = "RETURNS TABLE (id bigint, email text) LANGUAGE sql"
ORDER_EMAIL = "LANGUAGE sql AS 'SELECT email FROM crm.customers WHERE id = o.customer_id'"
ROWS = "crm.orders, crm.orders"
OBJECTS = f"""
CREATE FUNCTION information_schema.hidden_contacts() {CONTACTS}
  AS 'SELECT id, email FROM crm.customers';
CREATE FUNCTION pg_catalog.hidden_contacts_pg() {CONTACTS}
  AS 'SELECT id, email FROM crm.customers';
CREATE VIEW public.hidden_public_contacts AS SELECT id, email FROM crm.customers;
CREATE FUNCTION crm.hidden_pathed() {CONTACTS} SET search_path = crm, public
  AS 'SELECT id, email FROM hidden_public_contacts';
CREATE FUNCTION crm.hidden_order_contact(o crm.orders) RETURNS text {ORDER_EMAIL};
CREATE CAST (crm.orders AS text) WITH FUNCTION crm.hidden_order_contact(crm.orders)
  AS IMPLICIT;
CREATE FUNCTION crm.hidden_leak(v bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF v = 42 THEN
    RAISE EXCEPTION 'leak: %', (SELECT string_agg(email, ',') FROM crm.customers WHERE id < 20);
  END IF;
  RETURN true;
END $$;
CREATE DOMAIN crm.hidden_dom AS bigint CHECK (crm.hidden_leak(VALUE));
CREATE FUNCTION crm.hidden_gives() RETURNS crm.hidden_dom LANGUAGE sql AS 'SELECT 42::bigint';
CREATE SCHEMA {GATEWAY_LOGIN} AUTHORIZATION {GATEWAY_LOGIN};
CREATE VIEW {GATEWAY_LOGIN}.orders AS SELECT id, email AS status FROM crm.customers;
CREATE FUNCTION crm.hidden_userpath() RETURNS TABLE (id bigint, status text) LANGUAGE sql
  SET search_path = "$user", crm AS 'SELECT id, status FROM orders';
CREATE FUNCTION crm.hidden_is_smith(a crm.orders, b crm.orders) RETURNS bool LANGUAGE sql
  AS $$SELECT (SELECT {KC} FROM crm.customers c WHERE c.id = a.customer_id) = 1$$;
CREATE OPERATOR crm.= (LEFTARG = crm.orders, RIGHTARG = crm.orders,
  FUNCTION = crm.hidden_is_smith);
CREATE FUNCTION crm.hidden_email(o crm.orders) RETURNS text {ORDER_EMAIL};
CREATE VIEW crm.hidden_view AS SELECT id, email FROM crm.customers;
CREATE FUNCTION crm.hidden_via_view() {CONTACTS} AS 'SELECT id, email FROM crm.hidden_view';
CREATE FUNCTION crm.hidden_via_view_pl() RETURNS SETOF text LANGUAGE plpgsql
  AS $$BEGIN RETURN QUERY SELECT email FROM crm.hidden_view; END$$;
CREATE TABLE crm.hidden_log (n int);
CREATE FUNCTION crm.hidden_touch(o crm.orders) RETURNS int LANGUAGE sql
  AS 'INSERT INTO crm.hidden_log VALUES (1) RETURNING n';
CREATE FUNCTION information_schema.hidden_touch() RETURNS int LANGUAGE sql
  AS 'INSERT INTO crm.hidden_log VALUES (2) RETURNING n';
-- Orders compared by their customers' K: 1 for a Smith, 0 for anyone else.
CREATE FUNCTION crm.hidden_cmp(a crm.orders, b crm.orders) RETURNS int LANGUAGE sql
  AS $$SELECT (SELECT {KC} FROM crm.customers c WHERE c.id = b.customer_id)
            - (SELECT {KC} FROM crm.customers c WHERE c.id = a.customer_id)$$;
CREATE FUNCTION crm.hidden_lt(a crm.orders, b crm.orders) RETURNS bool LANGUAGE sql
  AS 'SELECT crm.hidden_cmp(a, b) < 0';
CREATE FUNCTION crm.hidden_le(a crm.orders, b crm.orders) RETURNS bool LANGUAGE sql
  AS 'SELECT crm.hidden_cmp(a, b) <= 0';
CREATE FUNCTION crm.hidden_eq(a crm.orders, b crm.orders) RETURNS bool LANGUAGE sql
  AS 'SELECT crm.hidden_cmp(a, b) = 0';
CREATE FUNCTION crm.hidden_ge(a crm.orders, b crm.orders) RETURNS bool LANGUAGE sql
  AS 'SELECT crm.hidden_cmp(a, b) >= 0';
CREATE FUNCTION crm.hidden_gt(a crm.orders, b crm.orders) RETURNS bool LANGUAGE sql
  AS 'SELECT crm.hidden_cmp(a, b) > 0';
CREATE OPERATOR crm.<<< (LEFTARG = crm.orders, RIGHTARG = crm.orders, FUNCTION = crm.hidden_lt);
CREATE OPERATOR crm.<<= (LEFTARG = crm.orders, RIGHTARG = crm.orders, FUNCTION = crm.hidden_le);
CREATE OPERATOR crm.=== (LEFTARG = crm.orders, RIGHTARG = crm.orders, FUNCTION = crm.hidden_eq);
CREATE OPERATOR crm.>>= (LEFTARG = crm.orders, RIGHTARG = crm.orders, FUNCTION = crm.hidden_ge);
CREATE OPERATOR crm.>>> (LEFTARG = crm.orders, RIGHTARG = crm.orders, FUNCTION = crm.hidden_gt);
CREATE OPERATOR CLASS crm.hidden_orders_ops DEFAULT FOR TYPE crm.orders USING btree AS
  OPERATOR 1 crm.<<<, OPERATOR 2 crm.<<=, OPERATOR 3 crm.===, OPERATOR 4 crm.>>=,
  OPERATOR 5 crm.>>>, FUNCTION 1 crm.hidden_cmp(crm.orders, crm.orders);
"""
DROPS = f"""
DROP OPERATOR FAMILY crm.hidden_orders_ops USING btree CASCADE;
DROP OPERATOR crm.<<< ({ROWS}), crm.<<= ({ROWS}), crm.=== ({ROWS}), crm.>>= ({ROWS}),
  crm.>>> ({ROWS});
DROP FUNCTION crm.hidden_lt({ROWS}), crm.hidden_le({ROWS}), crm.hidden_eq({ROWS}),
  crm.hidden_ge({ROWS}), crm.hidden_gt({ROWS}), crm.hidden_cmp({ROWS});
DROP CAST (crm.orders AS text);
DROP OPERATOR crm.= ({ROWS});
DROP FUNCTION crm.hidden_is_smith, crm.hidden_userpath, crm.hidden_gives;
DROP DOMAIN crm.hidden_dom;
DROP FUNCTION crm.hidden_leak;
DROP SCHEMA {GATEWAY_LOGIN} CASCADE;
DROP FUNCTION information_schema.hidden_contacts, pg_catalog.hidden_contacts_pg,
  crm.hidden_pathed, crm.hidden_order_contact, crm.hidden_email, crm.hidden_via_view,
  crm.hidden_via_view_pl, crm.hidden_touch, information_schema.hidden_touch;
DROP VIEW public.hidden_public_contacts, crm.hidden_view;
DROP TABLE crm.hidden_log;
"""


@pytest.fixture(scope="module")
def hidden(pg_dsn: str, governed: GatewayProcess) -> Iterator[None]:
    # After the gateway fixtures: they provision the login the objects are given to.
    with psycopg.connect(pg_dsn, dbname="custos_demo", autocommit=True) as connection:
        connection.execute(OBJECTS)
        connection.execute(f"GRANT ALL ON crm.hidden_log TO {GATEWAY_LOGIN}")
        views = ("public.hidden_public_contacts", "crm.hidden_view", f"{GATEWAY_LOGIN}.orders")
        for view in views:
            connection.execute(f"ALTER VIEW {view} OWNER TO {GATEWAY_LOGIN}")
        yield
        connection.execute(DROPS)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM information_schema.hidden_contacts() LIMIT 5",
        "SELECT * FROM hidden_contacts_pg() LIMIT 5",
        "SELECT * FROM pg_catalog.hidden_contacts_pg() LIMIT 5",
        "SELECT * FROM crm.hidden_pathed() LIMIT 5",
        "SELECT o::text FROM crm.orders o ORDER BY o.id LIMIT 5",
        "SELECT CAST(o AS text) FROM crm.orders o ORDER BY o.id LIMIT 5",
        "SELECT o.id, o.hidden_email FROM crm.orders o ORDER BY o.id LIMIT 5",
        "SELECT orders.hidden_email FROM crm.orders ORDER BY id LIMIT 5",
        "SELECT * FROM crm.hidden_via_view() LIMIT 5",
        "SELECT * FROM crm.hidden_via_view_pl() LIMIT 5",
        # The implicit cast runs where none is written.
        "SELECT btrim(o) FROM crm.orders o ORDER BY o.id LIMIT 5",
        "SELECT string_agg(o, ',') FROM crm.orders o WHERE o.id < 5",
    ],
)
def test_emails_a_hidden_call_returns_are_refused(
    hidden: None,
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    customer_emails: frozenset[bytes],
    sql: str,
) -> None:
    assert emails_in_rows(superuser.execute(sql).fetchall(), customer_emails), "directly"
    with psycopg_connect(governed) as agent:
        assert_no_email_in_clear(agent, sql, customer_emails)


def test_rows_ranked_by_a_default_operator_class_are_a_search(
    hidden: None, governed: GatewayProcess, superuser: psycopg.Connection
) -> None:
    # The statement names no function: sorting orders' rows runs crm.hidden_cmp.
    sql = (
        "SELECT o.id, c.full_name FROM crm.orders o JOIN crm.customers c"
        " ON c.id = o.customer_id ORDER BY o LIMIT 5"
    )
    assert_smiths_found_and_refused(governed, superuser, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT o.hidden_touch FROM crm.orders o WHERE o.id = 1",
        "SELECT information_schema.hidden_touch()",
    ],
)
def test_a_write_a_hidden_call_makes_is_refused(
    hidden: None, governed: GatewayProcess, superuser: psycopg.Connection, sql: str
) -> None:
    count = "SELECT count(*) FROM crm.hidden_log"
    before = superuser.execute(count).fetchone()
    with psycopg_connect(governed) as agent:
        assert refused(agent, sql) == "42501"
    assert superuser.execute(count).fetchone() == before


def test_a_body_whose_search_path_names_the_login_is_not_seen_into(
    hidden: None,
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    customer_emails: frozenset[bytes],
) -> None:
    # "$user" is the login running it: the gateway's, whose schema holds an `orders` view.
    sql = "SELECT * FROM crm.hidden_userpath() LIMIT 5"
    superuser.execute(f"SET ROLE {GATEWAY_LOGIN}")
    try:
        assert emails_in_rows(superuser.execute(sql).fetchall(), customer_emails)
    finally:
        superuser.execute("RESET ROLE")
    with psycopg_connect(governed) as agent:
        assert refused(agent, sql) == "42501"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT crm.hidden_gives()",
        """SELECT * FROM json_to_record('{"a": 42}') AS x(a crm.hidden_dom)""",
    ],
)
def test_a_domain_check_run_unnamed_is_followed(
    hidden: None,
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    customer_emails: frozenset[bytes],
    sql: str,
) -> None:
    with pytest.raises(psycopg.errors.RaiseException) as raised:
        superuser.execute(sql)
    assert emails_in_rows([(str(raised.value),)], customer_emails), "directly, the error"
    with psycopg_connect(governed) as agent:
        assert refused(agent, sql) == "42501"


def test_someones_equality_on_a_row_is_a_search(
    hidden: None, governed: GatewayProcess, superuser: psycopg.Connection
) -> None:
    sql = (
        "SELECT o.id, c.full_name FROM crm.orders o JOIN crm.customers c"
        " ON c.id = o.customer_id WHERE o = o ORDER BY o.id LIMIT 5"
    )
    superuser.execute("SET search_path = crm, public")
    found = {name for _, name in superuser.execute(sql).fetchall()}
    assert found, "directly, it finds customers"
    assert all("mith" in name for name in found), "directly, only Smiths"
    with psycopg_connect(governed) as agent:
        agent.execute("SET search_path = crm, public")
        assert refused(agent, sql) == "42501"
        assert refused(agent, sql.replace("o = o", "o IS NOT DISTINCT FROM o")) == "42501"


def test_columns_named_on_a_table_read_as_before(hidden: None, governed: GatewayProcess) -> None:
    with psycopg_connect(governed) as agent:
        rows = agent.execute("SELECT p.id, p.name FROM crm.products p ORDER BY p.id LIMIT 3")
        assert len(rows.fetchall()) == 3
