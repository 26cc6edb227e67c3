"""Configuration of trusted issuers and assumable roles, as read from the gateway's YAML."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Only public-key algorithms: with HS* the verifier would need a shared secret,
# and the classic key-confusion attack feeds it the issuer's public key instead.
Algorithm = Literal["RS256", "ES256", "RS384", "RS512", "ES384", "PS256"]

_HTTP_SCHEMES = ("https://", "http://")


class IssuerConfig(BaseModel):
    """An OIDC issuer whose tokens the gateway accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1)
    audiences: list[str] = Field(min_length=1)
    jwks_uri: str | None = None
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    algorithms: list[Algorithm] = Field(default=["RS256", "ES256"], min_length=1)

    @field_validator("jwks_uri")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(_HTTP_SCHEMES):
            raise ValueError("jwks_uri must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _keys_can_be_found(self) -> IssuerConfig:
        # Discovery appends /.well-known/openid-configuration to the issuer.
        if self.jwks_uri is None and not self.issuer.startswith(_HTTP_SCHEMES):
            raise ValueError(
                f"issuer {self.issuer!r} is not an http(s) URL, so its keys cannot be "
                "discovered; set jwks_uri"
            )
        return self


class TrustStatement(BaseModel):
    """Conditions a token must meet to assume a role; every condition given must hold.

    Like the conditions of an IAM AssumeRoleWithWebIdentity trust policy.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1)
    audiences: list[str] | None = Field(default=None, min_length=1)
    subjects: list[str] | None = Field(default=None, min_length=1)
    groups: list[str] | None = Field(default=None, min_length=1)
    claims: dict[str, str | bool | int | list[str]] = {}


class RoleConfig(BaseModel):
    """A role a client names as its PostgreSQL user."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z_][a-z0-9_\-]{0,62}$")
    description: str = ""
    # Why this role processes personal data (GDPR Art. 30(1)(b)), on every audit event.
    purpose: str | None = None
    trust: list[TrustStatement] = Field(min_length=1)
