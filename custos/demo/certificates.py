"""Throwaway TLS certificates for local use: a private CA and one server certificate it signs.

The demo gateway presents the server certificate to its clients, and the embedded PostgreSQL
presents one to the gateway, so both hops can run with `sslmode=verify-full` against the CA.
The CA's private key is never written to disk: nothing else is ever meant to be signed by it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_NAME = "ca.crt"
SERVER_CERT_NAME = "server.crt"
SERVER_KEY_NAME = "server.key"

# Clocks of a container and its host can disagree by a little; a certificate that is not yet
# valid on one of them fails in a confusing way.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertificateBundle:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def generate_ca_and_server_cert(
    directory: Path,
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
    days: int = 30,
) -> CertificateBundle:
    """Write ca.crt, server.crt and server.key (mode 0600) into `directory`, replacing old ones."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}: a certificate needs a validity.")
    if isinstance(hostnames, str) or isinstance(ips, str):
        raise TypeError("hostnames and ips take a sequence of strings, not a single string.")
    addresses = [_parse_ip(ip) for ip in ips]
    names = [_checked_hostname(name) for name in hostnames]
    if not names and not addresses:
        raise ValueError("Give at least one hostname or IP address for the server certificate.")

    now = datetime.datetime.now(datetime.UTC)
    not_before = now - _CLOCK_SKEW
    not_after = now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Custos local demo CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    common_name = names[0] if names else str(addresses[0])
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    san += [x509.IPAddress(address) for address in addresses]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    directory.mkdir(parents=True, exist_ok=True)
    bundle = CertificateBundle(
        ca_cert=directory / CA_CERT_NAME,
        server_cert=directory / SERVER_CERT_NAME,
        server_key=directory / SERVER_KEY_NAME,
    )
    _write(bundle.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(bundle.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(bundle.server_key, key_pem, 0o600)
    return bundle


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address; put host names in `hostnames`, addresses in `ips`."
        ) from None


def _checked_hostname(name: str) -> str:
    if not name or any(ch.isspace() for ch in name) or "/" in name:
        raise ValueError(f"{name!r} is not a usable host name for a certificate.")
    return name


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    # Create with the final mode so a private key is never readable by others, even briefly;
    # chmod as well because O_CREAT keeps the mode of a file that already exists.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)
