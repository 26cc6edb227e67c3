"""The upstream authentication exchange, against a real PostgreSQL and against crafted input."""

from __future__ import annotations

import base64
import datetime
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


def _self_signed(algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
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
        .sign(key, algorithm)
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
    certificate_pem, key_pem = _self_signed(hashes.SHA384())
    if prefix:
        for path in (root, sockets):
            shutil.chown(path, OS_USER)

    def run(*command: str) -> None:
        subprocess.run(
            [*prefix, *command], cwd=root, check=True, capture_output=True, timeout=120
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
        yield Server(port, sockets, x509.load_pem_x509_certificate(certificate_pem).public_bytes(
            serialization.Encoding.DER
        ))
    finally:
        if started:
            run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


# A minimal client: StartupMessage, then every 'R' through the exchange


@dataclass(frozen=True)
class Outcome:
    sqlstate: str | None  # None: the server reached ReadyForQuery
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
    certificate: bytes | None = None,
) -> Outcome:
    """Authenticates; ``certificate`` overrides the one the TLS handshake presented."""
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
            if certificate is None:
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
                return Outcome(_error_fields(body)["C"], exchange)
            elif kind == b"Z":
                return Outcome(None, exchange)


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
    assert not outcome.exchange.done


def test_scram_over_tls_binds_to_the_server_certificate(server: Server) -> None:
    outcome = _connect(server, "scram_user", SCRAM_PASSWORD, tls=True)
    assert outcome.sqlstate is None
    assert outcome.exchange.method == "SCRAM-SHA-256-PLUS"


def test_scram_over_tls_without_the_certificate_falls_back_to_plain_scram(
    server: Server,
) -> None:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    raw.close()
    outcome = _connect(server, "scram_user", SCRAM_PASSWORD, tls=True, certificate=None)
    assert outcome.exchange.method == "SCRAM-SHA-256-PLUS"


def test_channel_binding_to_another_certificate_is_refused(server: Server) -> None:
    other_pem, _ = _self_signed(hashes.SHA384())
    other = x509.load_pem_x509_certificate(other_pem).public_bytes(serialization.Encoding.DER)
    outcome = _connect(server, "scram_user", SCRAM_PASSWORD, tls=True, certificate=other)
    assert outcome.sqlstate is not None
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
    with pytest.raises(UpstreamAuthenticationError, match="GSSAPI.*scram-sha-256"):
        _connect(server, "gss_user", "irrelevant")
