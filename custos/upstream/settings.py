"""How the gateway reaches its upstream database: exactly one credential source, plus TLS."""

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

SSL_MODES: tuple[SslMode, ...] = (
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
)
TLS_REQUIRED_MODES: frozenset[str] = frozenset({"require", "verify-ca", "verify-full"})


class RdsIamSettings(BaseModel):
    """An RDS or Aurora PostgreSQL endpoint reached with short-lived IAM auth tokens."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    user: str = Field(min_length=1)
    dbname: str = Field(min_length=1)
    region: str = Field(min_length=1)


class UpstreamSettings(BaseModel):
    # A validation error would otherwise echo the raw input, DSN password included.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    dsn: SecretStr | None = None
    secret_id: str | None = Field(default=None, min_length=1)
    rds_iam: RdsIamSettings | None = None
    sslmode: SslMode | None = None
    sslrootcert: Path | None = None
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    secret_ttl_seconds: int = Field(default=300, ge=0)

    @model_validator(mode="after")
    def _one_source_with_enough_tls(self) -> Self:
        chosen = [
            name for name in ("dsn", "secret_id", "rds_iam") if getattr(self, name) is not None
        ]
        if len(chosen) != 1:
            found = " and ".join(chosen) if chosen else "none"
            raise ValueError(
                "set exactly one of upstream.dsn (a libpq connection string), "
                "upstream.secret_id (an AWS Secrets Manager secret) or upstream.rds_iam "
                f"(RDS IAM authentication); found {found}"
            )
        if self.rds_iam is not None and self.sslmode not in (None, *TLS_REQUIRED_MODES):
            raise ValueError(
                f"upstream.sslmode {self.sslmode} cannot be used with upstream.rds_iam: RDS "
                "accepts IAM auth tokens only over TLS; set sslmode to verify-full "
                "(with upstream.sslrootcert set to the RDS CA bundle), verify-ca or require"
            )
        return self

    def cloud_sslmode(self) -> str:
        """The sslmode for AWS-provided credentials: TLS unless the operator chose otherwise."""
        if self.sslmode is not None:
            return self.sslmode
        return "verify-full" if self.sslrootcert is not None else "require"
