"""The statement text the audit trail keeps: every literal, comment and unusual quoted name
replaced, checked with PostgreSQL's own scanner and by searching the result for values."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from custos.audit.statements import UNREADABLE, without_values

# A name kept as it is, quoted or not (custos/audit/statements.py).
PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")

EMAIL = "theo.begum1@example.org"


@pytest.mark.parametrize(
    ("sql", "kept"),
    [
        (
            f"SELECT id FROM crm.customers WHERE email = '{EMAIL}' AND id > 41",
            "SELECT id FROM crm.customers WHERE email = ? AND id > ?",
        ),
        (
            f"SELECT 1 -- asked for {EMAIL}\nFROM t /* {EMAIL} */ WHERE x = $1",
            "SELECT ?  \nFROM t   WHERE x = $1",
        ),
        (f'SELECT email AS "{EMAIL}" FROM t', 'SELECT email AS "?" FROM t'),
        ('SELECT "Email", "full_name" FROM t', 'SELECT "Email", "full_name" FROM t'),
        (
            f"SELECT E'{EMAIL}\\'', $q${EMAIL}$q$, U&'\\0074heo', B'1010', X'1F', 1.5e3",
            "SELECT ?, ?, ?, ?, ?, ?",
        ),
        (f"INSERT INTO t VALUES ('{EMAIL}', -7)", "INSERT INTO t VALUES (?, -?)"),
        ("SELECT 'never closed", UNREADABLE),
    ],
)
def test_values_are_replaced_and_the_structure_kept(sql: str, kept: str) -> None:
    assert without_values(sql) == kept


_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
).map(lambda value: f"zq{value}qz")  # marked, so as not to be found in the rest by chance


@given(_value, st.sampled_from(["'{}'", "E'{}'", "$x${}$x$", '"{}"', "-- {}\n", "/* {} */"]))
def test_no_value_survives_in_any_quoting(value: str, form: str) -> None:
    written = {
        "'{}'": value.replace("'", "''"),
        "E'{}'": value.replace("\\", "\\\\").replace("'", "\\'"),
        "$x${}$x$": value.replace("$", "_"),
        '"{}"': value.replace('"', '""'),
        "-- {}\n": value.replace("\n", " ").replace("\r", " "),
        "/* {} */": value.replace("*/", "").replace("/*", ""),
    }[form]
    if form == '"{}"' and PLAIN_NAME.fullmatch(written):
        return  # a plain name is kept, as names are
    kept = without_values(f"SELECT 1 AS a, {form.format(written)} x FROM t")
    assert written not in kept
    assert kept == UNREADABLE or (kept.startswith("SELECT ? AS a,") and kept.endswith("x FROM t"))
