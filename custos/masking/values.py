"""Masked values: what a personal value becomes, by its category and the policy's method.

Pure and keyed. A pseudonym is HMAC-SHA-256 of the value under the gateway's masking key,
so one value always gives one pseudonym (joins and GROUP BY across results still work),
another key gives unrelated ones, and without the key none can be traced back (an unkeyed
hash of an email is reversed by hashing a list of emails). Pseudonyms keep the value's
format: an email's is a valid address (at a reserved `.example` domain), a phone number's
keeps its country code and layout, an IBAN's its country and valid check digits.

`partial` keeps what identifies no one on its own: an email's domain, a phone number's
country code, an IBAN's country and last four characters, a name's initials. `redact`
gives a fixed placeholder, `null` no value at all.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string
from collections.abc import Callable, Iterator

from custos.policy.models import MaskMethod

REDACTED = "[redacted]"

_PHONE_PREFIX = re.compile(r"\s*(\+|00)(\d{1,3})")
_IBAN = re.compile(r"[A-Za-z]{2}\d{2}[A-Za-z0-9 ]{8,}")
_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")

_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"


class Masker:
    """Masks text values under one key (at least 32 bytes of secret)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the masking key must hold at least 32 bytes of secret")
        self._key = key

    def text(self, value: str, category: str, method: MaskMethod) -> str | None:
        """The masked form of a text value of this category; None for no value (NULL)."""
        if method is MaskMethod.NULL:
            return None
        if method is MaskMethod.REDACT:
            return REDACTED
        if method is MaskMethod.PARTIAL:
            return _PARTIAL.get(category, _partial_other)(value)
        return self.pseudonym(value, category)

    def pseudonym(self, value: str, category: str) -> str:
        """The keyed, format-keeping pseudonym of a value of this category."""
        stream = self._stream(category, value)
        if category == "email":
            return _email_pseudonym(stream)
        if category == "phone":
            return _digits_pseudonym(value, stream)
        if category == "iban":
            return _iban_pseudonym(value, stream)
        if category == "name":
            return _name_pseudonym(value, stream)
        return "p_" + "".join(next(stream) for _ in range(16))

    def _stream(self, category: str, value: str) -> Iterator[str]:
        """Endless characters from [0-9a-z] drawn from HMAC(key, category, value), so that
        the same value gives other pseudonyms as other categories."""
        seed = hmac.new(self._key, f"{category}\x00{value}".encode(), hashlib.sha256).digest()
        counter = 0
        alphabet = string.digits + string.ascii_lowercase
        while True:
            block = hmac.new(seed, counter.to_bytes(4, "big"), hashlib.sha256).digest()
            for byte in block:
                if byte < 252:  # 252 = 7 * 36: no bias toward the alphabet's first letters
                    yield alphabet[byte % 36]
            counter += 1


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


_PARTIAL: dict[str, Callable[[str], str]] = {
    "email": _email_partial,
    "phone": _phone_partial,
    "iban": _iban_partial,
    "name": _name_partial,
}


def _email_pseudonym(stream: Iterator[str]) -> str:
    local = "".join(next(stream) for _ in range(10))
    domain = "".join(next(stream) for _ in range(6))
    return f"{local}@{domain}.example"


def _digits_pseudonym(value: str, stream: Iterator[str]) -> str:
    """Every digit but a leading country code replaced, the layout kept."""
    prefix = _PHONE_PREFIX.match(value)
    kept = prefix.end() if prefix else 0
    digits = (character for character in stream if character.isdigit())
    rest = "".join(next(digits) if character.isdigit() else character for character in value[kept:])
    return value[:kept] + rest


def _iban_pseudonym(value: str, stream: Iterator[str]) -> str:
    """The country kept, the account replaced character class by character class, and the
    check digits computed (ISO 13616 mod-97), so that it validates as an IBAN."""
    compact = value.replace(" ", "").upper()
    if not _IBAN.fullmatch(compact):
        return "p_" + "".join(next(stream) for _ in range(16))
    digits = (character for character in stream if character.isdigit())
    letters = (character.upper() for character in stream if character.isalpha())
    account = "".join(
        next(digits) if character.isdigit() else next(letters) for character in compact[4:]
    )
    country = compact[:2]
    check = 98 - int(_iban_number(account + country + "00")) % 97
    masked = f"{country}{check:02d}{account}"
    if " " in value:
        return " ".join(masked[i : i + 4] for i in range(0, len(masked), 4))
    return masked


def _iban_number(text: str) -> str:
    return "".join(str(int(character, 36)) for character in text)


def iban_valid(value: str) -> bool:
    """Whether an IBAN's check digits hold (ISO 13616 mod-97)."""
    compact = value.replace(" ", "").upper()
    if not _IBAN.fullmatch(compact):
        return False
    return int(_iban_number(compact[4:] + compact[:4])) % 97 == 1


def _name_pseudonym(value: str, stream: Iterator[str]) -> str:
    """As many made-up words as the name has, capitalised: 'Kazo Rimetu'."""
    consonants = (c for c in stream if c in _CONSONANTS)
    vowels = (c for c in stream if c in _VOWELS)
    words = []
    for _ in _WORD.findall(value) or [value]:
        syllables = "".join(next(consonants) + next(vowels) for _ in range(2))
        words.append(syllables.capitalize())
    return " ".join(words)
