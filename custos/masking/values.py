"""Masked values: what a personal value becomes, by its category and the policy's method.

Pure and keyed. A pseudonym is HMAC-SHA-256 of the value under the gateway's masking key,
so one value always gives one pseudonym (joins and GROUP BY across results still work),
another key gives unrelated ones, and without the key none can be traced back (an unkeyed
hash of an email is reversed by hashing a list of emails). Pseudonyms keep the value's
format: an email's is a valid address (at a reserved `.example` domain), a phone number's
keeps its country code and layout, an IBAN's its country and valid check digits.

`partial` keeps what identifies no one on its own: an email's domain, a phone number's
country code, an IBAN's country and last four characters, a name's initials. `redact`
gives a fixed placeholder, `null` no value at all, `generalise` a number's range or an ISO
date's year (custos/masking/generalise.py), other text redacted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string
from collections.abc import Callable

from custos.masking.generalise import generalised_text
from custos.policy.models import MaskMethod

REDACTED = "[redacted]"

_PHONE_PREFIX = re.compile(r"\s*(\+|00)(\d{1,3})")
_IBAN = re.compile(r"[A-Za-z]{2}\d{2}[A-Za-z0-9 ]{8,}")
_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")

_REMEMBERED_PSEUDONYMS = 1 << 16
_LETTERS = bytes(ord("A") + byte % 26 for byte in range(256))
_IBAN_DIGITS = {ord(letter): str(10 + n) for n, letter in enumerate(string.ascii_uppercase)}

_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"


class Masker:
    """Masks text values under one key (at least 32 bytes of secret)."""

    __slots__ = ("_key", "_made")

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the masking key must hold at least 32 bytes of secret")
        self._key = key
        # Pseudonyms made, by category and value: results repeat values (a customer in
        # every order), and each costs two HMACs. Bounded; forgotten whole when full.
        self._made: dict[tuple[str, str], str] = {}

    def text(self, value: str, category: str, method: MaskMethod) -> str | None:
        """The masked form of a text value of this category; None for no value (NULL)."""
        if method is MaskMethod.NULL:
            return None
        if method is MaskMethod.REDACT:
            return REDACTED
        if method is MaskMethod.PARTIAL:
            return _PARTIAL.get(category, _partial_other)(value)
        if method is MaskMethod.GENERALISE:
            return generalised_text(value) or REDACTED
        return self.pseudonym(value, category)

    def pseudonym(self, value: str, category: str) -> str:
        """The keyed, format-keeping pseudonym of a value of this category."""
        made = self._made
        found = made.get((category, value))
        if found is None:
            if len(made) >= _REMEMBERED_PSEUDONYMS:
                made.clear()
            found = made[(category, value)] = self._made_pseudonym(value, category)
        return found

    def _made_pseudonym(self, value: str, category: str) -> str:
        drawn = _Drawn(self._material(category, value))
        if category == "email":
            return f"{drawn.text(10)}@{drawn.text(6)}.example"
        if category == "phone":
            return _digits_pseudonym(value, drawn)
        if category == "iban":
            return _iban_pseudonym(value, drawn)
        if category == "name":
            return _name_pseudonym(value, drawn)
        return "p_" + drawn.text(16)

    def _material(self, category: str, value: str) -> bytes:
        """HMAC-SHA-256 of the value under the key, the category in the message, so that
        the same value gives other pseudonyms as other categories (32 bytes: enough for
        every format here; see _Drawn)."""
        return hmac.digest(self._key, f"{category}\x00{value}".encode(), "sha256")


class _Drawn:
    """Characters drawn in turn from keyed material, each class from a form of it made when
    first asked for: hex for text (64), the material as one 256-bit number for digits (76,
    and more where a text has more), its bytes modulo 26 for letters (32). The longest
    format, an IBAN, needs at most 30 letters."""

    __slots__ = ("_digits", "_letters", "_material", "_taken", "_text")

    def __init__(self, material: bytes) -> None:
        self._material = material
        self._text = ""
        self._digits = ""
        self._letters = ""
        self._taken = [0, 0, 0]  # of text, digits, letters

    def text(self, count: int) -> str:
        if not self._text:
            self._text = self._material.hex()
        return self._take(0, self._text, count)

    def digits(self, count: int) -> str:
        if not self._digits:
            self._digits = str(int.from_bytes(self._material, "big"))[1:]  # no leading bias
        while len(self._digits) < self._taken[1] + count:
            # A text with more digits than the material gives (76): more, by SHA-256 of it.
            more = hashlib.sha256(self._material + len(self._digits).to_bytes(8, "big"))
            self._digits += str(int.from_bytes(more.digest(), "big"))[1:]
        return self._take(1, self._digits, count)

    def letters(self, count: int) -> str:
        if not self._letters:
            self._letters = self._material.translate(_LETTERS).decode()
        return self._take(2, self._letters, count)

    def syllable(self, index: int) -> str:
        byte = self._material[index % len(self._material)]
        return _CONSONANTS[byte % len(_CONSONANTS)] + _VOWELS[(byte >> 5) % len(_VOWELS)]

    def _take(self, kind: int, source: str, count: int) -> str:
        start = self._taken[kind]
        self._taken[kind] = start + count
        return source[start : start + count]


def _email_partial(value: str) -> str:
    local, at, domain = value.rpartition("@")
    return f"***@{domain}" if at and local else "***"


def _phone_partial(value: str) -> str:
    prefix = _PHONE_PREFIX.match(value)
    kept = prefix.end() if prefix else 0
    return value[:kept] + re.sub(r"\d", "*", value[kept:])


def _iban_partial(value: str) -> str:
    compact = value.replace(" ", "")
    if len(compact) < 8:
        return "*" * len(value)
    hidden = len(compact) - 6
    return compact[:2] + "*" * hidden + compact[-4:]


def _name_partial(value: str) -> str:
    initials = [word[0].upper() + "." for word in _WORD.findall(value)]
    return " ".join(initials) if initials else "***"


def _partial_other(value: str) -> str:
    return value[:1] + "***" if len(value) > 3 else "***"


def _card_partial(value: str) -> str:
    """A payment card's last four digits, the others hidden."""
    digits = sum(character.isdigit() for character in value)
    hidden = iter(range(digits - 4))
    return "".join(
        "*" if character.isdigit() and next(hidden, None) is not None else character
        for character in value
    )


_PARTIAL: dict[str, Callable[[str], str]] = {
    "email": _email_partial,
    "phone": _phone_partial,
    "iban": _iban_partial,
    "name": _name_partial,
    "card": _card_partial,
    "ip": lambda value: REDACTED,
}


def _digits_pseudonym(value: str, drawn: _Drawn) -> str:
    """Every digit but a leading country code replaced, the layout kept."""
    prefix = _PHONE_PREFIX.match(value)
    kept = prefix.end() if prefix else 0
    rest = value[kept:]
    digits = iter(drawn.digits(sum(c.isdigit() for c in rest)))
    return value[:kept] + "".join(next(digits) if c.isdigit() else c for c in rest)


def _iban_pseudonym(value: str, drawn: _Drawn) -> str:
    """The country kept, the account replaced character class by character class, and the
    check digits computed (ISO 13616 mod-97), so that it validates as an IBAN."""
    compact = value.replace(" ", "").upper()
    if not _IBAN.fullmatch(compact) or len(compact) > 34:
        return "p_" + drawn.text(16)
    bban = compact[4:]
    digits = iter(drawn.digits(sum(c.isdigit() for c in bban)))
    letters = iter(drawn.letters(len(bban)))
    account = "".join(next(digits) if c.isdigit() else next(letters) for c in bban)
    country = compact[:2]
    check = 98 - int(_iban_number(account + country + "00")) % 97
    masked = f"{country}{check:02d}{account}"
    if " " in value:
        return " ".join(masked[i : i + 4] for i in range(0, len(masked), 4))
    return masked


def _iban_number(text: str) -> str:
    """The IBAN's characters as ISO 13616 counts them: letters as 10 to 35."""
    return text.translate(_IBAN_DIGITS)


def iban_valid(value: str) -> bool:
    """Whether an IBAN's check digits hold (ISO 13616 mod-97)."""
    compact = value.replace(" ", "").upper()
    if not _IBAN.fullmatch(compact):
        return False
    return int(_iban_number(compact[4:] + compact[:4])) % 97 == 1


def _name_pseudonym(value: str, drawn: _Drawn) -> str:
    """As many made-up words as the name has (at most eight), capitalised: 'Kazo Rime'."""
    words = (_WORD.findall(value) or [value])[:8]
    return " ".join(
        (drawn.syllable(2 * i) + drawn.syllable(2 * i + 1)).capitalize() for i in range(len(words))
    )
