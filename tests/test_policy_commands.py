"""`custos policy validate | explain | diff | schema`, through their own argument parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from custos.policy import PolicyEngine, load_policy
from custos.policy.commands import add_policy_commands, default_corpus
from custos.policy.models import json_schema_text

ROOT = Path(__file__).resolve().parent.parent
DEMO_POLICY = ROOT / "custos" / "demo" / "policy.yaml"
CORPUS = ROOT / "tests" / "policy_corpus.yaml"


def run(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="custos")
    add_policy_commands(parser.add_subparsers(required=True))
    arguments = parser.parse_args([str(argument) for argument in argv])
    result: int = arguments.command(arguments)
    return result


def changed_policy(tmp_path: Path) -> Path:
    """The demo policy with agents allowed to search personal data with any pattern."""
    text = DEMO_POLICY.read_text()
    path = tmp_path / "policy.yaml"
    wildcard = "match: {roles: [agent], risks: {wildcard_pattern: true}}"
    assert wildcard in text
    path.write_text(text.replace(wildcard, wildcard.replace("agent", "nobody")))
    return path


# --- validate ----------------------------------------------------------------------------------


def test_validate_a_good_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "validate", DEMO_POLICY) == 0
    engine = PolicyEngine(load_policy(DEMO_POLICY))
    rules = len(engine.document.rules)
    assert capsys.readouterr().out == f"valid: 3 roles, {rules} rules, version {engine.version}\n"


def test_validate_a_bad_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - id: r\n    match: {kinds: [selec]}\n    effect: mask\n")
    assert run("policy", "validate", path) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"invalid policy {path}:"
    assert lines[1].startswith("  rules[0].match.kinds[0]: 'selec' is not a statement kind")


def test_validate_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "validate", tmp_path / "nope.yaml") == 1
    assert "cannot read the file: No such file or directory" in capsys.readouterr().err


# --- explain -----------------------------------------------------------------------------------


def test_explain_prints_decision_facts_rules_and_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sql = "SELECT email FROM crm.customers WHERE email LIKE '%@example.com' LIMIT 5"
    assert run("policy", "explain", DEMO_POLICY, "--role", "agent", sql) == 0
    out = capsys.readouterr().out
    version = PolicyEngine(load_policy(DEMO_POLICY)).version
    assert out.splitlines() == [
        "decision:        deny",
        "deciding rule:   agents-no-wildcard-search",
        "message:         denied by rule 'agents-no-wildcard-search': agents may not search "
        "personal data with leading-wildcard, unanchored or negated patterns; look customers "
        "up by id, or by a prefix such as 'smith%' (a pattern not anchored to a fixed prefix on "
        "crm.customers.email)",
        "rules fired:     agents-no-wildcard-search, agents-mask-contact-details, agents-read-crm",
        "facts:",
        "  statements:          1",
        "  statement types:     SelectStmt",
        "  kinds:               select",
        "  relations read:      crm.customers",
        "  relations written:   -",
        "  columns read:        crm.customers: email",
        "  columns written:     -",
        "  categories read:     email",
        "  categories written:  -",
        "  functions:           -",
        "  risks:               a pattern not anchored to a fixed prefix on crm.customers.email",
        "result columns:",
        "  email               crm.customers.email",
        "mask:            email, iban, phone by partial (rule agents-mask-contact-details)",
        f"policy version:  {version}",
    ]
    assert "example.com" not in out.replace(sql, "")


def test_explain_with_parameters_search_path_and_approval(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        run(
            "policy",
            "explain",
            DEMO_POLICY,
            "--role",
            "agent",
            "--search-path",
            "crm, public",
            "--param",
            "x@example.com",
            "--param",
            "7",
            "UPDATE customers SET email = $1 WHERE id = $2",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "decision:        require_approval" in out
    assert "relations written:   crm.customers" in out
    assert "approval:        1 of group dpo, wait mode, expires after 600s " in out
    assert "(rule agents-write-crm-needs-approval)" in out
    assert "x@example.com" not in out


STAR_JOIN = (
    "SELECT p.*, o.id AS order_id FROM crm.products p JOIN crm.orders o ON o.id = p.id LIMIT 5"
)


def test_explain_shows_star_as_such_without_the_database(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("policy", "explain", DEMO_POLICY, "--role", "agent", STAR_JOIN) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  columns read:        crm.orders: id; crm.products: *, id" in lines
    start = lines.index("result columns:")
    assert lines[start + 1 : start + 3] == [
        "  *                   crm.products.*",
        "  order_id            crm.orders.id",
    ]


def test_explain_with_upstream_lists_the_columns_behind_star(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("policy", "explain", DEMO_POLICY, "--role", "agent", "--upstream", pg_dsn)
    assert run(*argv, STAR_JOIN) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # `*` stays among the columns read: policy still counts every column, known or not.
    assert "  columns read:        crm.orders: id; crm.products: *, id, name, price_cents" in lines
    start = lines.index("result columns:")
    assert lines[start + 1 : start + 5] == [
        "  id                  crm.products.id",
        "  name                crm.products.name",
        "  price_cents         crm.products.price_cents",
        "  order_id            crm.orders.id",
    ]
    assert "decision:        allow" in lines
    # A table the database does not have is left as `*`.
    assert run(*argv, "SELECT * FROM crm.nowhere LIMIT 1") == 0
    assert "  *                   crm.nowhere.*" in capsys.readouterr().out.splitlines()


def test_explain_json_lists_the_columns_behind_star_with_upstream(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("policy", "explain", DEMO_POLICY, "--role", "agent", "--json", STAR_JOIN)
    assert run(*argv) == 0
    without = json.loads(capsys.readouterr().out)["columns"]
    assert without["read"] == {"crm.orders": ["id"], "crm.products": ["*", "id"]}
    assert without["results"][0][0] == {"name": None, "sources": ["crm.products.*"]}
    assert run(*argv, "--upstream", pg_dsn) == 0
    decided = json.loads(capsys.readouterr().out)
    assert decided["effect"] == "allow"
    columns = decided["columns"]
    assert columns["read"]["crm.products"] == ["*", "id", "name", "price_cents"]
    assert columns["written"] == {}
    assert [column["name"] for column in columns["results"][0]] == [
        "id",
        "name",
        "price_cents",
        "order_id",
    ]
    assert columns["results"][0][3]["sources"] == ["crm.orders.id"]


def test_explain_with_an_unreachable_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    dsn = "postgresql://nobody@127.0.0.1:1/nowhere?connect_timeout=2"
    argv = ("policy", "explain", DEMO_POLICY, "--role", "agent", "--upstream", dsn, STAR_JOIN)
    assert run(*argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cannot read the catalog from --upstream" in captured.err
    assert "leave out --upstream" in captured.err


def test_explain_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run("policy", "explain", DEMO_POLICY, "--role", "dba", "--json", "DROP TABLE crm.orders")
        == 0
    )
    decision = json.loads(capsys.readouterr().out)
    assert decision["effect"] == "require_approval"
    assert decision["deciding_rule"] == "dba-ddl-needs-approval"
    assert decision["approval"] == {
        "rule": "dba-ddl-needs-approval",
        "group": "dba",
        "approvals": 1,
        "grant_for_seconds": 1800,
        "mode": "retry",
        "expires_seconds": 3600,
        "estimate_rows": False,
    }
    assert decision["facts"]["kinds"] == ["ddl"]
    assert decision["facts"]["relations_written"] == ["crm.orders"]


def test_explain_an_unparsable_statement(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "explain", DEMO_POLICY, "--role", "agent", "SELEC 1") == 0
    out = capsys.readouterr().out
    assert "decision:        deny" in out
    assert "the gateway could not parse this statement" in out


def test_explain_with_a_bad_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules: [")
    assert run("policy", "explain", path, "--role", "agent", "SELECT 1") == 2
    assert capsys.readouterr().err.startswith(f"invalid policy {path}:\n  not valid YAML")


# --- diff --------------------------------------------------------------------------------------


def test_diff_of_identical_policies(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "diff", DEMO_POLICY, DEMO_POLICY) == 0
    out = capsys.readouterr().out
    corpus = default_corpus(load_policy(DEMO_POLICY), load_policy(DEMO_POLICY))
    version = PolicyEngine(load_policy(DEMO_POLICY)).version[:12]
    assert out == f"0 of {len(corpus)} decisions change (policy {version} -> {version})\n"


def test_diff_shows_what_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = changed_policy(tmp_path)
    assert run("policy", "diff", DEMO_POLICY, new) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:6] == [
        "role agent: SELECT full_name FROM crm.customers WHERE full_name LIKE '%a' LIMIT 10",
        "  deny (agents-no-wildcard-search) -> allow (agents-read-crm)",
        "role agent: SELECT subject FROM crm.support_tickets WHERE subject LIKE '%a' LIMIT 10",
        # Free text counts as the contact details it quotes (policy/catalog.py).
        "  deny (agents-no-wildcard-search) -> mask (agents-mask-contact-details) masking email,"
        " iban, phone",
        "role agent: SELECT customer_id FROM crm.orders WHERE customer_id LIKE '%a' LIMIT 10",
        "  deny (agents-no-wildcard-search) -> allow (agents-read-crm)",
    ]
    assert lines[6].startswith("3 of ")
    assert len(lines) == 7


def test_diff_with_a_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "diff", DEMO_POLICY, DEMO_POLICY, "--corpus", CORPUS) == 0
    assert capsys.readouterr().out.startswith("0 of ")
    assert run("policy", "diff", DEMO_POLICY, changed_policy(tmp_path), "--corpus", CORPUS) == 1
    out = capsys.readouterr().out
    assert (
        "role agent: SELECT email FROM crm.customers WHERE email LIKE '%' LIMIT 10\n"
        "  deny (agents-no-wildcard-search) -> mask (agents-mask-contact-details) "
        "masking email, iban, phone\n"
    ) in out


def test_diff_without_roles_uses_the_roles_rules_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.yaml"
    new = tmp_path / "new.yaml"
    old.write_text("rules:\n  - {id: r, match: {roles: [agent, 'ci-*']}, effect: allow}\n")
    new.write_text(
        "rules:\n  - {id: r, match: {roles: [agent, 'ci-*'], kinds: [select]}, effect: allow}\n"
    )
    assert run("policy", "diff", old, new) == 1
    out = capsys.readouterr().out
    assert "role agent: BEGIN\n  allow (r) -> deny (no rule)\n" in out
    assert "role ci-" not in out


@pytest.mark.parametrize(
    ("corpus", "message"),
    [
        ("- {role: agent}\n", "entry 0: needs a role and an sql string"),
        ("role: agent\n", "must be a list of {role, sql} entries"),
        ("- {role: agent, sql: SELECT 1, params: 1}\n", "search_path and params are lists"),
        ("- [\n", "is not valid YAML"),
    ],
)
def test_diff_with_a_bad_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corpus: str, message: str
) -> None:
    path = tmp_path / "corpus.yaml"
    path.write_text(corpus)
    assert run("policy", "diff", DEMO_POLICY, DEMO_POLICY, "--corpus", path) == 2
    assert message in capsys.readouterr().err


def test_diff_with_a_bad_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "diff", DEMO_POLICY, tmp_path / "missing.yaml") == 2
    assert "cannot read the file" in capsys.readouterr().err


def test_default_corpus_covers_every_role_and_catalog_table() -> None:
    document = load_policy(DEMO_POLICY)
    corpus = default_corpus(document, document)
    assert {entry.role for entry in corpus} == {"agent", "analyst", "dba"}
    statements = {entry.sql for entry in corpus}
    assert 25 <= len(statements) <= 40
    assert {"SELECT * FROM crm.customers", "SELECT * FROM crm.orders"} <= statements
    assert "SELECT * FROM crm.support_tickets" in statements
    assert "SELECT full_name FROM crm.customers WHERE full_name LIKE '%a' LIMIT 10" in statements
    assert "SELECT customer_id FROM crm.orders WHERE customer_id LIKE '%a' LIMIT 10" in statements


# --- schema ------------------------------------------------------------------------------------


def test_schema_prints_the_committed_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "schema") == 0
    out = capsys.readouterr().out
    assert out == json_schema_text()
    assert out == (ROOT / "custos" / "policy" / "policy.schema.json").read_text()
    assert json.loads(out)["title"] == "PolicyDocument"


@pytest.mark.parametrize(
    ("sql", "shown"),
    [
        ("SELECT (-1).lo_creat", "functions:           lo_creat"),
        ("SELECT c.row_to_json FROM crm.customers c LIMIT 1", "crm.customers: *, row_to_json"),
        ("SELECT query_to_xml('SELECT 1', true, false, '')", "dynamic code"),
        ("SELECT string_agg(full_name, ',') FROM crm.customers LIMIT 1", "LIMIT does not bound"),
        ("SELECT histogram_bounds FROM pg_stats", "reads the planner's statistics"),
        ("SELECT query FROM pg_stat_get_activity(NULL)", "pg_catalog.pg_stat_activity"),
        ("SELECT id FROM crm.customers WHERE strpos(email, 'x') > 0 LIMIT 1", "strpos"),
    ],
    ids=["field_notation", "whole_row", "dynamic", "gathered", "statistics", "activity", "search"],
)
def test_explain_shows_what_the_analysis_saw(
    sql: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run("policy", "explain", "--role", "agent", DEMO_POLICY, sql)
    assert shown in capsys.readouterr().out
