"""The upstream authentication exchange, against a real PostgreSQL and against crafted input."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import pwd
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from scramp import ScramMechanism

from custos.upstream.auth import UpstreamAuthExchange
from custos.upstream.errors import UpstreamAuthenticationError

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "custos-test"

SCRAM_PASSWORD = "scram-pässwörd ☃"
MD5_PASSWORD = "md5-pässwort"
CLEAR_PASSWORD = "clear-pässwort"

HBA = """\
local all postgres trust
host all scram_user 127.0.0.1/32 scram-sha-256
host all md5_user 127.0.0.1/32 md5
host all trust_user 127.0.0.1/32 trust
host all clear_user 127.0.0.1/32 password
host all gss_user 127.0.0.1/32 gss
"""


# A private throwaway cluster (the project-wide fixture may replace it later)


@dataclass(frozen=True)
class Server:
    port: int
    socket_dir: Path
    certificate_der: bytes


def _self_signed() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM); P-384 with SHA-384 so a hash hard-wired to SHA-256 fails."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA384())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _as_cluster_owner() -> list[str]:
    # PostgreSQL refuses to run as root, so root hands the cluster to an unprivileged user.
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", OS_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        # 9: created meanwhile by another process.
        assert result.returncode in (0, 9), result.stderr
    return ["runuser", "-u", OS_USER, "--"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    if not (PG_BIN / "postgres").exists():
        pytest.skip(f"PostgreSQL 15 server binaries not found in {PG_BIN}")
    prefix = _as_cluster_owner()
    root = Path(tempfile.mkdtemp(prefix="custos-upstream-auth-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    certificate_pem, key_pem = _self_signed()
    certificate_der = x509.load_pem_x509_certificate(certificate_pem).public_bytes(
        serialization.Encoding.DER
    )
    if prefix:
        for path in (root, sockets):
            shutil.chown(path, OS_USER)

    def run(*command: str) -> None:
        result = subprocess.run(
            [*prefix, *command], cwd=root, capture_output=True, text=True, timeout=120, check=False
        )
        log = root / "log"
        assert result.returncode == 0, (
            f"{command[0]} failed: {result.stderr}\n{log.read_text() if log.exists() else ''}"
        )

    started = False
    try:
        run(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-N")
        (data / "server.crt").write_bytes(certificate_pem)
        (data / "server.key").write_bytes(key_pem)
        (data / "server.key").chmod(0o600)
        (data / "pg_hba.conf").write_text(HBA)
        port = _free_port()
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                f"unix_socket_directories = '{sockets}'\nssl = on\nfsync = off\n"
            )
        if prefix:
            for path in (data / "server.crt", data / "server.key"):
                shutil.chown(path, OS_USER)
        run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start")
        started = True
        with psycopg.connect(
            host=str(sockets), port=port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE ROLE scram_user LOGIN PASSWORD '{SCRAM_PASSWORD}'")
            conn.execute(f"CREATE ROLE clear_user LOGIN PASSWORD '{CLEAR_PASSWORD}'")
            conn.execute("CREATE ROLE trust_user LOGIN")
            conn.execute("CREATE ROLE gss_user LOGIN")
            conn.execute("SET password_encryption = 'md5'")
            conn.execute(f"CREATE ROLE md5_user LOGIN PASSWORD '{MD5_PASSWORD}'")
        yield Server(port, sockets, certificate_der)
    finally:
        if started:
            run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


# A minimal client: StartupMessage, then every 'R' through the exchange


@dataclass(frozen=True)
class Outcome:
    sqlstate: str | None  # None: the server reached ReadyForQuery
    message: str | None
    exchange: UpstreamAuthExchange


def _read_exactly(stream: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = stream.recv(size - len(chunks))
        assert chunk, "server closed the connection"
        chunks += chunk
    return bytes(chunks)


def _error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for item in body.split(b"\0"):
        if item:
            fields[chr(item[0])] = item[1:].decode()
    return fields


def _connect(
    server: Server,
    user: str,
    password: str | None,
    *,
    tls: bool = False,
    bind: bool = True,
    certificate: bytes | None = None,
) -> Outcome:
    """Authenticates; with TLS, binds to ``certificate`` or else the one the server presented."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    stream: socket.socket = raw
    with raw:
        if tls:
            raw.sendall(struct.pack("!ii", 8, 80877103))
            assert _read_exactly(raw, 1) == b"S"
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            stream = context.wrap_socket(raw, server_hostname="localhost")
            if bind and certificate is None:
                certificate = stream.getpeercert(binary_form=True)
        exchange = UpstreamAuthExchange(user, password, tls_server_certificate=certificate)
        parameters = b"user\0" + user.encode() + b"\0database\0postgres\0\0"
        stream.sendall(struct.pack("!ii", 8 + len(parameters), 196608) + parameters)
        while True:
            kind = _read_exactly(stream, 1)
            (length,) = struct.unpack("!i", _read_exactly(stream, 4))
            body = _read_exactly(stream, length - 4)
            if kind == b"R":
                reply = exchange.on_authentication(body)
                if reply is not None:
                    stream.sendall(reply)
            elif kind == b"E":
                fields = _error_fields(body)
                return Outcome(fields["C"], fields["M"], exchange)
            elif kind == b"Z":
                return Outcome(None, None, exchange)


# Against the real server


@pytest.mark.parametrize(
    ("user", "password", "method"),
    [
        ("scram_user", SCRAM_PASSWORD, "SCRAM-SHA-256"),
        ("md5_user", MD5_PASSWORD, "md5"),
        ("clear_user", CLEAR_PASSWORD, "password"),
        ("trust_user", None, "trust"),
    ],
)
def test_authenticates_with_each_password_method(
    server: Server, user: str, password: str | None, method: str
) -> None:
    outcome = _connect(server, user, password)
    assert outcome.sqlstate is None
    assert outcome.exchange.done
    assert outcome.exchange.method == method


@pytest.mark.parametrize("user", ["scram_user", "md5_user", "clear_user"])
def test_a_wrong_password_is_refused_by_the_server(server: Server, user: str) -> None:
    outcome = _connect(server, user, "not-the-password")
    assert outcome.sqlstate == "28P01"
    assert outcome.message == f'password authentication failed for user "{user}"'
    assert not outcome.exchange.done


def test_scram_over_tls_binds_to_the_server_certificate(server: Server) -> None:
    outcome = _connect(server, "scram_user", SCRAM_PASSWORD, tls=True)
    assert outcome.sqlstate is None
    assert outcome.exchange.method == "SCRAM-SHA-256-PLUS"


def test_scram_over_tls_without_the_certificate_falls_back_to_plain_scram(
    server: Server,
) -> None:
    outcome = _connect(server, "scram_user", SCRAM_PASSWORD, tls=True, bind=False)
    assert outcome.sqlstate is None
    assert outcome.exchange.method == "SCRAM-SHA-256"


def test_channel_binding_to_another_certificate_is_refused(server: Server) -> None:
    other_pem, _ = _self_signed()
    other = x509.load_pem_x509_certificate(other_pem).public_bytes(serialization.Encoding.DER)
    outcome = _connect(server, "scram_user", SCRAM_PASSWORD, tls=True, certificate=other)
    assert (outcome.sqlstate, outcome.message) == ("28000", "SCRAM channel binding check failed")
    assert not outcome.exchange.done


def test_a_binding_capable_client_on_a_plain_connection_still_authenticates(
    server: Server,
) -> None:
    # No TLS: the server offers only SCRAM-SHA-256 and accepts the "y" (could bind) flag.
    outcome = _connect(server, "scram_user", SCRAM_PASSWORD, certificate=server.certificate_der)
    assert outcome.sqlstate is None
    assert outcome.exchange.method == "SCRAM-SHA-256"


@pytest.mark.parametrize("user", ["scram_user", "md5_user", "clear_user"])
def test_a_missing_password_stops_before_anything_is_sent(server: Server, user: str) -> None:
    with pytest.raises(UpstreamAuthenticationError, match=f"for user {user}.*has no password"):
        _connect(server, user, None)


def test_gssapi_is_refused_with_what_to_configure_instead(server: Server) -> None:
    with pytest.raises(UpstreamAuthenticationError, match=r"GSSAPI.*scram-sha-256"):
        _connect(server, "gss_user", "irrelevant")


# Crafted server messages

PASSWORD = "correct horse battery staple"


def _request(code: int, body: bytes = b"") -> bytes:
    return struct.pack("!i", code) + body


def _sasl(*mechanisms: str) -> bytes:
    return _request(10, b"".join(name.encode() + b"\0" for name in mechanisms) + b"\0")


def _frontend_body(message: bytes | None) -> bytes:
    assert message is not None
    assert message[:1] == b"p"
    (length,) = struct.unpack("!i", message[1:5])
    assert length == len(message) - 1
    return message[5:]


class FakeScramServer:
    """scramp's server side, knowing PASSWORD."""

    def __init__(self) -> None:
        mechanism = ScramMechanism()
        auth_info = mechanism.make_auth_info(PASSWORD)
        self._server = mechanism.make_server(lambda _username: auth_info)

    def run_until_final(self, exchange: UpstreamAuthExchange) -> str:
        """Drives the exchange up to the server-final message, which it returns unsent."""
        initial = _frontend_body(exchange.on_authentication(_sasl("SCRAM-SHA-256")))
        mechanism, rest = initial.split(b"\0", 1)
        assert mechanism == b"SCRAM-SHA-256"
        (length,) = struct.unpack("!i", rest[:4])
        assert length == len(rest) - 4
        self._server.set_client_first(rest[4:].decode())
        server_first = self._server.get_server_first()
        client_final = _frontend_body(
            exchange.on_authentication(_request(11, server_first.encode()))
        )
        self._server.set_client_final(client_final.decode())
        return str(self._server.get_server_final())


def _failure(exchange: UpstreamAuthExchange, payload: bytes) -> str:
    with pytest.raises(UpstreamAuthenticationError) as caught:
        exchange.on_authentication(payload)
    message = str(caught.value)
    assert PASSWORD not in message
    return message


def test_scram_is_done_only_after_the_server_proves_itself_and_says_ok() -> None:
    exchange = UpstreamAuthExchange("alice", PASSWORD)
    server_final = FakeScramServer().run_until_final(exchange)
    assert exchange.on_authentication(_request(12, server_final.encode())) is None
    assert not exchange.done
    assert exchange.on_authentication(_request(0)) is None
    assert exchange.done
    assert exchange.method == "SCRAM-SHA-256"


def test_a_wrong_server_signature_fails_mutual_authentication() -> None:
    exchange = UpstreamAuthExchange("alice", PASSWORD)
    FakeScramServer().run_until_final(exchange)
    forged = "v=" + base64.b64encode(bytes(32)).decode()
    assert "failed to prove it knows" in _failure(exchange, _request(12, forged.encode()))
    assert "already failed" in _failure(exchange, _request(0))
    assert not exchange.done


def test_a_server_error_in_the_final_message_fails() -> None:
    exchange = UpstreamAuthExchange("alice", PASSWORD)
    FakeScramServer().run_until_final(exchange)
    assert "failed to prove" in _failure(exchange, _request(12, b"e=invalid-proof"))


def test_ok_without_the_server_final_message_is_refused() -> None:
    exchange = UpstreamAuthExchange("alice", PASSWORD)
    FakeScramServer().run_until_final(exchange)
    message = _failure(exchange, _request(0))
    assert "AuthenticationOk after the SCRAM client-final message" in message
    assert not exchange.done


def test_a_challenge_that_does_not_extend_our_nonce_is_refused() -> None:
    exchange = UpstreamAuthExchange("alice", PASSWORD)
    exchange.on_authentication(_sasl("SCRAM-SHA-256"))
    challenge = b"r=someone-elses-nonce,s=" + base64.b64encode(b"salt") + b",i=4096"
    assert "SCRAM challenge is invalid" in _failure(exchange, _request(11, challenge))


@pytest.mark.parametrize("body", [b"\xff\xfe", b"not a scram message"])
def test_a_malformed_challenge_is_refused(body: bytes) -> None:
    exchange = UpstreamAuthExchange("alice", PASSWORD)
    exchange.on_authentication(_sasl("SCRAM-SHA-256"))
    assert "SCRAM challenge is invalid" in _failure(exchange, _request(11, body))


def test_plain_scram_is_chosen_over_plus_without_a_certificate() -> None:
    exchange = UpstreamAuthExchange("alice", PASSWORD)
    body = _frontend_body(exchange.on_authentication(_sasl("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")))
    assert body.startswith(b"SCRAM-SHA-256\0")
    # gs2 header "n,,": this client does not bind to a channel.
    assert body[len(b"SCRAM-SHA-256\0") + 4 :].startswith(b"n,,")


def test_only_plus_without_tls_is_refused() -> None:
    message = _failure(UpstreamAuthExchange("alice", PASSWORD), _sasl("SCRAM-SHA-256-PLUS"))
    assert "only SCRAM-SHA-256-PLUS" in message
    assert "TLS" in message


@pytest.mark.parametrize(
    ("mechanisms", "named"), [(("OAUTHBEARER",), "OAUTHBEARER"), ((), "(none)")]
)
def test_unknown_sasl_mechanisms_are_named(mechanisms: tuple[str, ...], named: str) -> None:
    message = _failure(UpstreamAuthExchange("alice", PASSWORD), _sasl(*mechanisms))
    assert f"offers SASL mechanisms {named}" in message
    assert "scram-sha-256" in message


@pytest.mark.parametrize(
    ("code", "method"),
    [
        (2, "Kerberos V5"),
        (4, "crypt"),
        (6, "SCM credentials"),
        (7, "GSSAPI"),
        (8, "GSSAPI"),
        (9, "SSPI"),
    ],
)
def test_unsupported_methods_say_what_to_configure(code: int, method: str) -> None:
    message = _failure(UpstreamAuthExchange("alice", PASSWORD), _request(code))
    assert f"asks for {method} authentication" in message
    assert "pg_hba.conf" in message
    assert "upstream.rds_iam" in message


def test_cleartext_password_message_bytes() -> None:
    reply = UpstreamAuthExchange("alice", "pässword").on_authentication(_request(3))
    body = "pässword".encode() + b"\0"
    assert reply == b"p" + struct.pack("!i", len(body) + 4) + body


def test_md5_password_message_matches_postgresql_md5_scheme() -> None:
    # pg_authid holds md5 || md5("postgres" || "postgres") for that role and password.
    stored = b"3175bce1d3201d16594cebf9d7eb3f9d"
    salt = b"\x01\x02\x03\x04"
    reply = UpstreamAuthExchange("postgres", "postgres").on_authentication(_request(5, salt))
    expected = b"md5" + hashlib.md5(stored + salt, usedforsecurity=False).hexdigest().encode()
    assert _frontend_body(reply) == expected + b"\0"


@pytest.mark.parametrize("password", [None, ""])
@pytest.mark.parametrize("request_", [_request(3), _request(5, b"salt"), _sasl("SCRAM-SHA-256")])
def test_a_missing_password_is_reported(password: str | None, request_: bytes) -> None:
    message = _failure(UpstreamAuthExchange("alice", password), request_)
    assert "for user alice, but the upstream credential has no password" in message


def test_trust_needs_no_password() -> None:
    exchange = UpstreamAuthExchange("alice", None)
    assert exchange.on_authentication(_request(0)) is None
    assert exchange.done
    assert exchange.method == "trust"


def test_a_password_with_nul_is_refused() -> None:
    exchange = UpstreamAuthExchange("alice", "pass\0word")
    assert "NUL" in _failure(exchange, _request(3))


def test_a_password_saslprep_forbids_is_refused_for_scram() -> None:
    exchange = UpstreamAuthExchange("alice", "bell\u0007")
    message = _failure(exchange, _sasl("SCRAM-SHA-256"))
    assert "SASLprep" in message
    assert "bell" not in message


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\0\0\0",
        _request(99),
        _request(-1),
        _request(0, b"x"),
        _request(3, b"x"),
        _request(5, b"abc"),
        _request(5, b"abcde"),
        _request(10, b"SCRAM-SHA-256\0"),
        _request(10, b"SCRAM-SHA-256"),
        _request(10, b"\xff\0\0"),
        _request(11, b"r=x"),
        _request(12, b"v=x"),
    ],
)
def test_malformed_or_out_of_order_first_messages_are_protocol_violations(payload: bytes) -> None:
    message = _failure(UpstreamAuthExchange("alice", PASSWORD), payload)
    assert "breaks PostgreSQL's authentication protocol" in message


@pytest.mark.parametrize(
    "sequence",
    [
        [_request(3), _request(3)],
        [_request(5, b"salt"), _sasl("SCRAM-SHA-256")],
        [_request(3), _request(12, b"v=x")],
        [_request(0), _request(0)],
        [_request(0), _request(3)],
        [_sasl("SCRAM-SHA-256"), _sasl("SCRAM-SHA-256")],
        [_sasl("SCRAM-SHA-256"), _request(0)],
    ],
)
def test_requests_out_of_order_are_protocol_violations(sequence: list[bytes]) -> None:
    exchange = UpstreamAuthExchange("alice", PASSWORD)
    for payload in sequence[:-1]:
        exchange.on_authentication(payload)
    assert "breaks PostgreSQL's authentication protocol" in _failure(exchange, sequence[-1])


def test_a_certificate_that_is_not_der_is_refused() -> None:
    with pytest.raises(UpstreamAuthenticationError, match=r"not a DER X\.509 certificate"):
        UpstreamAuthExchange("alice", PASSWORD, tls_server_certificate=b"not a certificate")


def test_an_ed25519_certificate_cannot_bind() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )
    with pytest.raises(UpstreamAuthenticationError, match="Ed25519"):
        UpstreamAuthExchange(
            "alice",
            PASSWORD,
            tls_server_certificate=certificate.public_bytes(serialization.Encoding.DER),
        )


_payloads = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda code, body: struct.pack("!i", code) + body,
        st.integers(min_value=-1, max_value=13),
        st.binary(max_size=64),
    ),
)


@given(st.lists(_payloads, max_size=6))
def test_any_input_yields_a_reply_or_an_authentication_error(payloads: list[bytes]) -> None:
    exchange = UpstreamAuthExchange("alice", PASSWORD)
    errors = []
    for payload in payloads:
        try:
            reply = exchange.on_authentication(payload)
        except UpstreamAuthenticationError as error:
            errors.append(str(error))
            continue
        assert reply is None or reply.startswith(b"p")
    assert not any(PASSWORD in error for error in errors)
