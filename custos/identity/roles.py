"""Which roles a verified token may assume, by the roles' trust statements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from custos.identity.errors import RoleRefused, shown
from custos.identity.models import RoleConfig, TrustStatement

ClaimCondition = str | bool | int | list[str]


class RoleResolver:
    """Decides whether verified claims may assume a named role."""

    def __init__(self, roles: Sequence[RoleConfig]) -> None:
        self._roles: dict[str, RoleConfig] = {}
        for role in roles:
            if role.name in self._roles:
                raise ValueError(f"role '{role.name}' is configured more than once")
            self._roles[role.name] = role

    def assume(self, role_name: str, claims: Mapping[str, Any]) -> RoleConfig:
        """The role, if any of its trust statements matches ``claims``; else RoleRefused."""
        issued_for = claims.get("custos_role")
        # A token minted for one role must not be replayed to assume another.
        if issued_for is not None and issued_for != role_name:
            raise RoleRefused(
                f"token was issued for role '{shown(issued_for)}', not '{shown(role_name)}'",
                hint="connect with the role the token was issued for, or get a token for this role",
            )
        role = self._roles.get(role_name)
        if role is None:
            raise RoleRefused(
                f"role '{shown(role_name)}' does not exist",
                hint="the PostgreSQL user names the role; check it in your connection "
                "settings, or ask your administrator for the role name",
            )
        verdicts = [_unmet(statement, claims) for statement in role.trust]
        if any(not reasons for _, reasons in verdicts):
            return role
        # Report the statement the token came closest to: its own issuer's first,
        # then the one with the fewest unmet conditions.
        _, closest = min(verdicts, key=lambda verdict: (not verdict[0], len(verdict[1])))
        raise RoleRefused(
            f"role '{role.name}' cannot be assumed by subject '{shown(claims.get('sub'))}' "
            f"from issuer {shown(claims.get('iss'))}: no trust statement matched "
            f"({'; '.join(closest)})",
            hint="use a role that trusts your identity, or ask your administrator "
            "to extend this role's trust",
        )


def claim_groups(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The token's groups: issuers send a list, or a single string for one group."""
    groups = claims.get("groups")
    if isinstance(groups, str):
        return (groups,)
    if isinstance(groups, list):
        return tuple(group for group in groups if isinstance(group, str))
    return ()


def _unmet(statement: TrustStatement, claims: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Whether the issuer matches, and the conditions of ``statement`` the claims fail."""
    if claims.get("iss") != statement.issuer:
        return False, [f"issuer: trusts only {statement.issuer}"]
    reasons = []
    if statement.audiences is not None:
        aud = claims.get("aud")
        audiences = {aud} if isinstance(aud, str) else set(aud if isinstance(aud, list) else ())
        if audiences.isdisjoint(statement.audiences):
            reasons.append(f"audiences: need one of {statement.audiences}")
    if statement.subjects is not None:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not any(fnmatchcase(sub, p) for p in statement.subjects):
            reasons.append(f"subject: must match one of {statement.subjects}")
    if statement.groups is not None and set(claim_groups(claims)).isdisjoint(statement.groups):
        reasons.append(f"groups: need one of {statement.groups}")
    # The token's value of an arbitrary claim may be personal data: name only the
    # claim and what the configuration expects.
    reasons.extend(
        f"claim '{name}': must {_describe(expected)}"
        for name, expected in statement.claims.items()
        if not _claim_matches(claims.get(name), expected)
    )
    return True, reasons


def _claim_matches(actual: object, expected: ClaimCondition) -> bool:
    if isinstance(expected, bool):
        return actual is expected
    if isinstance(expected, int):
        return isinstance(actual, int) and not isinstance(actual, bool) and actual == expected
    patterns = [expected] if isinstance(expected, str) else expected
    return isinstance(actual, str) and any(fnmatchcase(actual, p) for p in patterns)


def _describe(expected: ClaimCondition) -> str:
    if isinstance(expected, list):
        return f"match one of {expected}"
    if isinstance(expected, str):
        return f"match {expected!r}"
    return f"equal {expected!r}"
