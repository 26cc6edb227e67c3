"""Masks the data of a COPY ... TO STDOUT as it streams, in text, csv and binary formats.

Sans-IO: `CopyOutMasker.feed` takes each CopyData's payload and returns the bytes to send on;
rows may arrive split across payloads anywhere, so it holds an incomplete row until its end
arrives, and `finish` (at CopyDone) refuses data that ended mid-row. Fields of columns that
are not masked pass through byte for byte; a masked field is decoded to its value (text:
de-escaped; csv: unquoted; binary: its bytes), handed to `mask_field`, and written back as
PostgreSQL's COPY TO would write the new value. Anything the parser cannot follow raises
ProtocolViolation: a byte of a masked column is never passed on unparsed.

The data is taken to be in an encoding whose multibyte characters never hold an ASCII byte
(UTF-8, the gateway's client encoding, and every server encoding); `CopyFormat.of_statement`
refuses an ENCODING option naming one that may (SJIS, BIG5, ...), as byte-level parsing
would then split characters.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from pglast import ast

from custos.protocol.errors import ProtocolViolation

CopyKind = Literal["text", "csv", "binary"]
MaskField = Callable[[int, bytes | None], bytes | None]
"""(column position from 0, the field's value) -> the masked value, or None for NULL. The
value is None (NULL) only for the positions whose NULLs are masked too."""

_KINDS: Final[dict[str, CopyKind]] = {"text": "text", "csv": "csv", "binary": "binary"}
MAX_ROW_BYTES: Final = 64 << 20  # as the session's limit on one server message held whole

# Client encodings whose multibyte characters may hold bytes below 0x80 (PostgreSQL's
# "client-only" encodings and their aliases, spelled as pg_char_to_encoding compares them).
_ASCII_UNSAFE_ENCODINGS: Final = frozenset(
    {"sjis", "shiftjis", "mskanji", "win932", "windows932", "big5", "win950", "windows950"}
    | {"gbk", "win936", "windows936", "cp936", "uhc", "win949", "windows949", "gb18030"}
    | {"johab"}
)
# COPY options that only COPY FROM takes: with TO the database refuses the statement, so
# they never shape data the masker reads.
_FROM_ONLY_OPTIONS: Final = frozenset(
    {"freeze", "force_not_null", "force_null", "on_error", "reject_limit", "default"}
    | {"log_verbosity", "convert_selectively"}
)


class UnsupportedCopy(ValueError):
    """A COPY's options are ones the masker cannot follow; the statement should be refused."""


@dataclass(frozen=True)
class CopyFormat:
    """How a COPY TO writes its data; `of_kind` fills PostgreSQL's defaults for a kind.

    `force_quote` (csv) names the columns whose values are always quoted, or "*" for all. The
    masker does not need it: it quotes a masked value wherever the database quoted the
    original, which is how FORCE_QUOTE shows in the data.
    """

    kind: CopyKind
    delimiter: str
    null: str
    quote: str
    escape: str
    header: bool
    force_quote: tuple[str, ...] | Literal["*"]
    encoding: str | None

    @classmethod
    def of_kind(
        cls,
        kind: CopyKind = "text",
        *,
        delimiter: str | None = None,
        null: str | None = None,
        quote: str | None = None,
        escape: str | None = None,
        header: bool = False,
        force_quote: tuple[str, ...] | Literal["*"] = (),
        encoding: str | None = None,
    ) -> CopyFormat:
        csv = kind == "csv"
        quote = quote if quote is not None else '"'
        copy_format = cls(
            kind=kind,
            delimiter=delimiter if delimiter is not None else ("," if csv else "\t"),
            null=null if null is not None else ("" if csv else "\\N"),
            quote=quote,
            escape=escape if escape is not None else quote,
            header=header,
            force_quote=force_quote,
            encoding=encoding,
        )
        copy_format._check()
        return copy_format

    @classmethod
    def of_statement(cls, copy_stmt: ast.CopyStmt) -> CopyFormat:
        """The format of a COPY TO statement parsed by pglast.

        The legacy forms (`WITH CSV HEADER`, `BINARY`, `DELIMITER ','`, `FORCE QUOTE *`)
        arrive as the same options as the parenthesised list. Raises UnsupportedCopy for an
        option the masker cannot follow, or one the database would reject anyway.
        """
        options: dict[str, object] = {}
        for option in copy_stmt.options or ():
            name = option.defname
            if name in options:
                raise UnsupportedCopy(f"the COPY option {name.upper()} is given twice")
            options[name] = option.arg
        unknown = set(options) - {"format", "delimiter", "null", "quote", "escape", "header"}
        unknown -= {"force_quote", "encoding"} | _FROM_ONLY_OPTIONS
        if unknown:
            names = ", ".join(sorted(name.upper() for name in unknown))
            raise UnsupportedCopy(f"the COPY option {names} is not one the gateway can follow")
        kind = _KINDS.get(_string_option(options, "format") or "text")
        if kind is None:
            raise UnsupportedCopy(
                f"COPY FORMAT {_string_option(options, 'format')!r} is not text, csv or binary"
            )
        encoding = _string_option(options, "encoding")
        if encoding is not None and _encoding_key(encoding) in _ASCII_UNSAFE_ENCODINGS:
            raise UnsupportedCopy(
                f"COPY data in ENCODING {encoding!r} cannot be masked: its characters may hold"
                " bytes the gateway would read as delimiters or quotes; use UTF8"
            )
        return cls.of_kind(
            kind,
            delimiter=_string_option(options, "delimiter"),
            null=_string_option(options, "null"),
            quote=_string_option(options, "quote"),
            escape=_string_option(options, "escape"),
            header=_header_option(options),
            force_quote=_force_quote_option(options),
            encoding=encoding,
        )

    def _check(self) -> None:
        """Refuses what the parser would misread (the database refuses all of it too)."""
        if self.kind == "binary":
            return
        characters = [("DELIMITER", self.delimiter)]
        if self.kind == "csv":
            characters += [("QUOTE", self.quote), ("ESCAPE", self.escape)]
        for name, value in characters:
            if len(value.encode()) != 1 or value in "\r\n":
                raise UnsupportedCopy(f"COPY {name} {value!r} is not a single one-byte character")
        if self.kind == "text" and self.delimiter == "\\":
            raise UnsupportedCopy("COPY DELIMITER cannot be a backslash in text format")
        if self.kind == "csv" and self.delimiter == self.quote:
            raise UnsupportedCopy("COPY DELIMITER and QUOTE must differ")


def _string_option(options: dict[str, object], name: str) -> str | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, ast.String):
        return str(value.sval)
    raise UnsupportedCopy(f"the COPY option {name.upper()} takes a string")


def _header_option(options: dict[str, object]) -> bool:
    if "header" not in options:
        return False
    value = options["header"]
    if value is None:
        return True
    if isinstance(value, ast.Boolean):
        return bool(value.boolval)
    if isinstance(value, ast.Integer) and value.ival in (0, 1):
        return bool(value.ival)
    if isinstance(value, ast.String):
        word = str(value.sval).lower()
        # As PostgreSQL's parse_bool: any prefix of true/false/yes/no, on, off (or "of").
        if word and ("true".startswith(word) or "yes".startswith(word) or word in ("on", "1")):
            return True
        if word and ("false".startswith(word) or "no".startswith(word)):
            return False
        if word in ("off", "of", "0"):
            return False
    raise UnsupportedCopy("COPY HEADER takes a boolean (MATCH is for COPY FROM only)")


def _force_quote_option(options: dict[str, object]) -> tuple[str, ...] | Literal["*"]:
    value = options.get("force_quote")
    if value is None:
        return ()
    if isinstance(value, ast.A_Star):
        return "*"
    if isinstance(value, tuple) and all(isinstance(name, ast.String) for name in value):
        return tuple(str(name.sval) for name in value)
    raise UnsupportedCopy("COPY FORCE_QUOTE takes column names or *")


def _encoding_key(name: str) -> str:
    return "".join(character for character in name.lower() if character.isalnum())


class CopyOutMasker:
    """Masks one COPY TO's data stream; see the module's docstring.

    `masked_positions` None masks every column. `nulls_masked`: the positions whose NULLs
    go to `mask_field` too (a computed value's NULL can tell something). `columns`, the
    CopyOutResponse's column count, checks every row against it (else rows are checked
    against the first) and tells a zero-column COPY's empty lines from one empty field.
    """

    def __init__(
        self,
        copy_format: CopyFormat,
        mask_field: MaskField,
        masked_positions: frozenset[int] | None,
        *,
        nulls_masked: frozenset[int] = frozenset(),
        columns: int | None = None,
        max_row_bytes: int = MAX_ROW_BYTES,
    ) -> None:
        rows = _Rows(mask_field, masked_positions, columns, nulls_masked)
        self._parser: _TextParser | _CsvParser | _BinaryParser
        if copy_format.kind == "binary":
            self._parser = _BinaryParser(rows)
        elif copy_format.kind == "csv":
            self._parser = _CsvParser(copy_format, rows)
        else:
            self._parser = _TextParser(copy_format, rows)
        self._max_row_bytes = max_row_bytes

    def feed(self, data: bytes) -> bytes:
        """One CopyData's payload in; the bytes to send on (b"" while a row is incomplete)."""
        out = self._parser.feed(data)
        if self._parser.held() > self._max_row_bytes:
            raise ProtocolViolation(
                f"the database sent a COPY row of more than {self._max_row_bytes} bytes, more"
                " than the gateway holds to mask it; copy fewer or narrower columns"
            )
        return out

    def finish(self) -> bytes:
        """At CopyDone: what remains; raises ProtocolViolation if the data ended mid-row."""
        return self._parser.finish()


class _Rows:
    """What the three parsers share: the field count each row must have, and masking."""

    def __init__(
        self,
        mask_field: MaskField,
        masked_positions: frozenset[int] | None,
        columns: int | None,
        nulls_masked: frozenset[int],
    ) -> None:
        self.mask_field = mask_field
        self.masked_positions = masked_positions
        self.columns = columns
        self.nulls_masked = nulls_masked
        self.count = 0

    def masks(self, position: int) -> bool:
        return self.masked_positions is None or position in self.masked_positions

    def masks_null(self, position: int) -> bool:
        return position in self.nulls_masked

    def check_count(self, fields: int) -> None:
        self.count += 1
        if self.columns is None:
            self.columns = fields
        elif fields != self.columns:
            raise ProtocolViolation(
                f"the database sent a COPY row of {fields} fields where the COPY has"
                f" {self.columns} columns (row {self.count}); the gateway cannot mask data it"
                " cannot follow"
            )


class _LineParser:
    """Text and csv: rows end at a newline the format does not escape or quote."""

    def __init__(self, copy_format: CopyFormat, rows: _Rows) -> None:
        self._rows = rows
        self._header_due = copy_format.header
        self._delimiter = copy_format.delimiter.encode()
        self._null = copy_format.null.encode()
        self._pending = bytearray()
        self._scanned = 0  # how far the pending bytes are known to hold no row end

    def held(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes) -> bytes:
        pending = self._pending
        pending += data
        out: list[bytes] = []
        start = 0
        while (end := self._row_end(pending, start)) >= 0:
            out.append(self._row(bytes(pending[start:end])))
            start = end + 1
        del pending[:start]
        self._scanned -= start
        return b"".join(out)

    def finish(self) -> bytes:
        if self._pending:
            raise ProtocolViolation(
                "the database ended a COPY in the middle of a row; the gateway withholds the"
                " incomplete row"
            )
        return b""

    def _row(self, row: bytes) -> bytes:
        spans = self._fields(row)
        self._rows.check_count(len(spans))
        if self._header_due:
            self._header_due = False
            return row + b"\n"
        parts: list[bytes] = []
        for position, (start, end) in enumerate(spans):
            raw = row[start:end]
            if self._rows.masks(position):
                if not self._is_null(raw):
                    masked = self._rows.mask_field(position, self._value(raw))
                elif self._rows.masks_null(position):
                    masked = self._rows.mask_field(position, None)
                else:
                    masked = None
                raw = self._null if masked is None else self._written(masked, raw)
            parts.append(raw)
        return self._delimiter.join(parts) + b"\n"

    def _row_end(self, pending: bytearray, start: int) -> int:
        """Where the row from `start` ends (its newline), or -1 until more data comes."""
        raise NotImplementedError

    def _fields(self, row: bytes) -> list[tuple[int, int]]:
        raise NotImplementedError

    def _is_null(self, raw: bytes) -> bool:
        # Compared raw, as PostgreSQL does: so a quoted csv field is never NULL.
        return raw == self._null

    def _value(self, raw: bytes) -> bytes:
        raise NotImplementedError

    def _written(self, value: bytes, raw: bytes) -> bytes:
        raise NotImplementedError


_TEXT_ESCAPE: Final = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.DOTALL)
_TEXT_LETTERS: Final = {
    ord(letter): code for letter, code in zip("btnvfr", b"\b\t\n\v\f\r", strict=True)
}
_TEXT_CODES: Final = {code: letter for letter, code in _TEXT_LETTERS.items()}


class _TextParser(_LineParser):
    """Text format: backslash escapes; data never holds a raw newline."""

    def __init__(self, copy_format: CopyFormat, rows: _Rows) -> None:
        super().__init__(copy_format, rows)
        self._field_end = re.compile(rb"\\(.|$)|" + re.escape(self._delimiter), re.DOTALL)
        special = {b"\\"[0], self._delimiter[0], *_TEXT_CODES}
        self._special = re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in special) + b"]")

    def _row_end(self, pending: bytearray, start: int) -> int:
        end = pending.find(b"\n", max(start, self._scanned))
        self._scanned = len(pending) if end < 0 else end + 1
        return end

    def _fields(self, row: bytes) -> list[tuple[int, int]]:
        if not row and self._rows.columns == 0:
            return []
        spans = []
        start = 0
        for match in self._field_end.finditer(row):
            if match.group(0) == b"\\":
                raise ProtocolViolation(
                    "the database sent a COPY text row ending in a lone backslash"
                )
            if match.group(1) is None:
                spans.append((start, match.start()))
                start = match.end()
        spans.append((start, len(row)))
        return spans

    def _value(self, raw: bytes) -> bytes:
        return _TEXT_ESCAPE.sub(_text_unescaped, raw)

    def _written(self, value: bytes, raw: bytes) -> bytes:
        written = self._special.sub(self._escaped, value)
        if written == self._null and value:
            # PostgreSQL would write a value that reads back as NULL; an octal escape of its
            # first byte keeps it the value.
            written = b"\\%03o" % value[0] + self._special.sub(self._escaped, value[1:])
        return written

    def _escaped(self, match: re.Match[bytes]) -> bytes:
        code = match.group(0)[0]
        letter = _TEXT_CODES.get(code)
        if letter is not None:
            return b"\\" + bytes([letter])
        if code == self._delimiter[0] or code == b"\\"[0]:
            return b"\\" + match.group(0)
        return match.group(0)  # other control characters go raw, as PostgreSQL writes them


def _text_unescaped(match: re.Match[bytes]) -> bytes:
    octal, hexadecimal, other = match.groups()
    if octal is not None:
        return bytes([int(octal, 8) & 0xFF])
    if hexadecimal is not None:
        return bytes([int(hexadecimal, 16)])
    return bytes([_TEXT_LETTERS.get(other[0], other[0])])


class _CsvParser(_LineParser):
    """Csv: fields may be quoted, and a quoted field may hold newlines."""

    def __init__(self, copy_format: CopyFormat, rows: _Rows) -> None:
        super().__init__(copy_format, rows)
        self._quote = copy_format.quote.encode()
        self._escape = copy_format.escape.encode()
        quote, escape = self._quote[0], self._escape[0]
        self._escapable = {quote, escape}
        self._escapable_bytes = {self._quote, self._escape}
        self._outside = re.compile(b"[" + re.escape(self._quote) + b"\n]")
        self._field_outside = re.compile(
            b"[" + re.escape(self._quote) + re.escape(self._delimiter) + b"]"
        )
        self._inside = re.compile(b"[" + re.escape(self._quote) + re.escape(self._escape) + b"]")
        self._must_quote = re.compile(
            b"[" + re.escape(self._delimiter) + re.escape(self._quote) + b"\r\n]"
        )
        self._to_escape = self._inside  # inside quotes, the quote and escape chars are escaped
        self._in_quote = False

    def finish(self) -> bytes:
        if self._in_quote:
            raise ProtocolViolation(
                "the database ended a COPY inside a quoted csv field; the gateway withholds the"
                " incomplete row"
            )
        return super().finish()

    def _row_end(self, pending: bytearray, start: int) -> int:
        position = max(start, self._scanned)
        while True:
            if not self._in_quote:
                match = self._outside.search(pending, position)
                if match is None:
                    self._scanned = len(pending)
                    return -1
                position = match.start()
                if pending[position] == 0x0A:
                    self._scanned = position + 1
                    return position
                self._in_quote = True
                position += 1
                continue
            position = self._quoted_end(pending, position)
            if position < 0:
                return -1

    def _quoted_end(self, pending: bytearray, position: int) -> int:
        """Past the quote closing the quoted part from `position`, or -1 for more data."""
        while (match := self._inside.search(pending, position)) is not None:
            at = match.start()
            if pending[at] == self._escape[0]:
                if at + 1 == len(pending):
                    self._scanned = at  # whether it escapes depends on the next byte
                    return -1
                if pending[at + 1] in self._escapable:
                    position = at + 2
                    continue
                if pending[at] != self._quote[0]:
                    position = at + 1
                    continue
            self._in_quote = False
            return at + 1
        self._scanned = len(pending)
        return -1

    def _fields(self, row: bytes) -> list[tuple[int, int]]:
        if not row and self._rows.columns == 0:
            return []
        spans = []
        start = position = 0
        while (match := self._field_outside.search(row, position)) is not None:
            position = match.start()
            if row[position] == self._delimiter[0]:
                spans.append((start, position))
                start = position = position + 1
            else:
                position = self._skip_quoted(row, position + 1)
        spans.append((start, len(row)))
        return spans

    def _skip_quoted(self, row: bytes, position: int, pieces: list[bytes] | None = None) -> int:
        """Past the quote closing the quoted part from `position`; its value to `pieces`."""
        while (match := self._inside.search(row, position)) is not None:
            at = match.start()
            if pieces is not None:
                pieces.append(row[position:at])
            escapes = row[at] == self._escape[0] and row[at + 1 : at + 2] in self._escapable_bytes
            if not escapes and row[at] == self._quote[0]:
                return at + 1
            if pieces is not None:
                pieces.append(row[at + 1 : at + 2] if escapes else row[at : at + 1])
            position = at + 2 if escapes else at + 1
        raise ProtocolViolation("the database sent a csv row with an unterminated quoted field")

    def _value(self, raw: bytes) -> bytes:
        pieces: list[bytes] = []
        position = 0
        while (match := self._field_outside.search(raw, position)) is not None:
            pieces.append(raw[position : match.start()])
            position = self._skip_quoted(raw, match.start() + 1, pieces)
        pieces.append(raw[position:])
        return b"".join(pieces)

    def _written(self, value: bytes, raw: bytes) -> bytes:
        quoted = raw[:1] == self._quote  # the database quoted the original: FORCE_QUOTE, or need
        # A lone \. on a line would read as the end of the data.
        end_marker = value == b"\\." and self._rows.columns == 1
        if not (quoted or end_marker or value == self._null or self._must_quote.search(value)):
            return value
        escaped = self._to_escape.sub(lambda match: self._escape + match.group(0), value)
        return self._quote + escaped + self._quote


_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00"
_HEADER: Final = struct.Struct("!11sII")  # signature, flags, header extension length
_INT16: Final = struct.Struct("!h")
_INT32: Final = struct.Struct("!i")
_NULL_LENGTH: Final = _INT32.pack(-1)
_TRAILER: Final = -1
_CRITICAL_FLAGS: Final = 0xFFFF0000  # bit 16 (OIDs, gone since PostgreSQL 12) and 17-31


class _BinaryParser:
    """Binary: a header, tuples of length-prefixed fields, a trailer."""

    def __init__(self, rows: _Rows) -> None:
        self._rows = rows
        self._pending = bytearray()
        self._header_done = False
        self._ended = False
        self._fields: list[tuple[int, int]] = []  # spans of the current tuple's fields so far
        self._field_count = -1  # of the current tuple, once its count word has arrived
        self._next = 0  # where the current tuple's next field begins in the pending bytes

    def held(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes) -> bytes:
        if self._ended and data:
            raise ProtocolViolation("the database sent COPY data after the binary trailer")
        self._pending += data
        out: list[bytes] = []
        if not self._header_done:
            header = self._header()
            if header is None:
                return b""
            out.append(header)
        while not self._ended and (row := self._tuple()) is not None:
            out.append(row)
        if self._ended and self._pending:
            raise ProtocolViolation("the database sent COPY data after the binary trailer")
        return b"".join(out)

    def finish(self) -> bytes:
        if not self._ended:
            raise ProtocolViolation(
                "the database ended a binary COPY before its trailer; the gateway withholds"
                " the incomplete tuple"
            )
        return b""

    def _header(self) -> bytes | None:
        pending = self._pending
        if pending[: len(_SIGNATURE)] != _SIGNATURE[: len(pending)]:
            raise ProtocolViolation("the database sent binary COPY data without its signature")
        if len(pending) < _HEADER.size:
            return None
        _, flags, extension = _HEADER.unpack_from(pending)
        if flags & _CRITICAL_FLAGS:
            raise ProtocolViolation(
                f"the database sent binary COPY data with flags {flags:#010x} the gateway does"
                " not know (OIDs or a newer format)"
            )
        if extension > 1 << 30:  # read as unsigned: a negative length is as far out of range
            raise ProtocolViolation("the database sent a binary COPY header extension too long")
        end = _HEADER.size + extension
        if len(pending) < end:
            return None
        header = bytes(pending[:end])
        del pending[:end]
        self._header_done = True
        return header

    def _tuple(self) -> bytes | None:
        """The next whole tuple, masked, or None until the rest of it arrives."""
        pending = self._pending
        if self._field_count < 0:
            if len(pending) < 2:
                return None
            (count,) = _INT16.unpack_from(pending)
            if count == _TRAILER:
                self._ended = True
                del pending[:2]
                return b"\xff\xff"
            if count < 0:
                raise ProtocolViolation(f"the database sent a binary COPY tuple of {count} fields")
            self._rows.check_count(count)
            self._field_count = count
            self._next = 2
        while len(self._fields) < self._field_count:
            start = self._next
            if len(pending) < start + 4:
                return None
            (length,) = _INT32.unpack_from(pending, start)
            if length < -1:
                raise ProtocolViolation(f"the database sent a binary COPY field of length {length}")
            end = start + 4 + max(length, 0)
            if len(pending) < end:
                return None
            self._fields.append((start, end))
            self._next = end
        row = self._masked(bytes(pending[: self._next]))
        del pending[: self._next]
        self._fields, self._field_count = [], -1
        return row

    def _masked(self, tuple_bytes: bytes) -> bytes:
        parts = [tuple_bytes[:2]]
        for position, (start, end) in enumerate(self._fields):
            field = tuple_bytes[start:end]
            null = field[:4] == _NULL_LENGTH
            if self._rows.masks(position) and (not null or self._rows.masks_null(position)):
                masked = self._rows.mask_field(position, None if null else field[4:])
                field = _NULL_LENGTH if masked is None else _INT32.pack(len(masked)) + masked
            parts.append(field)
        return b"".join(parts)
