"""The approvals' configuration: `approvals:` in the gateway's config, or `--approvals`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from custos.masking.keys import KeySettings


class ApprovalKeySettings(KeySettings):
    """Binds retry grants to their statements and signs approvers' links. Without one, the
    gateway makes one per run (grants and links then end with it)."""

    key_env: str = "CUSTOS_APPROVALS_KEY"


class ApprovalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "aws"] = "local"
    # The local approvals page and API: HOST:PORT to listen on.
    listen: str | None = None
    # Where approvers reach it (a link in notices and errors): http://LISTEN by default.
    url: str | None = None
    key: ApprovalKeySettings = Field(default_factory=ApprovalKeySettings)
    # AWS: the approvals state machine to start per request, the table it decides into,
    # and where the approvers' links lead (the API's address).
    state_machine_arn: str | None = None
    table: str | None = None
    # How often the gateway reads the table for the decisions its sessions wait on.
    poll_seconds: float = Field(default=0.5, gt=0, le=5)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            from custos.config import parse_listen_address

            parse_listen_address(value)
        return value

    @model_validator(mode="after")
    def _complete(self) -> ApprovalSettings:
        if self.backend == "local" and self.listen is None:
            raise ValueError("local approvals need listen: HOST:PORT for their page and API")
        if self.backend == "aws" and not (self.state_machine_arn and self.table and self.url):
            raise ValueError(
                "aws approvals need state_machine_arn, table and url (the approvals API's"
                " address), as the Custos-Approvals stack outputs them"
            )
        return self

    @property
    def page_url(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        assert self.listen is not None
        return f"http://{self.listen}"
