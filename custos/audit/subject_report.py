"""A data-subject access report (GDPR Art. 15): every access to one person's data, from
an identifier someone gives, and the statements that read their tables without saying
whom.

The identifier becomes its keyed pseudonym under the audit key (pseudonyms.py), the one
the data-subject index holds; the accesses come from the named query subject-accesses,
so the report and Athena answer alike. Nothing printed holds an identifier but the one
given: the index holds pseudonyms, and statement texts have no values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custos.audit.events import IdentifierType
from custos.audit.pseudonyms import identifier_pseudonym, subject_pseudonym
from custos.audit.query import AuditQueryError, named_queries, run_query


@dataclass(frozen=True, slots=True)
class SubjectIdentifier:
    """What the person asking gave: an identifier of a type, or a table's subject key."""

    identifier_type: IdentifierType
    value: str
    relation: str | None = None  # for a subject key: its table

    @classmethod
    def subject_key(cls, text: str) -> SubjectIdentifier:
        relation, separator, value = text.partition(":")
        if not separator or "." not in relation or not value:
            raise AuditQueryError(
                f"--subject {text!r} must be TABLE:ID with the table as the catalog names it,"
                " e.g. crm.customers:42"
            )
        return cls(IdentifierType.SUBJECT, value, relation)

    def pseudonym(self, key: bytes) -> str:
        if self.relation is not None:
            return subject_pseudonym(key, self.value)
        return identifier_pseudonym(key, self.identifier_type, self.value)

    def described(self) -> str:
        if self.relation is not None:
            return f"subject {self.relation}:{self.value}"
        return f"{self.identifier_type.value} {self.value}"


@dataclass(frozen=True, slots=True)
class SubjectReport:
    identifier: SubjectIdentifier
    pseudonym: str
    accesses: list[dict[str, Any]]
    unidentified_tables: tuple[str, ...] | None  # None: any table (no catalog to say which)
    unidentified_reads: list[dict[str, Any]]


_UNIDENTIFIED_READS = """
SELECT o.time, o.session_id, o.statement_number, o.role, o.subject AS principal,
       u.relation, st.categories, st.decision, st.deciding_rule, o.status, o.rows,
       st.statement
FROM custos_audit.events AS o
CROSS JOIN UNNEST(o.unidentified) AS u (relation)
LEFT JOIN custos_audit.events AS st
  ON st.session_id = o.session_id
 AND st.statement_number = o.statement_number
 AND st.event_type = 'statement'
WHERE o.event_type = 'statement_outcome'
ORDER BY from_iso8601_timestamp(o.time), o.session_id, o.statement_number, u.relation
"""


def subject_report(
    root: Path,
    key: bytes,
    identifier: SubjectIdentifier,
    catalog_tables: tuple[str, ...] | None,
) -> SubjectReport:
    """`catalog_tables`: the tables holding the identifier's category, from the policy's
    catalog; None where no catalog was given: then any table read without naming whom,
    by a statement whose categories include the identifier's type."""
    pseudonym = identifier.pseudonym(key)
    accesses = run_query(root, named_queries()["subject-accesses"].sql, [pseudonym]).records()
    tables = (identifier.relation,) if identifier.relation is not None else catalog_tables
    reads = [
        read
        for read in run_query(root, _UNIDENTIFIED_READS).records()
        if (read["relation"] in tables if tables is not None else _names_type(read, identifier))
    ]
    return SubjectReport(identifier, pseudonym, accesses, tables, reads)


def _names_type(read: dict[str, Any], identifier: SubjectIdentifier) -> bool:
    return identifier.identifier_type.value in (read["categories"] or ())


def catalog_tables_of(policy_file: Path, identifier_type: IdentifierType) -> tuple[str, ...]:
    """The catalog's tables with a column of the identifier's category, or of free text
    (which may quote an email, a phone number, an IBAN)."""
    from custos.policy.catalog import FREE_TEXT, FREE_TEXT_HOLDS
    from custos.policy.source import load_policy

    document = load_policy(policy_file)
    held = {identifier_type.value}
    if identifier_type.value in FREE_TEXT_HOLDS:
        held.add(FREE_TEXT)
    return tuple(
        sorted(
            relation
            for relation, table in document.catalog.items()
            if held & set(table.columns.values())
        )
    )
