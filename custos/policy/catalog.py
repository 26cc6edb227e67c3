"""Where personal data lives: the policy's catalog, compiled for lookups per statement."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from custos.policy.models import CatalogTable
from custos.sql.facts import ALL_COLUMNS


@dataclass(frozen=True, slots=True)
class PersonalTable:
    relation: str
    subject: str | None
    columns: Mapping[str, str]  # column -> category
    categories: frozenset[str]  # every category of the table

    def is_personal_column(self, column: str) -> bool:
        return column in self.columns or column == self.subject or column == ALL_COLUMNS


FREE_TEXT = "free_text"
FREE_TEXT_HOLDS = frozenset({"email", "phone", "iban"})
"""What free text quotes: a support ticket holds the customer's email or phone. Reading it
counts as reading them too, so a rule that masks them (content detection finds them in the
text) or refuses them applies."""


def by_relation(pairs: Iterable[tuple[str, str]]) -> dict[str, frozenset[str]]:
    """(relation, column) pairs as `PersonalDataCatalog.categories` takes them."""
    grouped: dict[str, frozenset[str]] = {}
    for relation, column in pairs:
        grouped[relation] = grouped.get(relation, frozenset()) | {column}
    return grouped


class PersonalDataCatalog:
    """The tables holding personal data, and the category of each of their columns."""

    def __init__(self, tables: Mapping[str, CatalogTable], detected: Iterable[str] = ()) -> None:
        # What free text quotes: the categories detection finds built in, and those the
        # policy's own patterns find.
        self.free_text_holds = FREE_TEXT_HOLDS | frozenset(detected)
        self._tables = {
            relation: PersonalTable(
                relation=relation,
                subject=table.subject,
                columns=dict(table.columns),
                categories=frozenset(table.columns.values()),
            )
            for relation, table in tables.items()
        }

    def table(self, relation: str) -> PersonalTable | None:
        return self._tables.get(relation)

    def has_personal_data(self, relation: str) -> bool:
        return relation in self._tables

    def personal_relations(self, relations: Iterable[str]) -> tuple[str, ...]:
        """Those of ``relations`` the catalog lists, sorted."""
        return tuple(sorted(relation for relation in relations if relation in self._tables))

    def categories(
        self, columns: Mapping[str, frozenset[str]], *, quoted: bool = True
    ) -> frozenset[str]:
        """The categories of personal data in ``columns`` (relation -> column names), and,
        with `quoted`, those free text among them may quote (free_text_holds).

        ALL_COLUMNS stands for every column, so it yields all of the table's categories.
        """
        found: set[str] = set()
        for relation, names in columns.items():
            table = self._tables.get(relation)
            if table is None:
                continue
            if ALL_COLUMNS in names:
                found |= table.categories
                continue
            for name in names:
                category = table.columns.get(name)
                if category is not None:
                    found.add(category)
        if quoted and FREE_TEXT in found:
            found |= self.free_text_holds
        return frozenset(found)

    @property
    def relations(self) -> tuple[str, ...]:
        return tuple(self._tables)
