"""Rewrites a masked statement's answers: its rows' masked columns, and its errors.

A value is masked in the form its column's type takes, text or binary as the client asked:
text types (text, varchar, char, name) carry the masked text itself; numbers, dates,
timestamps, uuids, addresses, json, bytea, arrays of these and composites in text get a
masked value of their own type (custos/masking/typed.py). A value of a type with no masked
form, or that cannot be read as its type, becomes NULL, and is counted so: nothing
unmasked is ever passed on.

Where every masked column of a result is text masked in part, by pseudonym or by one
constant, its rows are rewritten in C on their bytes (row_masker.pyx), with the same
result; a row that path leaves (a value not plain ASCII) is masked here.

Errors and notices of a masked statement can quote the values it read (`invalid input
syntax for type integer: "a@b.c"`, `Failing row contains (...)`): their message, detail,
context and query fields are replaced, and only the SQLSTATE and where in the server it
was raised are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from custos.masking.copy_out import CopyFormat, CopyOutMasker

try:
    from custos.masking import row_masker as compiled_rows
except ImportError:  # installed as plain Python (CUSTOS_PURE_PYTHON=1): the general path masks
    compiled_rows = None  # type: ignore[assignment]
from custos.masking.detect import CompiledPatterns, mask_found
from custos.masking.json_shapes import masked_document
from custos.masking.typed import (
    BPCHAR,
    BYTEA,
    INT2,
    INT4,
    INT8,
    JSON,
    JSONB,
    NAME,
    NUMERIC,
    TEXT,
    UNKNOWN,
    VARCHAR,
    XML,
    masked_value,
)
from custos.masking.values import REDACTED, Masker, partial
from custos.policy.catalog import FREE_TEXT
from custos.policy.catalog import FREE_TEXT_HOLDS as QUOTED
from custos.policy.masks import MIXED, STRENGTH, ColumnMask, JsonMask, whole_value_method
from custos.policy.models import PSEUDONYM_METHODS, MaskMethod
from custos.protocol.backend import Column
from custos.protocol.errors import ProtocolViolation
from custos.session.stages import MaskedColumn, ResultRewriter
from custos.session.statement import Statement

_NULL = b"\xff\xff\xff\xff"  # a value's length word -1: NULL

# Types whose text and binary forms are the text itself.
# Types whose text and binary forms are the text itself (xml is escaped: typed.py).
_TEXT_TYPES = frozenset({TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN})

log = logging.getLogger(__name__)

MASKABLE_ENCODINGS = frozenset({"UTF8", "UNICODE", "SQL_ASCII"})
"""Client encodings whose text masking reads: SQL_ASCII passes the database's UTF-8."""

HIDDEN_MESSAGE = (
    "the statement failed, and its error is not shown: it may quote personal data this "
    "role sees masked (SQLSTATE {sqlstate})"
)
# Fields of an error or notice that can quote values; the others say what and where.
_QUOTING_FIELDS = frozenset({"M", "D", "H", "W", "q", "P", "p", "s", "t", "c", "d", "n"})


class MaskingRewriter(ResultRewriter):
    """Masks one statement's results, statement by statement of its query string."""

    def __init__(
        self,
        masks: Sequence[tuple[ColumnMask, ...]],
        expected: Sequence[tuple[str | None, ...]],
        masker: Masker,
        copy_formats: Sequence[CopyFormat | None] = (),
        patterns: CompiledPatterns = (),
    ) -> None:
        self._masks = masks
        self._expected = expected
        self._masker = masker
        self._patterns = patterns  # the policy's, free text is searched for too
        self._copy_formats = copy_formats  # of the statements that COPY TO STDOUT, by index
        self._copy: CopyOutMasker | None = None  # of the COPY under way
        # For the result under way: how to mask each column, by position (None: kept).
        self._plan: list[_ColumnPlan | None] = []
        # Whether values past the RowDescription's columns are masked (they become NULL).
        self._past_end = False
        self._past_end_values = 0
        self._masks_any = False
        self._index = 0
        self._readable = True  # the answers' client encoding is one masking reads
        # The plans of results done, with their counts, by statement index.
        self._done: list[tuple[int, list[_ColumnPlan | None]]] = []
        # The result's rows masked in C where its plan allows (row_masker.pyx).
        self._rows: compiled_rows.RowMasker | None = None

    def result_started(self, statement: Statement, index: int) -> None:
        self._settle_counts()
        if self._masks_any:
            self._done.append((self._index, self._plan))
        self._index = index
        self._copy = None
        # The encoding the answers come in, known now: a SET earlier in the pipeline may
        # have changed it since the statement was planned.
        self._readable = statement.client_encoding.upper() in MASKABLE_ENCODINGS
        self._planned(statement.columns or (), by_names=True)

    def copy_started(self, body: bytes) -> None:
        """A COPY TO STDOUT's data comes next. It carries no types: each value is its text
        form (masked as text), or in the binary format its type's binary form (which has no
        masked form the gateway can make without the type, so it becomes NULL)."""
        if len(body) < 3:
            raise ProtocolViolation("the database sent a truncated CopyOutResponse")
        binary = body[0] == 1
        count = (body[1] << 8) | body[2]
        column = Column(b"", 0, 0, TEXT, -1, -1, 1 if binary else 0)
        self._planned((column,) * count, by_names=False)
        index = self._index
        copy_format = self._copy_formats[index] if index < len(self._copy_formats) else None
        if copy_format is None or (copy_format.kind == "binary") != binary or not self._readable:
            # A COPY the stage did not plan for, not in the format it parsed, or in an
            # encoding it cannot read: its data is withheld (copy_data gives b"").
            return
        plan = self._plan
        masked = frozenset(position for position, entry in enumerate(plan) if entry is not None)
        nulls = frozenset(
            position for position in masked if (entry := plan[position]) and entry.fills_null
        )
        self._copy = CopyOutMasker(
            copy_format, self._copy_field, masked, nulls_masked=nulls, columns=count
        )

    def _planned(self, columns: Sequence[Column], by_names: bool) -> None:
        """Plans the masking of the result's columns: by the decision's masks, unless the
        result is not the one the analysis traced (for COPY, whose columns have no names,
        not as many columns)."""
        self._settle_counts()
        index = self._index
        masks = self._masks[index] if index < len(self._masks) else ()
        expected = self._expected[index] if index < len(self._expected) else ()
        by_position = {mask.position: mask for mask in masks if mask.name is not None}
        beyond = next((mask for mask in masks if mask.name is None), None)
        if masks and not self._readable:
            # Text in another encoding may hide a quote or a delimiter in a character:
            # nothing of it can be read safely, so every value becomes NULL.
            by_position = {}
            beyond = ColumnMask(0, None, MIXED, MaskMethod.NULL, masks[0].rule)
        elif masks and not _as_expected(columns, expected, by_names):
            # The result is not the one the analysis traced (a view or table changed since
            # the catalog was read, a `*` of another width): which column holds what is not
            # known, so every column is masked, by the strongest method.
            strongest = max(masks, key=lambda mask: STRENGTH[mask.method])
            by_position = {}
            method = whole_value_method(strongest.method)
            beyond = ColumnMask(0, None, MIXED, method, strongest.rule, computed=True)
        plan: list[_ColumnPlan | None] = []
        for position, column in enumerate(columns):
            mask = by_position.get(position)
            if mask is None and beyond is not None and position >= beyond.position:
                mask = beyond
            plan.append(None if mask is None else _ColumnPlan(mask, column, position))
        # A DataRow wider than its RowDescription: the extra values have no known form.
        past_end = beyond is not None or any(position >= len(plan) for position in by_position)
        self._plan = plan
        self._past_end = past_end
        self._masks_any = past_end or any(entry is not None for entry in plan)
        self._rows = None if past_end or not self._masks_any else _row_masker(plan, self._masker)

    def _settle_counts(self) -> None:
        """Adds the values the fast path masked to their columns' counts."""
        rows = self._rows
        if rows is not None:
            for entry, count in zip(self._plan, rows.take_counts(), strict=True):
                if entry is not None:
                    entry.values += count

    def data_row(self, body: bytes) -> bytes | None:
        if not self._masks_any:
            return None
        rows = self._rows
        if rows is not None:
            masked_row = rows.masked_row(body)
            if masked_row is not None:
                return masked_row
        plan = self._plan
        size = len(body)
        if size < 2:
            raise ProtocolViolation("the database sent a truncated DataRow")
        count = (body[0] << 8) | body[1]
        described = len(plan)
        parts: list[bytes] = []
        kept_from = 0  # the start of the stretch of the row passed on as it came
        offset = 2
        for position in range(count):
            if offset + 4 > size:
                raise ProtocolViolation("the database sent a truncated DataRow")
            head = body[offset]
            length = (head << 24) | (body[offset + 1] << 16) | (body[offset + 2] << 8)
            length |= body[offset + 3]
            start = offset + 4
            if head & 0x80:  # -1: NULL
                column = plan[position] if position < described else None
                if column is not None and column.fills_null:
                    # A computed value's NULL can tell something: one placeholder for all.
                    parts.append(body[kept_from:offset])
                    parts.append(self._masked(b"", column))
                    kept_from = start
                offset = start
                continue
            end = start + length
            if end > size:
                raise ProtocolViolation("the database sent a truncated DataRow")
            column = plan[position] if position < described else None
            if column is not None:
                parts.append(body[kept_from:offset])
                parts.append(self._masked(body[start:end], column))
                kept_from = end
            elif position >= described and self._past_end:
                parts.append(body[kept_from:offset])
                parts.append(_NULL)  # a value the RowDescription did not describe
                self._past_end_values += 1
                kept_from = end
            offset = end
        if offset != size:
            raise ProtocolViolation("the database sent a malformed DataRow")
        if kept_from == 0:
            return None if not parts else b"".join(parts)
        parts.append(body[kept_from:])
        return b"".join(parts)

    def copy_data(self, body: bytes) -> bytes | None:
        if self._copy is None:
            return b""  # withheld: see copy_started
        return self._copy.feed(body)

    def copy_done(self) -> bytes | None:
        copy, self._copy = self._copy, None
        return None if copy is None else copy.finish()

    def _copy_field(self, position: int, value: bytes | None) -> bytes | None:
        """A COPY value masked (None: NULL): its text form's, or NULL for a binary one."""
        column = self._plan[position]
        if column is None:
            return value
        if column.binary:
            column.values += 1
            column.nulled += 1
            return None
        masked = self._masked(b"" if value is None else value, column)
        return None if masked is _NULL else masked[4:]

    def fields(self, message_type: int, fields: dict[str, str]) -> dict[str, str] | None:
        if not any(code in fields for code in _QUOTING_FIELDS):
            return None
        kept = {code: value for code, value in fields.items() if code not in _QUOTING_FIELDS}
        kept["M"] = HIDDEN_MESSAGE.format(sqlstate=fields.get("C", "unknown"))
        return kept

    def statement_finished(self, statement: Statement) -> None:
        # Evidence: which columns, by which method, how many values; positions and
        # categories only (an alias the client wrote could be anything).
        masked = self.masked()
        if not masked:
            return
        log.info(
            "statement %d masked %d values: %s",
            statement.number,
            sum(column.values for column in masked),
            " ".join(
                f"{column.statement_index}.{column.position}:{column.category}:{column.method}"
                f"={column.values}" + (f"(null {column.nulled})" if column.nulled else "")
                for column in masked
            ),
        )

    def masked(self) -> tuple[MaskedColumn, ...]:
        self._settle_counts()
        counted = [
            column.counted(index)
            for index, plan in [*self._done, (self._index, self._plan)]
            for column in plan
            if column is not None and column.values
        ]
        if self._past_end_values:
            # Values past the columns the result described (position -1), all NULL.
            count = self._past_end_values
            counted.append(MaskedColumn(self._index, -1, "", MIXED, "null", count, 0))
        return tuple(counted)

    def _masked(self, value: bytes, column: _ColumnPlan) -> bytes:
        """The masked value with its length word, in the column's type and format."""
        column.values += 1
        how = column.how
        if how == _CONSTANT:
            return column.constant
        if column.json is not None:
            kept = self._masked_object(value, column, column.json)
            if kept is not None:
                return _with_length(kept)
        if how == _TEXT_FORM:
            # A text type, whose text and binary forms are the text itself: the common case.
            try:
                masked = self._masked_text(value.decode(), column)
            except UnicodeDecodeError:
                masked = None  # not text in the session's encoding: no masked form is known
            encoded = None if masked is None else masked.encode()
        else:
            encoded = self._masked_by_type(value, column)
        if encoded is None:
            column.nulled += 1
        return _with_length(encoded)

    def _masked_by_type(self, value: bytes, column: _ColumnPlan) -> bytes | None:
        return masked_value(
            value,
            column.type_oid,
            column.binary,
            column.category,
            column.method,
            self._masker.material,
            lambda text: self._masked_text(text, column),
        )

    def _masked_text(self, text: str, column: _ColumnPlan) -> str | None:
        way = column.text_way
        if way == _PARTIAL_TEXT:
            return partial(text, column.category)
        if way == _PSEUDONYM_TEXT:
            return self._masker.pseudonym(text, column.category)
        return self._masked_as(text, column.category, column.method)

    def _masked_as(self, text: str, category: str, method: MaskMethod) -> str | None:
        """A text value masked by the method, as a value of the category."""
        if category == FREE_TEXT and method is not MaskMethod.NULL:
            # Free text is searched for the values it quotes, which are masked in place.
            return mask_found(text, QUOTED, method, self._masker, self._patterns)[0]
        if method is MaskMethod.PARTIAL:
            return partial(text, category)
        if method in PSEUDONYM_METHODS:
            return self._masker.pseudonym(text, category)
        return self._masker.text(text, category, method)

    def _masked_object(self, value: bytes, column: _ColumnPlan, shape: JsonMask) -> bytes | None:
        """A JSON object's personal keys masked, its structure kept; None where it is not
        the object the analysis traced."""
        jsonb_binary = column.binary and column.type_oid == JSONB
        if jsonb_binary and value[:1] != b"\x01":
            return None
        try:
            text = (value[1:] if jsonb_binary else value).decode()
        except UnicodeDecodeError:
            return None
        masked = masked_document(
            text, shape, lambda leaf, key: self._masked_as(leaf, key.category, key.method)
        )
        if masked is None:
            return None
        return (b"\x01" if jsonb_binary else b"") + masked.encode()


# How a column's values are masked: one value for all (null, or redact of a text type),
# as text (a text type), or by the value's type (custos/masking/typed.py).
_CONSTANT = 0
_TEXT_FORM = 1
_BY_TYPE = 2


# How a column's text is masked: in part, by pseudonym, or otherwise (Masker.text, detection).
_PARTIAL_TEXT = 0
_PSEUDONYM_TEXT = 1
_OTHER_TEXT = 2
_TEXT_WAYS = {
    MaskMethod.PARTIAL: _PARTIAL_TEXT,
    MaskMethod.PSEUDONYM: _PSEUDONYM_TEXT,
    MaskMethod.HASH: _PSEUDONYM_TEXT,
}


class _ColumnPlan:
    """How one result column is masked: what it holds, by which method, in which form."""

    __slots__ = (
        "binary",
        "category",
        "constant",
        "detects",
        "fills_null",
        "how",
        "json",
        "method",
        "name",
        "nulled",
        "position",
        "text_way",
        "type_oid",
        "values",
    )

    def __init__(self, mask: ColumnMask, column: Column, position: int) -> None:
        self.position = position
        self.name = column.name.decode(errors="replace")
        self.values = 0
        self.nulled = 0
        self.category = mask.category
        self.method = mask.method
        self.type_oid = column.type_oid
        self.binary = column.format == 1
        # A JSON object built with known keys, masked key by key (json_shapes.py).
        self.json = mask.json if self.type_oid in (JSON, JSONB) else None
        # Free text is searched for the values it quotes, which are masked in place.
        self.detects = mask.category == FREE_TEXT and mask.method is not MaskMethod.NULL
        self.constant = _NULL
        # How its text is masked, decided once rather than per value.
        if self.detects or mask.method not in _TEXT_WAYS:
            self.text_way = _OTHER_TEXT
        else:
            self.text_way = _TEXT_WAYS[mask.method]
        # A computed value's form, even its being NULL, can carry what it was computed
        # from (an array's bounds, a number's scale): one placeholder of the type for all.
        self.fills_null = mask.computed and mask.method is not MaskMethod.NULL
        if mask.method is MaskMethod.NULL:
            self.how = _CONSTANT
        elif mask.computed and self.json is None:
            self.how = _CONSTANT
            self.constant = _with_length(placeholder(self.type_oid, self.binary))
        elif self.type_oid not in _TEXT_TYPES:
            self.how = _BY_TYPE
        elif mask.method is MaskMethod.REDACT and not self.detects:
            self.how = _CONSTANT
            self.constant = _with_length(REDACTED.encode())
        else:
            self.how = _TEXT_FORM

    def counted(self, index: int) -> MaskedColumn:
        """This column's counts, in the result of the statement at `index`."""
        method = self.method.value
        return MaskedColumn(
            index, self.position, self.name, self.category, method, self.values, self.nulled
        )


def _row_masker(
    plan: Sequence[_ColumnPlan | None], masker: Masker
) -> compiled_rows.RowMasker | None:
    """The fast path for a result whose masked columns are all masked by a constant, or are
    text masked in part or by pseudonym; None for any other (or where it is not compiled)."""
    if compiled_rows is None:
        return None
    key_block = masker.hmac_key_block
    ways = bytearray()
    constants: list[bytes] = []
    categories: list[bytes] = []
    for entry in plan:
        constant = category = b""
        if entry is None:
            way = compiled_rows.KEEP
        elif entry.how == _CONSTANT:
            way = compiled_rows.CONSTANT_AND_NULL if entry.fills_null else compiled_rows.CONSTANT
            constant = entry.constant
        elif entry.how != _TEXT_FORM or entry.fills_null:
            return None
        elif entry.text_way == _PARTIAL_TEXT and entry.category != "ip":
            # (`ip` is redacted in part, but NULL where not text: the general path's.)
            way = compiled_rows.PARTIAL_CATEGORIES.get(entry.category, compiled_rows.PARTIAL_OTHER)
        elif entry.text_way == _PSEUDONYM_TEXT and key_block is not None:
            way = compiled_rows.PSEUDONYM_CATEGORIES.get(
                entry.category, compiled_rows.PSEUDONYM_OTHER
            )
            category = entry.category.encode() + b"\x00"  # as Masker.material keys it
        else:
            return None
        ways.append(way)
        constants.append(constant)
        categories.append(category)
    return compiled_rows.RowMasker(bytes(ways), tuple(constants), tuple(categories), key_block)


def placeholder(type_oid: int, binary: bool) -> bytes | None:
    """The one value a computed masked column's values all become: `[redacted]` in a text
    type (a JSON string in json), 0 in a number; None (NULL) in any other type, whose
    values all become NULL."""
    if type_oid in _TEXT_TYPES or type_oid == XML:
        return REDACTED.encode()
    if type_oid in (JSON, JSONB):
        document = b'"' + REDACTED.encode() + b'"'
        return b"\x01" + document if binary and type_oid == JSONB else document
    if type_oid == BYTEA:
        return REDACTED.encode() if binary else b"\\x" + REDACTED.encode().hex().encode()
    width = _INTEGER_WIDTHS.get(type_oid)
    if width is not None:
        return bytes(width) if binary else b"0"
    if type_oid == NUMERIC:
        return bytes(8) if binary else b"0"  # binary: no digits, weight 0, sign +, scale 0
    return None


_INTEGER_WIDTHS = {INT2: 2, INT4: 4, INT8: 8}


def _with_length(encoded: bytes | None) -> bytes:
    """A value with its length word; None is NULL."""
    return _NULL if encoded is None else len(encoded).to_bytes(4, "big") + encoded


def _as_expected(columns: Sequence[Column], expected: Sequence[str | None], by_names: bool) -> bool:
    """Whether the result's columns are those the analysis named, in order (a column of
    unknown width matches any, and masks every column from it on anyway); `by_names`
    False: as many as it named."""
    if None in expected:
        return True
    if len(columns) != len(expected):
        return False
    return not by_names or all(
        column.name == (name or "").encode() for column, name in zip(columns, expected, strict=True)
    )
