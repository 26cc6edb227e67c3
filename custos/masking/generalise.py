"""Generalisation: a value made coarse, so that many values share one masked form.

A number becomes the lower bound of its range, towards zero: a bucket of 10 below 1000
(`37` -> `30`, `999.5` -> `990`), above that its order of magnitude (`4711` -> `1000`,
`-250000` -> `-100000`); a date or timestamp the first day of its year (the time of day
zeroed, its zone kept). Text that is such a number or an ISO date is generalised so;
other text has no coarse form here, and its caller redacts it. Pure, no key: the same
value gives the same generalisation under any key.
"""

from __future__ import annotations

import re

_TEXT_NUMBER = re.compile(r"([+-]?)(\d+)(?:\.(\d+))?")
# An ISO date, perhaps with a time (` ` or `T`), a zone and an era: the layout
# PostgreSQL writes under its default DateStyle, and ISO 8601's own.
_TEXT_DATE = re.compile(
    r"(\d{4,})-(\d{2})-(\d{2})"
    r"((?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?)"
    r"((?:Z|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?)?(?: BC)?)"
)


def bucket(magnitude: int) -> int:
    """The lower bound of a non-negative integer's range (see the module's text)."""
    if magnitude < 1000:
        return magnitude - magnitude % 10
    return int(10 ** (len(str(magnitude)) - 1))


def generalised_scaled(scaled: int, scale: int) -> int:
    """The generalisation of the number `scaled / 10**scale`, at the same scale."""
    unit = int(10**scale)
    lower = bucket(abs(scaled) // unit) * unit
    return -lower if scaled < 0 else lower


def generalised_text(value: str) -> str | None:
    """A number's or an ISO date's generalisation, in the text's own layout; None for
    text that is neither."""
    number = _TEXT_NUMBER.fullmatch(value)
    if number is not None:
        sign, whole, fraction = number.groups()
        scale = len(fraction or "")
        scaled = generalised_scaled(int(whole + (fraction or "")), scale)
        text = str(scaled).rjust(scale + 1, "0")
        if scale:
            text = f"{text[:-scale]}.{text[-scale:]}"
        return ("-" if sign == "-" and scaled else "") + text
    date = _TEXT_DATE.fullmatch(value)
    if date is not None and "01" <= date[2] <= "12" and "01" <= date[3] <= "31":
        year, _, _, time, zone = date.groups()
        return f"{year}-01-01{re.sub(r'[0-9]', '0', time)}{zone}"
    return None
