"""The policy document: who may run what on which data, as validated pydantic models.

The document is read at the edge (file, S3 object, CLI) and compiled once into the
engine's plain structures; nothing here runs per statement.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from custos.identity.durations import parse_duration
from custos.identity.models import RoleConfig
from custos.policy.patterns import checked_pattern
from custos.sql.facts import StatementKind

CATEGORIES = frozenset(
    {"email", "name", "phone", "iban", "national_id", "birth_date", "address", "free_text"}
)
"""The fixed categories of personal data; anything else is written ``custom:<name>``."""

_KINDS = frozenset(kind.value for kind in StatementKind)
_CUSTOM_CATEGORY = re.compile(r"custom:[a-z0-9_\-]{1,63}")
_RULE_ID = re.compile(r"[a-z0-9][a-z0-9\-]{0,62}")
_IDENTIFIER = re.compile(r"[^\s.\"]+")
_STATEMENT_TYPE = re.compile(r"[A-Z][A-Za-z]{0,62}Stmt")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]|24:00")
# What may appear in a glob over role, relation or function names: name characters,
# dots between schema and name, and fnmatch's own * ? [ ] !.
_GLOB_TEXT = re.compile(r"[A-Za-z0-9_$\-.*?\[\]!]+")


class Effect(StrEnum):
    """What happens to a statement; also the order of precedence, strongest first."""

    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"
    MASK = "mask"
    ALLOW = "allow"


class MaskMethod(StrEnum):
    REDACT = "redact"
    PARTIAL = "partial"
    PSEUDONYM = "pseudonym"  # a keyed, format-keeping pseudonym (custos/masking/values.py)
    HASH = "hash"  # the same: a keyed pseudonym, never a bare hash
    GENERALISE = "generalise"  # a coarse value: a number's range, a date's year
    NULL = "null"


PSEUDONYM_METHODS = frozenset({MaskMethod.PSEUDONYM, MaskMethod.HASH})
"""The methods that make keyed pseudonyms, and so need the masking key."""


def _category(value: str) -> str:
    if value in CATEGORIES or _CUSTOM_CATEGORY.fullmatch(value):
        return value
    raise ValueError(
        f"{value!r} is not a personal-data category; use one of "
        f"{', '.join(sorted(CATEGORIES))}, or custom:<name> for your own"
    )


def _statement_kind(value: object) -> object:
    if isinstance(value, str) and value not in _KINDS:
        raise ValueError(
            f"{value!r} is not a statement kind; use one of "
            f"{', '.join(kind.value for kind in StatementKind)}"
        )
    return value


def _glob(value: str, what: str) -> str:
    if not _GLOB_TEXT.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid {what} glob: use name characters, dots and the "
            "wildcards * ? [...]"
        )
    # fnmatch would read an unclosed bracket as a literal '[', which is never what was meant.
    depth = 0
    for character in value:
        if character == "[":
            if depth:
                raise ValueError(f"{value!r} is not a valid {what} glob: nested '['")
            depth = 1
        elif character == "]" and depth:
            depth = 0
    if depth:
        raise ValueError(f"{value!r} is not a valid {what} glob: '[' is never closed")
    return value


def _role_glob(value: str) -> str:
    return _glob(value, "role")


def _relation_glob(value: str) -> str:
    _glob(value, "relation")
    if value != "*" and "." not in value:
        raise ValueError(
            f"relation glob {value!r} has no schema: relations are schema-qualified, so "
            f"write 'crm.{value}' or '*.{value}'"
        )
    return value


def _function_glob(value: str) -> str:
    return _glob(value, "function")


def _table_key(value: str) -> str:
    schema, dot, table = value.partition(".")
    if not dot or not _IDENTIFIER.fullmatch(schema) or not _IDENTIFIER.fullmatch(table):
        raise ValueError(
            f"catalog key {value!r} must be schema.table, e.g. crm.customers "
            "(one dot, no spaces or quotes)"
        )
    return value


def _column_name(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"column name {value!r} must be a bare column name, e.g. email")
    return value


def _statement_type(value: str) -> str:
    if not _STATEMENT_TYPE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a statement type: use PostgreSQL's parse node name, "
            "e.g. VariableShowStmt (see `custos policy explain`)"
        )
    return value


def _present(value: object) -> object:
    if value is False:
        raise ValueError(
            "a risk condition requires the risk to be present: write true, "
            "or leave the condition out"
        )
    return value


def _duration(value: str) -> str:
    parse_duration(value)
    return value


Category = Annotated[str, AfterValidator(_category)]
Kind = Annotated[StatementKind, BeforeValidator(_statement_kind)]
RoleGlob = Annotated[str, AfterValidator(_role_glob)]
RelationGlob = Annotated[str, AfterValidator(_relation_glob)]
FunctionGlob = Annotated[str, AfterValidator(_function_glob)]
StatementType = Annotated[str, AfterValidator(_statement_type)]
TableKey = Annotated[str, AfterValidator(_table_key)]
ColumnName = Annotated[str, AfterValidator(_column_name)]
Present = Annotated[Literal[True] | None, BeforeValidator(_present)]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
CopyDestination = Literal["stdout", "file", "program"]
CopySource = Literal["stdin", "file", "program"]

_NON_EMPTY = "an empty list matches nothing: leave the condition out to match any"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)


class Target(_Model):
    """An upstream database this policy governs."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$")
    database: str = Field(min_length=1)


class CatalogTable(_Model):
    """A table holding personal data: its data-subject column and categorised columns.

    Listing a table marks every row as personal data, even with no categorised columns:
    its subject column still ties the row to a person (orders to a customer).
    """

    subject: ColumnName | None = None
    columns: dict[ColumnName, Category] = Field(default_factory=dict)


class DetectPattern(_Model):
    """A kind of personal value free text may quote, found by a regular expression
    (custos/policy/patterns.py says which ones are refused, and why)."""

    pattern: str

    @field_validator("pattern")
    @classmethod
    def _checked(cls, value: str) -> str:
        checked_pattern(value)
        return value


def _detected_category(value: str) -> str:
    if value == "free_text":
        raise ValueError(
            "free_text is what detection searches, not what it finds: name the category "
            "of the values the pattern finds, e.g. custom:employee_id"
        )
    return value


DetectedCategory = Annotated[Category, AfterValidator(_detected_category)]


class TimeWindow(_Model):
    """Hours on given days in a time zone; ``outside`` matches the rest of the week."""

    days: list[Day] = Field(default=["mon", "tue", "wed", "thu", "fri", "sat", "sun"], min_length=1)
    from_: str = Field(alias="from")
    to: str
    timezone: str = "UTC"
    outside: bool = False

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _quoted(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML 1.1 reads an unquoted 18:00 as the base-60 number 1080.
            raise ValueError('YAML read this time as a number: put it in quotes, e.g. "18:00"')
        return value

    @field_validator("from_", "to")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.fullmatch(value):
            raise ValueError(f"{value!r} is not a time of day: write HH:MM, e.g. 08:00 or 18:30")
        return value

    @field_validator("days")
    @classmethod
    def _unique_days(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a day is listed twice")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a known time zone: use an IANA name, e.g. Europe/Berlin or UTC"
            ) from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.from_ == self.to:
            raise ValueError(
                f"the window from {self.from_} to {self.to} is empty; a window over "
                "midnight is written from 22:00 to 06:00"
            )
        return self


class Risks(_Model):
    """Risk conditions; every one given must be present for the rule to match."""

    without_where: Present = None
    wildcard_pattern: Present = None
    # No LIMIT, or a LIMIT above this, on a statement returning rows from a catalog table.
    limit_above: int | None = Field(default=None, ge=0)
    multiple_statements: Present = None
    copy_to: list[CopyDestination] | None = Field(default=None, min_length=1)
    copy_from: list[CopySource] | None = Field(default=None, min_length=1)
    dynamic: Present = None
    sets_role: Present = None  # SET ROLE, SET SESSION AUTHORIZATION, RESET ROLE, ...
    # Stores values of catalogued personal columns where masking does not follow them: a
    # relation the catalog does not list, a column it lists under another category, a
    # server file or program (custos/policy/copies.py).
    copies_personal_data: Present = None
    time_window: TimeWindow | None = None


class Match(_Model):
    """Conditions on a statement; every one given must hold, an absent one matches any."""

    roles: list[RoleGlob] | None = Field(default=None, min_length=1)
    kinds: list[Kind] | None = Field(default=None, min_length=1)
    # Parse node names, to single out statements within a kind (SHOW within other).
    statement_types: list[StatementType] | None = Field(default=None, min_length=1)
    relations: list[RelationGlob] | None = Field(default=None, min_length=1)
    reads: list[Category] | None = Field(default=None, min_length=1)
    writes: list[Category] | None = Field(default=None, min_length=1)
    functions: list[FunctionGlob] | None = Field(default=None, min_length=1)
    risks: Risks = Field(default_factory=Risks)

    @field_validator(
        "roles",
        "kinds",
        "statement_types",
        "relations",
        "reads",
        "writes",
        "functions",
        mode="before",
    )
    @classmethod
    def _not_empty_list(cls, value: object) -> object:
        if value == []:
            raise ValueError(_NON_EMPTY)
        return value


class ApprovalMode(StrEnum):
    WAIT = "wait"  # the statement is held until a person decides, then runs (or not)
    RETRY = "retry"  # refused at once; once approved, the same statement may run once


class Approval(_Model):
    """Who must approve, how many of them, how the statement waits, and for how long."""

    group: str = Field(min_length=1)
    approvals: int = Field(default=1, ge=1, le=10)
    mode: ApprovalMode = ApprovalMode.WAIT
    # How long a request waits for its approvers before it expires (a decision too).
    expires_after: Annotated[str, AfterValidator(_duration)] = "15m"
    # How long an approved retry may wait for its one run (wait mode runs at once).
    grant_for: Annotated[str, AfterValidator(_duration)] | None = None
    # Ask the database for its row estimate (EXPLAIN) and show it to the approvers.
    estimate_rows: bool = False


class MaskConfig(_Model):
    categories: list[Category] = Field(min_length=1)
    method: MaskMethod


class Rule(_Model):
    id: str
    description: str = ""
    match: Match = Field(default_factory=Match)
    effect: Effect
    message: str = ""
    approval: Approval | None = None
    mask: MaskConfig | None = None

    @field_validator("description", "message", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        if isinstance(value, bool):
            # YAML 1.1 reads an unquoted no, yes, off or on as a boolean.
            raise ValueError("YAML read this text as true/false: put it in quotes")
        return value

    @field_validator("id")
    @classmethod
    def _rule_id(cls, value: str) -> str:
        if not _RULE_ID.fullmatch(value):
            raise ValueError(
                f"rule id {value!r} must be lower-case letters, digits and hyphens "
                "(at most 63), e.g. agents-read-crm"
            )
        return value

    @model_validator(mode="after")
    def _fields_fit_effect(self) -> Rule:
        if self.effect is Effect.REQUIRE_APPROVAL and self.approval is None:
            raise ValueError("effect require_approval needs approval: {group: ..., approvals: 1}")
        if self.effect is not Effect.REQUIRE_APPROVAL and self.approval is not None:
            raise ValueError(f"approval is only for effect require_approval, not {self.effect}")
        if self.effect is Effect.MASK and self.mask is None:
            raise ValueError("effect mask needs mask: {categories: [...], method: ...}")
        if self.effect is not Effect.MASK and self.mask is not None:
            raise ValueError(f"mask is only for effect mask, not {self.effect}")
        if self.effect in (Effect.DENY, Effect.REQUIRE_APPROVAL) and not self.message.strip():
            raise ValueError(
                f"effect {self.effect} needs a message telling the agent why and what to do next"
            )
        return self


class PolicyDocument(_Model):
    """A whole policy: roles (optional), targets, the personal-data catalog, the patterns
    that find more of it in free text, and the rules."""

    roles: list[RoleConfig] = Field(default_factory=list)
    targets: list[Target] = Field(default_factory=list)
    catalog: dict[TableKey, CatalogTable] = Field(default_factory=dict)
    # Categories free text is also searched for, by the policy's own patterns: masked
    # wherever a mask rule names them (custos/masking/detect.py).
    detect: dict[DetectedCategory, DetectPattern] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> PolicyDocument:
        for what, names in (
            ("rule id", [rule.id for rule in self.rules]),
            ("role", [role.name for role in self.roles]),
            ("target", [target.name for target in self.targets]),
        ):
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    raise ValueError(
                        f"{what} {name!r} appears more than once; names must be unique"
                    )
                seen.add(name)
        return self


def json_schema_text() -> str:
    """The document's JSON Schema, as committed in policy.schema.json."""
    schema: dict[str, Any] = PolicyDocument.model_json_schema()
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
