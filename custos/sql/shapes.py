"""A statement's shape: its text with the literals blanked out, for the analysis cache.

Two texts of one shape differ only inside literal tokens, so they parse to the
same tree but for those constants (see cache.py for how the cache relies on it).
The literal tokens must therefore be exactly the ones PostgreSQL's scanner sees.

pglast's scanner is that scanner, but it builds a Python object per token, and
on a short statement that is most of the time a cached decision takes. Most
statements clients send are plain: words, operators, numbers and ordinary
quoted strings. For those a single regular-expression pass finds the literals;
anything that could make it disagree with the real scanner (comments, dollar
quotes, backslashes, prefixed strings such as E'...', numbers run into other
characters, unbalanced quotes) sends the text to pglast's scanner instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pglast.parser import scan

# Longer texts are rare and costly to scan; they are cached by their exact text only.
MAX_SHAPED_CHARS = 4096

# Each literal token type of pglast's scanner, and the marker that stands for it in a shape.
_SCANNER_MARKERS = {
    name: f"\x00{name}\x00"
    for name in ("ICONST", "FCONST", "SCONST", "USCONST", "BCONST", "XCONST")
}
# The plain pass's own markers, so that its shapes never equal a scanner's shape.
_PLAIN_STRING = "\x00s\x00"
_PLAIN_NUMBER = "\x00n\x00"


@dataclass(frozen=True, slots=True)
class Shape:
    key: str  # the text with each literal replaced by a marker
    literals: tuple[str, ...]  # the literals' own text, in order
    starts: tuple[int, ...]  # where each literal starts


def shape_of(sql: str) -> Shape | None:
    """The text's shape, or None when it has no literal or is not worth shaping."""
    if len(sql) > MAX_SHAPED_CHARS or not sql.isascii():
        # Scanner offsets count bytes; for ASCII text they are also character offsets.
        return None
    shape = plain_shape(sql)
    if shape is NOT_PLAIN:
        return scanned_shape(sql)
    return shape


# One match per literal: a skip over everything that cannot start one (whole names, with any
# digits in them, and other characters), then a string, a quoted identifier (consumed, so
# nothing inside it is taken for a literal), a number, a stray quote, or the end of the text.
# The skip is possessive and always followed by a match, so the scan stays linear.
_TOKENS = re.compile(
    r"""(?:[^'"0-9A-Za-z_]|[A-Za-z_][A-Za-z0-9_$]*+)*+"""
    r"""(?:('(?:[^']|'')*')"""
    r'''|"(?:[^"]|"")*"'''
    r"|([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
    r"""|(['"])"""
    r"|(\Z))"
)
_STRING, _NUMBER, _STRAY_QUOTE, _END = 1, 2, 3, 4
# Anything that opens a lexical state the plain pass does not follow.
_NOT_PLAIN_MARKS = ("--", "/*", "$", "\\")
# Before a string: a prefix (E'', B'', X'', N'', U&'') makes it another kind of literal.
_STRING_PREFIX = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_&")
# After a number: a character that would extend it or make it malformed in some version.
_NUMBER_RUN_ON = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.'\"")
# Strings separated by whitespace with a newline are one literal to PostgreSQL.
_STRING_CONTINUATION = re.compile(r"\s*'")

NOT_PLAIN = Shape("", (), ())
"""plain_shape's answer for a text it leaves to the scanner."""


def plain_shape(sql: str) -> Shape | None:
    """The shape by the regular-expression pass, None without literals, or NOT_PLAIN."""
    for mark in _NOT_PLAIN_MARKS:
        if mark in sql:
            return NOT_PLAIN
    pieces: list[str] = []
    literals: list[str] = []
    starts: list[int] = []
    position = 0
    for match in _TOKENS.finditer(sql):
        group = match.lastindex
        if group is None:
            continue  # a quoted identifier
        if group == _END:
            break
        if group == _STRAY_QUOTE:
            return NOT_PLAIN
        start, end = match.span(group)
        if group == _STRING:
            if start and sql[start - 1] in _STRING_PREFIX:
                return NOT_PLAIN
            if _STRING_CONTINUATION.match(sql, end):
                return NOT_PLAIN
            marker = _PLAIN_STRING
        else:
            if (start and sql[start - 1] == ".") or (end < len(sql) and sql[end] in _NUMBER_RUN_ON):
                return NOT_PLAIN
            marker = _PLAIN_NUMBER
        pieces.append(sql[position:start])
        pieces.append(marker)
        literals.append(match.group(group))
        starts.append(start)
        position = end
    if not literals:
        return None
    pieces.append(sql[position:])
    return Shape("".join(pieces), tuple(literals), tuple(starts))


def scanned_shape(sql: str) -> Shape | None:
    """The shape by pglast's scanner (PostgreSQL's own), None without literals."""
    try:
        tokens = scan(sql)
    except Exception:  # the parser will report the problem when the text is analysed
        return None
    pieces: list[str] = []
    literals: list[str] = []
    starts: list[int] = []
    position = 0
    markers = _SCANNER_MARKERS
    # Tokens are (start, end, name, kind) tuples; unpacking beats attribute access here.
    for start, end, name, _ in tokens:
        marker = markers.get(name)
        if marker is not None:
            pieces.append(sql[position:start])
            pieces.append(marker)
            literals.append(sql[start : end + 1])
            starts.append(start)
            position = end + 1
    if not literals:
        return None
    pieces.append(sql[position:])
    return Shape("".join(pieces), tuple(literals), tuple(starts))


# --- templates: a known plain shape recognised without scanning -------------------------
#
# Finding the literals costs a scan of the whole text. For a shape already known, a cheaper
# test will do: its fixed pieces, exactly, with a literal of the same kind in each blank.
# A text is looked up by a key that does not depend on the literals' values (the text with
# its digits and the insides of its quoted strings removed; a key may be shared by texts of
# other shapes), then matched against the shape's pattern as a whole.
#
# The match finds the same literals the plain pass would: each blank is bounded by the
# shape's fixed characters, which the plain pass already found neither to extend a number
# nor to prefix or continue a string, and a string blank takes no lone quote or backslash.

_DIGITS = b"0123456789"
_BLANK_PATTERNS = {
    _PLAIN_STRING: r"('(?:[^'\\]|'')*')",
    _PLAIN_NUMBER: r"([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)",
}
_BLANKS = re.compile(f"({_PLAIN_STRING}|{_PLAIN_NUMBER})")


def template_key(sql: str) -> bytes:
    """The same for every text of one plain shape (and perhaps for others); ASCII text only."""
    if "'" in sql:
        sql = "'".join(sql.split("'")[::2])
    # bytes.translate deletes characters many times faster than str.translate
    return sql.encode("ascii").translate(None, _DIGITS)


def template_pattern(shape: Shape) -> re.Pattern[str] | None:
    """A pattern whose groups are the literals of any text of this plain shape."""
    pieces = _BLANKS.split(shape.key)
    if any(marker in piece for piece in pieces[::2] for marker in _SCANNER_MARKERS.values()):
        return None  # a scanner's shape: its literal kinds are not the plain pass's
    return re.compile(
        "".join(
            _BLANK_PATTERNS[piece] if index % 2 else re.escape(piece)
            for index, piece in enumerate(pieces)
        )
    )
