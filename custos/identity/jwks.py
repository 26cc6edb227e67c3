"""Signing keys of trusted issuers: discovered, fetched over HTTP, cached and refreshed."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import (
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from custos.identity.errors import TokenRejected, shown
from custos.identity.models import IssuerConfig

PublicKey = RSAPublicKey | EllipticCurvePublicKey

_HTTP_SCHEMES = ("https://", "http://")
# Discovery documents and key sets are a few kilobytes; a bigger answer is a fault.
_MAX_DOCUMENT_BYTES = 1 << 20
_CURVE_FOR_ALGORITHM = {"ES256": "secp256r1", "ES384": "secp384r1"}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key an issuer signs tokens with."""

    kid: str | None
    key: PublicKey
    algorithm: str | None  # set when the key's JWK restricts it to one alg

    def fits(self, algorithm: str) -> bool:
        """Whether this key may verify a signature made with ``algorithm``."""
        if self.algorithm is not None and self.algorithm != algorithm:
            return False
        if algorithm.startswith(("RS", "PS")):
            return isinstance(self.key, RSAPublicKey)
        curve = _CURVE_FOR_ALGORITHM.get(algorithm)
        return isinstance(self.key, EllipticCurvePublicKey) and self.key.curve.name == curve

    def describe(self) -> str:
        kind = (
            "an RSA key"
            if isinstance(self.key, RSAPublicKey)
            else f"an EC {self.key.curve.name} key"
        )
        return kind if self.algorithm is None else f"{kind} restricted to {self.algorithm}"


def parse_jwks(document: Mapping[str, Any]) -> tuple[VerificationKey, ...]:
    """The signing keys of a JWKS document; encryption, HMAC and unknown keys are skipped."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the key set has no 'keys' list")
    keys = []
    for entry in entries:
        # A published symmetric key would let anyone who reads the JWKS sign tokens.
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC"):
            continue
        if entry.get("use", "sig") != "sig" or not isinstance(entry.get("kid", ""), str):
            continue
        try:
            parsed = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        declared = entry.get("alg")
        key = _verification_key(parsed, declared if isinstance(declared, str) else None)
        if key is not None:
            keys.append(key)
    return tuple(keys)


def _verification_key(jwk: jwt.PyJWK, algorithm: str | None) -> VerificationKey | None:
    key = jwk.key
    # Verification needs only the public half, whatever a careless key set included.
    if isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey):
        key = key.public_key()
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        return None
    return VerificationKey(jwk.key_id, key, algorithm)


class _FetchFailed(Exception):
    """Why an issuer's keys could not be had; shown to the client inside a TokenRejected."""


@dataclass(slots=True)
class _IssuerKeys:
    keys: tuple[VerificationKey, ...] = ()
    static: bool = False
    fetched_at: float | None = None
    last_attempt: float | None = None
    discovered_jwks_uri: str | None = None
    refresh: asyncio.Task[None] | None = None


class JwksCache:
    """Public keys per issuer, fetched on first use and kept for ``ttl_seconds``.

    A token naming an unknown ``kid`` triggers a refresh (the issuer may have
    rotated its keys), at most once per ``min_refresh_interval_seconds`` per
    issuer so forged kids cannot make us hammer the issuer. Concurrent
    verifications share one in-flight fetch. When keys cannot be fetched the
    token is refused: there is no fallback to unverified claims.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float = 3600.0,
        min_refresh_interval_seconds: float = 30.0,
        fetch_timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._min_refresh_interval = min_refresh_interval_seconds
        self._timeout = fetch_timeout_seconds
        self._clock = clock
        self._issuers: dict[str, _IssuerKeys] = {}

    def add_static_keys(self, issuer: str, keys: Sequence[jwt.PyJWK] | Mapping[str, Any]) -> None:
        """Serve ``issuer``'s keys from memory (a JWKS dict or PyJWK objects); no HTTP."""
        if isinstance(keys, Mapping):
            parsed = parse_jwks(keys)
        else:
            candidates = (_verification_key(k, k.algorithm_name) for k in keys)
            parsed = tuple(k for k in candidates if k is not None)
        if not parsed:
            raise ValueError(f"no usable RSA or EC public key given for issuer {issuer}")
        self._issuers[issuer] = _IssuerKeys(keys=parsed, static=True)

    async def key_for(
        self, issuer: IssuerConfig, kid: str | None, algorithm: str
    ) -> VerificationKey:
        """The key that verifies a token of ``issuer`` naming ``kid`` and ``algorithm``."""
        state = self._issuers.setdefault(issuer.issuer, _IssuerKeys())
        if self._needs_refresh(state, kid):
            await self._refresh(issuer, state)
        return _select(issuer.issuer, state.keys, kid, algorithm)

    def _needs_refresh(self, state: _IssuerKeys, kid: str | None) -> bool:
        if state.static:
            return False
        now = self._clock()
        if state.fetched_at is None or now - state.fetched_at >= self._ttl:
            return True
        if kid is None or any(key.kid == kid for key in state.keys):
            return False
        # An unknown kid: the issuer may have rotated its keys since we fetched them.
        return (
            state.refresh is not None
            or state.last_attempt is None
            or now - state.last_attempt >= self._min_refresh_interval
        )

    async def _refresh(self, issuer: IssuerConfig, state: _IssuerKeys) -> None:
        if state.refresh is None:
            state.refresh = asyncio.create_task(self._fetch(issuer, state))
        # One waiter giving up (a client disconnecting) must not cancel the
        # fetch the other waiters share.
        await asyncio.shield(state.refresh)

    async def _fetch(self, issuer: IssuerConfig, state: _IssuerKeys) -> None:
        state.last_attempt = self._clock()
        try:
            keys, uri = await asyncio.to_thread(self._download, issuer, state.discovered_jwks_uri)
        except _FetchFailed as exc:
            # The issuer may have moved its keys; look again next time.
            state.discovered_jwks_uri = None
            raise TokenRejected(
                f"cannot fetch signing keys for issuer {issuer.issuer} ({exc}); try again later",
                hint="the gateway refuses tokens it cannot verify; if this persists, "
                "ask your administrator to check the issuer's availability",
            ) from exc
        else:
            state.keys = keys
            state.fetched_at = self._clock()
            if issuer.jwks_uri is None:
                state.discovered_jwks_uri = uri
        finally:
            state.refresh = None

    def _download(
        self, issuer: IssuerConfig, discovered_jwks_uri: str | None
    ) -> tuple[tuple[VerificationKey, ...], str]:
        uri = issuer.jwks_uri or discovered_jwks_uri or self._discover(issuer)
        try:
            keys = parse_jwks(self._get_json(uri))
        except ValueError as exc:
            raise _FetchFailed(f"{exc} at {uri}") from exc
        if not keys:
            raise _FetchFailed(f"no usable RSA or EC signing key at {uri}")
        return keys, uri

    def _discover(self, issuer: IssuerConfig) -> str:
        url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._get_json(url)
        # OpenID Connect Discovery 1.0, section 4.3: the document must name the
        # issuer it was fetched for, or its keys could be anyone's.
        if document.get("issuer") != issuer.issuer:
            raise _FetchFailed(
                f"the discovery document at {url} names issuer "
                f"{shown(document.get('issuer'))}, not {issuer.issuer}"
            )
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(_HTTP_SCHEMES):
            raise _FetchFailed(f"the discovery document at {url} has no http(s) jwks_uri")
        return uri

    def _get_json(self, url: str) -> Mapping[str, Any]:
        if not url.startswith(_HTTP_SCHEMES):
            raise _FetchFailed(f"{shown(url)} is not an http(s) URL")
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            url, headers={"Accept": "application/json", "User-Agent": "custos"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                body = response.read(_MAX_DOCUMENT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise _FetchFailed(f"HTTP {exc.code} from {url}") from exc
        except urllib.error.URLError as exc:
            raise _FetchFailed(f"{exc.reason} at {url}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _FetchFailed(f"{exc or type(exc).__name__} at {url}") from exc
        if len(body) > _MAX_DOCUMENT_BYTES:
            raise _FetchFailed(
                f"the response from {url} is larger than {_MAX_DOCUMENT_BYTES} bytes"
            )
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _FetchFailed(f"the response from {url} is not JSON") from exc
        if not isinstance(document, dict):
            raise _FetchFailed(f"the response from {url} is not a JSON object")
        return document


def _select(
    issuer: str, keys: Sequence[VerificationKey], kid: str | None, algorithm: str
) -> VerificationKey:
    named = [k for k in keys if k.kid == kid] if kid is not None else list(keys)
    if not named:
        raise TokenRejected(
            f"issuer {issuer} publishes no signing key with kid '{shown(kid)}'",
            hint="the key may have been retired; request a fresh token",
        )
    fitting = [k for k in named if k.fits(algorithm)]
    if len(fitting) == 1:
        return fitting[0]
    if kid is None:
        problem = (
            f"issuer {issuer} publishes {len(fitting)} keys for {algorithm}, "
            "so the token must name its key in a kid header"
            if fitting
            else f"issuer {issuer} publishes no key that can verify {algorithm} signatures"
        )
        raise TokenRejected(f"token has no kid header and {problem}")
    if fitting:
        raise TokenRejected(
            f"issuer {issuer} publishes {len(fitting)} keys with kid '{shown(kid)}' "
            f"for {algorithm}; cannot tell which one signed the token",
            hint="ask the issuer's administrator to give each key its own kid",
        )
    raise TokenRejected(
        f"signing key '{shown(kid)}' of issuer {issuer} is {named[0].describe()} "
        f"and cannot verify {algorithm} signatures",
        hint="the token's alg header does not match its key; request a fresh token",
    )
