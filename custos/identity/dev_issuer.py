"""A local token issuer, for trying the gateway without an identity provider.

It keeps one EC P-256 key in a private directory and mints ES256 tokens that
name the role they were minted for. The gateway trusts it through
``Authenticator.add_static_issuer(dev.issuer_config(), dev.jwks())``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from jwt.utils import base64url_encode

from custos.identity.models import IssuerConfig

DEV_AUDIENCE = "custos"
KEY_FILE = "private_key.pem"
ISSUER_FILE = "issuer.json"
# .invalid (RFC 2606) never resolves, so nothing can ever be fetched from it.
_ISSUER_PREFIX = "https://dev-issuer.custos.invalid/"
# Claims that say who the token is for; mint() sets them from its parameters.
_IDENTITY_CLAIMS = frozenset({"iss", "aud", "sub", "groups", "custos_role"})


class DevIssuer:
    """The issuer kept in ``directory``, which ``open_or_create`` sets up."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._private_key = _load_private_key(directory / KEY_FILE)
        public_jwk = ECAlgorithm.to_jwk(self._private_key.public_key(), as_dict=True)
        self.kid = _thumbprint(public_jwk)
        self.issuer = _ISSUER_PREFIX + self.kid[:16]
        self._public_jwk = {**public_jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}
        self._record_issuer()

    @classmethod
    def open_or_create(cls, directory: Path) -> DevIssuer:
        """Load the issuer in ``directory``, generating its key on first use."""
        try:
            directory.mkdir(mode=0o700, parents=True)
            os.chmod(directory, 0o700)  # mkdir's mode is narrowed by the umask, never widened
        except FileExistsError:
            pass
        key_path = directory / KEY_FILE
        if not key_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # O_EXCL: if another process created the key meanwhile, use theirs.
            try:
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as file:
                    os.fchmod(file.fileno(), 0o600)
                    file.write(pem)
        return cls(directory)

    def mint(
        self,
        role: str,
        subject: str,
        groups: Sequence[str] = (),
        ttl_seconds: int = 900,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """An ES256 JWT for ``subject`` to assume ``role``, valid for ``ttl_seconds``.

        ``extra_claims`` may add claims or override iat, nbf, exp and jti (to
        make an expired token, say), but not the claims that say who it is for.
        """
        if not subject:
            raise ValueError("subject must not be empty")
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, not {ttl_seconds}")
        extra = dict(extra_claims or {})
        clash = sorted(_IDENTITY_CLAIMS.intersection(extra))
        if clash:
            raise ValueError(f"extra_claims may not set {clash}; use mint's parameters instead")
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": DEV_AUDIENCE,
            "sub": subject,
            "groups": list(groups),
            "custos_role": role,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": secrets.token_urlsafe(16),
            **extra,
        }
        return jwt.encode(claims, self._private_key, algorithm="ES256", headers={"kid": self.kid})

    def issuer_config(self) -> IssuerConfig:
        return IssuerConfig(issuer=self.issuer, audiences=[DEV_AUDIENCE], algorithms=["ES256"])

    def jwks(self) -> dict[str, Any]:
        """The public key set, as an issuer would publish it."""
        return {"keys": [dict(self._public_jwk)]}

    def _record_issuer(self) -> None:
        """Write issuer.json on first use; afterwards, insist it still matches the key."""
        path = self.directory / ISSUER_FILE
        expected = {"issuer": self.issuer, "audience": DEV_AUDIENCE, "kid": self.kid}
        if not path.exists():
            path.write_text(json.dumps(expected, indent=2) + "\n", encoding="utf-8")
            return
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            recorded = None
        if recorded != expected:
            raise ValueError(
                f"{path} does not describe the key in {self.directory / KEY_FILE}; "
                f"delete {path} and it will be written again"
            )


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no dev issuer key at {path}; create one with DevIssuer.open_or_create"
        ) from None
    # Like ssh: a signing key others can read signs tokens for anyone.
    if mode & 0o077:
        raise PermissionError(
            f"the dev issuer key {path} is accessible to other users; run: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            f"cannot read the dev issuer key {path} ({exc}); delete the directory "
            f"{path.parent} to start a new dev issuer"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path} does not hold an EC P-256 private key")
    return key


def _thumbprint(public_jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint: a stable name derived from the public key alone."""
    members = {name: public_jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64url_encode(hashlib.sha256(canonical).digest()).decode()
