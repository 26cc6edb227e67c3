"""The analysis cache: exact texts, and texts that differ only in literals (shapes).

The shape cache may hand a text the analysis made for another only when the two
would be analysed alike; these tests compare every answer it gives with a fresh
analysis of the same text.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast.parser import ParseError, scan

from custos.sql.analysis import analyze
from custos.sql.cache import AnalysisCache

CORPUS = Path(__file__).resolve().parent / "policy_corpus.yaml"
PATH = ("crm", "public")

LITERAL_STATEMENTS = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
    "SELECT id FROM crm.customers WHERE email LIKE 'ann%' LIMIT 10",
    "SELECT id FROM crm.customers WHERE email LIKE '%ann' LIMIT 10",
    "SELECT id FROM crm.customers LIMIT 100",
    "SELECT id FROM crm.customers LIMIT 5000",
    "DELETE FROM crm.orders WHERE 1 = 1",
    "DELETE FROM crm.orders WHERE 1 = 2",
    "UPDATE crm.orders SET status = 'paid' WHERE id = 7",
    "SELECT set_config('search_path', 'crm', false)",
    "SELECT set_config('application_name', 'x', false)",
    "SELECT set_config('role', 'postgres', false)",
    "SET search_path = 'public'",
    "SELECT * FROM crm.orders WHERE ordered_at > now() - interval '1 day' LIMIT 3",
    "COPY (SELECT email FROM crm.customers LIMIT 3) TO STDOUT",
    "SELECT id FROM crm.customers WHERE full_name ~ '^A' OR true LIMIT 1",
    "SELECT 1 FROM crm.orders WHERE status IN ('a', 'b') AND total_cents > 100",
]

REPLACEMENTS = {
    "ICONST": ["0", "1", "2", "100", "101", "99999"],
    "FCONST": ["0.5", "1.0"],
    "SCONST": ["'%'", "'x'", "'%x'", "'x%'", "'public'", "'role'", "'search_path'", "'1'"],
}


def literal_tokens(sql: str) -> list[tuple[int, int, str]]:
    try:
        tokens = scan(sql)
    except ParseError:
        return []
    return [
        (token.start, token.end + 1, token.name) for token in tokens if token.name in REPLACEMENTS
    ]


def variant(sql: str, choices: list[int]) -> str:
    pieces, position = [], 0
    for (start, end, name), choice in zip(literal_tokens(sql), choices, strict=False):
        options = REPLACEMENTS[name]
        pieces += [sql[position:start], options[choice % len(options)]]
        position = end
    return "".join(pieces) + sql[position:]


def corpus_statements() -> list[str]:
    entries = yaml.safe_load(CORPUS.read_text())
    texts = [entry["sql"] for entry in entries if isinstance(entry.get("sql"), str)]
    return [text for text in texts if text.isascii() and literal_tokens(text)]


ALL_STATEMENTS = LITERAL_STATEMENTS + corpus_statements()


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(ALL_STATEMENTS),
    st.lists(st.integers(0, 20), min_size=8, max_size=8),
    st.lists(st.integers(0, 20), min_size=8, max_size=8),
)
def test_a_shared_analysis_equals_a_fresh_one(sql, first_choices, second_choices):
    cache = AnalysisCache()
    first, second = variant(sql, first_choices), variant(sql, second_choices)
    assert cache.analyze(first, PATH) == analyze(first, PATH)
    assert cache.analyze(second, PATH) == analyze(second, PATH)


def test_pgbench_texts_share_one_analysis():
    cache = AnalysisCache()
    for aid in range(1, 200):
        sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
        assert cache.analyze(sql, PATH).texts[0] == sql.rstrip(";")
    assert (cache.misses, cache.shape_hits) == (1, 198)


@pytest.mark.parametrize(
    ("seen", "asked"),
    [
        ("SELECT id FROM crm.customers LIMIT 100", "SELECT id FROM crm.customers LIMIT 101"),
        ("DELETE FROM crm.orders WHERE 1 = 2", "DELETE FROM crm.orders WHERE 1 = 1"),
        (
            "SELECT id FROM crm.customers WHERE email LIKE 'a%' LIMIT 1",
            "SELECT id FROM crm.customers WHERE email LIKE '%' LIMIT 1",
        ),
        (
            "SELECT set_config('application_name', 'x', false)",
            "SELECT set_config('role', 'x', false)",
        ),
    ],
)
def test_literals_the_analysis_reads_are_never_shared(seen, asked):
    cache = AnalysisCache()
    cache.analyze(seen, PATH)
    assert cache.decided_alike(asked, PATH) is None
    assert cache.analyze(asked, PATH) == analyze(asked, PATH)
    assert cache.shape_hits == 0


def test_writes_with_a_condition_on_a_column_share_one_analysis():
    cache = AnalysisCache()
    for status in ("void", "paid", "open"):
        sql = f"UPDATE crm.orders SET note = 'x' WHERE status = '{status}' AND id = 7"
        assert cache.analyze(sql, PATH) == analyze(sql, PATH)
    assert (cache.misses, cache.shape_hits) == (1, 2)


def test_a_known_shape_is_decided_alike_without_a_new_analysis():
    cache = AnalysisCache()
    first = cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1;", PATH)
    for aid in (1, 2, 3):
        sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
        assert cache.decided_alike(sql, PATH) is first
    assert (
        cache.decided_alike("SELECT abalance FROM pgbench_accounts WHERE aid = 'x';", PATH) is None
    )
    assert cache.decided_alike("SELECT 1 FROM never_seen", PATH) is None
    assert len(cache) == 1


def test_search_path_is_part_of_the_key():
    cache = AnalysisCache()
    crm = cache.analyze("SELECT id FROM orders WHERE id = 1", ("crm",))
    public = cache.analyze("SELECT id FROM orders WHERE id = 2", ("public",))
    assert crm.statements[0].relations_read == {"crm.orders"}
    assert public.statements[0].relations_read == {"public.orders"}


def test_memory_stays_bounded():
    cache = AnalysisCache(max_entries=50)
    for number in range(500):
        cache.analyze(f"SELECT {number} AS n{number}", PATH)
    assert len(cache) == 50
