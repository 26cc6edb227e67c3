"""The COPY TO masker against PostgreSQL's own COPY data, loaded back with COPY FROM.

The data every test masks is what the test server wrote for tricky values; what the masker
writes is judged by what PostgreSQL reads back from it, and by the bytes themselves.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pglast
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.masking.copy_out import CopyFormat, CopyOutMasker, MaskField, UnsupportedCopy
from custos.protocol.errors import ProtocolViolation

SCHEMA = "copy_out_test"
TRICKY = [
    "plain",
    "tab\there",
    "line\nbreak",
    "carriage\rreturn",
    "crlf\r\n",
    "back\\slash",
    "\\",
    "\\N",
    "\\.",
    "ends with backslash\\",
    'dou"ble "quotes"',
    "single 'quotes'",
    "comma, and; semicolon | pipe",
    "%percent! bang",
    "",
    None,
    "NULL",
    "nil",
    "Zoë 日本 🎉",
    "\x01\x1b\x7f controls \b\f\v",
    "  spaces  ",
    '"',
    "x" * 20000,
]
MASKED = frozenset({1, 3})  # columns a and c of copy_out_test.source(id, a, b, c)


@dataclass(frozen=True)
class Case:
    """One COPY format: its options going out, and coming back in."""

    to_options: str
    from_options: str
    id: str = field(default="")


CASES = [
    Case("", "", "text"),
    Case("(FORMAT text, HEADER)", "(FORMAT text, HEADER)", "text-header"),
    Case("(DELIMITER '|', NULL '<none>')", "(DELIMITER '|', NULL '<none>')", "text-custom"),
    Case("WITH DELIMITER ','", "WITH DELIMITER ','", "text-legacy"),
    Case("(FORMAT csv)", "(FORMAT csv)", "csv"),
    Case("(FORMAT csv, HEADER)", "(FORMAT csv, HEADER)", "csv-header"),
    Case(
        "(FORMAT csv, HEADER, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL 'NULL')",
        "(FORMAT csv, HEADER, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL 'NULL')",
        "csv-custom",
    ),
    Case("(FORMAT csv, FORCE_QUOTE *)", "(FORMAT csv)", "csv-force-all"),
    Case("(FORMAT csv, FORCE_QUOTE (a, c), NULL 'NULL')", "(FORMAT csv, NULL 'NULL')", "csv-force"),
    Case(
        "WITH DELIMITER '|' CSV HEADER QUOTE AS '%' ESCAPE AS '!' FORCE QUOTE b",
        "WITH DELIMITER '|' CSV HEADER QUOTE AS '%' ESCAPE AS '!'",
        "csv-legacy",
    ),
    Case("(FORMAT binary)", "(FORMAT binary)", "binary"),
    Case("BINARY", "BINARY", "binary-legacy"),
]


def reversed_text(position: int, value: bytes) -> bytes | None:
    """The test's mask: column a reversed by character after an X, column c NULL."""
    return b"X" + value.decode()[::-1].encode() if position == 1 else None


def identity(position: int, value: bytes) -> bytes:
    return value


@pytest.fixture(scope="module")
def connection(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        connection.execute(f"CREATE SCHEMA {SCHEMA}")
        connection.execute(f"CREATE TABLE {SCHEMA}.source (id int, a text, b text, c text)")
        rows = [
            (i, TRICKY[i], TRICKY[(i + 1) % len(TRICKY)], f"c«{i}»{TRICKY[(i + 2) % len(TRICKY)]}")
            for i in range(len(TRICKY))
        ]
        with connection.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {SCHEMA}.source VALUES (%s, %s, %s, %s)", rows)
        yield connection
        connection.execute(f"DROP SCHEMA {SCHEMA} CASCADE")


@pytest.fixture(scope="module")
def copied(connection: psycopg.Connection) -> dict[str, list[bytes]]:
    """Each case's COPY data as the database sent it, block by block."""
    return {
        case.id: copy_out(connection, f"COPY {SCHEMA}.source TO STDOUT {case.to_options}")
        for case in CASES
    }


def copy_out(connection: psycopg.Connection, statement: str) -> list[bytes]:
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        return [bytes(block) for block in copy]


def copy_in(connection: psycopg.Connection, table: str, options: str, data: bytes) -> None:
    connection.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{table}")
    connection.execute(f"CREATE TABLE {SCHEMA}.{table} (LIKE {SCHEMA}.source)")
    with (
        connection.cursor() as cursor,
        cursor.copy(f"COPY {SCHEMA}.{table} FROM STDIN {options}") as copy,
    ):
        copy.write(data)


def format_of(statement: str) -> CopyFormat:
    return CopyFormat.of_statement(pglast.parse_sql(statement)[0].stmt)


def case_format(case: Case) -> CopyFormat:
    return format_of(f"COPY {SCHEMA}.source TO STDOUT {case.to_options}")


def masked(
    copy_format: CopyFormat,
    blocks: Sequence[bytes],
    mask_field: MaskField,
    positions: frozenset[int] | None,
    columns: int | None = None,
) -> bytes:
    masker = CopyOutMasker(copy_format, mask_field, positions, columns=columns)
    return b"".join(masker.feed(block) for block in blocks) + masker.finish()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_masking_every_column_with_the_value_itself_gives_the_databases_bytes(
    case: Case, copied: dict[str, list[bytes]]
) -> None:
    blocks = copied[case.id]
    assert masked(case_format(case), blocks, identity, None, columns=4) == b"".join(blocks)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_masked_columns_read_back_transformed_and_the_others_unchanged(
    case: Case, copied: dict[str, list[bytes]], connection: psycopg.Connection
) -> None:
    seen: list[tuple[int, bytes]] = []

    def mask(position: int, value: bytes) -> bytes | None:
        seen.append((position, value))
        return reversed_text(position, value)

    output = masked(case_format(case), copied[case.id], mask, MASKED)
    copy_in(connection, "masked", case.from_options, output)
    differences = connection.execute(
        f"SELECT s.id FROM {SCHEMA}.source s FULL JOIN {SCHEMA}.masked m USING (id)"
        " WHERE m.a IS DISTINCT FROM 'X' || reverse(s.a) OR m.b IS DISTINCT FROM s.b"
        " OR m.c IS NOT NULL"
    ).fetchall()
    assert differences == []
    # mask_field saw exactly the stored values of the masked columns, never a NULL.
    stored = connection.execute(f"SELECT a, c FROM {SCHEMA}.source ORDER BY id").fetchall()
    expected = [(1, a.encode()) for a, _ in stored if a is not None]
    expected += [(3, c.encode()) for _, c in stored]
    assert sorted(seen) == sorted(expected)
    for i in range(len(TRICKY)):
        assert f"c«{i}»".encode() not in output


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_output_is_the_same_whole_byte_by_byte_and_in_random_pieces(
    case: Case, copied: dict[str, list[bytes]]
) -> None:
    data = b"".join(copied[case.id])
    copy_format = case_format(case)
    whole = masked(copy_format, [data], reversed_text, MASKED)
    assert masked(copy_format, copied[case.id], reversed_text, MASKED) == whole
    assert (
        masked(copy_format, [data[i : i + 1] for i in range(len(data))], reversed_text, MASKED)
        == whole
    )

    @settings(max_examples=40)
    @given(cuts=st.lists(st.integers(0, len(data)), max_size=30))
    def split_anywhere(cuts: list[int]) -> None:
        edges = [0, *sorted(cuts), len(data)]
        pieces = [data[start:end] for start, end in itertools.pairwise(edges)]
        assert masked(copy_format, pieces, reversed_text, MASKED) == whole

    split_anywhere()


def test_many_columns_and_wide_rows_pass_whole_and_split(connection: psycopg.Connection) -> None:
    columns = ", ".join(
        f"repeat(chr(65 + {i} % 26) || E'\\t\\\\', {i * 300}) AS c{i}" for i in range(60)
    )
    blocks = copy_out(connection, f"COPY (SELECT {columns} FROM generate_series(1, 5)) TO STDOUT")
    data = b"".join(blocks)
    text = CopyFormat.of_kind("text")
    assert masked(text, blocks, identity, None, columns=60) == data
    whole = masked(text, blocks, reversed_text, frozenset(range(0, 60, 2)))
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    assert masked(text, pieces, reversed_text, frozenset(range(0, 60, 2))) == whole
    assert whole.count(b"\n") == 5
    assert all(len(row.split(b"\t")) == 60 for row in whole.splitlines())


def test_a_zero_column_copy_keeps_its_empty_rows(connection: psycopg.Connection) -> None:
    for options in ("", "(FORMAT csv)", "(FORMAT binary)"):
        blocks = copy_out(
            connection, f"COPY (SELECT FROM generate_series(1, 3)) TO STDOUT {options}"
        )
        copy_format = format_of(f"COPY t TO STDOUT {options}")
        assert masked(copy_format, blocks, identity, None, columns=0) == b"".join(blocks)


def test_text_escapes_are_read_as_postgresql_reads_them(connection: psycopg.Connection) -> None:
    """Escapes the database never writes but COPY FROM accepts: octal, hex, any \\c."""
    data = b"1\t\\101\\x42\\x4g\\q\\xz\\\\\\t\\7\\101x\t\\N\tend\n"
    seen: dict[int, bytes] = {}

    def remember(position: int, value: bytes) -> bytes:
        seen[position] = value
        return value

    masked(CopyFormat.of_kind("text"), [data], remember, frozenset({1, 3}))
    copy_in(connection, "escapes", "", data)
    a, c = connection.execute(f"SELECT a, c FROM {SCHEMA}.escapes").fetchone() or ()
    assert seen == {1: a.encode(), 3: c.encode()}
    assert seen[1] == b"AB\x04gqxz\\\t\x07Ax"


def test_a_masked_text_value_equal_to_the_null_string_reads_back_as_itself(
    connection: psycopg.Connection,
) -> None:
    """PostgreSQL writes such a value as the null string; the masker escapes its first byte."""
    data = b"1\tsecret\t\\N\tnil\n"
    text = CopyFormat.of_kind("text", null="nil")
    output = masked(text, [data], lambda position, value: b"nil", frozenset({1}))
    copy_in(connection, "nulls", "(NULL 'nil')", output)
    rows = connection.execute(f"SELECT id, a, b, c FROM {SCHEMA}.nulls").fetchall()
    assert rows == [(1, "nil", "N", None)]


def test_a_masked_csv_value_equal_to_the_null_string_or_needing_quotes_reads_back(
    connection: psycopg.Connection,
) -> None:
    csv = CopyFormat.of_kind("csv", null="NULL")
    values = iter([b"NULL", b'a,"b"\nc', b""])
    output = masked(csv, [b"1,x,y,z\n"], lambda position, value: next(values), frozenset({1, 2, 3}))
    copy_in(connection, "csv_nulls", "(FORMAT csv, NULL 'NULL')", output)
    rows = connection.execute(f"SELECT a, b, c FROM {SCHEMA}.csv_nulls").fetchall()
    assert rows == [("NULL", 'a,"b"\nc', "")]


def binary_tuple(*fields: bytes | None) -> bytes:
    parts = [struct.pack("!h", len(fields))]
    for value in fields:
        parts.append(
            struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
        )
    return b"".join(parts)


BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
BINARY_TRAILER = b"\xff\xff"
BINARY = CopyFormat.of_kind("binary")
CSV = CopyFormat.of_kind("csv")
TEXT = CopyFormat.of_kind("text")

MALFORMED = [
    (BINARY, b"PGCOPY\n\xff\r\n\x01" + bytes(8) + BINARY_TRAILER, "signature"),
    (BINARY, b"NOTCOPY", "signature"),
    (BINARY, BINARY_HEADER + binary_tuple(b"ab", b"secret")[:-2], "before its trailer"),
    (
        BINARY,
        BINARY_HEADER + binary_tuple(b"ab", b"cd") + binary_tuple(b"a", b"b", b"secret"),
        "3 fields",
    ),
    (BINARY, BINARY_HEADER + BINARY_TRAILER + binary_tuple(b"secret"), "after the binary trailer"),
    (BINARY, BINARY_HEADER[:-8] + struct.pack("!ii", 1 << 16, 0) + BINARY_TRAILER, "flags"),
    (BINARY, BINARY_HEADER + struct.pack("!hi", 1, -2) + b"secret", "length -2"),
    (BINARY, BINARY_HEADER + struct.pack("!h", -3) + b"secret", "-3 fields"),
    (BINARY, BINARY_HEADER, "before its trailer"),
    (CSV, b'1,"sec\nret', "quoted csv field"),
    (CSV, b"1,secret\n2,secret,3\n", "3 fields"),
    (TEXT, b"1\tsecret\n2\tsec", "middle of a row"),
    (TEXT, b"1\tsecret\n2\tsecret\t3\n", "3 fields"),
    (TEXT, b"1\tsecret\\\n", "lone backslash"),
]


@pytest.mark.parametrize(("copy_format", "data", "complaint"), MALFORMED)
def test_malformed_data_is_refused_and_never_passed_on(
    copy_format: CopyFormat, data: bytes, complaint: str
) -> None:
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        masker = CopyOutMasker(copy_format, lambda position, value: b"M", frozenset({1}))
        out: list[bytes] = []
        with pytest.raises(ProtocolViolation, match=complaint):
            feed_all(masker, pieces, out)
        assert b"sec" not in b"".join(out)


def feed_all(masker: CopyOutMasker, pieces: list[bytes], out: list[bytes]) -> None:
    out.extend(masker.feed(piece) for piece in pieces)
    out.append(masker.finish())


def test_a_row_beyond_the_limit_is_refused() -> None:
    masker = CopyOutMasker(CSV, identity, None, max_row_bytes=1000)
    assert masker.feed(b"a,b\n") == b"a,b\n"
    with pytest.raises(ProtocolViolation, match="more than 1000 bytes"):
        masker.feed(b'"' + b"x" * 1000)


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("COPY t TO STDOUT", CopyFormat("text", "\t", "\\N", '"', '"', False, (), None)),
        ("COPY t TO STDOUT WITH CSV HEADER", CopyFormat("csv", ",", "", '"', '"', True, (), None)),
        ("COPY BINARY t TO STDOUT", CopyFormat("binary", "\t", "\\N", '"', '"', False, (), None)),
        ("COPY t TO STDOUT BINARY", CopyFormat("binary", "\t", "\\N", '"', '"', False, (), None)),
        (
            "COPY t TO STDOUT WITH DELIMITER '|' NULL 'x' CSV QUOTE ''''"
            " ESCAPE '\\' FORCE QUOTE a, b",
            CopyFormat("csv", "|", "x", "'", "\\", False, ("a", "b"), None),
        ),
        (
            "COPY (SELECT 1) TO STDOUT (FORMAT csv, HEADER on, FORCE_QUOTE *, ENCODING 'LATIN1')",
            CopyFormat("csv", ",", "", '"', '"', True, "*", "LATIN1"),
        ),
        (
            "COPY t TO STDOUT (FORMAT text, HEADER)",
            CopyFormat("text", "\t", "\\N", '"', '"', True, (), None),
        ),
        (
            "COPY t TO STDOUT (HEADER false, DELIMITER ',')",
            CopyFormat("text", ",", "\\N", '"', '"', False, (), None),
        ),
        (
            "COPY t TO STDOUT (HEADER 1, FORMAT csv, QUOTE '%')",
            CopyFormat("csv", ",", "", "%", "%", True, (), None),
        ),
    ],
)
def test_the_format_of_a_statement(statement: str, expected: CopyFormat) -> None:
    assert format_of(statement) == expected


@pytest.mark.parametrize(
    ("statement", "complaint"),
    [
        ("COPY t TO STDOUT (ENCODING 'SJIS')", "ENCODING"),
        ("COPY t TO STDOUT (ENCODING 'Shift_JIS')", "ENCODING"),
        ("COPY t TO STDOUT (FORMAT 'CSV')", "FORMAT"),
        ("COPY t TO STDOUT (HEADER match)", "HEADER"),
        ("COPY t TO STDOUT (DELIMITER ',', DELIMITER ';')", "twice"),
        ("COPY t TO STDOUT (OIDS true)", "OIDS"),
        ("COPY t TO STDOUT (DELIMITER ';;')", "single one-byte"),
        ("COPY t TO STDOUT (FORMAT csv, QUOTE 'é')", "single one-byte"),
        ("COPY t TO STDOUT (DELIMITER E'\\\\')", "backslash"),
    ],
)
def test_options_the_masker_cannot_follow_are_refused(statement: str, complaint: str) -> None:
    with pytest.raises(UnsupportedCopy, match=complaint):
        format_of(statement)
