"""Identity: verify a client's OIDC token and assume the role it names."""

from custos.identity.authenticator import Authenticator
from custos.identity.dev_issuer import DevIssuer
from custos.identity.durations import parse_duration
from custos.identity.errors import AuthenticationError, RoleRefused, TokenRejected
from custos.identity.jwks import JwksCache
from custos.identity.models import IssuerConfig, RoleConfig, TrustStatement
from custos.identity.principal import Principal
from custos.identity.roles import RoleResolver
from custos.identity.verifier import TokenVerifier

__all__ = [
    "AuthenticationError",
    "Authenticator",
    "DevIssuer",
    "IssuerConfig",
    "JwksCache",
    "Principal",
    "RoleConfig",
    "RoleRefused",
    "RoleResolver",
    "TokenRejected",
    "TokenVerifier",
    "TrustStatement",
    "parse_duration",
]
