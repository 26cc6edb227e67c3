"""JSON objects masked key by key, their structure kept.

A result column that builds a JSON object from columns (`row_to_json(c)`, `to_jsonb(q)`,
`jsonb_build_object('e', email)`, `json_agg(q)`) has keys the analysis knows
(custos/policy/masks.py JsonMask): only the keys that hold personal data are masked, each
by its own method; the rest stays as it was. The document must be the object traced, with
exactly its keys (or, for a table's row, at least its catalogued ones), once each;
anything else (a column that happened to share the row's name, a duplicated key) gives
None, and the caller masks the whole value instead.

Numbers keep their exact text (no float rounding), and the document is written in jsonb's
output layout (`{"a": 1, "b": [2, 3]}`).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from custos.masking.values import REDACTED
from custos.policy.masks import JsonMask, KeyMask

MaskString = Callable[[str, KeyMask], "str | None"]
"""Masks one string value of a key, by the key's category and method; None for null."""


class _Number(str):
    """A JSON number, kept as the text it was written in."""

    __slots__ = ()


class _NotTheObject(ValueError):
    """The document is not the object the analysis traced."""


def masked_document(text: str, shape: JsonMask, mask_string: MaskString) -> str | None:
    """The document with its personal keys masked; None where it is not the traced shape."""
    try:
        document = json.loads(
            text,
            parse_float=_Number,
            parse_int=_Number,
            parse_constant=_refused,
            object_pairs_hook=_unique_keys,
        )
        items = document if shape.aggregated else [document]
        if not isinstance(items, list):
            return None
        masks = {mask.key: mask for mask in shape.masked}
        keys = frozenset(shape.keys)
        for item in items:
            if item is None and shape.aggregated:
                continue  # json_agg of a NULL row
            if not isinstance(item, dict):
                return None
            present = frozenset(item)
            traced = present == keys if shape.exact else keys <= present
            if not traced:
                return None
            for key, mask in masks.items():
                if key in item:
                    item[key] = _masked_leaf(item[key], mask, mask_string)
        return _written(document)
    except (ValueError, RecursionError):
        return None


def _masked_leaf(value: object, mask: KeyMask, mask_string: MaskString) -> object:
    """A personal key's value masked: a string by the key's method; any other value
    (a number, an object, an array) has no masked form that keeps it, so it becomes null.
    A value the statement computed becomes one placeholder, null or not: its form could
    say something of what it was computed from."""
    if mask.computed:
        return REDACTED
    if isinstance(value, str) and not isinstance(value, _Number):
        return mask_string(value, mask)
    return None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _NotTheObject("a key twice")  # json keeps both: which one is masked?
    return found


def _refused(constant: str) -> object:
    raise _NotTheObject(f"{constant} is not JSON")


def _written(value: object) -> str:
    if isinstance(value, _Number):
        return str.__str__(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, list):
        return "[" + ", ".join(_written(item) for item in value) + "]"
    if isinstance(value, dict):
        members = (
            f"{json.dumps(key, ensure_ascii=False)}: {_written(item)}"
            for key, item in value.items()
        )
        return "{" + ", ".join(members) + "}"
    raise _NotTheObject(f"no JSON form for {type(value).__name__}")
