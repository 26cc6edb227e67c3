"""The risk copies_personal_data: statements that store personal columns where masking
cannot follow them, analysed from real SQL and decided by a policy that refuses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from custos.cli import main
from custos.policy import DecisionRequest, Effect, PolicyEngine, load_policy
from custos.policy.copies import copies_risk
from custos.policy.source import PolicyError
from custos.sql.analysis import analyze
from custos.sql.facts import ALL_COLUMNS, StatementFacts, ValueCopy
from custos.sql.reached import Reach, with_function_bodies
from custos.sql.views import through_views

POLICY = """
catalog:
  crm.customers:
    subject: id
    columns: {full_name: name, email: email, phone: phone, city: address}
  crm.support_tickets:
    subject: customer_id
    columns: {body: free_text}
rules:
  - id: no-copies
    match: {risks: {copies_personal_data: true}}
    effect: deny
    message: personal data stays where masking follows it
  - id: everything-else
    effect: allow
"""
ENGINE = PolicyEngine(load_policy(POLICY))
SECRET = "alice@example.com"  # a value from the SQL: never in a message or a fact
PATH = ("public",)


def facts(sql: str) -> StatementFacts:
    analysis = analyze(sql, PATH)
    assert analysis.error is None, analysis.error
    (statement,) = analysis.statements
    return statement


def risk(sql: str) -> str | None:
    return copies_risk(facts(sql), ENGINE.catalog)


def decided(sql: str) -> tuple[Effect, str | None, str]:
    decision = ENGINE.decide(DecisionRequest("agent", analyze(sql, PATH)))
    return decision.effect, decision.deciding_rule, decision.message


LAUNDERING = {
    "CREATE TABLE t AS SELECT email FROM crm.customers": "(email) into public.t.email",
    "CREATE TABLE t (contact) AS SELECT email FROM crm.customers": "public.t.contact",
    "SELECT email INTO t FROM crm.customers": "(email) into public.t.email",
    "SELECT id, phone INTO TEMP t FROM crm.customers": "(phone) into pg_temp.t.phone",
    "INSERT INTO t SELECT email FROM crm.customers": "(email) into public.t",
    "INSERT INTO t (note) SELECT lower(email) FROM crm.customers": "public.t.note",
    "INSERT INTO t VALUES ((SELECT email FROM crm.customers LIMIT 1))": "public.t",
    "INSERT INTO t SELECT * FROM crm.customers": "(address, email, name, phone) into public.t",
    "CREATE MATERIALIZED VIEW m AS SELECT email FROM crm.customers": "public.m.email",
    "CREATE VIEW v AS SELECT full_name AS n FROM crm.customers": "(name) into public.v.n",
    "CREATE TEMP VIEW v AS SELECT email FROM crm.customers": "pg_temp.v.email",
    "UPDATE t SET note = c.email FROM crm.customers c WHERE t.id = c.id": "public.t.note",
    "UPDATE t SET (a, b) = (SELECT id, phone FROM crm.customers LIMIT 1)": "public.t.a",
    "MERGE INTO t USING crm.customers c ON t.id = c.id "
    "WHEN MATCHED THEN UPDATE SET note = c.email": "(email) into public.t.note",
    "MERGE INTO t USING crm.customers c ON t.id = c.id "
    "WHEN NOT MATCHED THEN INSERT (id, note) VALUES (c.id, c.phone)": "public.t.note",
    "WITH x AS (SELECT email FROM crm.customers) INSERT INTO t SELECT * FROM x": "public.t",
    "WITH d AS (DELETE FROM crm.customers RETURNING email) INSERT INTO t SELECT * FROM d": "t",
    "COPY (SELECT email FROM crm.customers) TO '/tmp/emails'": "a server file or program",
    "COPY crm.customers TO PROGRAM 'cat'": "into a server file or program",
    "COPY crm.support_tickets (body) TO '/tmp/tickets'": "(free_text) into a server file",
    # Inside the catalog, but in a column of another category.
    "UPDATE crm.customers SET full_name = email": "(email) into crm.customers.full_name",
    "INSERT INTO crm.customers (id, email) SELECT id, email FROM crm.customers "
    "ON CONFLICT (id) DO UPDATE SET city = excluded.email": "crm.customers.city",
    "INSERT INTO crm.customers (email, full_name) "
    "SELECT (ROW(email, email)).* FROM crm.customers": "crm.customers.full_name",
    # Free text quotes emails, but its category is its own.
    "UPDATE crm.customers c SET email = t.body FROM crm.support_tickets t": "(free_text)",
    # Rows chosen by a personal column carry it, though no value of it is stored.
    "INSERT INTO t SELECT c.id, n FROM crm.customers c, generate_series(0, 255) n "
    "WHERE ascii(substr(c.email, 1, 1)) = n": "(email) into public.t",
    f"UPDATE t SET flag = true FROM crm.customers c WHERE c.email = '{SECRET}'": "(email)",
    # Which prepared statement, and so which columns, is not known: any of them.
    "CREATE TABLE t AS EXECUTE p": "(address, email, free_text, name, phone) into public.t",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT email FROM crm.customers": "public.t.email",
}


@pytest.mark.parametrize("sql", LAUNDERING)
def test_each_form_of_laundering_is_the_risk_and_refused(sql: str) -> None:
    described = risk(sql)
    assert described is not None
    assert described.startswith("copies personal data ")
    assert LAUNDERING[sql] in described
    effect, rule, message = decided(sql)
    assert (effect, rule) == (Effect.DENY, "no-copies")
    assert described in message
    assert SECRET not in message


NOT_COPIES = [
    # Non-personal columns, subjects included: masking masks none of them.
    "CREATE TABLE t AS SELECT id FROM crm.customers",
    "INSERT INTO t (customer) SELECT customer_id FROM crm.support_tickets",
    "INSERT INTO t SELECT * FROM crm.orders",
    # Literals, parameters and defaults.
    "INSERT INTO t VALUES ('x', 1)",
    "INSERT INTO t (note) SELECT 'x' FROM crm.customers",
    "UPDATE t SET note = $1 WHERE id = 1",
    "INSERT INTO crm.customers DEFAULT VALUES",
    # Into a column catalogued with the values' own category: masking follows them.
    "INSERT INTO crm.customers (email) SELECT email FROM crm.customers",
    "UPDATE crm.customers SET email = lower(email)",
    "UPDATE crm.customers SET city = upper(city) WHERE city = 'Leeds'",
    # Reads, which masking rewrites, and statements that store nothing.
    "SELECT email FROM crm.customers",
    "COPY (SELECT email FROM crm.customers) TO STDOUT",
    "DELETE FROM crm.customers WHERE email = 'x'",
    "EXPLAIN CREATE TABLE t AS SELECT email FROM crm.customers",
    # Dynamic code over no personal column: its own risk, `dynamic`.
    "DO $$ BEGIN PERFORM 1; END $$",
]


@pytest.mark.parametrize("sql", NOT_COPIES)
def test_what_is_not_a_copy_of_personal_data(sql: str) -> None:
    assert risk(sql) is None
    assert decided(sql)[1] != "no-copies"


def test_the_analysis_says_where_each_value_goes() -> None:
    copies = facts(
        "INSERT INTO t (a, b, c) SELECT id, upper(full_name), 'x' FROM crm.customers"
    ).copies
    assert copies == (
        ValueCopy("public.t", "a", frozenset({("crm.customers", "id")})),
        ValueCopy("public.t", "b", frozenset({("crm.customers", "full_name")})),
        ValueCopy("public.t", "c", frozenset()),
    )
    # A `*` of unknown width: every column from it on may get any of its values.
    unknown = facts("INSERT INTO t (a, b, c) SELECT 1, * FROM crm.customers").copies
    assert {(copy.column, copy.sources) for copy in unknown} == {
        ("a", frozenset()),
        ("b", frozenset({("crm.customers", ALL_COLUMNS)})),
        ("c", frozenset({("crm.customers", ALL_COLUMNS)})),
    }
    # No column list: which of the table's columns is not known.
    assert {copy.column for copy in facts("INSERT INTO t SELECT email FROM x").copies} == {"*"}


def test_dynamic_code_over_personal_data_is_the_risk() -> None:
    sql = "SELECT email, query_to_xml('select 1', true, true, '') FROM crm.customers"
    described = risk(sql)
    assert described is not None
    assert "dynamic code" in described
    assert decided(sql)[:2] == (Effect.DENY, "no-copies")


def test_what_called_functions_read_goes_with_every_value_stored() -> None:
    sql = "INSERT INTO t (note) SELECT public.contact(7)"
    assert risk(sql) is None
    bodies = {
        "public.contact": Reach(
            relations=frozenset({"crm.customers"}),
            columns=frozenset({("crm.customers", "email")}),
        )
    }
    (statement,) = with_function_bodies(analyze(sql, PATH), bodies, PATH).statements
    assert copies_risk(statement, ENGINE.catalog) == (
        "copies personal data (email) into public.t.note"
    )


def test_views_are_followed_to_their_base_columns() -> None:
    definitions = {"public.contacts": "SELECT c.id, c.email AS contact FROM crm.customers c"}

    def viewed(sql: str) -> str | None:
        (statement,) = through_views(analyze(sql, PATH), PATH, definitions).statements
        return copies_risk(statement, ENGINE.catalog)

    assert viewed("INSERT INTO t SELECT contact FROM public.contacts") == (
        "copies personal data (email) into public.t"
    )
    assert viewed("INSERT INTO t SELECT id FROM public.contacts") is None
    # Writing through the view writes its base column: email into email stays catalogued.
    assert viewed("UPDATE public.contacts SET contact = lower(contact)") is None
    assert viewed("UPDATE public.contacts v SET contact = c.full_name FROM crm.customers c") == (
        "copies personal data (name) into crm.customers.email"
    )


def test_the_planners_statistics_count_as_every_column() -> None:
    described = risk("INSERT INTO t SELECT most_common_vals::text FROM pg_stats")
    assert described is not None
    assert "email" in described


def test_a_risk_condition_must_ask_for_the_risk() -> None:
    with pytest.raises(PolicyError, match="requires the risk to be present"):
        load_policy(
            "rules:\n  - id: r\n    match: {risks: {copies_personal_data: false}}\n"
            "    effect: deny\n    message: m\n"
        )


def test_explain_names_the_risk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    sql = f"INSERT INTO t (note) SELECT email FROM crm.customers WHERE full_name = '{SECRET}'"
    assert main(["policy", "explain", str(policy), "--role", "agent", sql]) == 0
    out = capsys.readouterr().out
    risks = "copies personal data (email, name) into public.t.note"
    assert f"  risks:               {risks}" in out.splitlines()
    assert main(["policy", "explain", str(policy), "--role", "agent", "--json", sql]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["deciding_rule"] == "no-copies"
    assert decision["facts"]["risks"] == [risks]
    assert SECRET not in json.dumps(decision)
