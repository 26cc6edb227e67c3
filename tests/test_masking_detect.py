"""Content detection: personal values quoted in free text, found and masked in place."""

from __future__ import annotations

import hashlib
import json
import random
import re
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from gateway_fixtures import GatewayProcess, gateway_login, psycopg_session, start_gateway
from pydantic import ValidationError

from custos.demo.embedded import GATEWAY_LOGIN
from custos.demo.postgres import PostgresServer
from custos.masking.detect import compiled_patterns, luhn_valid, mask_found
from custos.masking.values import REDACTED, Masker
from custos.policy.engine import DecisionRequest, PolicyEngine
from custos.policy.lambda_point import DecisionPayload
from custos.policy.models import MaskMethod, PolicyDocument
from custos.policy.patterns import MAX_PATTERN_CHARS, PolicyPattern, checked_pattern
from custos.policy.version import policy_version
from custos.sql.analysis import analyze

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


# --- IPv6 and MAC addresses ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "2001:db8::8a2e:370:7334",
        "2001:DB8::1",
        "fe80::1ff:fe23:4567:890a%eth0",
        "::ffff:192.0.2.128",
        "64:ff9b::198.51.100.7",
        "2a00:1450:4009:81f::200e",
    ],
)
def test_ipv6_addresses_are_found_in_their_forms(address: str) -> None:
    for text in (
        f"client {address} timed out",
        f"GET http://[{address}]:8080/ failed",
        f"route {address}/64.",
        f"({address})",
    ):
        result = mask_found(text, CONTACT, MaskMethod.PARTIAL, MASKER)
        assert result == (text.replace(address, REDACTED), 1)


@pytest.mark.parametrize(
    "address", ["00:1a:2b:3c:4d:5e", "00-1A-2B-3C-4D-5E", "001a.2b3c.4d5e", "a4:83:e7:0c:11:9f"]
)
def test_mac_addresses_are_found_as_device_identifiers(address: str) -> None:
    text = f"device {address} joined the network"
    found = mask_found(text, CONTACT, MaskMethod.PSEUDONYM, MASKER)
    assert found[1] == 1
    assert found[0] == text.replace(address, MASKER.pseudonym(address, "mac"))


@pytest.mark.parametrize(
    "text",
    [
        "meeting at 12:30:45 in room 4",
        "logged 2026-03-01T12:30:45.123Z and 23:59:59",
        "std::vector<std::string> names; boost::asio::ip::tcp",
        "Abc::Def::Ghi and Face::Bead",
        "xs[1::2], ys[::3], zs[10::20]",
        "loopback ::1 and unspecified :: and 0:0:0:0:0:0:0:1",
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "md5 d41d8cd98f00b204e9800998ecf8427e, git 4c8cd83",
        "id 123e4567-e89b-12d3-a456-426614174000",
        "nobody's MACs 00:00:00:00:00:00 and ff:ff:ff:ff:ff:ff",
        "ratio 1:2:3, score 3:1, dates 2026-03-01",
        "oid 1.3.6.1.4.1.311 and release 10.2.0.1.5",
        "IPv6 address 2001:db8::g1 is malformed, as is 1:2:3:4:5:6:7:8:9",
    ],
)
def test_what_only_looks_like_an_address_is_left(text: str) -> None:
    assert mask_found(text, CONTACT, MaskMethod.REDACT, MASKER) == (text, 0)


def test_an_ipv6_address_is_masked_whole_not_as_its_ipv4_end() -> None:
    text = "from ::ffff:10.1.2.3 via 10.1.2.4"
    assert mask_found(text, CONTACT, MaskMethod.REDACT, MASKER) == (
        f"from {REDACTED} via {REDACTED}",
        2,
    )


# --- the policy's own patterns ------------------------------------------------------------

EMPLOYEE = PolicyPattern("custom:employee_id", r"\bEMP-[0-9]{6}\b")


def test_policy_patterns_are_found_first_and_masked_by_the_method() -> None:
    patterns = compiled_patterns([EMPLOYEE])
    text = "escalated by EMP-004211 (EMP-12345 is no id) to aisha@example.com"
    masked_text, count = mask_found(text, CONTACT, MaskMethod.PARTIAL, MASKER, patterns)
    assert masked_text == "escalated by E*** (EMP-12345 is no id) to ***@example.com"
    assert count == 2
    # A pattern that also covers an email masks it as its own category: it comes first.
    login = compiled_patterns([PolicyPattern("custom:login", r"[a-z]+@example\.com")])
    assert mask_found("by aisha@example.com", CONTACT, MaskMethod.PSEUDONYM, MASKER, login)[
        0
    ] == "by " + MASKER.pseudonym("aisha@example.com", "custom:login")


@pytest.mark.parametrize(
    "pattern",
    [r"EMP-[0-9]{6}", r"\b[A-Z]{2}[0-9]{6}[A-D]\b", r"(?i)ticket-(?:-[0-9]{2}){3}", r"(?<=id )\d+"],
)
def test_plain_patterns_are_accepted(pattern: str) -> None:
    assert checked_pattern(pattern).pattern == pattern


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("", "empty"),
        ("x" * (MAX_PATTERN_CHARS + 1), "characters long"),
        ("EMP-[0-9", "not a regular expression"),
        ("(EMP-)?[0-9]*", "empty string"),
        (r"\b", "empty string"),
        ("a|", "empty string"),
        ("(a+)+$", "a repeat within a repeat"),
        (r"(?:\d{1,3}\.)+", "a repeat within a repeat"),
        (r"(\d|\d\d)+$", "within a repeat"),
        (r"(x|yz)+$", "alternatives"),
        (r"x(?=(?:ab*)*)", "a repeat within a repeat"),
    ],
)
def test_risky_patterns_are_refused_at_policy_load(pattern: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        checked_pattern(pattern)
    with pytest.raises(ValidationError, match=re.escape(says)):
        PolicyDocument.model_validate({"detect": {"custom:x": {"pattern": pattern}}})


def test_detect_keys_are_categories_other_than_free_text() -> None:
    for key, says in (("employee_id", "custom:<name>"), ("free_text", "not what it finds")):
        with pytest.raises(ValidationError, match=re.escape(says)):
            PolicyDocument.model_validate({"detect": {key: {"pattern": "EMP-[0-9]{6}"}}})
    document = PolicyDocument.model_validate({"detect": {"national_id": {"pattern": "AB[0-9]{6}"}}})
    assert document.detect["national_id"].pattern == "AB[0-9]{6}"
    # A policy without patterns keeps the version it had before patterns existed.
    before = json.dumps({"catalog": {}, "roles": [], "rules": [], "targets": []})
    assert (
        policy_version(PolicyDocument())
        == hashlib.sha256(before.replace(" ", "").encode()).hexdigest()
    )


NOTES_POLICY = """
roles:
  - {name: agent, trust: [{issuer: dev, subjects: ["agent-*"]}]}
  - {name: analyst, trust: [{issuer: dev, groups: [analysts]}]}
catalog:
  detect_test.notes:
    subject: customer_id
    columns: {body: free_text}
detect:
  custom:employee_id: {pattern: '\\bEMP-[0-9]{6}\\b'}
  custom:badge: {pattern: '\\bBDG[0-9]{4}\\b'}
rules:
  - id: agents-mask-staff-and-contacts
    match: {roles: [agent], reads: [custom:employee_id, email]}
    effect: mask
    mask: {categories: [custom:employee_id, email], method: partial}
  - id: analysts-mask-contacts
    match: {roles: [analyst], reads: [email]}
    effect: mask
    mask: {categories: [email], method: redact}
  - id: read-notes
    match: {roles: [agent, analyst], kinds: [select], relations: [detect_test.notes]}
    effect: allow
"""


def test_decisions_carry_the_patterns_of_the_categories_they_mask() -> None:
    engine = PolicyEngine(PolicyDocument.model_validate(yaml.safe_load(NOTES_POLICY)))
    analysis = analyze("SELECT id, body FROM detect_test.notes")
    agent = engine.decide(DecisionRequest("agent", analysis))
    analyst = engine.decide(DecisionRequest("analyst", analysis))
    assert agent.patterns == (PolicyPattern("custom:employee_id", r"\bEMP-[0-9]{6}\b"),)
    assert analyst.patterns == ()  # analysts may read employee ids
    assert [mask.category for mask in agent.column_masks[0]] == ["free_text"]
    # Over the Lambda decision point's wire, the patterns travel, checked again.
    assert DecisionPayload.model_validate(agent.as_dict()).to_decision() == agent
    wire = agent.as_dict()
    wire["patterns"] = [{"category": "custom:x", "pattern": "(a+)+"}]
    with pytest.raises(ValidationError, match="repeat within a repeat"):
        DecisionPayload.model_validate(wire)


def test_a_rule_on_a_pattern_category_alone_masks_free_text() -> None:
    policy = yaml.safe_load(NOTES_POLICY)
    policy["rules"][0]["match"]["reads"] = ["custom:badge"]
    policy["rules"][0]["mask"]["categories"] = ["custom:badge"]
    engine = PolicyEngine(PolicyDocument.model_validate(policy))
    decision = engine.decide(
        DecisionRequest("agent", analyze("SELECT body FROM detect_test.notes"))
    )
    assert decision.patterns == (PolicyPattern("custom:badge", r"\bBDG[0-9]{4}\b"),)
    assert [(m.category, m.method) for m in decision.column_masks[0]] == [
        ("free_text", MaskMethod.PARTIAL)
    ]


# --- false positives, measured ------------------------------------------------------------

ALL_PATTERNS = compiled_patterns([EMPLOYEE])


def changed(text: str) -> bool:
    return mask_found(text, CONTACT, MaskMethod.REDACT, MASKER, ALL_PATTERNS)[1] > 0


def test_false_positives_on_the_demos_non_personal_columns(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as connection:
        orders = connection.execute(
            "SELECT concat_ws(' ', 'order', id, 'of', customer_id, 'on', ordered_at,"
            " total_cents, currency, status) FROM crm.orders"
        ).fetchall()
        products = connection.execute(
            "SELECT concat_ws(' ', id, name, price_cents) FROM crm.products"
        ).fetchall()
    rows = [text for (text,) in orders + products]
    false = [text for text in rows if changed(text)]
    print(f"\nfalse positives: {len(false)} of {len(rows)} order and product rows")
    assert len(rows) > 20000
    assert not false, false[:5]


def generated_lines(rng: random.Random) -> Iterator[tuple[str, str]]:
    """Text without personal data, by kind: what orders, logs and code hold."""
    hex_digits = "0123456789abcdef"
    while True:
        n = rng.randint
        hex_run = "".join(rng.choice(hex_digits) for _ in range(rng.choice((7, 32, 40, 64))))
        yield from [
            ("order", f"Order {n(1000, 9999999)} shipped on 2026-{n(1, 12):02d}-{n(1, 28):02d}"),
            ("price", f"Total {n(1, 99999)}.{n(0, 99):02d} EUR incl. {n(0, 25)}% VAT"),
            ("time", f"Picked at {n(0, 23):02d}:{n(0, 59):02d}:{n(0, 59):02d} by shift {n(1, 3)}"),
            ("sku", f"SKU-{n(100, 999)}-{n(1000, 9999)}-{rng.choice('ABCXYZ')} x{n(1, 50)}"),
            ("uuid", f"request {uuid.UUID(int=rng.getrandbits(128), version=4)} done"),
            ("hash", f"commit {hex_run} merged"),
            ("version", f"upgraded to {n(0, 30)}.{n(0, 20)}.{n(0, 40)}"),
            ("four-part version", f"build {n(1, 20)}.{n(0, 9)}.{n(0, 99)}.{n(0, 255)} released"),
            ("code", f"for (auto& x : std::vector<int>{{{n(1, 9)}, {n(1, 9)}}}) a[{n(1, 9)}::2];"),
            (
                "log",
                f"2026-03-{n(1, 28):02d}T{n(0, 23):02d}:{n(0, 59):02d}:{n(0, 59):02d}"
                f".{n(0, 999):03d}Z"
                f" INFO GET /api/v{n(1, 3)}/orders/{n(1, 99999)} {rng.choice((200, 404, 500))}"
                f" {n(1, 999)}ms",
            ),
        ]


def test_false_positives_on_generated_non_personal_text() -> None:
    rng = random.Random(2026)
    lines = generated_lines(rng)
    corpus = [next(lines) for _ in range(5000)]
    false: dict[str, int] = {}
    counts: dict[str, int] = {}
    for kind, text in corpus:
        counts[kind] = counts.get(kind, 0) + 1
        if changed(text):
            false[kind] = false.get(kind, 0) + 1
    total = sum(false.values())
    print(f"\nfalse positives: {total} of {len(corpus)} lines; by kind: {false}")
    # A four-part version is an IPv4 address as far as text shows: masked, by decision.
    assert false.pop("four-part version", 0) == counts["four-part version"]
    # Everything else: at most 0.2% of its lines.
    for kind, count in false.items():
        assert count / counts[kind] <= 0.002, (kind, count)


# --- end to end: a policy pattern through the gateway -------------------------------------

NOTE = (
    "Badge BDG0042 lost; EMP-004211 called from 2001:db8:85a3::8a2e:370:7334 "
    "(laptop 00:1a:2b:3c:4d:5e), reply to aisha.wilson1084@example.com"
)
RAW = ("EMP-004211", "2001:db8:85a3::8a2e:370:7334", "00:1a:2b:3c:4d:5e", "aisha.wilson1084")


@pytest.fixture(scope="module")
def notes_gateway(
    pg: PostgresServer, pg_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    upstream = gateway_login(pg)  # the gateway's login exists from here on
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute("DROP SCHEMA IF EXISTS detect_test CASCADE")
        connection.execute("CREATE SCHEMA detect_test")
        connection.execute(
            "CREATE TABLE detect_test.notes (id int PRIMARY KEY, customer_id int, body text)"
        )
        connection.execute("INSERT INTO detect_test.notes VALUES (1, 7, %s)", [NOTE])
        connection.execute(f"GRANT USAGE ON SCHEMA detect_test TO {GATEWAY_LOGIN}")
        connection.execute(f"GRANT SELECT ON detect_test.notes TO {GATEWAY_LOGIN}")
    directory = tmp_path_factory.mktemp("detect")
    policy = Path(directory / "policy.yaml")
    policy.write_text(textwrap.dedent(NOTES_POLICY))
    running = start_gateway(
        directory / "gateway",
        pg,
        upstream_dsn=upstream,
        extra_config={"roles": [], "policy": {"file": str(policy), "poll_seconds": 0.2}},
    )
    yield running
    running.stop()
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute("DROP SCHEMA detect_test CASCADE")


def test_the_policys_pattern_masks_free_text_through_the_gateway(
    notes_gateway: GatewayProcess,
) -> None:
    with psycopg_session(notes_gateway, "agent", "agent-detect") as agent:
        (agent_body,) = agent.execute("SELECT body FROM detect_test.notes").fetchone()
        binary = agent.cursor(binary=True).execute("SELECT body FROM detect_test.notes")
        (binary_body,) = binary.fetchone()
    with psycopg_session(notes_gateway, "analyst", "analyst-detect") as analyst:
        (analyst_body,) = analyst.execute("SELECT body FROM detect_test.notes").fetchone()
    assert (
        agent_body
        == binary_body
        == (
            "Badge BDG0042 lost; E*** called from [redacted] (laptop 0***), "
            "reply to ***@example.com"
        )
    )
    assert not [raw for raw in RAW if raw in agent_body]
    # The analyst's rule masks email only: employee ids are theirs to read; network
    # addresses are masked wherever contact details are.
    assert analyst_body == (
        "Badge BDG0042 lost; EMP-004211 called from [redacted] (laptop [redacted]), "
        "reply to [redacted]"
    )
