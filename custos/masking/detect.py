"""Content detection: the personal values free text quotes, found and masked in place.

A support ticket's body is free text; it may quote the customer's email address, phone
number or IBAN. Lineage says only that the column is free text, so the text itself is
searched, and each value found is masked by its category's method, the rest left as it
is. Found: email addresses, phone numbers (E.164, or national with the trunk 0; 9 to 15
digits), IBANs (their mod-97 check digits must hold), payment card numbers (Luhn), IPv4
and IPv6 addresses (with a zone, or an IPv4 address inside), MAC addresses, and the
values of the policy's own patterns (custos/policy/patterns.py). What does not look like
one (`aisha at example dot com`) is not found: a role that must not see any of it is
better given `redact` for free text.

MAC addresses are found because they identify a device, and so its owner, as an IP
address does (GDPR recital 30 names device identifiers); the all-zero and broadcast ones
identify nobody and are left. So are the loopback and unspecified IPv6 addresses (`::1`,
`::`). Not found as IPv6 are times (`12:30:45`), C++ names (`std::vector`), slices
(`a[1::2]`): an IPv6 address needs a digit and five hex digits, and must be one by
Python's `ipaddress`. A version of four numbers (`1.2.3.4`) is an IPv4 address as far as
the text shows: it is masked, as the cost of masking every address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

from custos.masking.values import Masker, iban_valid
from custos.policy.models import MaskMethod
from custos.policy.patterns import PolicyPattern

# Letters of any script (`zoë.brontë@exämple.org`).
# Only from the start of a run of local-part characters: a long run without an @ is then
# read once, not once from each of its characters (quadratic time on hostile text).
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)+")
# Either case, grouped by spaces or dashes (`GB54-DEMO-7256-...`, `gb54demo...`); not a
# part of a longer dashed run (a UUID's groups).
_IBAN = re.compile(
    r"(?<![\w-])[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{4}){2,7}(?:[ -]?[A-Za-z0-9]{1,3})?(?![\w-])"
)
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
# E.164 (+44 7700 900214, +44 (0)7700 900214) or a national form with its trunk 0 (07700
# 900214): groups of digits apart by a space (a no-break one too), dot, dash or any Unicode
# dash, 9 to 15 digits in all. Without a country code or trunk 0 (7700 900214) a number is
# not told from an order's.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}(?:[\s.\-\u2010-\u2015]?\(0\))?|0)"
    r"(?:[\s.\-\u2010-\u2015]?\(?\d{2,5}\)?){2,4}(?![\w/])"
)
# Not a part of a longer dotted number (an OID 1.3.6.1.4.1, a five-part version).
_IPV4 = re.compile(
    r"(?<![\d.])\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b(?!\.\d)"
)
# Permissive: hex groups and colons, an IPv4 address or a group last, a zone; ipaddress
# then says whether it is an address.
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4})(?:%[0-9A-Za-z_.-]{1,16})?(?![\w:])"
)
_MAC = re.compile(
    r"(?<![\w:.-])(?:[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}"
    r"|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4})(?![\w:.-])"
)
_HEX_DIGIT = re.compile(r"[0-9A-Fa-f]")
_NOBODYS_MACS = frozenset({"000000000000", "ffffffffffff"})

DETECTED = ("email", "iban", "card", "ipv6", "ip", "mac", "phone")
"""What content detection finds, in the order it looks: an IBAN's, a card's or an IP
address's digits are not a phone number's, an IPv6 address's IPv4 end is its own."""

_MASKED_AS = {"ipv6": "ip"}
"""Finders whose values are masked as another category's (an IPv6 address is an IP's)."""


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, character in enumerate(reversed(digits)):
        value = int(character)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _any_match(found: str) -> bool:
    return True


def ipv6_personal(found: str) -> bool:
    """Whether text the IPv6 pattern matched is an address that may identify someone: an
    address by `ipaddress`, not loopback or unspecified, with a digit and five hex digits
    (`1::2` is far likelier a slice, `Abc::Def` a C++ name)."""
    address, _, _ = found.partition("%")
    if not any(character.isdigit() for character in address):
        return False
    if len(_HEX_DIGIT.findall(address)) < 5:
        return False
    try:
        parsed = ipaddress.IPv6Address(found)
    except ValueError:
        return False
    return not (parsed.is_loopback or parsed.is_unspecified)


def mac_personal(found: str) -> bool:
    """Whether a MAC address may identify a device: not all zeros, not broadcast."""
    return "".join(_HEX_DIGIT.findall(found)).lower() not in _NOBODYS_MACS


_FINDERS: dict[str, tuple[re.Pattern[str], Callable[[str], bool]]] = {
    "email": (_EMAIL, _any_match),
    "iban": (_IBAN, lambda found: iban_valid(found.replace("-", ""))),
    "card": (_CARD, lambda found: luhn_valid(re.sub(r"\D", "", found))),
    "phone": (_PHONE, lambda found: 9 <= sum(c.isdigit() for c in found) <= 15),
    "ipv6": (_IPV6, ipv6_personal),
    "ip": (_IPV4, lambda found: True),
    "mac": (_MAC, mac_personal),
}

CompiledPatterns = tuple[tuple[str, re.Pattern[str]], ...]
"""The policy's patterns to search free text for: each category, and its pattern."""


def compiled_patterns(patterns: Sequence[PolicyPattern]) -> CompiledPatterns:
    """The patterns a decision carries, compiled (`re` keeps the compiled ones: a pattern is
    compiled once, not per decision). They were checked where the policy was loaded, or
    where the decision point's answer was read."""
    return tuple((pattern.category, re.compile(pattern.pattern)) for pattern in patterns)


def mask_found(
    text: str,
    categories: frozenset[str],
    method: MaskMethod,
    masker: Masker,
    patterns: CompiledPatterns = (),
) -> tuple[str, int]:
    """The text with every value of these categories it holds masked (cards, IP and MAC
    addresses count as contact details wherever email, phone or IBAN are masked), and the
    values of the policy's `patterns` first: the policy knows its own values' shape better
    than the general finders do. And how many values were masked."""
    wanted = set(categories)
    if wanted & {"email", "phone", "iban"}:
        wanted |= {"card", "ipv6", "ip", "mac"}
    found = 0
    for category, pattern in patterns:
        text, count = _masked_matches(text, pattern, _any_match, category, method, masker)
        found += count
    for finder in DETECTED:
        if finder not in wanted:
            continue
        pattern, valid = _FINDERS[finder]
        category = _MASKED_AS.get(finder, finder)
        text, count = _masked_matches(text, pattern, valid, category, method, masker)
        found += count
    return text, found


def _masked_matches(
    text: str,
    pattern: re.Pattern[str],
    valid: Callable[[str], bool],
    category: str,
    method: MaskMethod,
    masker: Masker,
) -> tuple[str, int]:
    """The text with each valid match of the pattern masked as a value of the category."""
    pieces: list[str] = []
    end = found = 0
    for match in pattern.finditer(text):
        value = match.group(0)
        if not value or not valid(value):
            continue
        found += 1
        masked = masker.text(value, category, method)
        pieces += [text[end : match.start()], "" if masked is None else masked]
        end = match.end()
    if not found:
        return text, 0
    return "".join(pieces) + text[end:], found
