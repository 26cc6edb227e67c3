"""A statement as approvers see it: its structure exact, no personal value in it.

Approvers judge the statement itself, so it is shown as the client wrote it, with three
exceptions. Comments are left out: they do not run, and could tell approvers a story the
statement does not. Quoted names other than plain ones (`"x@y.z"`, `U&"..."`) become
`"?"`, and runs of six digits or more in names become `?`, as in the audit trail. And
values:

* in a statement that touches a table the catalog says holds personal data, or runs code
  the analysis cannot see into (a DO block), every literal and parameter is withheld
  (`'***'`) unless it is compared with, or written to, a column the catalog does not call
  personal (an order's status, a customer's id): then it is shown as written. One compared
  with or written to a personal column is shown partly masked (an email keeps its domain,
  a phone its country code);
* anywhere else, every email, phone number, IBAN, card number or address that detection
  finds is partly masked.

A DO block's body is shown by the same rules, read as SQL. Requests are stored, mailed and
logged, so this is the only form of the statement they hold. A text the scanner cannot read
is shown without any value (the audit trail's form).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pglast.parser import parse_sql_json, scan

from custos.audit.named import classified_values
from custos.audit.statements import (
    COMMENT_TOKENS,
    DIGIT_RUN,
    LITERAL_TOKENS,
    PLAIN_NAME,
    without_values,
)
from custos.masking.detect import mask_found
from custos.masking.values import Masker, partial
from custos.policy.catalog import PersonalDataCatalog
from custos.policy.models import MaskMethod

_STRINGS = frozenset({"SCONST", "USCONST"})
_NUMBERS = frozenset({"ICONST", "FCONST"})
_SHORT_NUMBER = re.compile(r"[\d.]{1,5}")
_DETECTED = frozenset({"email", "phone", "iban"})
_UNKEYED = Masker(b"\0" * 32)  # partial masking uses no key
WITHHELD = "***"
MAX_SHOWN_CHARS = 20_000
MAX_SHOWN_PARAMETER_CHARS = 200


@dataclass(frozen=True, slots=True)
class _Values:
    personal: dict[str, str]  # value -> the personal column's category
    plain: frozenset[str]  # values only of columns the catalog does not call personal
    withhold: bool  # whether values of no known column are withheld


def shown_statement(
    text: str,
    relations: Sequence[str],
    catalog: PersonalDataCatalog,
    parameters: Sequence[str | None],
) -> tuple[str, tuple[str | None, ...]]:
    """The statement and its parameters as approvers see them."""
    personal, plain = classified_values(text, relations, catalog, parameters)
    withhold = _runs_code(text) or any(catalog.has_personal_data(r) for r in relations)
    values = _Values(personal, plain, withhold)
    shown_parameters = tuple(_shown_value(value, values) for value in parameters)
    shown = _shown_text(text, values)
    if shown is None:
        shown = without_values(text)
    if len(shown) > MAX_SHOWN_CHARS:
        shown = shown[:MAX_SHOWN_CHARS] + f" … ({len(shown) - MAX_SHOWN_CHARS} more characters)"
    return shown, shown_parameters


def _shown_text(text: str, values: _Values, depth: int = 0) -> str | None:
    try:
        tokens = scan(text)
    except Exception:  # pglast raises its own error types for unreadable text
        return None
    pieces: list[str] = []
    position = 0
    for start, end, name, _ in tokens:
        if (
            name not in LITERAL_TOKENS
            and name not in COMMENT_TOKENS
            and name not in ("IDENT", "UIDENT")
        ):
            continue
        pieces.append(_names(text[position:start]))
        token = text[start : end + 1]
        if name in COMMENT_TOKENS:
            pieces.append(" ")
        elif name in ("IDENT", "UIDENT"):
            quoted = token[-1:] == '"' and not PLAIN_NAME.fullmatch(token)
            pieces.append('"?"' if quoted else _names(token))
        else:
            pieces.append(_shown_literal(token, name, values, depth))
        position = end + 1
    pieces.append(_names(text[position:]))
    return "".join(pieces)


def _shown_literal(token: str, name: str, values: _Values, depth: int) -> str:
    value = _literal_value(token, name)
    if value is None:
        return f"'{WITHHELD}'"  # a literal that does not read back: nothing of it is shown
    if token.startswith("$") and depth == 0 and values.withhold:
        # A body (a DO block's, a function's): shown by the same rules, read as SQL.
        body = _shown_text(value, values, depth + 1)
        return f"'{WITHHELD}'" if body is None else _dollar_quoted(body)
    if name in _NUMBERS and value not in values.personal and _SHORT_NUMBER.fullmatch(value):
        return token  # a count, a limit, an amount: too short to identify anyone
    shown = _shown_value(value, values)
    assert shown is not None
    if name in _NUMBERS and shown == value:
        return token
    return _quoted(shown)


def _shown_value(value: str | None, values: _Values) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_SHOWN_PARAMETER_CHARS and value not in values.plain:
        return f"{WITHHELD} ({len(value)} characters)"
    category = values.personal.get(value)
    if category is not None:
        return partial(value, category)
    if value in values.plain:
        return value
    if values.withhold:
        return WITHHELD
    masked, _ = mask_found(value, _DETECTED, MaskMethod.PARTIAL, _UNKEYED)
    return DIGIT_RUN.sub("?", masked)


def _names(text: str) -> str:
    """Keywords, names and operators, with what detection finds and long digit runs
    masked (a name may spell a phone number: `p447700900123`)."""
    if not text:
        return text
    masked = mask_found(text, _DETECTED, MaskMethod.PARTIAL, _UNKEYED)[0]
    return DIGIT_RUN.sub("?", masked)


def _runs_code(text: str) -> bool:
    """Whether the text runs code the analysis cannot see into (a DO block)."""
    try:
        tree = json.loads(parse_sql_json(text))
    except Exception:  # unreadable: treated as the riskier case
        return True
    return any("DoStmt" in item.get("stmt", {}) for item in tree.get("stmts", ()))


def _literal_value(token: str, name: str) -> str | None:
    """The literal's value as the server reads it; None when it cannot be read back."""
    if name in _NUMBERS:
        return token
    if name not in _STRINGS:
        return None
    try:
        tree = json.loads(parse_sql_json("SELECT " + token))
        target = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]
        value = target["A_Const"]["sval"]["sval"]
    except Exception:
        return None
    return value if isinstance(value, str) else None


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _dollar_quoted(body: str) -> str:
    tag = "$shown$"
    while tag in body:
        tag = tag[:-1] + "_$"
    return f"{tag}{body}{tag}"
