"""Views read through their definitions: what a view's columns carry is what policy sees.

Before, a view was a relation like any other that no policy catalog lists: `SELECT email
FROM crm.customer_contacts`, a DBA's view over crm.customers, returned every email in clear
to the agent, which sees emails only masked; a view computing a value from a name made
`WHERE k = 1` a search of names no rule saw. Now the gateway reads each view's definition
from the catalog (custos/upstream/reach.py) and analyses the statement as if the view were
the subquery it is (custos/sql/views.py). Each case is judged by evidence: what the agent
gets back, against what the same statement gives a superuser.
"""

from __future__ import annotations

# ruff: noqa: F811 - the fixtures of test_session_attacks, imported, are redefined as arguments
from collections.abc import Iterator

import psycopg
import pytest
from gateway_fixtures import GatewayProcess
from test_policy_attacks import names_in, refused
from test_policy_commands import DEMO_POLICY, run
from test_policy_evasions import K
from test_session_attacks import (  # noqa: F401 - fixtures
    assert_no_email_in_clear,
    customer_emails,
    customer_names,
    emails_in_rows,
    governed,
    psycopg_connect,
    rows_of,
    superuser,
)

from custos.demo.embedded import GATEWAY_LOGIN
from custos.sql.analysis import analyze
from custos.sql.facts import PatternMatch
from custos.sql.views import through_views
from custos.upstream.reach import reach_query, views_from_rows

# Created as a DBA would, with crm on the search path: names in the definitions unqualified.
VIEWS = f"""
SET search_path = crm;
CREATE VIEW customer_contacts AS SELECT id, full_name, email, city FROM customers;
CREATE VIEW contacts_renamed (customer, reach) AS SELECT id, email FROM customer_contacts;
CREATE VIEW name_scores AS SELECT id, {K} AS k FROM customers;
CREATE VIEW name_scores_outer AS SELECT s.id, s.k AS score FROM name_scores s;
CREATE VIEW test_addresses AS
  SELECT id, city FROM customers WHERE email NOT LIKE '%@example.org';
CREATE VIEW order_status AS SELECT id, status FROM orders;
CREATE MATERIALIZED VIEW contacts_snapshot AS SELECT id, email FROM customers;
CREATE VIEW pg_stat_contacts AS SELECT id, email FROM customers;
CREATE VIEW information_schema.contact_list AS SELECT id, email FROM crm.customers;
CREATE FUNCTION all_contacts() RETURNS TABLE (id bigint, email text) LANGUAGE sql
  AS 'SELECT id, email FROM customers';
CREATE FUNCTION all_contacts_pinned() RETURNS TABLE (id bigint, email text) LANGUAGE plpgsql
  SET search_path = crm AS 'BEGIN RETURN QUERY SELECT c.id, c.email FROM customers c; END';
CREATE VIEW function_contacts AS SELECT * FROM all_contacts();
CREATE FUNCTION rows_up_to(n int) RETURNS SETOF int LANGUAGE sql
  AS 'SELECT generate_series(1, n)';
CREATE OPERATOR ### (RIGHTARG = int, FUNCTION = rows_up_to);
RESET search_path;
"""
NAMES = [
    "pg_stat_contacts",
    "function_contacts",
    "customer_contacts",
    "contacts_renamed",
    "name_scores",
    "name_scores_outer",
    "test_addresses",
    "order_status",
    "contacts_snapshot",
]


@pytest.fixture(scope="module")
def views(pg_dsn: str, governed: GatewayProcess) -> Iterator[None]:
    # After the gateway fixtures: they provision the login the views are given to.
    with psycopg.connect(pg_dsn, dbname="custos_demo", autocommit=True) as connection:
        connection.execute(VIEWS)
        for name in NAMES:
            kind = "MATERIALIZED VIEW" if name == "contacts_snapshot" else "VIEW"
            connection.execute(f"ALTER {kind} crm.{name} OWNER TO {GATEWAY_LOGIN}")
        connection.execute(f"ALTER VIEW information_schema.contact_list OWNER TO {GATEWAY_LOGIN}")
        yield
        connection.execute(
            "DROP MATERIALIZED VIEW crm.contacts_snapshot;"
            "DROP VIEW crm.contacts_renamed, crm.customer_contacts, crm.name_scores_outer,"
            " crm.name_scores, crm.test_addresses, crm.order_status, crm.pg_stat_contacts,"
            " information_schema.contact_list, crm.function_contacts;"
            "DROP FUNCTION crm.all_contacts, crm.all_contacts_pinned;"
            "DROP OPERATOR crm.### (NONE, int); DROP FUNCTION crm.rows_up_to"
        )


# --- what the catalog says ----------------------------------------------------------------


def test_the_catalog_gives_every_view_a_relation_reads_with_qualified_names(
    views: None, superuser: psycopg.Connection
) -> None:
    superuser.execute("SELECT set_config('search_path', '', false)")
    rows = superuser.execute(reach_query(["crm.contacts_renamed", "crm.orders"])).fetchall()
    found = views_from_rows(rows)
    assert set(found) == {"crm.contacts_renamed"}, "a table reads no view"
    definitions = found["crm.contacts_renamed"]
    assert set(definitions) == {"crm.contacts_renamed", "crm.customer_contacts"}
    assert "crm.customers" in definitions["crm.customer_contacts"]
    assert "crm.customer_contacts" in definitions["crm.contacts_renamed"]


# --- the analysis read through views --------------------------------------------------------

CONTACTS = {
    "crm.contacts": "SELECT c.id, c.email, upper(c.full_name) AS shout FROM crm.customers c"
}


def facts(sql: str, definitions: dict[str, str] = CONTACTS):  # type: ignore[no-untyped-def]
    analysis = through_views(analyze(sql, ("crm",)), ("crm",), definitions)
    assert analysis.error is None, analysis.error
    return analysis.statements[0]


def test_a_views_columns_carry_the_base_columns_they_come_from() -> None:
    statement = facts("SELECT x.email, shout FROM contacts x LIMIT 5")
    assert [output.sources for output in statement.output_columns] == [
        frozenset({("crm.customers", "email")}),
        frozenset({("crm.customers", "full_name")}),
    ]
    assert statement.relations_read == {"crm.contacts", "crm.customers"}
    assert statement.columns_read == {"crm.customers": frozenset({"email", "full_name"})}


def test_only_the_view_columns_a_statement_uses_count_as_read() -> None:
    statement = facts("SELECT id FROM contacts LIMIT 5")
    assert statement.columns_read == {"crm.customers": frozenset({"id"})}


def test_a_views_computed_column_compared_is_a_search_of_its_base_column() -> None:
    for sql in (
        "SELECT id FROM contacts WHERE shout = 'SMITH' LIMIT 5",
        "SELECT id FROM contacts ORDER BY shout LIMIT 5",
        "SELECT id FROM crm.contacts v WHERE v.shout = 'x' LIMIT 5",
        "SELECT id FROM crm.contacts WHERE crm.contacts.shout = 'x' LIMIT 5",
    ):
        matches = facts(sql).pattern_matches
        assert PatternMatch("crm.customers", "full_name", "~", None) in matches, sql


def test_a_views_plain_column_compared_is_no_search() -> None:
    assert facts("SELECT id FROM contacts WHERE email = 'a@b.c' LIMIT 5").pattern_matches == ()


def test_a_views_own_filters_are_not_the_statements_searches() -> None:
    definitions = {"crm.v": "SELECT c.id FROM crm.customers c WHERE c.email ~~ '%x%'"}
    statement = facts("SELECT id FROM v LIMIT 5", definitions)
    assert statement.pattern_matches == ()
    assert statement.columns_read == {"crm.customers": frozenset({"id"})}


@pytest.mark.parametrize(
    ("sql", "written"),
    [
        ("UPDATE contacts SET email = 'x' WHERE id = 1", {"email"}),
        ("INSERT INTO contacts (id, email) VALUES (1, 'x')", {"id", "email"}),
        ("INSERT INTO contacts VALUES (1, 'x')", {"id", "email", "full_name"}),
    ],
)
def test_a_write_through_a_view_writes_its_base_columns(sql: str, written: set[str]) -> None:
    statement = facts(sql)
    assert "crm.customers" in statement.relations_written
    assert statement.columns_written["crm.customers"] == written


def test_a_delete_through_a_view_deletes_from_its_base_relation() -> None:
    statement = facts("DELETE FROM contacts WHERE shout = 'X'")
    assert "crm.customers" in statement.relations_written
    assert PatternMatch("crm.customers", "full_name", "~", None) in statement.pattern_matches


def test_a_definition_that_cannot_be_analysed_refuses_the_statement() -> None:
    analysis = through_views(
        analyze("SELECT * FROM contacts", ("crm",)), ("crm",), {"crm.contacts": "SELEC 1"}
    )
    assert analysis.error is not None
    assert "crm.contacts" in analysis.error
    assert analysis.error_sqlstate == "0A000"


def test_a_trailing_comment_does_not_swallow_the_next_statement() -> None:
    analysis = analyze("SELECT id FROM contacts -- the first\n; SELECT shout FROM contacts", ())
    assert len(analysis.statements) == 2
    viewed = through_views(analysis, ("crm",), CONTACTS)
    assert len(viewed.statements) == 2
    assert viewed.statements[1].output_columns[0].sources == {("crm.customers", "full_name")}


# --- through the gateway --------------------------------------------------------------------


def test_emails_through_a_view_are_as_protected_as_in_their_table(
    views: None,
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    customer_emails: frozenset[bytes],
) -> None:
    sql = "SELECT id, email FROM crm.customer_contacts ORDER BY id LIMIT 5"
    assert emails_in_rows(superuser.execute(sql).fetchall(), customer_emails)
    with psycopg_connect(governed) as agent:
        for statement in (
            sql,
            "SELECT customer, reach FROM crm.contacts_renamed ORDER BY 1 LIMIT 5",
            "SELECT * FROM crm.contacts_renamed ORDER BY 1 LIMIT 5",
            "SELECT email FROM crm.contacts_snapshot ORDER BY id LIMIT 5",
            "SELECT to_json(c) FROM crm.customer_contacts c ORDER BY id LIMIT 5",
        ):
            assert_no_email_in_clear(agent, statement, customer_emails)
        # Masked as from the table: the address's domain, never its name.
        masked = rows_of(agent, sql)
        assert [email.partition("@")[0] for _, email in masked] == ["***"] * 5
        # Columns that are not personal read as they would from the table.
        assert len(rows_of(agent, "SELECT id, city FROM crm.customer_contacts LIMIT 5")) == 5
        # The definition names its tables whatever the session's search path.
        agent.execute("SET search_path = public")
        assert_no_email_in_clear(agent, sql, customer_emails)


def test_a_view_does_not_lift_the_page_limit_of_its_table(
    views: None,
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    customer_names: frozenset[str],
) -> None:
    sql = "SELECT full_name FROM crm.customer_contacts"
    assert len(names_in(superuser.execute(sql).fetchall(), customer_names)) > 100
    with psycopg_connect(governed) as agent:
        assert refused(agent, sql) == "42501"
        assert len(rows_of(agent, f"{sql} ORDER BY id LIMIT 100")) == 100


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT s.id, c.full_name FROM crm.name_scores s JOIN crm.customers c USING (id)"
        " WHERE s.k = 1 ORDER BY s.id LIMIT 100",
        "SELECT s.id, c.full_name FROM crm.name_scores_outer s JOIN crm.customers c USING (id)"
        " WHERE s.score = 1 ORDER BY s.id LIMIT 100",
        "SELECT s.id, c.full_name FROM crm.name_scores s JOIN crm.customers c USING (id)"
        " ORDER BY s.k DESC, s.id LIMIT 5",
    ],
)
def test_a_search_by_a_views_computed_column_is_refused(
    views: None, governed: GatewayProcess, superuser: psycopg.Connection, sql: str
) -> None:
    found = {name for _, name in superuser.execute(sql).fetchall()}
    assert found, "directly, it finds customers"
    assert all("mith" in name for name in found), "directly, it finds Smiths"
    with psycopg_connect(governed) as agent:
        assert refused(agent, sql) == "42501"
        assert rows_of(agent, sql) == []
        # The view's columns as they are read as before.
        assert len(rows_of(agent, "SELECT id FROM crm.name_scores ORDER BY id LIMIT 5")) == 5


def test_a_views_own_search_is_not_the_agents(views: None, governed: GatewayProcess) -> None:
    with psycopg_connect(governed) as agent:
        assert len(rows_of(agent, "SELECT id, city FROM crm.test_addresses LIMIT 5")) == 5
        # A view over a table without personal data reads without a page limit.
        assert len(rows_of(agent, "SELECT id, status FROM crm.order_status")) > 100


def test_explain_with_the_database_reads_through_views(
    views: None, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, dbname="custos_demo")
    argv = ("policy", "explain", DEMO_POLICY, "--role", "agent", "--search-path", "crm")
    sql = "SELECT reach FROM contacts_renamed ORDER BY customer LIMIT 5"
    assert run(*argv, sql) == 0  # on the text alone: a relation no catalog lists
    assert "decision:        allow" in capsys.readouterr().out.splitlines()
    assert run(*argv, "--upstream", dsn, sql) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "decision:        mask" in lines
    assert "deciding rule:   agents-mask-contact-details" in lines
    assert any(line.startswith("  relations read:") and "crm.customers" in line for line in lines)


def test_a_long_statement_is_read_through_its_views_off_the_event_loop(
    views: None, governed: GatewayProcess, superuser: psycopg.Connection
) -> None:
    # Longer than the event loop analyses itself (session/texts.py INLINE_CHARS): both its
    # analysis and its reading through the view run in the analysis workers.
    padding = " ".join(f"/* {n:05} */" for n in range(1000))
    sql = (
        "SELECT s.id, c.full_name FROM crm.name_scores s JOIN crm.customers c USING (id)"
        f" WHERE s.k = 1 {padding} ORDER BY s.id LIMIT 100"
    )
    assert len(sql) > 10_000
    found = {name for _, name in superuser.execute(sql).fetchall()}
    assert found, "directly, it finds customers"
    assert all("mith" in name for name in found), "directly, it finds Smiths"
    with psycopg_connect(governed) as agent:
        assert refused(agent, sql) == "42501"
        plain = f"SELECT id FROM crm.name_scores {padding} ORDER BY id LIMIT 5"
        assert len(rows_of(agent, plain)) == 5


def test_a_view_named_like_a_catalog_relation_is_read_through(
    views: None, governed: GatewayProcess, customer_emails: frozenset[bytes]
) -> None:
    with psycopg_connect(governed) as agent:
        agent.execute("SET search_path = crm")
        # PostgreSQL finds no pg_stat_contacts in pg_catalog and takes crm's.
        sql = "SELECT id, email FROM pg_stat_contacts LIMIT 5"
        assert len(assert_no_email_in_clear(agent, sql, customer_emails)) == 5
        assert refused(agent, "SELECT id FROM pg_stat_contacts") == "42501"  # no page limit


def test_a_view_someone_created_in_information_schema_is_read_through(
    views: None, governed: GatewayProcess, customer_emails: frozenset[bytes]
) -> None:
    with psycopg_connect(governed) as agent:
        sql = "SELECT id, email FROM information_schema.contact_list LIMIT 5"
        assert len(assert_no_email_in_clear(agent, sql, customer_emails)) == 5
        # The schema's own views read as before.
        tables = "SELECT table_name FROM information_schema.tables LIMIT 5"
        assert len(rows_of(agent, tables)) == 5


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, email FROM crm.all_contacts() LIMIT 5",
        "SELECT id, email FROM crm.all_contacts_pinned() LIMIT 5",
        "SELECT id, email FROM crm.function_contacts LIMIT 5",
        "SELECT id FROM crm.all_contacts()",
    ],
)
def test_what_a_function_reads_counts_as_read_by_its_caller(
    views: None,
    governed: GatewayProcess,
    superuser: psycopg.Connection,
    customer_emails: frozenset[bytes],
    sql: str,
) -> None:
    superuser.execute("SET search_path = crm")
    got = superuser.execute(sql).fetchall()
    assert len(got) >= 5, "directly, the function returns customers"
    with psycopg_connect(governed) as agent:
        agent.execute("SET search_path = crm")
        # Refused (no page limit), or every column masked: what a function returns is
        # not traced to the columns it comes from. Redacted, a number is 0.
        rows = assert_no_email_in_clear(agent, sql, customer_emails)
        assert all(value in (None, "[redacted]", 0) for row in rows for value in row)


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT id, full_name, ({K}).rows_up_to FROM crm.customers ORDER BY id LIMIT 100",
        f"SELECT id, full_name, abs(({K}).rows_up_to) FROM crm.customers ORDER BY id LIMIT 100",
        f"SELECT id, full_name, OPERATOR(crm.###) ({K}) FROM crm.customers ORDER BY id LIMIT 100",
        f"SELECT id, full_name, ### ({K}) FROM crm.customers ORDER BY id LIMIT 100",
    ],
)
def test_a_set_returning_function_by_field_notation_or_operator_is_a_search(
    views: None, governed: GatewayProcess, superuser: psycopg.Connection, sql: str
) -> None:
    superuser.execute("SET search_path = crm")
    found = {row[1] for row in superuser.execute(sql).fetchall()}
    assert found, "directly, it finds customers"
    assert all("mith" in name for name in found), "directly, it finds Smiths"
    with psycopg_connect(governed) as agent:
        agent.execute("SET search_path = crm")
        assert refused(agent, sql) == "42501"
        assert rows_of(agent, sql) == []
