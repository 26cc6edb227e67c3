"""The audit events, a versioned schema whose field names auditors' queries rely on.

One event per session start and end, authentication failure, statement, approval
requested and decided, and policy version loaded. No field holds raw personal data: a
statement's text has every literal and parameter replaced by a placeholder, and the
values the data-subject index needs are kept elsewhere, as keyed pseudonyms. Each event
carries the hash of the one before it in its session (`prev_hash`) and its own (`hash`,
see chain.py), so a changed, removed, reordered or inserted event shows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
"""Raised when a field's meaning changes; readers accept the versions they know."""

HASH_HEX_CHARS = 64  # SHA-256


class EventType(StrEnum):
    SESSION_START = "session_start"
    SESSION_END = "session_end"
    AUTHENTICATION_FAILURE = "authentication_failure"
    STATEMENT = "statement"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_DECIDED = "approval_decided"
    POLICY_LOADED = "policy_loaded"


class _Record(BaseModel):
    # A store holding an event this version does not describe fails closed.
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaskedColumnRecord(_Record):
    """One result column a statement's masking rewrote: where, what, how, how many."""

    statement_index: int = Field(ge=0)
    position: int = Field(ge=-1)  # -1: values past the columns the result described
    category: str
    method: str
    values: int = Field(ge=0)
    nulled: int = Field(ge=0)  # of them, values that became NULL for want of a form


class AuditEvent(_Record):
    """One event, as stored. `hash` is SHA-256 of the canonical form of every other field
    (chain.py); `prev_hash` is the hash of the session's event before it."""

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(min_length=1)
    event_type: EventType
    time: datetime
    session_id: str = Field(min_length=1)
    seq: int = Field(ge=0)
    role: str | None = None
    subject: str | None = None
    issuer: str | None = None
    groups: tuple[str, ...] = ()
    client_addr: str | None = None
    application_name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    target: str | None = None
    statement: str | None = None  # literals and parameters replaced by placeholders
    kinds: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    decision: str | None = None
    rules: tuple[str, ...] = ()
    deciding_rule: str | None = None
    policy_version: str | None = None
    masked: tuple[MaskedColumnRecord, ...] = ()
    approval_id: str | None = None
    sqlstate: str | None = None
    rows: int | None = Field(default=None, ge=0)
    bytes: int | None = Field(default=None, ge=0)
    duration_ms: float | None = Field(default=None, ge=0)
    prev_hash: str = Field(min_length=HASH_HEX_CHARS, max_length=HASH_HEX_CHARS)
    hash: str = Field(min_length=HASH_HEX_CHARS, max_length=HASH_HEX_CHARS)

    @field_validator("time")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("an event's time must carry its time zone")
        return value.astimezone(UTC)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"audit events of schema version {value} are not ones this gateway reads"
                f" (it reads version {SCHEMA_VERSION}); use a gateway of that version"
            )
        return value
