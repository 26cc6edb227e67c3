"""The ``custos`` context: every bad value stops the synth naming the key and the fix."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App
from cdk_fixtures import TEST_CONTEXT, context_with

from stacks.config import (
    ContextError,
    CustosContext,
    GatewaySizing,
    load_context,
    parse_context,
    skip_bundling,
)

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"


def _error(raw: Any) -> str:
    with pytest.raises(ContextError) as caught:
        parse_context(raw)
    return str(caught.value)


def test_the_test_context_is_valid() -> None:
    context = parse_context(TEST_CONTEXT)
    assert context.account == "111122223333"
    assert context.gateway == GatewaySizing()
    assert context.targets[0].port == 5432
    assert context.targets[0].secret_name is None
    assert context.events_ttl_days == 45


def test_cdk_json_example_is_valid_and_pins_its_zones() -> None:
    cdk_json = json.loads(CDK_JSON.read_text())
    assert cdk_json["app"] == "python3 app.py"
    context = parse_context(cdk_json["context"]["custos"])
    zones_key = f"availability-zones:account={context.account}:region={context.region}"
    assert cdk_json["context"][zones_key] == context.availability_zones


def test_missing_custos_key_says_where_to_add_it() -> None:
    app = App(context={"custos:skip_bundling": True})
    with pytest.raises(ContextError, match=r'no "custos" context.*cdk\.json'):
        load_context(app)


def test_load_context_reads_the_app_context() -> None:
    app = App(context={"custos": TEST_CONTEXT})
    assert isinstance(load_context(app), CustosContext)


def test_context_from_the_command_line_arrives_as_json_text() -> None:
    assert parse_context(json.dumps(TEST_CONTEXT)).region == "eu-central-1"
    assert "not valid JSON" in _error("{not json")


def test_context_must_be_an_object() -> None:
    assert "must be an object" in _error(["account"])


@pytest.mark.parametrize("account", ["12345678901", "1234567890123", "abcdefghijkl", "", 123])
def test_bad_account_is_named(account: object) -> None:
    message = _error(context_with(account=account))
    assert "custos.account" in message
    assert "12 digits" in message or "string" in message


@pytest.mark.parametrize(
    "zones",
    [["eu-central-1a"], ["eu-central-1a", "eu-central-1b", "eu-central-1c"], []],
)
def test_wrong_number_of_zones_is_named(zones: list[str]) -> None:
    message = _error(context_with(availability_zones=zones))
    assert "exactly 2 distinct zones" in message
    assert f"got {len(zones)}" in message


def test_repeated_zone_is_refused() -> None:
    assert "exactly 2 distinct" in _error(
        context_with(availability_zones=["eu-central-1a", "eu-central-1a"])
    )


def test_zone_outside_the_region_is_named() -> None:
    message = _error(context_with(availability_zones=["eu-central-1a", "eu-west-1b"]))
    assert "['eu-west-1b']" in message
    assert "eu-central-1" in message


def test_empty_targets_are_refused() -> None:
    message = _error(context_with(targets=[]))
    assert "custos.targets" in message
    assert "at least 1" in message


def test_missing_target_field_is_named() -> None:
    message = _error(context_with(targets=[{"name": "crm", "host": "db"}]))
    assert "custos.targets.0.dbname" in message


def test_duplicate_target_names_are_refused() -> None:
    target = {"name": "crm", "host": "db", "dbname": "crm"}
    assert "distinct name" in _error(context_with(targets=[target, target]))


def test_empty_issuers_are_refused() -> None:
    assert "custos.oidc_issuers" in _error(context_with(oidc_issuers=[]))


def test_issuer_must_be_https() -> None:
    message = _error(context_with(oidc_issuers=[{"issuer": "http://x", "audiences": ["a"]}]))
    assert "custos.oidc_issuers.0.issuer" in message


@pytest.mark.parametrize("days", [0, -1])
def test_retention_below_one_day_is_refused(days: int) -> None:
    message = _error(context_with(audit_retention_days=days))
    assert "custos.audit_retention_days" in message
    assert "greater than or equal to 1" in message


def test_missing_retention_is_named() -> None:
    raw = context_with()
    del raw["audit_retention_days"]
    assert "custos.audit_retention_days: Field required" in _error(raw)


def test_unknown_top_level_key_is_named() -> None:
    message = _error(context_with(retention_days=30))
    assert "custos.retention_days: unknown key" in message


def test_unknown_nested_key_is_named() -> None:
    message = _error(context_with(gateway={"cpus": 512}))
    assert "custos.gateway.cpus: unknown key" in message


def test_bad_fargate_cpu_is_refused() -> None:
    assert "Fargate cpu must be one of" in _error(context_with(gateway={"cpu": 300}))


def test_capacity_out_of_order_is_refused() -> None:
    message = _error(context_with(gateway={"min_capacity": 3, "desired_count": 2}))
    assert "min_capacity <= desired_count <= max_capacity" in message


def test_bad_region_and_email_are_named() -> None:
    assert "custos.region" in _error(context_with(region="Europe"))
    assert "custos.alarm_email" in _error(context_with(alarm_email="not-an-address"))


def test_every_problem_is_listed_at_once() -> None:
    message = _error(context_with(account="1", targets=[], audit_retention_days=0))
    assert all(
        key in message
        for key in ("custos.account", "custos.targets", "custos.audit_retention_days")
    )


def test_skip_bundling_flag() -> None:
    assert skip_bundling(App(context={"custos:skip_bundling": True}))
    assert skip_bundling(App(context={"custos:skip_bundling": "true"}))
    assert not skip_bundling(App(context={"custos:skip_bundling": False}))
    assert not skip_bundling(App())


def test_audit_defaults_are_an_hourly_digest_and_a_past_archive_start() -> None:
    context = parse_context(TEST_CONTEXT)
    assert context.audit_digest_minutes == 60
    assert context.audit_archive_start == date(2025, 1, 1)


@pytest.mark.parametrize("minutes", [0, 61, 1440])
def test_digest_schedule_must_run_at_least_hourly(minutes: int) -> None:
    message = _error(context_with(audit_digest_minutes=minutes))
    assert "custos.audit_digest_minutes" in message
    assert "between 1 and 60" in message


def test_hot_tier_may_not_outlive_the_locked_archive() -> None:
    message = _error(context_with(events_ttl_days=500, audit_retention_days=400))
    assert "events_ttl_days (500) exceeds audit_retention_days (400)" in message
    parse_context(context_with(events_ttl_days=400, audit_retention_days=400))


def test_archive_start_in_the_future_is_refused() -> None:
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    message = _error(context_with(audit_archive_start=tomorrow))
    assert f"audit_archive_start {tomorrow} is in the future" in message


def test_archive_start_must_be_a_date() -> None:
    assert "custos.audit_archive_start" in _error(context_with(audit_archive_start="January"))
