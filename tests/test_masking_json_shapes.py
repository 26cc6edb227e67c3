"""JSON objects masked key by key: which keys the analysis traces, and the rewriting of
the documents (pure: documents in, documents out)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_policy_commands import DEMO_POLICY

from custos.masking.json_shapes import masked_document
from custos.policy.engine import DecisionRequest, PolicyEngine
from custos.policy.lambda_point import DecisionPayload
from custos.policy.masks import JsonMask, KeyMask
from custos.policy.models import MaskMethod
from custos.policy.source import load_policy
from custos.sql.analysis import analyze

ENGINE = PolicyEngine(load_policy(DEMO_POLICY))


def json_mask(role: str, sql: str) -> JsonMask | None:
    decision = ENGINE.decide(DecisionRequest(role, analyze(sql, ("crm",))))
    (masks,) = decision.column_masks
    (mask,) = masks
    return mask.json


def masked_keys(role: str, sql: str) -> dict[str, str] | None:
    shape = json_mask(role, sql)
    return None if shape is None else {key.key: key.method.value for key in shape.masked}


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "SELECT row_to_json(c) FROM crm.customers c LIMIT 5",
            {"email": "partial", "phone": "partial", "iban": "partial"},
        ),
        (
            "SELECT to_jsonb(c.*) FROM crm.customers c JOIN crm.orders o ON o.customer_id = c.id"
            " LIMIT 5",
            {"email": "partial", "phone": "partial", "iban": "partial"},
        ),
        (
            "SELECT jsonb_build_object('k', id, 'e', email, 'x', email || '') FROM crm.customers"
            " LIMIT 5",
            {"e": "partial", "x": "redact"},  # computed: nothing of it is kept
        ),
        (
            "SELECT json_build_object('t', body) FROM crm.support_tickets LIMIT 5",
            {"t": "partial"},  # free text: the contact details it quotes, found in place
        ),
        (
            "SELECT row_to_json(s) FROM (SELECT id, lower(email) AS e FROM crm.customers) s"
            " LIMIT 5",
            {"e": "redact"},
        ),
        # Not known, so the whole value is masked: a bare name another table may have as a
        # column; a subquery's column named like it; a key twice; a computed key; VARIADIC.
        ("SELECT to_jsonb(c) FROM crm.customers c, crm.orders o LIMIT 5", None),
        ("SELECT to_jsonb(c) FROM (SELECT email AS c FROM crm.customers) c LIMIT 5", None),
        ("SELECT json_build_object('e', id, 'e', email) FROM crm.customers LIMIT 5", None),
        ("SELECT json_build_object(id::text, email) FROM crm.customers LIMIT 5", None),
        (
            "SELECT json_build_object(VARIADIC ARRAY['e', email]) FROM crm.customers LIMIT 5",
            None,
        ),
    ],
)
def test_the_keys_traced_and_their_methods(sql: str, expected: dict[str, str] | None) -> None:
    assert masked_keys("agent", sql) == expected


SHAPE = JsonMask(
    masked=(KeyMask("email", "email", MaskMethod.PARTIAL),),
    keys=("id", "email"),
    exact=True,
    aggregated=False,
)


def partial_email(value: str, key: KeyMask) -> str:
    return "***@" + value.partition("@")[2]


def test_the_personal_keys_are_masked_and_the_rest_kept_exactly() -> None:
    document = '{"id": 12345678901234567890.10, "email": "ann@example.org"}'
    assert masked_document(document, SHAPE, partial_email) == (
        '{"id": 12345678901234567890.10, "email": "***@example.org"}'
    )


@pytest.mark.parametrize(
    "document",
    [
        '"ann@example.org"',  # a string, not the object
        '{"id": 1}',  # a key missing
        '{"id": 1, "email": "a@b.c", "extra": "ann@example.org"}',  # a key too many
        '{"id": 1, "email": "a@b.c", "email": "ann@example.org"}',  # a key twice
        '[{"id": 1, "email": "ann@example.org"}]',  # an array, where one object was traced
        '{"id": NaN, "email": "ann@example.org"}',
        "not json",
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_a_document_that_is_not_the_traced_object_is_not_rewritten(document: str) -> None:
    assert masked_document(document, SHAPE, partial_email) is None


def test_an_aggregate_masks_each_object_and_keeps_nulls() -> None:
    shape = JsonMask(SHAPE.masked, SHAPE.keys, exact=True, aggregated=True)
    document = '[{"id": 1, "email": "ann@example.org"}, null, {"id": 2, "email": null}]'
    assert json.loads(masked_document(document, shape, partial_email) or "") == [
        {"id": 1, "email": "***@example.org"},
        None,
        {"id": 2, "email": None},
    ]


def test_a_personal_key_holding_no_string_becomes_null() -> None:
    document = '{"id": 1, "email": {"local": "ann", "domain": "example.org"}}'
    assert json.loads(masked_document(document, SHAPE, partial_email) or "") == {
        "id": 1,
        "email": None,
    }


def test_a_table_row_needs_its_catalogued_keys_and_keeps_the_others() -> None:
    shape = JsonMask(SHAPE.masked, ("email",), exact=False, aggregated=False)
    kept = '{"id": 1, "note": "x", "email": "ann@example.org"}'
    assert json.loads(masked_document(kept, shape, partial_email) or "") == {
        "id": 1,
        "note": "x",
        "email": "***@example.org",
    }
    assert masked_document('{"id": 1, "note": "ann@example.org"}', shape, partial_email) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=5), st.emails())
def test_masking_gives_valid_json_that_never_holds_the_masked_value(
    others: dict[str, object], email: str
) -> None:
    others.pop("email", None)
    document = json.dumps({**others, "email": email})
    shape = JsonMask(SHAPE.masked, ("email",), exact=False, aggregated=False)
    masked = masked_document(document, shape, lambda value, key: "[redacted]")
    assert masked is not None
    parsed = json.loads(masked)
    assert parsed == {**others, "email": "[redacted]"}


def test_the_keys_to_mask_travel_from_the_policy_lambda_unchanged() -> None:
    decision = ENGINE.decide(
        DecisionRequest("agent", analyze("SELECT row_to_json(c) FROM crm.customers c LIMIT 5"))
    )
    wired = json.loads(json.dumps(decision.as_dict()))
    assert DecisionPayload.model_validate(wired).to_decision().column_masks == (
        decision.column_masks
    )
