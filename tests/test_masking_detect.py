"""Content detection: personal values quoted in free text, found and masked in place."""

from __future__ import annotations

import random

import pytest

from custos.masking.detect import luhn_valid, mask_found
from custos.masking.values import Masker
from custos.policy.models import MaskMethod

MASKER = Masker(b"k" * 32)
CONTACT = frozenset({"email", "phone", "iban"})


def masked(text: str, method: MaskMethod = MaskMethod.PARTIAL) -> str:
    return mask_found(text, CONTACT, method, MASKER)[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Hi, reach me on +44 7700 900214 or at aisha.wilson1084@example.com, thanks",
            "Hi, reach me on +44 **** ****** or at ***@example.com, thanks",
        ),
        ("IBAN GB82 WEST 1234 5698 7654 32 please", "IBAN GB****************5432 please"),
        ("call 07700 900214", "call ***** ******"),
        ("card 4111 1111 1111 1111 expired", "card **** **** **** 1111 expired"),
        ("from 192.168.10.20 at noon", "from [redacted] at noon"),
    ],
)
def test_quoted_values_are_masked_in_place(text: str, expected: str) -> None:
    assert masked(text) == expected


@pytest.mark.parametrize("method", list(MaskMethod))
def test_no_quoted_value_survives_any_method(method: MaskMethod) -> None:
    text = "mail aisha.wilson1084@example.com, phone +44 7700 900214, GB82 WEST 1234 5698 7654 32"
    result = masked(text, method)
    for value in ("aisha.wilson1084", "7700 900214", "5698 7654"):
        assert value not in result


def test_an_iban_with_wrong_check_digits_is_no_iban_and_luhn_tells_cards() -> None:
    # Not masked as an IBAN (its country and letters stay); its run of digits is masked
    # as a phone number would be.
    assert masked("ref GB83 WEST 1234 5698 7654 32").startswith("ref GB83 WEST ")
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


def test_false_positives_on_text_without_personal_data() -> None:
    # Non-personal text of the kind orders and products hold: order numbers, amounts,
    # dates, times, versions, SKUs, percentages. Measured, not assumed to be zero.
    rng = random.Random(7)
    templates = [
        "Order {a} shipped on 2026-{m:02d}-{d:02d} for {p}.{c:02d} GBP",
        "SKU-{a}-{b} restocked: {q} units at {p}.{c:02d} each",
        "Invoice {a}/{b} paid at {h:02d}:{mi:02d}, version {m}.{d}.{q}",
        "Discount {q}% on {q} items, batch {a}",
    ]
    texts = [
        rng.choice(templates).format(
            a=rng.randint(1000, 999999),
            b=rng.randint(10, 9999),
            m=rng.randint(1, 12),
            d=rng.randint(1, 28),
            p=rng.randint(1, 999),
            c=rng.randint(0, 99),
            q=rng.randint(1, 99),
            h=rng.randint(0, 23),
            mi=rng.randint(0, 59),
        )
        for _ in range(2000)
    ]
    changed = sum(masked(text) != text for text in texts)
    assert changed / len(texts) < 0.01, f"{changed} of {len(texts)} texts changed"
