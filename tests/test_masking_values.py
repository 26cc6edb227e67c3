"""Masked values: keyed, deterministic, format-keeping pseudonyms and partial forms."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.masking.values import REDACTED, Masker, iban_valid
from custos.policy.models import MaskMethod

KEY = b"k" * 32
OTHER_KEY = b"o" * 32

# An address as RFC 5322 allows in practice (what clients validate): dot-atoms at a domain.
EMAIL = re.compile(r"[a-z0-9]+@[a-z0-9]+\.example")

emails = st.builds(
    "{}.{}{}@{}.{}".format,
    st.from_regex(r"[a-z]{1,12}", fullmatch=True),
    st.from_regex(r"[a-z]{1,12}", fullmatch=True),
    st.integers(0, 9999),
    st.from_regex(r"[a-z]{2,10}", fullmatch=True),
    st.sampled_from(["com", "org", "co.uk"]),
)
phones = st.builds(
    "+{} {} {}".format,
    st.integers(1, 999),
    st.from_regex(r"[0-9]{4}", fullmatch=True),
    st.from_regex(r"[0-9]{6}", fullmatch=True),
)
ibans = st.builds(
    "{}{}".format,
    st.sampled_from(["GB", "DE", "FR", "NL", "IE"]),
    st.from_regex(r"[0-9]{2}[A-Z]{4}[0-9]{14}", fullmatch=True),
)


@settings(max_examples=200)
@given(value=emails)
def test_an_email_pseudonym_is_an_address_the_same_under_a_key(value: str) -> None:
    masker = Masker(KEY)
    pseudonym = masker.pseudonym(value, "email")
    assert EMAIL.fullmatch(pseudonym)
    assert masker.pseudonym(value, "email") == pseudonym
    assert Masker(OTHER_KEY).pseudonym(value, "email") != pseudonym
    assert value.split("@")[0] not in pseudonym


@settings(max_examples=200)
@given(value=phones)
def test_a_phone_pseudonym_keeps_its_country_code_and_layout(value: str) -> None:
    pseudonym = Masker(KEY).pseudonym(value, "phone")
    country = value.split(" ")[0]
    assert pseudonym.startswith(country + " ")
    assert re.sub(r"\d", "9", pseudonym) == re.sub(r"\d", "9", value)


@settings(max_examples=200)
@given(value=ibans)
def test_an_iban_pseudonym_validates_and_keeps_its_country(value: str) -> None:
    pseudonym = Masker(KEY).pseudonym(value, "iban")
    assert iban_valid(pseudonym)
    assert pseudonym[:2] == value[:2]
    assert len(pseudonym) == len(value)
    assert pseudonym != value


def test_iban_validation_matches_a_known_good_and_a_broken_one() -> None:
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("GB83 WEST 1234 5698 7654 32")


@given(value=st.text(min_size=1, max_size=40), category=st.sampled_from(["name", "address", "x"]))
def test_pseudonyms_of_one_value_differ_by_category_and_never_echo_it(
    value: str, category: str
) -> None:
    masker = Masker(KEY)
    pseudonym = masker.pseudonym(value, category)
    assert pseudonym == masker.pseudonym(value, category)
    if len(value) > 6:  # a short one may be a pseudonym's substring by chance
        assert value not in pseudonym


@pytest.mark.parametrize(
    ("category", "value", "partial"),
    [
        ("email", "aisha.wilson1084@example.com", "***@example.com"),
        ("email", "no-at-sign", "***"),
        ("phone", "+44 7700 900214", "+44 **** ******"),
        ("phone", "07700 900214", "***** ******"),
        ("iban", "GB82 WEST 1234 5698 7654 32", "GB****************5432"),
        ("name", "Aisha Wilson-Smith", "A. W."),
        ("address", "1 High Street", "1***"),
    ],
)
def test_partial_keeps_what_identifies_no_one(category: str, value: str, partial: str) -> None:
    assert Masker(KEY).text(value, category, MaskMethod.PARTIAL) == partial


def test_redact_and_null() -> None:
    masker = Masker(KEY)
    assert masker.text("a@b.c", "email", MaskMethod.REDACT) == REDACTED
    assert masker.text("a@b.c", "email", MaskMethod.NULL) is None


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Masker(b"short")


def test_a_phone_pseudonym_of_more_digits_than_the_material_holds() -> None:
    # A JSON text of escaped characters (`"\ud835\udc0e..."`) can hold hundreds of digits.
    value = "+44 " + "1234567890" * 20
    pseudonym = Masker(KEY).pseudonym(value, "phone")
    assert pseudonym.startswith("+44 ")
    assert sum(c.isdigit() for c in pseudonym) == sum(c.isdigit() for c in value)
    assert pseudonym[80:] not in value
