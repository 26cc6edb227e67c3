"""A statement's text as the audit trail keeps it: no value in it.

Every literal becomes `?` (strings of every kind, numbers, bit strings, dollar-quoted
bodies), every comment a space, and every quoted name that is not a plain name (`"x@y.z"`)
`"?"`: what is left is the statement's structure, its keywords, the names of what it
reads and `$n` parameters. The text is read by pglast's scanner, PostgreSQL's own, so
what it calls a literal is what the server does; a text it cannot read is kept as a
fixed marker, never as it came.

Names are the client's to choose, too: `SELECT aisha.campbell110@example.com` scans as
names and an operator, an IBAN is a valid name (of a savepoint, a cursor, an alias). So
what is left is searched as masking searches free text (custos/masking/detect.py), and
every email, phone number, IBAN, card number or address found is redacted; so are the
client's own words an event records (`application_name`, labels: `recorded_text`).
"""

from __future__ import annotations

import re

from pglast.parser import scan

from custos.masking.detect import mask_found
from custos.masking.values import Masker
from custos.policy.models import MaskMethod

UNREADABLE = "<a statement the scanner could not read>"

LITERAL_TOKENS = frozenset({"ICONST", "FCONST", "SCONST", "USCONST", "BCONST", "XCONST"})
COMMENT_TOKENS = frozenset({"SQL_COMMENT", "C_COMMENT"})
PLAIN_NAME = re.compile(r'"[A-Za-z_][A-Za-z0-9_$]*"')


_FOUND = frozenset({"email", "phone", "iban"})
_REDACTING = Masker(b"\0" * 32)  # redaction uses no key
# What every value detection finds has: an email its @, an IBAN, card or phone number two
# digits in a row, an IPv6 or MAC address a colon between hex digits. Text without any of
# them is spared the finders.
_MAY_HOLD_VALUES = re.compile(r"@|\d\d|[0-9A-Fa-f]:[0-9A-Fa-f]")
_KEPT_TEXTS = 4096
_kept: dict[str, str] = {}


def recorded_text(text: str) -> str:
    """Client-chosen text as an event keeps it: the personal values found in it redacted."""
    if _MAY_HOLD_VALUES.search(text) is None:
        return text
    return mask_found(text, _FOUND, MaskMethod.REDACT, _REDACTING)[0]


DIGIT_RUN = re.compile(r"\d{6,}")


def recorded_name(text: str) -> str:
    """A name the client chose (a table's, a savepoint's, the role it asked for), or text
    made of them, as an event keeps it: the values detection finds redacted, and any run
    of six digits or more, which may be a phone number's or an account's inside a name
    (`p447700900123`), replaced by `?`."""
    return DIGIT_RUN.sub("?", recorded_text(text))


def without_values(sql: str) -> str:
    """The statement with its literals, comments and unusual quoted names replaced, and
    the personal values found in what is left redacted (`recorded_name`). The texts seen
    last are kept: a
    prepared statement is executed again and again."""
    recorded = _kept.get(sql)
    if recorded is None:
        recorded = recorded_name(_placeholders(sql))
        if len(_kept) >= _KEPT_TEXTS:
            _kept.clear()
        _kept[sql] = recorded
    return recorded


def literal_values(sql: str) -> tuple[str, ...]:
    """The statement's literals, in the order of its `?`, as written (quotes and all), with
    the personal values detection finds in them redacted: what `keep_literals` keeps of a
    statement that touches no catalogued table."""
    try:
        tokens = scan(sql)
    except Exception:  # pglast raises its own error types for unreadable text
        return ()
    return tuple(
        recorded_text(sql[start : end + 1])
        for start, end, name, _ in tokens
        if name in LITERAL_TOKENS
    )


def _placeholders(sql: str) -> str:
    try:
        tokens = scan(sql)
    except Exception:  # pglast raises its own error types for unreadable text
        return UNREADABLE
    pieces: list[str] = []
    position = 0
    for start, end, name, _ in tokens:
        token = sql[start : end + 1]
        if name in LITERAL_TOKENS:
            replacement = "?"
        elif name in COMMENT_TOKENS:
            replacement = " "
        elif name in ("IDENT", "UIDENT") and token[-1:] == '"' and not PLAIN_NAME.fullmatch(token):
            replacement = '"?"'
        else:
            continue
        pieces.append(sql[position:start])
        pieces.append(replacement)
        position = end + 1
    pieces.append(sql[position:])
    return "".join(pieces)
