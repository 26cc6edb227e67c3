"""Rewrites a masked statement's answers: its rows' masked columns, and its errors.

A value is masked in the form its column's type takes, text or binary as the client asked:
text types (text, varchar, char, name, xml) carry the masked text itself, json and jsonb a
JSON string of it (jsonb's binary form with its version byte), bytea its bytes. A value of
any other type (numbers, dates, arrays, composites...) has no masked form that keeps its
type and reveals nothing, so it becomes NULL. A value that cannot be read as text becomes
NULL too: nothing unmasked is ever passed on.

Errors and notices of a masked statement can quote the values it read (`invalid input
syntax for type integer: "a@b.c"`, `Failing row contains (...)`): their message, detail,
context and query fields are replaced, and only the SQLSTATE and where in the server it
was raised are kept.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

from custos.masking.detect import mask_found
from custos.masking.values import Masker
from custos.policy.catalog import FREE_TEXT
from custos.policy.catalog import FREE_TEXT_HOLDS as QUOTED
from custos.policy.masks import MIXED, STRENGTH, ColumnMask, whole_value_method
from custos.policy.models import MaskMethod
from custos.protocol.backend import Column
from custos.protocol.errors import ProtocolViolation
from custos.session.stages import ResultRewriter
from custos.session.statement import Statement

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_NULL = _INT32.pack(-1)

# Types whose text and binary forms are the text itself.
_TEXT_TYPES = frozenset({25, 1043, 1042, 19, 705, 142})  # text varchar bpchar name unknown xml
_JSON = 114
_JSONB = 3802
_BYTEA = 17

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
    ) -> None:
        self._masks = masks
        self._expected = expected
        self._masker = masker
        # position -> how to mask it, for the result under way; None: every column from the
        # first index of `_from` on.
        self._plan: dict[int, ColumnMask] = {}
        self._from: ColumnMask | None = None
        self._columns: tuple[Column, ...] = ()
        self.masked_values = 0

    def result_started(self, statement: Statement, index: int) -> None:
        masks = self._masks[index] if index < len(self._masks) else ()
        expected = self._expected[index] if index < len(self._expected) else ()
        self._columns = statement.columns or ()
        self._plan = {mask.position: mask for mask in masks if mask.name is not None}
        self._from = next((mask for mask in masks if mask.name is None), None)
        if masks and not _as_expected(self._columns, expected):
            # The result is not the one the analysis traced (a view or table changed since
            # the catalog was read, a `*` of another width): which column holds what is not
            # known, so every column is masked, by the strongest method.
            strongest = max(masks, key=lambda mask: STRENGTH[mask.method])
            self._plan = {}
            method = whole_value_method(strongest.method)
            self._from = ColumnMask(0, None, MIXED, method, strongest.rule)

    def data_row(self, body: bytes) -> bytes | None:
        if not self._plan and self._from is None:
            return None
        if len(body) < 2:
            raise ProtocolViolation("the database sent a truncated DataRow")
        (count,) = _INT16.unpack_from(body)
        parts = [body[:2]]
        offset = 2
        for position in range(count):
            if offset + 4 > len(body):
                raise ProtocolViolation("the database sent a truncated DataRow")
            (length,) = _INT32.unpack_from(body, offset)
            end = offset + 4 + max(length, 0)
            if end > len(body):
                raise ProtocolViolation("the database sent a truncated DataRow")
            mask = self._mask_for(position)
            if mask is None or length < 0:
                parts.append(body[offset:end])
            else:
                parts.append(self._masked(body[offset + 4 : end], position, mask))
            offset = end
        if offset != len(body):
            raise ProtocolViolation("the database sent a malformed DataRow")
        return b"".join(parts)

    def copy_data(self, body: bytes) -> bytes | None:
        # A masked statement that copies out is refused before it runs (stage.py); should
        # one reach here all the same, its data is withheld rather than passed on.
        return b""

    def fields(self, message_type: int, fields: dict[str, str]) -> dict[str, str] | None:
        if not any(code in fields for code in _QUOTING_FIELDS):
            return None
        kept = {code: value for code, value in fields.items() if code not in _QUOTING_FIELDS}
        kept["M"] = HIDDEN_MESSAGE.format(sqlstate=fields.get("C", "unknown"))
        return kept

    def _mask_for(self, position: int) -> ColumnMask | None:
        mask = self._plan.get(position)
        if mask is None and self._from is not None and position >= self._from.position:
            return self._from
        return mask

    def _masked(self, value: bytes, position: int, mask: ColumnMask) -> bytes:
        """The masked value with its length word, in the column's type and format."""
        self.masked_values += 1
        column = self._columns[position] if position < len(self._columns) else None
        if column is None:
            return _NULL  # a column the RowDescription did not describe: no form is known
        type_oid, binary = column.type_oid, column.format == 1
        try:
            # bytea's bytes need not be text: masked whatever they hold.
            text = value.decode(errors="replace" if type_oid == _BYTEA else "strict")
        except UnicodeDecodeError:
            return _NULL
        if mask.category == FREE_TEXT and mask.method is not MaskMethod.NULL:
            masked: str | None = mask_found(text, QUOTED, mask.method, self._masker)[0]
        else:
            masked = self._masker.text(text, mask.category, mask.method)
        if masked is None:
            return _NULL
        encoded = _encoded(masked, type_oid, binary)
        return _NULL if encoded is None else _INT32.pack(len(encoded)) + encoded


def _as_expected(columns: Sequence[Column], expected: Sequence[str | None]) -> bool:
    """Whether the result's columns are those the analysis named, in order (a column of
    unknown width matches any, and masks every column from it on anyway)."""
    if None in expected:
        return True
    if len(columns) != len(expected):
        return False
    return all(
        column.name == (name or "").encode() for column, name in zip(columns, expected, strict=True)
    )


def _encoded(masked: str, type_oid: int, binary: bool) -> bytes | None:
    """The masked text as a value of the type, in the format; None where it has none."""
    if type_oid in _TEXT_TYPES:
        return masked.encode()
    if type_oid == _JSON:
        return json.dumps(masked).encode()
    if type_oid == _JSONB:
        text = json.dumps(masked).encode()
        return b"\x01" + text if binary else text
    if type_oid == _BYTEA:
        raw = masked.encode()
        return raw if binary else b"\\x" + raw.hex().encode()
    return None
