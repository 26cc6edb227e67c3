"""The gateway's side of PostgreSQL's authentication exchange, as a sans-IO object.

The socket code hands over the body of each backend 'R' message and sends whatever bytes
come back. A SCRAM exchange counts as done only after the server's final message proves
it knows the password (mutual authentication); an AuthenticationOk that skips that proof
is refused. Any error leaves the exchange failed for good: start a new connection.
"""

import hashlib
import struct
from enum import Enum, auto

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from scramp import ScramClient, ScramException

from custos.upstream.errors import UpstreamAuthenticationError

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"

_OK = 0
_CLEARTEXT_PASSWORD = 3
_MD5_PASSWORD = 5
_SASL = 10
_SASL_CONTINUE = 11
_SASL_FINAL = 12

_MESSAGE_NAMES = {
    _OK: "AuthenticationOk",
    _CLEARTEXT_PASSWORD: "AuthenticationCleartextPassword",
    _MD5_PASSWORD: "AuthenticationMD5Password",
    _SASL: "AuthenticationSASL",
    _SASL_CONTINUE: "AuthenticationSASLContinue",
    _SASL_FINAL: "AuthenticationSASLFinal",
}

_UNSUPPORTED_METHODS = {
    2: "Kerberos V5",
    4: "crypt",
    6: "SCM credentials",
    7: "GSSAPI",
    8: "GSSAPI",
    9: "SSPI",
}

_CONFIGURE_INSTEAD = (
    "change the pg_hba.conf line that matches the gateway's connection to scram-sha-256 "
    "(or md5 or password), or use RDS IAM authentication (upstream.rds_iam)"
)


class _Stage(Enum):
    START = auto()
    SASL_FIRST_SENT = auto()
    SASL_FINAL_SENT = auto()
    SASL_VERIFIED = auto()
    PASSWORD_SENT = auto()
    DONE = auto()
    FAILED = auto()


# Which authentication requests each stage accepts; everything else is a protocol violation.
_EXPECTED: dict[_Stage, frozenset[int]] = {
    _Stage.START: frozenset({_OK, _CLEARTEXT_PASSWORD, _MD5_PASSWORD, _SASL}),
    _Stage.SASL_FIRST_SENT: frozenset({_SASL_CONTINUE}),
    _Stage.SASL_FINAL_SENT: frozenset({_SASL_FINAL}),
    _Stage.SASL_VERIFIED: frozenset({_OK}),
    _Stage.PASSWORD_SENT: frozenset({_OK}),
    _Stage.DONE: frozenset(),
    _Stage.FAILED: frozenset(),
}

_STAGE_DESCRIPTIONS = {
    _Stage.START: "before authentication began",
    _Stage.SASL_FIRST_SENT: "after the SCRAM client-first message",
    _Stage.SASL_FINAL_SENT: "after the SCRAM client-final message",
    _Stage.SASL_VERIFIED: "after SCRAM completed",
    _Stage.PASSWORD_SENT: "after the password was sent",
    _Stage.DONE: "after AuthenticationOk",
}


class UpstreamAuthExchange:
    """Answers the server's authentication requests for one upstream connection.

    ``tls_server_certificate`` is the DER certificate the server presented
    (``ssl_object.getpeercert(binary_form=True)``); pass it on TLS connections so SCRAM is
    bound to the channel (SCRAM-SHA-256-PLUS, tls-server-end-point), leave it None otherwise.
    """

    def __init__(
        self, user: str, password: str | None, *, tls_server_certificate: bytes | None = None
    ) -> None:
        self._user = user
        self._password = password
        self._channel_binding = (
            None
            if tls_server_certificate is None
            else _tls_server_end_point(tls_server_certificate)
        )
        self._stage = _Stage.START
        self._method: str | None = None
        self._scram: ScramClient | None = None

    @property
    def done(self) -> bool:
        return self._stage is _Stage.DONE

    @property
    def method(self) -> str | None:
        """How the server authenticated us: trust, password, md5, or a SCRAM mechanism name."""
        return self._method

    def on_authentication(self, payload: bytes) -> bytes | None:
        """Takes an 'R' message body; returns the frontend message to send, or None."""
        if self._stage is _Stage.FAILED:
            raise UpstreamAuthenticationError(
                "this upstream authentication already failed; open a new connection"
            )
        try:
            return self._dispatch(payload)
        except UpstreamAuthenticationError:
            self._stage = _Stage.FAILED
            raise

    def _dispatch(self, payload: bytes) -> bytes | None:
        if len(payload) < 4:
            raise _protocol_violation("an authentication message shorter than 4 bytes")
        (code,) = struct.unpack_from("!i", payload)
        body = payload[4:]
        if code in _UNSUPPORTED_METHODS:
            raise UpstreamAuthenticationError(
                f"upstream asks for {_UNSUPPORTED_METHODS[code]} authentication, which the "
                f"gateway does not support; {_CONFIGURE_INSTEAD}"
            )
        name = _MESSAGE_NAMES.get(code)
        if name is None:
            raise _protocol_violation(f"an authentication request of unknown type {code}")
        if code not in _EXPECTED[self._stage]:
            raise _protocol_violation(f"{name} {_STAGE_DESCRIPTIONS[self._stage]}")
        if code == _CLEARTEXT_PASSWORD:
            return self._on_cleartext_password(body)
        if code == _MD5_PASSWORD:
            return self._on_md5_password(body)
        if code == _SASL:
            return self._on_sasl(body)
        if code == _SASL_CONTINUE:
            return self._on_sasl_continue(body)
        if code == _SASL_FINAL:
            self._on_sasl_final(body)
        else:
            self._on_ok(body)
        return None

    def _on_ok(self, body: bytes) -> None:
        _expect_empty(body, "AuthenticationOk")
        if self._stage is _Stage.START:
            self._method = "trust"
        self._stage = _Stage.DONE

    def _on_cleartext_password(self, body: bytes) -> bytes:
        _expect_empty(body, "AuthenticationCleartextPassword")
        self._method = "password"
        password = self._require_password("a cleartext password")
        self._stage = _Stage.PASSWORD_SENT
        return _password_message(password.encode("utf-8"))

    def _on_md5_password(self, body: bytes) -> bytes:
        if len(body) != 4:
            raise _protocol_violation("an AuthenticationMD5Password whose salt is not 4 bytes")
        self._method = "md5"
        password = self._require_password("an MD5 password")
        # PostgreSQL's md5 scheme, fixed by the protocol: not a choice of ours.
        inner = hashlib.md5(password.encode() + self._user.encode(), usedforsecurity=False)
        outer = hashlib.md5(inner.hexdigest().encode() + body, usedforsecurity=False)
        self._stage = _Stage.PASSWORD_SENT
        return _password_message(b"md5" + outer.hexdigest().encode())

    def _on_sasl(self, body: bytes) -> bytes:
        mechanisms = _sasl_mechanisms(body)
        if SCRAM_SHA_256_PLUS in mechanisms and self._channel_binding is not None:
            mechanism = SCRAM_SHA_256_PLUS
        elif SCRAM_SHA_256 in mechanisms:
            mechanism = SCRAM_SHA_256
        elif SCRAM_SHA_256_PLUS in mechanisms:
            raise UpstreamAuthenticationError(
                "upstream offers only SCRAM-SHA-256-PLUS, which binds authentication to the "
                "TLS channel; connect with TLS (upstream sslmode require or stricter)"
            )
        else:
            raise UpstreamAuthenticationError(
                f"upstream offers SASL mechanisms {', '.join(mechanisms) or '(none)'}, none of "
                "which the gateway supports; store the role's password as SCRAM-SHA-256 "
                "(password_encryption = 'scram-sha-256')"
            )
        self._method = mechanism
        password = self._require_password(mechanism)
        binding = (
            None
            if self._channel_binding is None
            else ("tls-server-end-point", self._channel_binding)
        )
        try:
            self._scram = ScramClient([mechanism], self._user, password, channel_binding=binding)
            client_first = self._scram.get_client_first().encode("utf-8")
        except ScramException as error:
            raise UpstreamAuthenticationError(
                f"cannot start SCRAM: the user name or password has characters SASLprep "
                f"forbids ({error.args[0]}); give the role a password of printable characters"
            ) from None
        self._stage = _Stage.SASL_FIRST_SENT
        return _frontend(
            mechanism.encode("ascii") + b"\0" + struct.pack("!i", len(client_first)) + client_first
        )

    def _on_sasl_continue(self, body: bytes) -> bytes:
        assert self._scram is not None
        try:
            self._scram.set_server_first(body.decode("utf-8"))
            client_final = self._scram.get_client_final().encode("utf-8")
        except (ScramException, UnicodeDecodeError) as error:
            raise UpstreamAuthenticationError(
                f"upstream's SCRAM challenge is invalid ({_reason(error)}); check that "
                "upstream.host points at PostgreSQL"
            ) from None
        self._stage = _Stage.SASL_FINAL_SENT
        return _frontend(client_final)

    def _on_sasl_final(self, body: bytes) -> None:
        assert self._scram is not None
        try:
            self._scram.set_server_final(body.decode("utf-8"))
        except (ScramException, UnicodeDecodeError) as error:
            raise UpstreamAuthenticationError(
                f"upstream failed to prove it knows the role's password ({_reason(error)}): "
                "the server is not the database the credential belongs to, or something "
                "between the gateway and the database is impersonating it; check "
                "upstream.host and use sslmode=verify-full"
            ) from None
        self._stage = _Stage.SASL_VERIFIED

    def _require_password(self, what: str) -> str:
        password = self._password
        if not password:
            raise UpstreamAuthenticationError(
                f"upstream asks for {what} for user {self._user}, but the upstream credential "
                "has no password; put one in upstream.dsn, or use upstream.secret_id or "
                "upstream.rds_iam"
            )
        if "\0" in password:
            raise UpstreamAuthenticationError(
                "the upstream password contains a NUL character, which PostgreSQL cannot "
                "receive; change the password"
            )
        return password


def _tls_server_end_point(certificate: bytes) -> bytes:
    """RFC 5929 channel-binding data: the certificate hashed with its signature's hash."""
    try:
        algorithm = x509.load_der_x509_certificate(certificate).signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm):
        algorithm = None
    if algorithm is None:
        raise UpstreamAuthenticationError(
            "cannot bind SCRAM to the upstream's TLS certificate: it is not a DER X.509 "
            "certificate signed with a hash (pass ssl_object.getpeercert(binary_form=True); "
            "Ed25519 and Ed448 certificates cannot be used for channel binding)"
        )
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate)
    return digest.finalize()


def _sasl_mechanisms(body: bytes) -> list[str]:
    # Each name ends with a NUL and an empty name ends the list.
    names = body[:-1].split(b"\0")
    if not body.endswith(b"\0") or names[-1] != b"":
        raise _protocol_violation("an AuthenticationSASL whose mechanism list is not terminated")
    try:
        return [name.decode("ascii") for name in names[:-1]]
    except UnicodeDecodeError:
        raise _protocol_violation("an AuthenticationSASL with a non-ASCII mechanism name") from None


def _expect_empty(body: bytes, name: str) -> None:
    if body:
        raise _protocol_violation(f"an {name} with {len(body)} unexpected trailing bytes")


def _password_message(password: bytes) -> bytes:
    return _frontend(password + b"\0")


def _frontend(body: bytes) -> bytes:
    return b"p" + struct.pack("!i", len(body) + 4) + body


def _reason(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8"
    return str(error.args[0]) if error.args else type(error).__name__


def _protocol_violation(what: str) -> UpstreamAuthenticationError:
    return UpstreamAuthenticationError(
        f"upstream sent {what}, which breaks PostgreSQL's authentication protocol; check that "
        "upstream.host and port point at a PostgreSQL server"
    )
