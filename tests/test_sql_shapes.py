"""Statement shapes: the plain pass must find exactly the literals PostgreSQL's scanner finds.

A shape is only sound if its blanks are real literal tokens, so the fast regular-expression
pass is checked against pglast's scanner on hostile text built from the pieces that change
how SQL is lexed; whatever it cannot follow, it must hand to the scanner.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from custos.sql.shapes import (
    NOT_PLAIN,
    plain_shape,
    scanned_shape,
    shape_of,
    template_key,
    template_pattern,
)

LEXICAL_PIECES = [
    "SELECT ", "FROM t ", "WHERE ", "a", "t1", "x", "e", "E", "U&", "B", "X", "N", "_", "1",
    "12", "0", "1.5", "1e5", "1E+5", "1e", ".", "..", "'", "''", "'x'", "'it''s'", '"', '"q"',
    '"a""b"', "$", "$1", "$$", "$t$", "\\", "--", "/*", "*/", "\n", " ", "\t", "-", "+", "::",
    "(", ")", ",", ";", "=", "&", "0x1F", "1_000", "0o7", "0b1", ":=", "<>",
]  # fmt: skip
# Without the pieces that always send a text to the scanner, most texts take the plain pass.
PLAIN_PIECES = [piece for piece in LEXICAL_PIECES if not any(c in piece for c in "$\\/-")]
SQL_TEXTS = st.one_of(
    st.lists(st.sampled_from(LEXICAL_PIECES), max_size=24).map("".join),
    st.lists(st.sampled_from(PLAIN_PIECES), max_size=24).map("".join),
)


def literal_spans(shape):
    return None if shape is None else list(zip(shape.starts, shape.literals, strict=True))


@settings(max_examples=3000, deadline=None)
@given(SQL_TEXTS)
@example("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;")
@example("SELECT 'a'\n'b'")
@example("SELECT E'\\''")
@example("SELECT 1.e5, .5, 1..2")
@example('SELECT "t1"2, t1.2')
def test_the_plain_pass_finds_exactly_the_scanners_literals(sql: str) -> None:
    plain = plain_shape(sql)
    if plain is NOT_PLAIN:
        return
    scanned = scanned_shape(sql)
    if scanned is None and plain is not None:
        # Either the scanner rejects the text (the parser will too, and an analysis that
        # failed is never shared by shape) or it sees no literal where the plain pass saw one.
        assert _scanner_fails(sql), sql
        return
    assert literal_spans(plain) == literal_spans(scanned), sql


def _scanner_fails(sql: str) -> bool:
    from pglast.parser import scan

    try:
        scan(sql)
    except Exception:
        return True
    return False


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
        "UPDATE crm.orders SET status = 'paid' WHERE id = 7",
        "SELECT id FROM crm.customers WHERE email LIKE 'ann%' LIMIT 10",
        'SELECT "Id" FROM "Crm"."Customers" WHERE total > 1.5e3',
    ],
)
def test_everyday_statements_take_the_plain_pass(sql: str) -> None:
    shape = plain_shape(sql)
    assert shape is not None
    assert shape is not NOT_PLAIN
    assert literal_spans(shape) == literal_spans(scanned_shape(sql))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 -- a comment 'with a quote",
        "SELECT /* 'x' */ 1",
        "SELECT $$it's$$, 1",
        "SELECT E'\\'', 1",
        "SELECT U&'d\\0061t\\+000061', 1",
        "SELECT B'101', 1",
        "SELECT 'a'\n'b'",
        "SELECT 'unterminated",
        "SELECT 0x1F",
        "SELECT 1_000",
        "SELECT 1.e5",
        "SELECT x.5",
    ],
)
def test_text_the_plain_pass_cannot_follow_goes_to_the_scanner(sql: str) -> None:
    assert plain_shape(sql) is NOT_PLAIN
    assert literal_spans(shape_of(sql)) == literal_spans(scanned_shape(sql))


def test_texts_of_one_shape_differ_only_in_literals() -> None:
    first = shape_of("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;")
    second = shape_of("SELECT abalance FROM pgbench_accounts WHERE aid = 12;")
    assert first is not None
    assert second is not None
    assert first.key == second.key
    assert (first.literals, second.literals) == (("4711",), ("12",))


def test_non_ascii_and_long_texts_are_not_shaped() -> None:
    assert shape_of("SELECT 'é', 1") is None
    assert shape_of("SELECT " + "1, " * 2000 + "1") is None


# What may stand in a blank of a template, hostile values included: each either is one
# literal of the blank's kind or must not match.
BLANK_FILLINGS = [
    "1", "12", "007", "1.5", "1e5", "2E-3", "'x'", "''", "'a''b'", "'--'", "'/*'", "'$$'",
    "'\\'", "' '", "'a' 'b'", "'a'\n'b'", "1a", "0x1", "1_0", "'", "1 OR 1=1",
    "'x' OR 'a'='a'", "1.", ".5", "1..2", "'x'::text", "E'x'", "-1", "1e", "'it''s' || 'x'",
]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(SQL_TEXTS, st.lists(st.sampled_from(BLANK_FILLINGS), min_size=1, max_size=6))
@example("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;", ["12"])
@example("SELECT 1 WHERE a = 'x' AND b = 2", ["'x' OR 'a'='a'", "3"])
def test_a_template_finds_exactly_the_scanners_literals(sql: str, fillings: list[str]) -> None:
    shape = plain_shape(sql)
    if shape is None or shape is NOT_PLAIN:
        return
    pattern = template_pattern(shape)
    assert pattern is not None
    pieces, position = [], 0
    for start, literal, filling in zip(shape.starts, shape.literals, fillings * 6, strict=False):
        pieces += [sql[position:start], filling]
        position = start + len(literal)
    other = "".join(pieces) + sql[position:]
    match = pattern.fullmatch(other)
    if match is None:
        return
    spans = [(match.start(group), match.group(group)) for group in range(1, pattern.groups + 1)]
    scanned = scanned_shape(other)
    if scanned is None:
        assert _scanner_fails(other), other
        return
    assert spans == literal_spans(scanned), other


def test_a_template_recognises_another_text_of_its_shape() -> None:
    first = "SELECT id FROM crm.customers WHERE email LIKE 'ann%' AND id > 10 LIMIT 5"
    shape = plain_shape(first)
    assert shape is not None
    assert shape is not NOT_PLAIN
    pattern = template_pattern(shape)
    assert pattern is not None
    second = "SELECT id FROM crm.customers WHERE email LIKE 'bo''b%' AND id > 7 LIMIT 100"
    match = pattern.fullmatch(second)
    assert match is not None
    assert match.groups() == ("'bo''b%'", "7", "100")
    assert template_key(second) != template_key(first)  # the doubled quote shifts the key
    assert pattern.fullmatch(second.replace("LIMIT", "OFFSET")) is None


def test_a_scanners_shape_has_no_template() -> None:
    shape = shape_of("SELECT E'x', 1")
    assert shape is not None
    assert template_pattern(shape) is None
