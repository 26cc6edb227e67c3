"""The gateway's side of the upstream database: its credential, how it authenticates, and the
columns its catalog lists."""

from custos.upstream.auth import UpstreamAuthExchange
from custos.upstream.columns import ColumnCatalog, ColumnsUnavailable
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
    "ColumnCatalog",
    "ColumnsUnavailable",
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
