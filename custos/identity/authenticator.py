"""From a startup packet's role and password to a Principal, or a refusal."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jwt

from custos.identity.jwks import JwksCache
from custos.identity.models import IssuerConfig, RoleConfig
from custos.identity.principal import Principal
from custos.identity.roles import RoleResolver, claim_groups
from custos.identity.verifier import TokenVerifier


class Authenticator:
    """Verifies a client's token and assumes the role it asked for.

    The gateway calls ``authenticate`` once per connection, with the startup
    ``user`` as the role and the password as the token. Any failure raises
    AuthenticationError, whose sqlstate, message and hint go to the client.
    """

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        roles: Sequence[RoleConfig] | Callable[[], Sequence[RoleConfig]],
        jwks: JwksCache | None = None,
    ) -> None:
        """`roles` may be a function, for roles that live in a policy that reloads."""
        self._jwks = jwks if jwks is not None else JwksCache()
        self._verifier = TokenVerifier(issuers, self._jwks)
        self._current_roles = roles if callable(roles) else (lambda fixed=tuple(roles): fixed)
        self._resolved_from: Sequence[RoleConfig] | None = None
        self._roles = RoleResolver(())

    def _resolver(self) -> RoleResolver:
        roles = self._current_roles()
        if roles is not self._resolved_from:
            self._roles = RoleResolver(roles)
            self._resolved_from = roles
        return self._roles

    def add_static_issuer(
        self, issuer: IssuerConfig, keys: Sequence[jwt.PyJWK] | Mapping[str, Any]
    ) -> None:
        """Trust ``issuer`` with keys held in memory, such as the dev issuer's; no HTTP."""
        # Checked first so a duplicate cannot replace the keys of a trusted issuer.
        if self._verifier.trusts(issuer.issuer):
            raise ValueError(f"issuer {issuer.issuer} is configured more than once")
        self._jwks.add_static_keys(issuer.issuer, keys)
        self._verifier.add_issuer(issuer)

    async def identify(self, token: str) -> dict[str, Any]:
        """A token's verified claims, with no role assumed: an approver signing in."""
        return await self._verifier.verify(token)

    async def authenticate(
        self, token: str, role: str, client_address: str, application_name: str | None
    ) -> Principal:
        claims = await self._verifier.verify(token)
        assumed = self._resolver().assume(role, claims)
        return Principal(
            role=assumed.name,
            subject=claims["sub"],
            issuer=claims["iss"],
            groups=claim_groups(claims),
            claims=MappingProxyType(claims),
            client_address=client_address,
            application_name=application_name,
            token_expires_at=int(claims["exp"]),
        )
