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
    STATEMENT = "statement"  # durable before the statement goes upstream
    STATEMENT_OUTCOME = "statement_outcome"  # how it ended: status, rows, bytes, masking
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_DECIDED = "approval_decided"
    POLICY_LOADED = "policy_loaded"


def in_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("an audit record's time must carry its time zone")
    return value.astimezone(UTC)


class _Record(BaseModel):
    # A store holding a record this version does not describe fails closed.
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("schema_version", check_fields=False)
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"audit records of schema version {value} are not ones this gateway reads"
                f" (it reads version {SCHEMA_VERSION}); use a gateway of that version"
            )
        return value


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
    purpose: str | None = None  # the role's purpose of processing, as the policy states it
    statement_number: int | None = Field(default=None, ge=1)  # in the session, from 1
    statement: str | None = None  # literals and parameters replaced by placeholders
    # With `keep_literals`, for a statement that touches no catalogued table: its literals,
    # in the order of the statement's `?` (personal values found in them redacted).
    literals: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    decision: str | None = None
    rules: tuple[str, ...] = ()
    deciding_rule: str | None = None
    policy_version: str | None = None
    masked: tuple[MaskedColumnRecord, ...] = ()
    approval_id: str | None = None
    status: str | None = None  # completed, suspended, failed, refused, withdrawn, skipped
    sqlstate: str | None = None
    error: str | None = None  # the gateway's own message (never the database's: it may quote)
    rows: int | None = Field(default=None, ge=0)
    bytes: int | None = Field(default=None, ge=0)
    duration_ms: float | None = Field(default=None, ge=0)
    # The data-subject index (SubjectAccess rows beside the event): how many rows, whether
    # the cap per statement was reached, and the personal tables read without anything
    # identifying whom was read.
    subjects: int = Field(default=0, ge=0)
    subjects_capped: bool = False
    unidentified: tuple[str, ...] = ()
    prev_hash: str = Field(min_length=HASH_HEX_CHARS, max_length=HASH_HEX_CHARS)
    hash: str = Field(min_length=HASH_HEX_CHARS, max_length=HASH_HEX_CHARS)

    @field_validator("time")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return in_utc(value)


class IdentifierType(StrEnum):
    SUBJECT = "subject"  # a catalogued table's subject key: `crm.customers:42`
    EMAIL = "email"
    PHONE = "phone"
    IBAN = "iban"
    NATIONAL_ID = "national_id"


class Access(StrEnum):
    RETURNED = "returned"  # in the statement's result (masked or clear, see `masked`)
    NAMED = "named"  # in its predicates, values written, or bind parameters


class SubjectAccess(_Record):
    """One data subject a statement touched, by the keyed pseudonym of an identifier: a row
    of the data-subject index, stored beside the statement's outcome event (`event_id`)."""

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    statement_number: int = Field(ge=1)
    time: datetime
    role: str | None = None
    principal: str | None = None  # the token's subject: who accessed
    identifier_type: IdentifierType
    pseudonym: str = Field(min_length=HASH_HEX_CHARS, max_length=HASH_HEX_CHARS)
    relation: str | None = None  # the table the identifier's column belongs to
    columns: tuple[str, ...] = ()  # the result's columns of that table (for `returned`)
    access: Access
    masked: bool = False  # whether the columns came back masked

    @field_validator("time")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return in_utc(value)
