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
import re

from custos.masking.generalise import generalised_text
from custos.policy.models import MaskMethod

REDACTED = "[redacted]"

_IBAN = re.compile(r"[A-Za-z]{2}\d{2}[A-Za-z0-9 ]{8,}")
_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")
_NOT_PHONE_LAYOUT = re.compile(r"[^ ()\-./]+")
_DIGITS = re.compile(r"[0-9]+")
_DIGIT = re.compile(r"\d")
_ASCII_DIGITS_HIDDEN = bytes.maketrans(b"0123456789", b"*" * 10)
_LETTER_RUNS = re.compile(r"[A-Z]+")

_REMEMBERED_PSEUDONYMS = 1 << 16
# Only values this short are remembered: a session's memory stays bounded (a few MB) however
# long the values it reads, and long ones are rarely repeated.
_REMEMBERED_LENGTH = 256
_LETTERS = bytes(ord("A") + byte % 26 for byte in range(256))

_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"


_SHA256_BLOCK = 64
_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))


class Masker:
    """Masks text values under one key (at least 32 bytes of secret); without a key, only
    by the methods that need none (partial, generalise, redact, null)."""

    __slots__ = ("_inner", "_made", "_outer", "hmac_key_block")

    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) < 32:
            raise ValueError("the masking key must hold at least 32 bytes of secret")
        # HMAC-SHA-256's keyed inner and outer states (RFC 2104), made once: a value then
        # costs two SHA-256 compressions and no key set-up, a third of hmac.digest's time.
        block = b"" if key is None else key
        if len(block) > _SHA256_BLOCK:
            block = hashlib.sha256(block).digest()
        block = block.ljust(_SHA256_BLOCK, b"\x00")
        # The key as HMAC pads it, for the masked-row fast path, which keys its own states.
        self.hmac_key_block = None if key is None else block
        self._inner = None if key is None else hashlib.sha256(block.translate(_INNER_PAD))
        self._outer = None if key is None else hashlib.sha256(block.translate(_OUTER_PAD))
        # Pseudonyms made, by category and value: results repeat values (a customer in
        # every order). Bounded in count and in each value's length; forgotten whole when
        # full.
        self._made: dict[tuple[str, str], str] = {}

    def text(self, value: str, category: str, method: MaskMethod) -> str | None:
        """The masked form of a text value of this category; None for no value (NULL)."""
        if method is MaskMethod.NULL:
            return None
        if method is MaskMethod.REDACT:
            return REDACTED
        if method is MaskMethod.PARTIAL:
            return partial(value, category)
        if method is MaskMethod.GENERALISE:
            return generalised_text(value) or REDACTED
        return self.pseudonym(value, category)

    @property
    def keyed(self) -> bool:
        """Whether it holds a key: pseudonyms can be made."""
        return self._inner is not None

    def pseudonym(self, value: str, category: str) -> str:
        """The keyed, format-keeping pseudonym of a value of this category."""
        if len(value) > _REMEMBERED_LENGTH:
            return self._made_pseudonym(value, category)
        made = self._made
        found = made.get((category, value))
        if found is None:
            if len(made) >= _REMEMBERED_PSEUDONYMS:
                made.clear()
            found = made[(category, value)] = self._made_pseudonym(value, category)
        return found

    def _made_pseudonym(self, value: str, category: str) -> str:
        drawn = _Drawn(self.material(category, value.encode()))
        if category == "email":
            text = drawn.text()
            return f"{text[:10]}@{text[10:16]}.example"
        if category == "phone":
            return _phone_pseudonym(value, drawn)
        if category == "iban":
            return _iban_pseudonym(value, drawn)
        if category == "name":
            return _name_pseudonym(value, drawn)
        return "p_" + drawn.text()[:16]

    def material(self, category: str, value: bytes) -> bytes:
        """HMAC-SHA-256 of the value under the key, the category in the message, so that
        the same value gives other pseudonyms as other categories (32 bytes: enough for
        every format here; see _Drawn)."""
        if self._inner is None or self._outer is None:
            raise RuntimeError("pseudonyms need the masking key, and none is configured")
        inner = self._inner.copy()
        inner.update(category.encode() + b"\x00" + value)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class _Drawn:
    """Characters drawn from keyed material, each class from a form of it made when asked
    for: hex for text (64 characters), the material as one 256-bit number for digits (76,
    and more where a text has more), its bytes modulo 26 for letters (32). The longest
    format, an IBAN, needs at most 30 letters."""

    __slots__ = ("_material",)

    def __init__(self, material: bytes) -> None:
        self._material = material

    def text(self) -> str:
        return self._material.hex()

    def digits(self, count: int) -> str:
        """At least `count` digits."""
        digits = str(int.from_bytes(self._material, "big"))[1:]  # no leading bias
        while len(digits) < count:
            # A text with more digits than the material gives (76): more, by SHA-256 of it.
            more = hashlib.sha256(self._material + len(digits).to_bytes(8, "big"))
            digits += str(int.from_bytes(more.digest(), "big"))[1:]
        return digits

    def letters(self) -> str:
        return self._material.translate(_LETTERS).decode()

    def syllable(self, index: int) -> str:
        byte = self._material[index % len(self._material)]
        return _CONSONANTS[byte % len(_CONSONANTS)] + _VOWELS[(byte >> 5) % len(_VOWELS)]


def _email_partial(value: str) -> str:
    local, at, domain = value.rpartition("@")
    return f"***@{domain}" if at and local else "***"


def _phone_partial(value: str) -> str:
    kept = _country_code_end(value)
    rest = value[kept:]
    if rest.isascii():  # bytes.translate: a table lookup a byte, no dictionary
        return value[:kept] + rest.encode().translate(_ASCII_DIGITS_HIDDEN).decode()
    return value[:kept] + _DIGIT.sub("*", rest)


def _country_code_end(value: str) -> int:
    """Where a leading country code (`+44`, `0044`, spaces before) ends; 0 without one.
    Scanned without a regular expression: this runs for every value."""
    size = len(value)
    at = 0
    while at < size and value[at].isspace():
        at += 1
    if value.startswith("+", at):
        at += 1
    elif value.startswith("00", at):
        at += 2
    else:
        return 0
    digits = 0
    while at + digits < size and digits < 3 and value[at + digits].isdecimal():
        digits += 1
    return at + digits if digits else 0


def _iban_partial(value: str) -> str:
    compact = value.replace(" ", "")
    if len(compact) < 8:
        return "*" * len(value)
    hidden = len(compact) - 6
    return compact[:2] + "*" * hidden + compact[-4:]


def _name_partial(value: str) -> str:
    """Each word's initial: the first letter of each run of text between spaces."""
    initials = []
    for word in value.split():
        for character in word:
            if character.isalpha():
                initials.append(character.upper() + ".")
                break
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


def partial(value: str, category: str) -> str:
    """What of a value of this category identifies no one on its own."""
    if category == "email":
        return _email_partial(value)
    if category == "phone":
        return _phone_partial(value)
    if category == "iban":
        return _iban_partial(value)
    if category == "name":
        return _name_partial(value)
    if category == "card":
        return _card_partial(value)
    if category == "ip":
        return REDACTED
    return _partial_other(value)


def _filled(template: str, runs: re.Pattern[str], drawn: str) -> str:
    """The template with each run of characters the pattern matches replaced by the next
    characters drawn, in order; the characters between runs kept."""
    pieces: list[str] = []
    end = taken = 0
    for run in runs.finditer(template):
        start, stop = run.span()
        pieces.append(template[end:start])
        pieces.append(drawn[taken : taken + stop - start])
        taken += stop - start
        end = stop
    pieces.append(template[end:])
    return "".join(pieces)


def _phone_pseudonym(value: str, drawn: _Drawn) -> str:
    """A leading country code and the layout (spaces, brackets, dashes, dots, slashes)
    kept; every other character, whatever it is, becomes a drawn digit."""
    kept = _country_code_end(value)
    rest = value[kept:]
    return value[:kept] + _filled(rest, _NOT_PHONE_LAYOUT, drawn.digits(len(rest)))


def _iban_pseudonym(value: str, drawn: _Drawn) -> str:
    """The country kept, the account replaced character class by character class, and the
    check digits computed (ISO 13616 mod-97), so that it validates as an IBAN."""
    compact = value.replace(" ", "").upper()
    if not _IBAN.fullmatch(compact) or len(compact) > 34 or not compact.isascii():
        return "p_" + drawn.text()[:16]
    bban = compact[4:]
    account = _filled(
        _filled(bban, _DIGITS, drawn.digits(len(bban))), _LETTER_RUNS, drawn.letters()
    )
    country = compact[:2]
    check = 98 - _iban_remainder(account + country + "00")
    masked = f"{country}{check:02d}{account}"
    if " " in value:
        return " ".join(masked[i : i + 4] for i in range(0, len(masked), 4))
    return masked


def _iban_remainder(text: str) -> int:
    """The IBAN characters' number modulo 97, as ISO 13616 counts them (letters as 10 to
    35), digit by digit: no big number is made."""
    remainder = 0
    for character in text:
        code = ord(character)
        if code <= 57:  # a digit
            remainder = (remainder * 10 + code - 48) % 97
        else:  # an upper-case letter, two digits
            remainder = (remainder * 100 + code - 55) % 97
    return remainder


def iban_valid(value: str) -> bool:
    """Whether an IBAN's check digits hold (ISO 13616 mod-97)."""
    compact = value.replace(" ", "").upper()
    if not _IBAN.fullmatch(compact):
        return False
    return compact.isascii() and _iban_remainder(compact[4:] + compact[:4]) == 1


def _name_pseudonym(value: str, drawn: _Drawn) -> str:
    """As many made-up words as the name has (at most eight), capitalised: 'Kazo Rime'."""
    words = min(len(_WORD.findall(value)), 8) or 1
    return " ".join(
        (drawn.syllable(2 * i) + drawn.syllable(2 * i + 1)).capitalize() for i in range(words)
    )
