"""The audit trail's configuration: `audit:` in the gateway's config, or `--audit DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from custos.masking.keys import KeySettings


class AuditKeySettings(KeySettings):
    """The key of the data-subject index's pseudonyms; not the masking key."""

    key_env: str = "CUSTOS_AUDIT_KEY"


class AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: Literal["local", "dynamodb"] = "local"
    dir: Path | None = None  # the local store's folder
    table: str | None = None  # the DynamoDB events table
    key: AuditKeySettings = Field(default_factory=AuditKeySettings)
    # Claims of the agent's token recorded on every event of its sessions: label -> claim
    # (e.g. repository: repository, workflow: workflow, run_id: run_id).
    labels: dict[str, str] = Field(default_factory=dict)
    # A statement whose event cannot be made durable is refused, unless its target (the
    # policy's target name) is listed here: then it runs, and the failure is logged.
    fail_open_targets: list[str] = Field(default_factory=list)
    # When a statement's event counts as durable, before the statement goes upstream:
    # `disk`, written and fsynced (it survives the machine's failure); `process`, written
    # to the operating system (it survives the gateway's crash or SIGKILL, not the
    # machine's; fsynced within a second). The local store only: DynamoDB acknowledges a
    # write once it is durable.
    durability: Literal["disk", "process"] = "disk"
    # The local store's segments gzipped (`.jsonl.gz`, a gzip member per commit).
    compress: bool = False
    # Literals become `?` in statement texts. With this, those of a statement that touches
    # no table of the policy's personal-data catalog are kept beside the text (`literals`),
    # the personal values detection finds in them redacted; a statement over personal data,
    # or running code the analysis does not see into (DO, CALL, DDL), keeps none.
    keep_literals: bool = False
    # The data-subject index keeps at most this many subjects per statement, and says so.
    subjects_per_statement: int = Field(default=1000, ge=1)
    # How long the hot tier (DynamoDB, by TTL) keeps records; the local store keeps all.
    retention_days: int = Field(default=30, ge=1)

    # The local store's hourly digests are signed with this Ed25519 private key (PEM;
    # `openssl genpkey -algorithm ed25519`); none without it. In AWS the digest Lambda
    # signs with a KMS key.
    digest_key_file: Path | None = None
    # The local store's hot tier: records older than this many days are removed once
    # their hour's digest signs them, each hour leaving a signed tombstone (verify tells
    # it from a removal). None: the local store keeps everything.
    expire_local_after_days: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_store(self) -> AuditSettings:
        if self.store == "local" and self.dir is None:
            raise ValueError("a local audit store needs dir: the folder it writes to")
        if self.store == "dynamodb" and not self.table:
            raise ValueError("a dynamodb audit store needs table: the events table's name")
        if self.expire_local_after_days is not None and self.digest_key_file is None:
            raise ValueError(
                "expire_local_after_days removes only hours a digest signs, and signs their"
                " tombstones: set digest_key_file too"
            )
        if self.store == "dynamodb" and self.digest_key_file is not None:
            raise ValueError(
                "digest_key_file signs the local store's digests; the DynamoDB store's are"
                " signed by the digest Lambda with its KMS key: remove digest_key_file"
            )
        return self
