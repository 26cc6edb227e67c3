"""The gateway's side of the upstream database: its credential and how it authenticates."""

from custos.upstream.auth import UpstreamAuthExchange
from custos.upstream.credentials import (
    CredentialSource,
    DsnCredentials,
    RdsIamCredentials,
    SecretsManagerCredentials,
    credential_source,
)
from custos.upstream.errors import (
    UpstreamAuthenticationError,
    UpstreamConfigurationError,
    UpstreamError,
    UpstreamUnavailable,
)
from custos.upstream.settings import RdsIamSettings, UpstreamSettings
from custos.upstream.target import UpstreamTarget

__all__ = [
    "CredentialSource",
    "DsnCredentials",
    "RdsIamCredentials",
    "RdsIamSettings",
    "SecretsManagerCredentials",
    "UpstreamAuthExchange",
    "UpstreamAuthenticationError",
    "UpstreamConfigurationError",
    "UpstreamError",
    "UpstreamSettings",
    "UpstreamTarget",
    "UpstreamUnavailable",
    "credential_source",
]
