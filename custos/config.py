"""The gateway's configuration: a YAML file validated by pydantic models."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from custos.approvals.settings import ApprovalSettings
from custos.audit.settings import AuditSettings
from custos.identity.models import IssuerConfig, RoleConfig
from custos.masking.keys import MaskingSettings
from custos.upstream.settings import UpstreamSettings


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


class TlsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_file: Path
    key_file: Path


class LimitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_message_bytes: int = Field(default=64 << 20, ge=1 << 10)
    max_connections: int = Field(default=1000, ge=1)
    # Sessions one identity (issuer and subject) may hold at once, and one role (None: no
    # limit of its own): a single agent token must not take every slot of the database.
    max_sessions_per_subject: int = Field(default=20, ge=1)
    max_sessions_per_role: int | None = Field(default=None, ge=1)
    # Database connection slots the gateway leaves free (beyond the superusers' reserved
    # ones) so that an administrator can still log in directly.
    database_reserved_connections: int = Field(default=3, ge=0)
    # A text longer than this is refused before it is parsed, and an analysis past the
    # budget. Long or slow analyses run in this many worker processes, off the event loop
    # every session shares (0: all on the loop, where each holds every other session).
    max_statement_chars: int = Field(default=256 << 10, ge=1 << 10)
    analysis_budget_seconds: float = Field(default=0.2, gt=0)
    analysis_processes: int = Field(default=1, ge=0)
    # What one session's prepared statements may hold in the gateway's memory (an estimate
    # of their analyses); a Parse or PREPARE past it is refused with 54000.
    max_prepared_bytes_per_session: int = Field(default=16 << 20, ge=1 << 20)
    startup_timeout_seconds: float = Field(default=30.0, gt=0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    write_buffer_high_bytes: int = Field(default=256 << 10, ge=1 << 12)


class PolicySettings(BaseModel):
    """Where the policy comes from, and who evaluates it."""

    model_config = ConfigDict(extra="forbid")

    file: Path | None = None
    s3_bucket: str | None = None
    s3_key: str | None = None
    poll_seconds: float | None = Field(default=None, gt=0)
    decision_point: Literal["in_process", "lambda"] = "in_process"
    lambda_function: str | None = None
    # How long the columns read from the database (to name them in refusal hints) stay fresh;
    # a schema change through the gateway forgets them at once.
    column_cache_seconds: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> PolicySettings:
        if (self.file is None) == (self.s3_bucket is None):
            raise ValueError("set exactly one policy source: file, or s3_bucket with s3_key")
        if self.s3_bucket is not None and not self.s3_key:
            raise ValueError("s3_bucket needs s3_key: the policy object's key")
        if self.decision_point == "lambda" and not self.lambda_function:
            raise ValueError("decision_point lambda needs lambda_function: its name or ARN")
        return self


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: str = "127.0.0.1:6432"
    upstream: UpstreamSettings | None = None
    tls: TlsSettings | None = None
    allow_loopback_cleartext: bool = False
    issuers: list[IssuerConfig] = Field(default_factory=list)
    roles: list[RoleConfig] = Field(default_factory=list)
    dev_issuer_dir: Path | None = None
    policy: PolicySettings | None = None
    masking: MaskingSettings = Field(default_factory=MaskingSettings)
    audit: AuditSettings | None = None
    approvals: ApprovalSettings | None = None
    limits: LimitSettings = Field(default_factory=LimitSettings)

    @field_validator("listen")
    @classmethod
    def _valid_listen_address(cls, value: str) -> str:
        parse_listen_address(value)
        return value

    @property
    def listen_host(self) -> str:
        return parse_listen_address(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return parse_listen_address(self.listen)[1]


def parse_listen_address(value: str) -> tuple[str, int]:
    """Splits HOST:PORT (or [IPv6]:PORT) and checks both parts."""
    host, separator, port_text = value.rpartition(":")
    if not separator or not host:
        raise ValueError(f"listen address {value!r} must be HOST:PORT, e.g. 127.0.0.1:6432")
    host = host.removeprefix("[").removesuffix("]")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen port {port_text!r} must be a number from 0 to 65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> GatewayConfig:
    """Reads the YAML file (if any), applies command-line overrides, validates."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}  # `--audit DIR` keeps the file's audit key
        elif value is not None:
            data[key] = value
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as error:
        source = str(path) if path else "the command line"
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(top level)'}: {item['msg']}"
            for item in error.errors()
        )
        raise ConfigError(f"invalid configuration in {source}: {problems}") from None
