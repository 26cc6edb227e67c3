"""Content detection: the personal values free text quotes, found and masked in place.

A support ticket's body is free text; it may quote the customer's email address, phone
number or IBAN. Lineage says only that the column is free text, so the text itself is
searched, and each value found is masked by its category's method, the rest left as it
is. Found: email addresses, phone numbers (E.164, or national with the trunk 0; 9 to 15
digits),
IBANs (their mod-97 check digits must hold), payment card numbers (Luhn) and IPv4
addresses. What does not look like one (`aisha at example dot com`) is not found: a
role that must not see any of it is better given `redact` for free text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from custos.masking.values import Masker, iban_valid
from custos.policy.models import MaskMethod

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
# E.164 (+44 7700 900214) or a national form with its trunk 0 (07700 900214): groups of
# digits apart by a space, dot or dash, 9 to 15 digits in all.
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}|0)(?:[ .-]?\(?\d{2,5}\)?){2,4}(?![\w/])")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")

DETECTED = ("email", "iban", "card", "ip", "phone")
"""What content detection finds, in the order it looks: an IBAN's, a card's or an IP
address's digits are not a phone number's."""


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, character in enumerate(reversed(digits)):
        value = int(character)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


_FINDERS: dict[str, tuple[re.Pattern[str], Callable[[str], bool]]] = {
    "email": (_EMAIL, lambda found: True),
    "iban": (_IBAN, iban_valid),
    "card": (_CARD, lambda found: luhn_valid(re.sub(r"\D", "", found))),
    "phone": (_PHONE, lambda found: 9 <= sum(c.isdigit() for c in found) <= 15),
    "ip": (_IPV4, lambda found: True),
}


def mask_found(
    text: str, categories: frozenset[str], method: MaskMethod, masker: Masker
) -> tuple[str, int]:
    """The text with every value of these categories it holds masked (cards and IP
    addresses count as contact details wherever email, phone or IBAN are masked), and
    how many were."""
    wanted = set(categories)
    if wanted & {"email", "phone", "iban"}:
        wanted |= {"card", "ip"}
    found = 0
    for category in DETECTED:
        if category not in wanted:
            continue
        pattern, valid = _FINDERS[category]
        pieces: list[str] = []
        end = 0
        for match in pattern.finditer(text):
            value = match.group(0)
            if not valid(value):
                continue
            found += 1
            masked = masker.text(value, category, method)
            pieces += [text[end : match.start()], "" if masked is None else masked]
            end = match.end()
        text = "".join(pieces) + text[end:]
    return text, found
