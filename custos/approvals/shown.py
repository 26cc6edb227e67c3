"""A statement as approvers see it: exact in its structure, with personal values masked.

Approvers judge the statement itself, so it is shown as the client wrote it, except that
every value compared with, or written to, a catalogued personal column is shown partly
masked (an email keeps its domain, a phone its country code), and every email, phone
number, IBAN, card number or address detection finds anywhere else (in another literal, a
comment, a name, a parameter) likewise. Requests are mailed, stored and logged, so this is
the only form of the statement they hold. A text the scanner cannot read is shown without
any value (the audit trail's form).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pglast.parser import parse_sql_json, scan

from custos.audit.named import personal_values
from custos.audit.statements import without_values
from custos.masking.detect import mask_found
from custos.masking.values import Masker, partial
from custos.policy.catalog import PersonalDataCatalog
from custos.policy.models import MaskMethod

_STRINGS = frozenset({"SCONST", "USCONST"})
_NUMBERS = frozenset({"ICONST", "FCONST"})
_DETECTED = frozenset({"email", "phone", "iban"})
_UNKEYED = Masker(b"\0" * 32)  # partial masking uses no key
MAX_SHOWN_CHARS = 20_000


def shown_statement(
    text: str,
    relations: Sequence[str],
    catalog: PersonalDataCatalog,
    parameters: Sequence[str | None],
) -> tuple[str, tuple[str | None, ...]]:
    """The statement and its parameters as approvers see them."""
    personal = personal_values(text, relations, catalog, parameters)
    shown_parameters = tuple(_shown_value(value, personal) for value in parameters)
    try:
        tokens = scan(text)
    except Exception:  # pglast raises its own error types for unreadable text
        return without_values(text), shown_parameters
    pieces: list[str] = []
    position = 0
    for start, end, name, _ in tokens:
        if name not in _STRINGS and name not in _NUMBERS:
            continue
        pieces.append(_detected(text[position:start]))
        token = text[start : end + 1]
        pieces.append(_shown_literal(token, name, personal))
        position = end + 1
    pieces.append(_detected(text[position:]))
    shown = "".join(pieces)
    if len(shown) > MAX_SHOWN_CHARS:
        shown = shown[:MAX_SHOWN_CHARS] + f" … ({len(shown) - MAX_SHOWN_CHARS} more characters)"
    return shown, shown_parameters


def _shown_literal(token: str, name: str, personal: dict[str, str]) -> str:
    value = _literal_value(token, name)
    if value is None:
        return "'?'"  # a literal that does not read back: nothing of it is shown
    category = personal.get(value)
    if category is not None:
        masked = partial(value, category)
        return masked if name in _NUMBERS and masked.isdigit() else _quoted(masked)
    masked, found = mask_found(value, _DETECTED, MaskMethod.PARTIAL, _UNKEYED)
    return _quoted(masked) if found else token


def _shown_value(value: str | None, personal: dict[str, str]) -> str | None:
    if value is None:
        return None
    category = personal.get(value)
    if category is not None:
        return partial(value, category)
    return mask_found(value, _DETECTED, MaskMethod.PARTIAL, _UNKEYED)[0]


def _detected(text: str) -> str:
    """Text outside literals (names, comments, keywords) with what detection finds masked."""
    return mask_found(text, _DETECTED, MaskMethod.PARTIAL, _UNKEYED)[0] if text else text


def _literal_value(token: str, name: str) -> str | None:
    if name in _NUMBERS:
        return token
    if token.startswith("'") and token.endswith("'"):
        return token[1:-1].replace("''", "'")
    try:  # E'', U&'', $$...$$: read back as the server reads them
        tree = json.loads(parse_sql_json("SELECT " + token))
        target = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]
        value = target["A_Const"]["sval"]["sval"]
    except Exception:
        return None
    return value if isinstance(value, str) else None


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
