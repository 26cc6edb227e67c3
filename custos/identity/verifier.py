"""Verification of OIDC JWTs: signature, issuer, audience and validity period."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import jwt

from custos.identity.errors import TokenRejected, shown
from custos.identity.jwks import JwksCache, VerificationKey
from custos.identity.models import IssuerConfig

# Real ID tokens are a few kilobytes even with many groups; anything far larger
# is a mistake or an attempt to make us parse megabytes before we refuse it.
MAX_TOKEN_CHARS = 32 * 1024
# Unpadded base64url, though some issuers pad; PyJWT checks the padding itself.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]
_NOT_A_JWT_HINT = "use an OIDC ID token (a JWT) from a trusted identity provider as the password"
_REISSUE_HINT = "request a fresh token from your identity provider"
_PUBLIC_KEY_ONLY = "tokens must be signed with the issuer's public-key algorithms"


class TokenVerifier:
    """Checks tokens against the configured issuers; returns the claims of a good one."""

    def __init__(self, issuers: Sequence[IssuerConfig], jwks: JwksCache) -> None:
        self._jwks = jwks
        self._issuers: dict[str, IssuerConfig] = {}
        for issuer in issuers:
            self.add_issuer(issuer)

    def trusts(self, iss: str) -> bool:
        return iss in self._issuers

    def add_issuer(self, issuer: IssuerConfig) -> None:
        if self.trusts(issuer.issuer):
            raise ValueError(f"issuer {issuer.issuer} is configured more than once")
        self._issuers[issuer.issuer] = issuer

    async def verify(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``, or TokenRejected saying which check failed."""
        # Passwords pasted from a file or a shell often carry a trailing newline.
        token = token.strip()
        header, unverified = _read_unverified(token)
        issuer = self._trusted_issuer(unverified)
        algorithm = _accepted_algorithm(header, issuer)
        key = await self._jwks.key_for(issuer, header.get("kid"), algorithm)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=issuer.audiences,
                issuer=issuer.issuer,
                leeway=issuer.leeway_seconds,
                options={"require": _REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise _explain(exc, issuer, key, unverified) from None
        _check_claim_types(claims)
        return claims

    def _trusted_issuer(self, unverified: Mapping[str, Any]) -> IssuerConfig:
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            problem = "has no iss claim" if iss is None else "has an iss claim that is not a string"
            raise TokenRejected(
                f"token {problem}, so its issuer cannot be identified", hint=_NOT_A_JWT_HINT
            )
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise TokenRejected(
                f"token issuer {shown(iss)} is not trusted by this gateway",
                hint="use a token from one of the gateway's trusted issuers, or ask your "
                "administrator to add this issuer to the gateway's configuration",
            )
        return issuer


def _read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims, unverified: enough to choose the issuer and the key."""
    if not token:
        raise TokenRejected("token is not a JWT: the password is empty", hint=_NOT_A_JWT_HINT)
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenRejected(
            f"token is not a JWT: it is {len(token)} characters long, "
            f"more than the {MAX_TOKEN_CHARS} allowed",
            hint=_NOT_A_JWT_HINT,
        )
    segments = token.split(".")
    if len(segments) == 5:
        raise TokenRejected(
            "token is not a signed JWT: its five segments make it an encrypted JWE, "
            "which this gateway does not accept",
            hint=_NOT_A_JWT_HINT,
        )
    if len(segments) != 3:
        raise TokenRejected(
            f"token is not a JWT: it has {len(segments)} dot-separated segment(s), not 3",
            hint=_NOT_A_JWT_HINT,
        )
    if not all(_BASE64URL.fullmatch(segment) for segment in segments):
        raise TokenRejected(
            "token is not a JWT: it contains characters outside the base64url alphabet",
            hint=_NOT_A_JWT_HINT,
        )
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenRejected(
            f"token is not a JWT: its header is invalid ({shown(str(exc))})", hint=_NOT_A_JWT_HINT
        ) from None
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenRejected(
            f"token is not a JWT: its payload is invalid ({shown(str(exc))})", hint=_NOT_A_JWT_HINT
        ) from None
    return header, claims


def _accepted_algorithm(header: Mapping[str, Any], issuer: IssuerConfig) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise TokenRejected("token header names no alg", hint=_NOT_A_JWT_HINT)
    # Named outright: these are the two classic ways to forge a token, and the
    # person who sees this message should know that is what it looked like.
    if alg.lower() == "none" or alg.upper().startswith("HS"):
        raise TokenRejected(
            f"alg {shown(alg)} is not accepted: {_PUBLIC_KEY_ONLY}", hint=_REISSUE_HINT
        )
    if alg not in issuer.algorithms:
        raise TokenRejected(
            f"alg {shown(alg)} is not accepted for issuer {issuer.issuer}; "
            f"expected one of {list(issuer.algorithms)}",
            hint="ask your administrator to add the algorithm to the issuer's configuration",
        )
    return alg


def _explain(
    exc: jwt.PyJWTError, issuer: IssuerConfig, key: VerificationKey, claims: Mapping[str, Any]
) -> TokenRejected:
    """Turn PyJWT's verdict into a message that says which check failed and by how much."""
    now = datetime.now(UTC)
    if isinstance(exc, jwt.ExpiredSignatureError):
        return TokenRejected(
            f"token expired at {_utc(claims.get('exp'))} ({_now(now, claims.get('exp'))}); "
            "request a fresh token",
            hint=f"the gateway allows {issuer.leeway_seconds} s of clock skew",
        )
    if isinstance(exc, jwt.ImmatureSignatureError):
        nbf, iat = claims.get("nbf"), claims.get("iat")
        if "(nbf)" in str(exc):
            what = f"token is not valid before {_utc(nbf)} ({_now(now, nbf)})"
        else:
            what = f"token says it was issued at {_utc(iat)}, in the future ({_now(now, iat)})"
        return TokenRejected(
            f"{what}; check the clock of the machine that issued it",
            hint=f"the gateway allows {issuer.leeway_seconds} s of clock skew",
        )
    if isinstance(exc, jwt.InvalidAudienceError):
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        return TokenRejected(
            f"token audience {shown(audiences)} is not accepted by issuer {issuer.issuer}; "
            f"expected one of {issuer.audiences}",
            hint=f"request a token with the audience {issuer.audiences[0]!r}",
        )
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return TokenRejected(
            f"token has no '{exc.claim}' claim; the gateway requires exp, iss, aud and sub",
            hint=_REISSUE_HINT,
        )
    if isinstance(exc, jwt.InvalidSignatureError):
        return TokenRejected(
            f"token signature does not verify with key '{shown(key.kid)}' of issuer "
            f"{issuer.issuer}: the token was altered or signed by another key",
            hint=_REISSUE_HINT,
        )
    if isinstance(exc, jwt.InvalidKeyError):
        return TokenRejected(
            f"signing key '{shown(key.kid)}' of issuer {issuer.issuer} is too weak to trust "
            f"({shown(str(exc))})",
            hint="ask your administrator to check the issuer's keys",
        )
    # PyJWT's remaining messages name the faulty claim, never its value.
    return TokenRejected(f"token is malformed: {shown(str(exc))}", hint=_REISSUE_HINT)


def _check_claim_types(claims: Mapping[str, Any]) -> None:
    # PyJWT accepts "123" where RFC 7519 wants a JSON number, and any string for sub.
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TokenRejected(
                f"token claim '{name}' is not a number of seconds since the epoch",
                hint=_REISSUE_HINT,
            )
    if not claims["sub"]:
        raise TokenRejected("token has an empty 'sub' claim", hint=_REISSUE_HINT)


def _utc(epoch: object) -> str:
    if isinstance(epoch, int | float) and not isinstance(epoch, bool):
        try:
            return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (ValueError, OverflowError, OSError):
            pass  # far outside the calendar: show the number as it is
    return shown(epoch)


def _now(now: datetime, beside: object) -> str:
    """Say "now 10:05:12Z", adding the date only when it differs from ``beside``'s."""
    shown_date = _utc(beside)[:10] != now.strftime("%Y-%m-%d")
    return "now " + now.strftime("%Y-%m-%dT%H:%M:%SZ" if shown_date else "%H:%M:%SZ")
