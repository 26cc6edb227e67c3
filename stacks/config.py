"""The deployment's configuration: cdk.json context under ``custos``, validated at synth.

A bad value stops the synth with a message naming the key and what to set, so a deploy never
starts from a half-understood configuration.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

import aws_cdk
from constructs import Construct
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from custos.approvals.aws import EmailApprover

CONTEXT_KEY = "custos"
SKIP_BUNDLING_KEY = "custos:skip_bundling"


class ContextError(ValueError):
    """The ``custos`` context is missing or invalid; the message says which key and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetConfig(_Strict):
    """An upstream database the gateway serves."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    host: str = Field(min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = Field(min_length=1)
    # An existing Secrets Manager secret in the RDS shape; None -> the stack creates one.
    secret_name: str | None = None


class IssuerContext(_Strict):
    issuer: str = Field(pattern=r"^https://\S+$")
    audiences: list[str] = Field(min_length=1)


class GatewaySizing(_Strict):
    cpu: int = 512
    memory_mib: int = Field(default=1024, ge=512)
    desired_count: int = Field(default=2, ge=1)
    min_capacity: int = Field(default=2, ge=1)
    max_capacity: int = Field(default=6, ge=1)
    port: int = Field(default=5432, ge=1, le=65535)
    connections_per_task_target: int = Field(default=500, ge=1)

    @field_validator("cpu")
    @classmethod
    def _fargate_cpu(cls, value: int) -> int:
        allowed = (256, 512, 1024, 2048, 4096, 8192, 16384)
        if value not in allowed:
            raise ValueError(f"Fargate cpu must be one of {allowed}")
        return value

    @model_validator(mode="after")
    def _capacity_order(self) -> GatewaySizing:
        if not self.min_capacity <= self.desired_count <= self.max_capacity:
            raise ValueError(
                "need min_capacity <= desired_count <= max_capacity; got "
                f"{self.min_capacity} <= {self.desired_count} <= {self.max_capacity}"
            )
        return self


class ApprovalsContext(_Strict):
    """Just-in-time approvals (the Custos-Approvals stack): who decides, by the approver
    group a policy rule names. Each approver gets their own email subscription, filtered
    to the messages addressed to them; their `id` is who they are on links, votes and the
    audit trail (their subject at the organisation's IdP, where they have one)."""

    approvers: dict[str, list[EmailApprover]] = Field(min_length=1)
    # How long the Approve and Deny buttons of a request opened from its email stay valid.
    decide_minutes: int = Field(default=10, ge=1, le=60)
    # The approvals API's steady requests per second and bursts: people clicking links.
    api_rate_limit: int = Field(default=10, ge=1)
    api_burst_limit: int = Field(default=20, ge=1)

    @field_validator("approvers")
    @classmethod
    def _one_person_one_address(
        cls, groups: dict[str, list[EmailApprover]]
    ) -> dict[str, list[EmailApprover]]:
        emails: dict[str, str] = {}
        ids: dict[str, str] = {}
        for group, members in groups.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", group):
                raise ValueError(f"the group name {group!r} is not a policy group name")
            if not members:
                raise ValueError(
                    f"group {group} lists no approver; list at least one, or remove the group"
                )
            for member in members:
                # One subscription per approver: an id with two addresses, or one address
                # for two ids, would leave someone's mail to another.
                if emails.setdefault(member.id, member.email) != member.email:
                    raise ValueError(f"approver {member.id} has two email addresses; give one")
                if ids.setdefault(member.email.lower(), member.id) != member.id:
                    raise ValueError(
                        f"approvers {ids[member.email.lower()]} and {member.id} share an email"
                        " address; each approver needs their own"
                    )
        return groups

    @property
    def everyone(self) -> list[EmailApprover]:
        """Each approver once, in the order first listed."""
        seen: dict[str, EmailApprover] = {}
        for members in self.approvers.values():
            for member in members:
                seen.setdefault(member.id, member)
        return list(seen.values())


class CustosContext(_Strict):
    account: str
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    availability_zones: list[str]
    targets: list[TargetConfig] = Field(min_length=1)
    oidc_issuers: list[IssuerContext] = Field(min_length=1)
    # Years of evidence: the audit bucket's Object Lock (COMPLIANCE) retention, in days.
    audit_retention_days: int = Field(ge=1)
    # The hot tier: days an event stays in the DynamoDB table (TTL on expires_at).
    events_ttl_days: int = Field(default=30, ge=1)
    # How often the digest Lambda runs; each digest covers an hour, so at least hourly.
    audit_digest_minutes: int = 60
    # The first day of the archive: Athena's partition projection ranges from it to now.
    audit_archive_start: date = date(2025, 1, 1)
    gateway: GatewaySizing = GatewaySizing()
    alarm_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    # Without it, statements a rule holds for approval are refused (no approvals stack).
    approvals: ApprovalsContext | None = None

    @field_validator("account")
    @classmethod
    def _twelve_digits(cls, value: str) -> str:
        if not re.fullmatch(r"\d{12}", value):
            raise ValueError("an AWS account id is exactly 12 digits, as a string")
        return value

    @field_validator("audit_digest_minutes")
    @classmethod
    def _at_least_hourly(cls, value: int) -> int:
        if not 1 <= value <= 60:
            raise ValueError(
                f"got {value}; each digest covers an hour, so the digest schedule runs at "
                "least hourly: set audit_digest_minutes between 1 and 60"
            )
        return value

    @model_validator(mode="after")
    def _retention_in_order(self) -> CustosContext:
        if self.events_ttl_days > self.audit_retention_days:
            raise ValueError(
                f"events_ttl_days ({self.events_ttl_days}) exceeds audit_retention_days "
                f"({self.audit_retention_days}): the hot tier would outlive the locked archive; "
                "lower events_ttl_days or raise audit_retention_days"
            )
        if self.audit_archive_start > date.today():
            raise ValueError(
                f"audit_archive_start {self.audit_archive_start} is in the future; set the "
                "first day the archive holds events (YYYY-MM-DD), or omit it"
            )
        return self

    @model_validator(mode="after")
    def _zones_in_region(self) -> CustosContext:
        zones = self.availability_zones
        if len(zones) != 2 or len(set(zones)) != 2:
            raise ValueError(
                f"availability_zones must list exactly 2 distinct zones; got {len(zones)}"
            )
        stray = [
            zone for zone in zones if not re.fullmatch(re.escape(self.region) + r"[a-z]", zone)
        ]
        if stray:
            raise ValueError(f"availability_zones {stray} are not zones of region {self.region}")
        names = [target.name for target in self.targets]
        if len(set(names)) != len(names):
            raise ValueError("targets: each target needs a distinct name")
        return self


def parse_context(raw: Any) -> CustosContext:
    """Validate the raw ``custos`` context value; raise ContextError naming what to fix."""
    if raw is None:
        raise ContextError(
            f'cdk.json has no "{CONTEXT_KEY}" context; add "context": {{"{CONTEXT_KEY}": '
            "{...}} (see the example in cdk.json) or pass -c custos='{...}'"
        )
    if isinstance(raw, str):
        # `cdk synth -c custos='{...}'` hands the value over as a string.
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ContextError(
                f'the "{CONTEXT_KEY}" context is not valid JSON: {exc.msg}'
            ) from None
    if not isinstance(raw, dict):
        raise ContextError(
            f'the "{CONTEXT_KEY}" context must be an object, not {type(raw).__name__}'
        )
    try:
        return CustosContext.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            location = ".".join(str(part) for part in error["loc"]) or "(top level)"
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown key; remove it or check its spelling"
            problems.append(f"  {CONTEXT_KEY}.{location}: {message}")
        raise ContextError(
            f'invalid "{CONTEXT_KEY}" context in cdk.json:\n' + "\n".join(problems)
        ) from None


def load_context(app: aws_cdk.App) -> CustosContext:
    """The validated ``custos`` context of ``app``."""
    return parse_context(app.node.try_get_context(CONTEXT_KEY))


def skip_bundling(scope: Construct) -> bool:
    """Whether the Lambda asset is the bare source (tests, quick synths) instead of bundled."""
    value = scope.node.try_get_context(SKIP_BUNDLING_KEY)
    return value is True or value == "true"
