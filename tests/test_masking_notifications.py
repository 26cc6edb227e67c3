"""Notification payloads masked for roles that see personal data masked: the masker alone
(bodies in, bodies out), the decisions that carry the role's masks, and end to end through
a gateway whose policy lets agents and analysts LISTEN."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from gateway_fixtures import GatewayProcess, psycopg_session, start_gateway
from test_policy_commands import DEMO_POLICY

from custos.demo.postgres import PostgresServer
from custos.masking.notifications import NotificationMasker
from custos.masking.values import Masker
from custos.policy.engine import DecisionRequest, MaskSpec, PolicyEngine
from custos.policy.lambda_point import DecisionPayload
from custos.policy.models import MaskMethod
from custos.policy.source import load_policy
from custos.protocol.errors import ProtocolViolation
from custos.sql.analysis import analyze

ENGINE = PolicyEngine(load_policy(DEMO_POLICY))
CONTACT = MaskSpec("contact", frozenset({"email", "phone", "iban"}), MaskMethod.PARTIAL)
NAMES = MaskSpec("names", frozenset({"name", "email"}), MaskMethod.PSEUDONYM)
PAYLOAD = "order 42 for theo.begum1@example.org, call +44 7700 900123"


def body(payload: str, channel: str = "orders") -> bytes:
    return (1234).to_bytes(4, "big") + channel.encode() + b"\x00" + payload.encode() + b"\x00"


def test_contact_details_are_masked_in_place_and_the_rest_kept() -> None:
    masker = NotificationMasker((CONTACT,), None)
    assert masker.masked(body(PAYLOAD)) == body(
        "order 42 for ***@example.org, call +44 **** ******"
    )


def test_a_payload_is_redacted_whole_where_a_masked_category_cannot_be_found() -> None:
    # A name has no form detection could find: nothing in the text shows what is one.
    masker = NotificationMasker((CONTACT, NAMES), Masker(secrets.token_bytes(32)))
    assert masker.masked(body("Theo Begum moved", "customers")) == body("[redacted]", "customers")


@pytest.mark.parametrize(
    "malformed",
    [b"\x00\x00\x04\xd2orders", b"\x00\x00\x04\xd2orders\x00payload", body("a") + b"more"],
)
def test_a_malformed_notification_is_refused(malformed: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        NotificationMasker((CONTACT,), None).masked(malformed)


@pytest.mark.parametrize(("role", "masked"), [("agent", True), ("analyst", True), ("dba", False)])
def test_a_listen_decision_carries_the_roles_masks(role: str, masked: bool) -> None:
    decision = ENGINE.decide(DecisionRequest(role, analyze("LISTEN orders")))
    assert bool(decision.notification_masks) is masked
    wired = DecisionPayload.model_validate(decision.as_dict()).to_decision()
    assert wired.notification_masks == decision.notification_masks


# --- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listening(
    pg: PostgresServer, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("notifications")
    policy = yaml.safe_load(DEMO_POLICY.read_text())
    policy["rules"].insert(
        0,
        {
            "id": "listen-to-orders",
            "match": {
                "roles": ["agent", "analyst"],
                "kinds": ["other"],
                "statement_types": ["ListenStmt", "UnlistenStmt"],
            },
            "effect": "allow",
        },
    )
    path = Path(directory / "policy.yaml")
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    running = start_gateway(
        directory / "gateway",
        pg,
        upstream_dsn=gateway.upstream_dsn,
        extra_config={"roles": [], "policy": {"file": str(path), "poll_seconds": 0.2}},
    )
    yield running
    running.stop()


def received(listening: GatewayProcess, role: str, pg_dsn: str, payload: str) -> str:
    with psycopg_session(listening, role, f"{role}-listener") as listener:
        listener.execute("LISTEN orders")
        with psycopg.connect(pg_dsn, dbname="custos_demo", autocommit=True) as sender:
            sender.execute("SELECT pg_notify('orders', %s)", [payload])
        for notify in listener.notifies(timeout=10):
            return notify.payload
    raise AssertionError("no notification arrived within 10 seconds")


def test_the_agent_hears_notifications_with_contact_details_masked(
    listening: GatewayProcess, pg_dsn: str
) -> None:
    assert received(listening, "agent", pg_dsn, PAYLOAD) == (
        "order 42 for ***@example.org, call +44 **** ******"
    )


def test_the_analyst_hears_notifications_redacted_whole(
    listening: GatewayProcess, pg_dsn: str
) -> None:
    # The analyst's rule masks names too, which no detection finds.
    assert received(listening, "analyst", pg_dsn, "Theo Begum, " + PAYLOAD) == "[redacted]"
