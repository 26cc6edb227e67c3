"""`*` expanded from known columns: additive for decisions, exact for result columns."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from custos.policy import PolicyEngine, load_policy
from custos.policy.commands import read_corpus
from custos.policy.engine import DecisionRequest
from custos.sql.analysis import analyze
from custos.sql.cache import AnalysisCache
from custos.sql.expansion import expand_all_columns, relations_with_all_columns
from custos.sql.facts import ALL_COLUMNS, OutputColumn
from custos.sql.names import qualified, split_qualified

ROOT = Path(__file__).resolve().parent.parent
DEMO_POLICY = ROOT / "custos" / "demo" / "policy.yaml"
CORPUS = ROOT / "tests" / "policy_corpus.yaml"

CUSTOMERS = "crm.customers"
CUSTOMER_COLUMNS = (
    "id",
    "full_name",
    "email",
    "phone",
    "iban",
    "birth_date",
    "street_address",
    "city",
    "country",
    "created_at",
    "marketing_opt_in",
)
ORDER_COLUMNS = ("id", "customer_id", "ordered_at", "total_cents", "currency", "status")
DEMO_COLUMNS = {
    CUSTOMERS: CUSTOMER_COLUMNS,
    "crm.orders": ORDER_COLUMNS,
    "crm.products": ("id", "name", "price_cents"),
    "crm.support_tickets": ("id", "customer_id", "opened_at", "subject", "body"),
}


def expanded(sql: str, columns=DEMO_COLUMNS):
    return expand_all_columns(analyze(sql, ("public",)), columns).statements[0]


def names(statement) -> list[str | None]:
    return [column.name for column in statement.output_columns]


def each_column_of(relation: str, columns: tuple[str, ...]) -> list[OutputColumn]:
    return [OutputColumn(name, frozenset({(relation, name)})) for name in columns]


# --- relation names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relation", "parts"),
    [
        ("crm.customers", ("crm", "customers")),
        ('"a.b"."c""d"', ("a.b", 'c"d')),
        ('crm."x.y"', ("crm", "x.y")),
        ('"we""ird".Mixed Case', ('we"ird', "Mixed Case")),
        ('"."."."', (".", ".")),
        ('"""".""""', ('"', '"')),
    ],
)
def test_a_relation_name_splits_back_into_its_parts(relation, parts):
    assert split_qualified(relation) == parts
    assert qualified(*parts) == relation


@pytest.mark.parametrize(
    "relation",
    ["customers", "a.b.c", '"unterminated.x', '"a"b.c', 'a."b', '"a".', ".a", 'a"b.c', '"a""'],
)
def test_a_name_not_spelled_as_the_facts_spell_it_does_not_split(relation):
    assert split_qualified(relation) is None


@given(st.text(min_size=1), st.text(min_size=1))
def test_splitting_undoes_qualifying(schema, name):
    assert split_qualified(qualified(schema, name)) == (schema, name)


# --- expansion -----------------------------------------------------------------------------


def test_star_over_one_table_lists_its_columns_and_keeps_the_marker():
    statement = expanded("SELECT * FROM crm.customers LIMIT 5")
    assert statement.columns_read == {CUSTOMERS: frozenset({ALL_COLUMNS, *CUSTOMER_COLUMNS})}
    assert statement.output_columns == tuple(each_column_of(CUSTOMERS, CUSTOMER_COLUMNS))


def test_qualified_star_in_a_join_is_replaced_in_place():
    statement = expanded(
        "SELECT o.id AS order_id, c.*, o.status FROM crm.orders o"
        " JOIN crm.customers c ON c.id = o.customer_id"
    )
    assert names(statement) == ["order_id", *CUSTOMER_COLUMNS, "status"]
    assert statement.columns_read[CUSTOMERS] == {ALL_COLUMNS, *CUSTOMER_COLUMNS}
    # Only a `*` gains columns: the orders columns read stay exactly those named.
    assert statement.columns_read["crm.orders"] == {"id", "customer_id", "status"}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM (SELECT * FROM crm.products) AS p",
        "WITH p AS (SELECT * FROM crm.products) SELECT * FROM p",
        "WITH p AS (SELECT * FROM crm.products) SELECT q.* FROM (SELECT * FROM p) q",
    ],
)
def test_star_through_a_subquery_or_cte_is_expanded_to_the_base_table(sql):
    statement = expanded(sql)
    assert names(statement) == ["id", "name", "price_cents"]
    assert statement.output_columns[1].sources == {("crm.products", "name")}


@pytest.mark.parametrize(
    "sql",
    [
        # PostgreSQL lists a USING or NATURAL join's columns once, first: not table order.
        "SELECT * FROM crm.orders JOIN crm.support_tickets USING (customer_id)",
        "SELECT * FROM crm.orders NATURAL JOIN crm.support_tickets",
        "SELECT j.* FROM (crm.orders JOIN crm.support_tickets USING (id)) AS j",
        # Alias column names rename an unknown number of leading columns.
        "SELECT * FROM crm.products AS p(a, b)",
        "SELECT * FROM (SELECT * FROM crm.products, crm.orders) AS s(x)",
        # A set operation lines columns up by position.
        "SELECT * FROM crm.products UNION ALL SELECT * FROM crm.products",
    ],
)
def test_a_star_that_is_not_exactly_a_tables_columns_is_left_as_it_is(sql):
    original = analyze(sql, ("public",)).statements[0]
    statement = expanded(sql)
    assert statement.output_columns == original.output_columns
    assert None in names(statement)
    # Reads still gain every column: for decisions expansion only ever adds.
    for relation, columns in statement.columns_read.items():
        if ALL_COLUMNS in original.columns_read[relation]:
            assert columns.issuperset(DEMO_COLUMNS[relation])


def test_qualified_star_of_a_using_join_side_is_exact():
    statement = expanded("SELECT o.* FROM crm.orders o JOIN crm.support_tickets t USING (id)")
    assert names(statement) == list(ORDER_COLUMNS)


def test_returning_star_and_copy_are_expanded():
    assert names(expanded("DELETE FROM crm.products WHERE id = 1 RETURNING *")) == [
        "id",
        "name",
        "price_cents",
    ]
    assert names(expanded("COPY crm.products TO STDOUT")) == ["id", "name", "price_cents"]


def test_insert_without_a_column_list_writes_every_column():
    statement = expanded("INSERT INTO crm.products VALUES (13, 'Tin', 100)")
    assert statement.columns_written == {
        "crm.products": frozenset({ALL_COLUMNS, "id", "name", "price_cents"})
    }


def test_whole_row_reference_gains_columns_but_stays_one_result_column():
    statement = expanded("SELECT row_to_json(c) FROM crm.customers c LIMIT 1")
    assert statement.columns_read[CUSTOMERS].issuperset({ALL_COLUMNS, *CUSTOMER_COLUMNS})
    assert names(statement) == ["row_to_json"]


def test_quoted_names_with_dots_and_quotes():
    relation = '"odd.schema"."we""ird"'
    statement = expanded(
        'SELECT * FROM "odd.schema"."we""ird"', {relation: ("a.b", 'c"d', "Upper")}
    )
    assert statement.columns_read == {relation: frozenset({ALL_COLUMNS, "a.b", 'c"d', "Upper"})}
    assert statement.output_columns == tuple(each_column_of(relation, ("a.b", 'c"d', "Upper")))


def test_a_table_without_columns_expands_to_no_result_columns():
    statement = expanded("SELECT * FROM crm.empty, crm.products", {"crm.empty": ()})
    assert statement.columns_read["crm.empty"] == {ALL_COLUMNS}
    assert statement.output_columns == (
        OutputColumn(None, frozenset({("crm.products", ALL_COLUMNS)}), expandable=True),
    )


def test_unknown_relations_are_untouched_and_the_same_object_comes_back():
    analysis = analyze("SELECT * FROM crm.unknown JOIN crm.products USING (id)", ("public",))
    assert expand_all_columns(analysis, {"crm.other": ("a",)}) is analysis
    assert expand_all_columns(analysis, {}) is analysis
    plain = analyze("SELECT id FROM crm.products", ("public",))
    assert expand_all_columns(plain, DEMO_COLUMNS) is plain


def test_expansion_is_idempotent():
    once = expand_all_columns(analyze("SELECT * FROM crm.products", ("public",)), DEMO_COLUMNS)
    assert expand_all_columns(once, DEMO_COLUMNS) is once


def test_the_canonical_analysis_is_kept():
    cache = AnalysisCache()
    first = cache.analyze("SELECT * FROM crm.products WHERE id = 1", ("public",))
    second = cache.analyze("SELECT * FROM crm.products WHERE id = 2", ("public",))
    assert second.canonical is not None
    assert expand_all_columns(second, DEMO_COLUMNS).canonical is second.canonical
    alone = analyze("SELECT * FROM crm.products", ("public",))
    assert expand_all_columns(alone, DEMO_COLUMNS).canonical is alone
    assert expand_all_columns(first, DEMO_COLUMNS).canonical is (first.canonical or first)


def test_relations_with_all_columns():
    analysis = analyze(
        "SELECT c.*, o.id FROM crm.customers c JOIN crm.orders o ON o.customer_id = c.id;"
        " INSERT INTO crm.products VALUES (1, 'x', 2); SELECT id FROM crm.support_tickets",
        ("public",),
    )
    assert relations_with_all_columns(analysis) == {CUSTOMERS, "crm.products"}


def test_decisions_are_the_same_with_and_without_expansion():
    engine = PolicyEngine(load_policy(DEMO_POLICY))
    # A stale column list: iban was added after it was read, added_later is not classified.
    stale = tuple(column for column in CUSTOMER_COLUMNS if column != "iban")
    columns = {**DEMO_COLUMNS, CUSTOMERS: (*stale, "added_later")}
    changed = 0
    for entry in read_corpus(CORPUS):
        analysis = analyze(entry.sql, entry.search_path)
        full = expand_all_columns(analysis, columns)
        changed += full is not analysis
        request = DecisionRequest(entry.role, analysis, entry.params)
        expanded = engine.decide(dataclasses.replace(request, analysis=full)).as_dict()
        unexpanded = engine.decide(request).as_dict()
        # Which result columns a mask names, by position, is what expansion is for (and
        # the masking rewriter checks them against the result's own columns).
        for decided in (expanded, unexpanded):
            del decided["column_masks"], decided["result_columns"]
        assert expanded == unexpanded, entry.sql
    assert changed > 20  # the corpus has plenty of `*` for this to mean something
