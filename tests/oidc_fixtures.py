"""Test helpers for identity: signing keys, a loopback OIDC issuer, and token minting.

The issuer is a real HTTP server on 127.0.0.1 (ephemeral port) serving
``/.well-known/openid-configuration`` and ``/jwks``, counting the requests it
serves so tests can see when the gateway fetched keys.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks"
AUDIENCE = "custos"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", **extra}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def rsa_key(kid: str = "rsa-1", alg: str = "RS256", bits: int = 2048) -> SigningKey:
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=bits))


def ec_key(kid: str = "ec-1", alg: str = "ES256") -> SigningKey:
    curve = ec.SECP384R1() if alg == "ES384" else ec.SECP256R1()
    return SigningKey(kid, alg, ec.generate_private_key(curve))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims_for(
    issuer: str,
    *,
    sub: str = "agent-7",
    aud: str | list[str] = AUDIENCE,
    ttl: int = 300,
    **extra: Any,
) -> dict[str, Any]:
    """Typical ID-token claims; pass a claim as None to leave it out."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": aud,
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        **extra,
    }
    return {name: value for name, value in claims.items() if value is not None}


def mint(
    key: SigningKey, claims: Mapping[str, Any], *, alg: str | None = None, **headers: Any
) -> str:
    """Sign ``claims`` with ``key``; ``headers`` add or override fields, kid=None drops it."""
    header = {"kid": key.kid, **headers}
    header = {name: value for name, value in header.items() if value is not None}
    return jwt.encode(dict(claims), key.private_key, algorithm=alg or key.alg, headers=header)


def craft(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand, for what PyJWT refuses to produce."""
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(claims).encode()),
            b64url(signature),
        ]
    )


class OidcServer:
    """An OIDC issuer on 127.0.0.1; change ``keys`` to rotate, ``down`` or ``overrides`` to fail."""

    def __init__(self, keys: list[SigningKey], *, announced_issuer: str | None = None) -> None:
        self.keys = keys
        self.down = False
        self.overrides: dict[str, bytes] = {}  # path -> raw response body, to serve faults
        self.requests: Counter[str] = Counter()
        self._announced_issuer = announced_issuer
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._httpd.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        # A short poll interval: shutdown() waits for the next poll, once per test.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests[path]

    def _document(self, path: str) -> dict[str, Any] | None:
        if path == DISCOVERY_PATH:
            return {
                "issuer": self._announced_issuer or self.issuer,
                "jwks_uri": self.issuer + JWKS_PATH,
            }
        if path == JWKS_PATH:
            return {"keys": [key.public_jwk() for key in self.keys]}
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests[self.path] += 1
                document = server._document(self.path)
                if server.down or document is None:
                    self.send_error(503 if server.down else 404)
                    return
                body = server.overrides.get(self.path) or json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        return Handler

    def __enter__(self) -> OidcServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@contextmanager
def oidc_server(*keys: SigningKey, announced_issuer: str | None = None) -> Iterator[OidcServer]:
    with OidcServer(list(keys), announced_issuer=announced_issuer) as server:
        yield server


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = httpd.server_address[1]
    httpd.server_close()
    return f"http://127.0.0.1:{port}"
