"""Which result columns a masked decision masks: lineage through the SQL (issue 10).

The expected columns are those whose values may carry a category a mask rule names,
however the SQL carries them: first for a rule masking contact details (email, phone,
IBAN) over the demo catalog, then as the demo policy decides for its roles.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from test_policy_commands import DEMO_POLICY

from custos.policy.engine import DecisionRequest, PolicyEngine
from custos.policy.masks import MIXED, ColumnMask, column_masks
from custos.policy.models import Effect, MaskMethod
from custos.policy.source import load_policy
from custos.sql.analysis import analyze
from custos.sql.facts import OutputColumn

ENGINE = PolicyEngine(load_policy(DEMO_POLICY))

C = "crm.customers c"


@dataclass(frozen=True)
class Rule:
    rule: str
    categories: frozenset[str]
    method: MaskMethod


CONTACT_DETAILS = Rule("contact", frozenset({"email", "phone", "iban"}), MaskMethod.PARTIAL)
LINEAGE = {
    # position (from 0) -> category
    f"SELECT email FROM {C} LIMIT 5": {0: "email"},
    f"SELECT c.email AS contact, c.id FROM {C} LIMIT 5": {0: "email"},
    f"SELECT id, lower(email) FROM {C} LIMIT 5": {1: "email"},
    f"SELECT email || '' FROM {C} LIMIT 5": {0: "email"},
    f"SELECT substr(email, 2), reverse(phone) FROM {C} LIMIT 5": {0: "email", 1: "phone"},
    f"SELECT format('%s <%s>', full_name, email) FROM {C} LIMIT 5": {0: "email"},
    f"SELECT concat_ws(',', id, iban) FROM {C} LIMIT 5": {0: "iban"},
    f"SELECT translate(email, 'a', 'b') FROM {C} LIMIT 5": {0: "email"},
    f"SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM {C} LIMIT 5": {0: "email"},
    f"SELECT email::varchar(10), phone::bytea FROM {C} LIMIT 5": {0: "email", 1: "phone"},
    f"SELECT CASE WHEN id > 1 THEN email ELSE 'x' END FROM {C} LIMIT 5": {0: "email"},
    f"SELECT coalesce(phone, email) FROM {C} LIMIT 5": {0: MIXED},
    f"WITH x AS (SELECT email AS e FROM {C}) SELECT e FROM x LIMIT 5": {0: "email"},
    f"SELECT e FROM (SELECT email AS e, id FROM {C}) s LIMIT 5": {0: "email"},
    f"SELECT s.e FROM {C}, LATERAL (SELECT c.email AS e) s LIMIT 5": {0: "email"},
    "SELECT o.id, c.email FROM crm.orders o JOIN crm.customers c ON c.id = o.customer_id LIMIT 5": {
        1: "email"
    },
    f"SELECT email FROM {C} UNION ALL SELECT status FROM crm.orders LIMIT 5": {0: "email"},
    f"SELECT status FROM crm.orders UNION SELECT phone FROM {C} LIMIT 5": {0: "phone"},
    f"SELECT first_value(email) OVER (ORDER BY id) FROM {C} LIMIT 5": {0: "email"},
    f"SELECT string_agg(email, ',') FROM (SELECT email FROM {C} LIMIT 5) s": {0: "email"},
    f"SELECT array_agg(iban) FROM (SELECT iban FROM {C} LIMIT 5) s": {0: "iban"},
    f"SELECT json_agg(phone) FROM (SELECT phone FROM {C} LIMIT 5) s": {0: "phone"},
    f"SELECT jsonb_object_agg(id, email) FROM (SELECT id, email FROM {C} LIMIT 5) s": {0: "email"},
    f"SELECT v FROM {C}, LATERAL (VALUES (c.email)) AS x(v) LIMIT 5": {0: "email"},
    f"SELECT u FROM {C}, unnest(ARRAY[c.phone]) AS u LIMIT 5": {0: "phone"},
    f"SELECT row_to_json(c) FROM {C} LIMIT 5": {0: MIXED},
    f"SELECT to_jsonb(c) FROM {C} LIMIT 5": {0: MIXED},
    f"SELECT c::text FROM {C} LIMIT 5": {0: MIXED},
    f"SELECT ROW(c.*) FROM {C} LIMIT 5": {0: MIXED},
    f"SELECT jsonb_build_object('e', email) FROM {C} LIMIT 5": {0: "email"},
    f"SELECT xmlelement(name e, email) FROM {C} LIMIT 5": {0: "email"},
    "WITH RECURSIVE r(n, e) AS (SELECT 1, (SELECT email FROM crm.customers LIMIT 1)"
    # Each step may move any value into any column: every column counts as computed from all.
    " UNION ALL SELECT n + 1, e FROM r WHERE n < 3) SELECT n, e FROM r": {0: "email", 1: "email"},
    f"SELECT id, full_name, city FROM {C} LIMIT 5": {},
    f"SELECT length(email) > 0 FROM {C} LIMIT 5": {0: "email"},
    "SELECT body FROM crm.support_tickets LIMIT 5": {0: "free_text"},
    "SELECT upper(body) FROM crm.support_tickets LIMIT 5": {0: MIXED},
}
# Each of these carries the value it is given, whatever the function: the column stays
# masked however it is transformed (an expression, a cast, a JSON or XML value, an array).
CARRIERS = [
    "{c}", "lower({c})", "upper({c})", "{c} || ''", "'<' || {c} || '>'", "substr({c}, 2)",
    "left({c}, 3)", "right({c}, 3)", "reverse({c})", "md5({c})", "trim({c})",
    "btrim({c}, 'x')", "replace({c}, 'a', 'b')", "translate({c}, 'a', 'b')",
    "format('%s', {c})", "concat({c}, id)", "concat_ws('-', id, {c})", "coalesce({c}, '')",
    "nullif({c}, '')", "CASE WHEN id > 0 THEN {c} END", "{c}::varchar", "CAST({c} AS text)",
    "{c}::bytea", "encode(convert_to({c}, 'UTF8'), 'hex')", "to_json({c})", "to_jsonb({c})",
    "json_build_array({c})", "jsonb_build_object('k', {c})", "ARRAY[{c}]",
    "string_to_array({c}, '@')", "regexp_replace({c}, 'a', 'b')", "split_part({c}, '@', 1)",
    "overlay({c} placing 'x' from 1)", "lpad({c}, 40)", "repeat({c}, 2)", "quote_literal({c})",
    "initcap({c})", "ltrim({c})", "rtrim({c})", "xmlelement(name x, {c})",
]  # fmt: skip
for _column, _category in (("email", "email"), ("phone", "phone"), ("iban", "iban")):
    for _carrier in CARRIERS:
        _sql = f"SELECT id, {_carrier.format(c=_column)} AS v, city FROM {C} LIMIT 5"
        LINEAGE[_sql] = {1: _category}

AGENT = {
    f"SELECT id, email FROM {C} LIMIT 5": {1: "email"},
    f"SELECT id, full_name FROM {C} LIMIT 5": {},
}
ANALYST = {
    # for the analyst: name, email, phone, iban by pseudonym (hash)
    f"SELECT id, full_name FROM {C}": {1: "name"},
    f"SELECT upper(full_name), city FROM {C}": {0: "name"},
    f"SELECT email FROM {C}": {0: "email"},
    "SELECT o.total_cents, c.full_name FROM crm.orders o JOIN crm.customers c"
    " ON c.id = o.customer_id": {1: "name"},
}


def masked(role: str, sql: str) -> dict[int, str]:
    decision = ENGINE.decide(DecisionRequest(role, analyze(sql, ("crm",))))
    if not any(decision.column_masks):
        return {}
    assert decision.effect is Effect.MASK, decision.message
    (masks,) = decision.column_masks
    return {mask.position: mask.category for mask in masks}


def test_the_lineage_corpus_is_at_least_150_statements() -> None:
    assert len(LINEAGE) >= 150


@pytest.mark.parametrize(("sql", "expected"), LINEAGE.items())
def test_contact_details_are_masked_however_the_sql_carries_them(
    sql: str, expected: dict[int, str]
) -> None:
    analysis = analyze(sql, ("crm",))
    assert analysis.error is None
    (statement,) = analysis.statements
    masks = column_masks(statement.output_columns, ENGINE.catalog, [CONTACT_DETAILS])
    assert {mask.position: mask.category for mask in masks} == expected


@pytest.mark.parametrize(("sql", "expected"), AGENT.items())
def test_the_agent_sees_these_columns_masked(sql: str, expected: dict[int, str]) -> None:
    assert masked("agent", sql) == expected


@pytest.mark.parametrize(("sql", "expected"), ANALYST.items())
def test_the_analyst_sees_these_columns_pseudonymised(sql: str, expected: dict[int, str]) -> None:
    assert masked("analyst", sql) == expected


def test_the_strongest_method_wins_and_unknown_width_masks_on() -> None:
    null = type(
        "Rule", (), {"rule": "n", "categories": frozenset({"email"}), "method": MaskMethod.NULL}
    )
    partial = type(
        "Rule", (), {"rule": "p", "categories": frozenset({"email"}), "method": MaskMethod.PARTIAL}
    )
    outputs = [
        OutputColumn("id", frozenset({("crm.customers", "id")})),
        OutputColumn(None, frozenset({("crm.customers", "*")})),
    ]
    assert column_masks(outputs, ENGINE.catalog, [partial, null]) == (
        ColumnMask(1, None, "email", MaskMethod.NULL, "n"),
    )
    # A masked column after one of unknown width has no known position: all from it on,
    # redacted (partial would keep a part of whatever column each turns out to be).
    after = [OutputColumn(None, frozenset({("crm.orders", "*")})), outputs[0], *outputs[1:]]
    after[2] = OutputColumn("email", frozenset({("crm.customers", "email")}))
    assert column_masks(after, ENGINE.catalog, [partial]) == (
        ColumnMask(0, None, "email", MaskMethod.REDACT, "p"),
    )
    # A computed value keeps no part either.
    computed = [OutputColumn("e", frozenset({("crm.customers", "email")}), computed=True)]
    assert column_masks(computed, ENGINE.catalog, [partial]) == (
        ColumnMask(0, "e", "email", MaskMethod.REDACT, "p", computed=True),
    )
