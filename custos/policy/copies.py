"""The risk `copies_personal_data`: a statement storing personal data where masking cannot
follow it.

Masking rewrites a statement's results, by the categories the catalog gives the columns
they come from. A statement that stores values of personal columns in a relation the
catalog does not list (`CREATE TABLE t AS SELECT email ...`, `INSERT INTO t SELECT ...`, a
view, `UPDATE t SET note = c.email FROM ...`), or in a column it lists under another
category, or out of the database (`COPY ... TO` a server file or program), launders them:
reading them back returns them in the clear. A copy into a column catalogued with the
values' own category stays inside the catalog, and is not this risk.

Where the values come from is their lineage (StatementFacts.copies), and besides it, for
every value the statement stores, what it cannot trace to one value: what the functions
it calls read in their bodies, the planner's statistics (samples of every column), and the
columns it compares or searches, which choose the rows whose values it stores (`INSERT
INTO t SELECT id, n FROM crm.customers, generate_series(0, 255) n WHERE ascii(email) = n`
stores no email, yet spells one out). Dynamic code over personal data counts too: where
its values go is not known.
"""

from __future__ import annotations

from custos.identity.errors import shown
from custos.policy.catalog import PersonalDataCatalog, by_relation
from custos.sql.facts import ALL_COLUMNS, StatementFacts, ValueCopy

OUT_OF_THE_DATABASE = "a server file or program"
_MOST_SHOWN = 5  # destinations named in the description; the rest are counted


def copies_risk(statement: StatementFacts, catalog: PersonalDataCatalog) -> str | None:
    """The risk described in words (names and categories, never values), or None."""
    if statement.explain_only:
        return None  # EXPLAIN without ANALYZE stores nothing
    untraced = _untraced(statement, catalog)
    copied: set[str] = set()
    destinations: set[str] = set()
    for copy in statement.copies:
        categories = _categories(copy, untraced, catalog)
        if categories - _destination_category(copy, catalog):
            copied |= categories
            destinations.add(_destination(copy))
    if copied:
        named = sorted(destinations)
        where = ", ".join(named[:_MOST_SHOWN])
        if len(named) > _MOST_SHOWN:
            where += f" and {len(named) - _MOST_SHOWN} more"
        return f"copies personal data ({', '.join(sorted(copied))}) into {where}"
    if statement.dynamic:
        read = catalog.categories(statement.columns_read, quoted=False)
        if read:
            return (
                f"reads personal data ({', '.join(sorted(read))}) in dynamic code, which may "
                "copy it anywhere"
            )
    return None


def _untraced(statement: StatementFacts, catalog: PersonalDataCatalog) -> dict[str, frozenset[str]]:
    """What every stored value may carry besides its own lineage (see the module doc)."""
    tested = {(match.relation, match.column) for match in statement.pattern_matches}
    untraced = by_relation((*statement.function_reads, *statement.compared, *tested))
    if statement.reads_statistics:
        untraced.update(dict.fromkeys(catalog.relations, frozenset({ALL_COLUMNS})))
    return untraced


def _categories(
    copy: ValueCopy, untraced: dict[str, frozenset[str]], catalog: PersonalDataCatalog
) -> frozenset[str]:
    if copy.unseen:
        every = dict.fromkeys(catalog.relations, frozenset({ALL_COLUMNS}))
        return catalog.categories(every, quoted=False)
    sources = dict(untraced)
    for relation, column in copy.sources:
        sources[relation] = sources.get(relation, frozenset()) | {column}
    return catalog.categories(sources, quoted=False)


def _destination_category(copy: ValueCopy, catalog: PersonalDataCatalog) -> frozenset[str]:
    """The category the catalog gives the column stored in; none where it lists none (or
    which column is not known)."""
    table = catalog.table(copy.relation) if copy.relation is not None else None
    if table is None or copy.column == ALL_COLUMNS:
        return frozenset()
    category = table.columns.get(copy.column)
    return frozenset() if category is None else frozenset({category})


def _destination(copy: ValueCopy) -> str:
    if copy.relation is None:
        return OUT_OF_THE_DATABASE
    if copy.column == ALL_COLUMNS:
        return shown(copy.relation)
    return shown(f"{copy.relation}.{copy.column}")
