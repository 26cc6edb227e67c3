"""The masked-row fast path (custos/masking/row_masker.pyx) against the rewriter's general
path: the same bytes and the same counts, row by row, for any plan it takes and any row; its
SHA-256 (the CPU's SHA extensions and portable C) against hashlib; its pseudonyms against
Masker.pseudonym under any key."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from custos.masking import rewriter as rewriter_module
from custos.masking.rewriter import MaskingRewriter
from custos.masking.values import Masker, partial
from custos.policy.masks import ColumnMask
from custos.policy.models import MaskMethod
from custos.protocol.backend import Column
from custos.protocol.errors import ProtocolViolation
from custos.session.statement import Statement

row_masker = pytest.importorskip(
    "custos.masking.row_masker", reason="the fast path is compiled (make test builds it)"
)

TEXT, VARCHAR, INT4 = 25, 1043, 23
KEY = b"k" * 32
CATEGORIES = ["email", "phone", "iban", "name", "card", "address", "birth_date", "ip"]

ascii_text = st.text(st.characters(max_codepoint=127), max_size=40)
any_text = st.one_of(ascii_text, st.text(max_size=20))


keys = st.binary(min_size=32, max_size=80)
# Values shaped like each category's (so the formats' own branches run), and any text.
shaped = st.one_of(
    ascii_text,
    st.from_regex(
        r"[A-Za-z]{2}[0-9]{2}( ?[A-Za-z0-9]{4}){2,8}( ?[A-Za-z0-9]{1,3})?", fullmatch=True
    ),
    st.from_regex(r" *(\+|00)?[0-9]{0,4}[ ()./-]{0,2}[0-9 ()./-]{0,100}", fullmatch=True),
    st.from_regex(r"[a-z.]{0,12}@[a-z@.]{0,12}", fullmatch=True),
    st.from_regex(r"([A-Za-z]{1,6}['-]?[A-Za-z]{0,6}[ ,]{1,2}){0,10}", fullmatch=True),
)


def _partial_way(category: str) -> int:
    return row_masker.PARTIAL_CATEGORIES.get(category, row_masker.PARTIAL_OTHER)


def _pseudonym_way(category: str) -> int:
    return row_masker.PSEUDONYM_CATEGORIES.get(category, row_masker.PSEUDONYM_OTHER)


@given(st.sampled_from(CATEGORIES), shaped)
def test_partial_forms_are_values_partial_byte_for_byte(category: str, value: str) -> None:
    if category == "ip":
        return  # a constant on the fast path (see the rewriter's plan)
    made = row_masker.masked_text(_partial_way(category), value.encode())
    assert made == partial(value, category).encode()


@given(st.sampled_from(CATEGORIES), shaped, keys, st.booleans())
def test_pseudonyms_are_the_maskers_byte_for_byte(
    category: str, value: str, key: bytes, portable: bool
) -> None:
    masker = Masker(key)
    made = row_masker.masked_text(
        _pseudonym_way(category),
        value.encode(),
        category.encode() + b"\x00",
        masker.hmac_key_block,
        portable,
    )
    assert made == masker.pseudonym(value, category).encode()


@given(st.binary(max_size=300), st.booleans())
def test_sha256_is_hashlibs(data: bytes, portable: bool) -> None:
    assert row_masker.sha256_digest(data, portable) == hashlib.sha256(data).digest()


@given(
    st.sampled_from(CATEGORIES),
    st.booleans(),
    st.text(min_size=1).filter(lambda value: not value.isascii()),
)
def test_values_not_plain_ascii_are_left_to_the_general_path(
    category: str, pseudonym: bool, value: str
) -> None:
    way = _pseudonym_way(category) if pseudonym else _partial_way(category)
    key_block = Masker(KEY).hmac_key_block
    assert row_masker.masked_text(way, value.encode(), b"k\x00", key_block) is None


column_masks = st.tuples(
    st.sampled_from(CATEGORIES),
    st.sampled_from(
        [
            MaskMethod.PARTIAL,
            MaskMethod.PSEUDONYM,
            MaskMethod.HASH,
            MaskMethod.REDACT,
            MaskMethod.NULL,
        ]
    ),
    st.booleans(),  # computed
    st.sampled_from([TEXT, VARCHAR, INT4]),
)
cell = st.one_of(
    st.none(), any_text.map(str.encode), shaped.map(str.encode), st.binary(max_size=12)
)


def _row(values: list[bytes | None]) -> bytes:
    body = len(values).to_bytes(2, "big")
    for value in values:
        body += b"\xff\xff\xff\xff" if value is None else len(value).to_bytes(4, "big") + value
    return body


def _rewriter(
    columns: list[tuple[str, MaskMethod, bool, int] | None], binary: bool
) -> MaskingRewriter:
    masks = tuple(
        ColumnMask(position, f"c{position}", category, method, "rule", computed=computed)
        for position, spec in enumerate(columns)
        if spec is not None
        for category, method, computed, _ in [spec]
    )
    described = tuple(
        Column(f"c{position}".encode(), 0, 0, spec[3] if spec else TEXT, -1, -1, int(binary))
        for position, spec in enumerate(columns)
    )
    expected = [tuple(f"c{i}" for i in range(len(columns)))]
    rewriter = MaskingRewriter([masks], expected, Masker(KEY))
    statement = Statement(1, ())
    statement.columns = described
    rewriter.result_started(statement, 0)
    return rewriter


def _masked_rows(
    columns: list[tuple[str, MaskMethod, bool, int] | None],
    rows: list[bytes],
    binary: bool,
    fast: bool,
) -> tuple[list[bytes | None], tuple[tuple[int, int, int], ...]]:
    with pytest.MonkeyPatch.context() as patched:
        if not fast:
            patched.setattr(rewriter_module, "compiled_rows", None)
        rewriter = _rewriter(columns, binary)
    if not fast:
        assert rewriter._rows is None
    masked = []
    for row in rows:
        replaced = rewriter.data_row(row)
        masked.append(row if replaced is None else replaced)
    counts = tuple((column.position, column.values, column.nulled) for column in rewriter.masked())
    return masked, counts


@given(
    columns=st.lists(st.one_of(st.none(), column_masks), min_size=1, max_size=6),
    cells=st.lists(st.lists(cell, min_size=6, max_size=6), min_size=1, max_size=8),
    binary=st.booleans(),
)
def test_the_fast_path_masks_as_the_general_path_does(
    columns: list[tuple[str, MaskMethod, bool, int] | None],
    cells: list[list[bytes | None]],
    binary: bool,
) -> None:
    rows = [_row(values[: len(columns)]) for values in cells]
    fast = _masked_rows(columns, rows, binary, fast=True)
    general = _masked_rows(columns, rows, binary, fast=False)
    assert fast == general


def test_plain_text_rows_take_the_fast_path_and_are_counted() -> None:
    rewriter = _rewriter([("email", MaskMethod.PARTIAL, False, TEXT), None], binary=False)
    assert rewriter._rows is not None  # the plan is one the fast path takes
    row = _row([b"ada@example.com", b"kept"])
    assert rewriter.data_row(row) == _row([b"***@example.com", b"kept"])
    assert rewriter.data_row(_row([None, b"kept"])) == _row([None, b"kept"])
    assert [(c.position, c.values, c.nulled) for c in rewriter.masked()] == [(0, 1, 0)]


@pytest.mark.parametrize(
    "row",
    [
        b"\x00",  # no column count
        b"\x00\x01\x00\x00",  # a length word cut short
        b"\x00\x01\x00\x00\x00\x09ada@",  # a value cut short
        _row([b"ada@example.com"]) + b"x",  # bytes after the last value
    ],
)
def test_a_malformed_row_is_reported_not_passed_on(row: bytes) -> None:
    rewriter = _rewriter([("email", MaskMethod.PARTIAL, False, TEXT)], binary=False)
    with pytest.raises(ProtocolViolation):
        rewriter.data_row(row)
