"""The data subjects a statement's result identifies, read from its rows as they pass.

A result column whose values are, by the analysis's lineage, a catalogued table's subject
column or an identifier column (email, phone, iban, national_id), as they are (not computed
from them), identifies whom each row is about. `SubjectCollector` reads those values
before masking rewrites them, and keeps only their keyed pseudonyms, at most `cap` of
them per statement. It never changes a message. A result whose columns are not the ones
the analysis traced (a `*` of unknown width) identifies nobody: its personal tables are
then read "without saying whom".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from custos.audit.events import IdentifierType
from custos.audit.pseudonyms import IDENTIFIER_CATEGORIES, identifier_pseudonym, subject_pseudonym
from custos.masking.typed import INT2, INT4, INT8
from custos.policy.catalog import PersonalDataCatalog
from custos.policy.engine import Decision
from custos.policy.masks import ColumnMask
from custos.protocol.backend import Column
from custos.session.stages import ResultRewriter
from custos.session.statement import Statement
from custos.sql.facts import Analysis

_BINARY_INTEGERS = frozenset({INT2, INT4, INT8})
_TEXT_OIDS = frozenset({25, 1043, 1042, 19})  # text, varchar, bpchar, name


@dataclass(frozen=True, slots=True)
class Identifying:
    """A result column that identifies subjects: as what, of which table."""

    position: int
    identifier_type: IdentifierType
    relation: str
    column: str
    masked: bool = False  # the decision masks the column


@dataclass(frozen=True, slots=True)
class Returned:
    """One subject a result identified (its pseudonym), with the columns that said so."""

    identifier_type: IdentifierType
    relation: str
    pseudonym: str
    columns: tuple[str, ...]
    masked: bool  # every column that returned it came back masked


def identifying_columns(
    analysis: Analysis, index: int, columns: tuple[Column, ...], catalog: PersonalDataCatalog
) -> list[Identifying] | None:
    """The columns of statement `index`'s result that identify subjects; None when the
    result is not the one the analysis traced (its width or names differ)."""
    if index >= len(analysis.statements):
        return None
    outputs = analysis.statements[index].output_columns
    if len(outputs) != len(columns):
        return None
    found: list[Identifying] = []
    for position, (output, column) in enumerate(zip(outputs, columns, strict=True)):
        if output.name is None or output.name != column.name.decode("utf-8", "replace"):
            return None
        if output.computed:
            continue
        for relation, name in sorted(output.sources):
            table = catalog.table(relation)
            if table is None:
                continue
            if table.subject == name:
                found.append(Identifying(position, IdentifierType.SUBJECT, relation, name))
            elif (category := table.columns.get(name)) in IDENTIFIER_CATEGORIES:
                found.append(Identifying(position, IdentifierType(category), relation, name))
    return found


class SubjectCollector(ResultRewriter):
    """Collects the pseudonyms of the subjects a statement's results identify."""

    def __init__(
        self,
        key: bytes,
        catalog: PersonalDataCatalog,
        analysis: Analysis,
        cap: int,
        decision: Decision,
    ) -> None:
        self._decision = decision
        self._key = key
        self._catalog = catalog
        self._analysis = analysis
        self._cap = cap
        self._reading: list[tuple[Identifying, Callable[[bytes], str | None]]] = []
        self.found: dict[tuple[IdentifierType, str, str], Returned] = {}
        self.capped = False
        self.unread_results = False  # a result whose columns could not be traced
        # The tables whose values the results show, identifying or not (`lower(email)`,
        # a name): what a predicate names does not say whom those rows are about.
        self.shown: set[str] = set()
        # The tables an identifier of which a result shows computed (`lower(email)`, a
        # subquery's): whom those values are about is not known, whatever else is.
        self.opaque: set[str] = set()

    def result_started(self, statement: Statement, index: int) -> None:
        columns = statement.columns or ()
        identifying = identifying_columns(self._analysis, index, columns, self._catalog)
        statements = self._analysis.statements
        if index < len(statements):
            for output in statements[index].output_columns:
                self.shown.update(relation for relation, _ in output.sources)
                if output.computed:
                    self.opaque.update(
                        relation
                        for relation, name in output.sources
                        if _identifies(self._catalog, relation, name)
                    )
        if identifying is None:
            self.unread_results = self.unread_results or bool(columns)
            self._reading = []
            return
        masks = self._decision.column_masks
        masked = masks[index] if index < len(masks) else ()
        self._reading = [
            (replace(column, masked=_is_masked(column.position, masked)), reader)
            for column in identifying
            if (reader := _reader(columns[column.position])) is not None
        ]

    def data_row(self, body: bytes) -> bytes | None:
        reading = self._reading
        if not reading or self.capped:
            return None
        values = _values(body)
        for column, reader in reading:
            if column.position >= len(values):
                continue
            raw = values[column.position]
            if raw is None:
                continue
            text = reader(raw)
            if text is None:
                continue
            self._add(column, text)
        return None

    def _add(self, column: Identifying, text: str) -> None:
        if column.identifier_type is IdentifierType.SUBJECT:
            pseudonym = subject_pseudonym(self._key, text)
        else:
            pseudonym = identifier_pseudonym(self._key, column.identifier_type, text)
        key = (column.identifier_type, column.relation, pseudonym)
        known = self.found.get(key)
        if known is not None:
            if column.column not in known.columns or (known.masked and not column.masked):
                columns = tuple(sorted({*known.columns, column.column}))
                self.found[key] = Returned(*key, columns, known.masked and column.masked)
            return
        if len(self.found) >= self._cap:
            self.capped = True
            return
        self.found[key] = Returned(*key, (column.column,), column.masked)


def _is_masked(position: int, masks: tuple[ColumnMask, ...]) -> bool:
    return any(
        mask.position == position or (mask.name is None and position >= mask.position)
        for mask in masks
    )


def _identifies(catalog: PersonalDataCatalog, relation: str, column: str) -> bool:
    table = catalog.table(relation)
    if table is None:
        return False
    return table.subject == column or table.columns.get(column) in IDENTIFIER_CATEGORIES


def _reader(column: Column) -> Callable[[bytes], str | None] | None:
    """How to read a column's values as text, in its format; None where it cannot be."""
    if column.format == 0:
        return _text
    if column.type_oid in _BINARY_INTEGERS:
        return _binary_integer
    if column.type_oid in _TEXT_OIDS:
        return _text
    return None


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _binary_integer(raw: bytes) -> str | None:
    return str(int.from_bytes(raw, "big", signed=True)) if len(raw) in (2, 4, 8) else None


def _values(body: bytes) -> list[bytes | None]:
    """A DataRow's values (None for NULL); what is truncated is left out."""
    count = int.from_bytes(body[:2], "big")
    values: list[bytes | None] = []
    offset = 2
    for _ in range(count):
        if offset + 4 > len(body):
            break
        length = int.from_bytes(body[offset : offset + 4], "big", signed=True)
        offset += 4
        if length < 0:
            values.append(None)
            continue
        values.append(body[offset : offset + length])
        offset += length
    return values
