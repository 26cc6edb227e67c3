from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from custos.demo.certificates import CertificateBundle, generate_ca_and_server_cert


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify(bundle: CertificateBundle, subject: x509.DNSName | x509.IPAddress) -> None:
    verifier = PolicyBuilder().store(Store([_load(bundle.ca_cert)])).build_server_verifier(subject)
    verifier.verify(_load(bundle.server_cert), [])


def test_server_certificate_names_the_default_hosts(tmp_path: Path) -> None:
    bundle = generate_ca_and_server_cert(tmp_path)
    san = _load(bundle.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_server_certificate_names_given_hosts(tmp_path: Path) -> None:
    bundle = generate_ca_and_server_cert(
        tmp_path, hostnames=("gateway.test", "localhost"), ips=("10.0.0.7",)
    )
    san = _load(bundle.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["gateway.test", "localhost"]
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]


def test_only_the_ca_is_a_ca(tmp_path: Path) -> None:
    bundle = generate_ca_and_server_cert(tmp_path)
    ca = _load(bundle.ca_cert).extensions
    server = _load(bundle.server_cert).extensions
    ca_constraints = ca.get_extension_for_class(x509.BasicConstraints)
    assert ca_constraints.critical
    assert ca_constraints.value.ca
    assert ca.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert not server.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert list(server.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]


def test_server_certificate_verifies_for_its_names_only(tmp_path: Path) -> None:
    bundle = generate_ca_and_server_cert(tmp_path)
    _verify(bundle, x509.DNSName("localhost"))
    _verify(bundle, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    with pytest.raises(VerificationError):
        _verify(bundle, x509.DNSName("example.com"))


def test_a_new_ca_does_not_vouch_for_an_old_server_certificate(tmp_path: Path) -> None:
    old = generate_ca_and_server_cert(tmp_path / "old")
    new = generate_ca_and_server_cert(tmp_path / "new")
    mixed = CertificateBundle(new.ca_cert, old.server_cert, old.server_key)
    with pytest.raises(VerificationError):
        _verify(mixed, x509.DNSName("localhost"))


def test_key_is_private_and_matches_the_certificate(tmp_path: Path) -> None:
    bundle = generate_ca_and_server_cert(tmp_path)
    assert stat.S_IMODE(bundle.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.ca_cert.stat().st_mode) == 0o644
    key = serialization.load_pem_private_key(bundle.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == _load(bundle.server_cert).public_key()


def test_regenerating_keeps_the_key_private(tmp_path: Path) -> None:
    first = generate_ca_and_server_cert(tmp_path)
    first.server_key.chmod(0o644)
    second = generate_ca_and_server_cert(tmp_path)
    assert second.server_key == first.server_key
    assert stat.S_IMODE(second.server_key.stat().st_mode) == 0o600


def test_the_ca_key_is_not_written(tmp_path: Path) -> None:
    generate_ca_and_server_cert(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "ca.crt",
        "server.crt",
        "server.key",
    ]


def test_validity_follows_days(tmp_path: Path) -> None:
    bundle = generate_ca_and_server_cert(tmp_path, days=3)
    cert = _load(bundle.server_cert)
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now
    lifetime = cert.not_valid_after_utc - now
    assert datetime.timedelta(days=2) < lifetime <= datetime.timedelta(days=3)


def test_creates_missing_directories(tmp_path: Path) -> None:
    bundle = generate_ca_and_server_cert(tmp_path / "a" / "b")
    assert bundle.ca_cert.parent == tmp_path / "a" / "b"


@pytest.mark.parametrize("days", [0, -1])
def test_rejects_a_validity_under_a_day(tmp_path: Path, days: int) -> None:
    with pytest.raises(ValueError, match="days must be at least 1"):
        generate_ca_and_server_cert(tmp_path, days=days)


def test_rejects_a_host_name_given_as_an_ip(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        generate_ca_and_server_cert(tmp_path, ips=("localhost",))


@pytest.mark.parametrize("name", ["", "two words", "a/b"])
def test_rejects_unusable_host_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not a usable host name"):
        generate_ca_and_server_cert(tmp_path, hostnames=(name,))


def test_rejects_a_certificate_for_nobody(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one hostname or IP"):
        generate_ca_and_server_cert(tmp_path, hostnames=(), ips=())


def test_rejects_a_bare_string_for_a_list(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        generate_ca_and_server_cert(tmp_path, hostnames="localhost")


def test_bad_input_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        generate_ca_and_server_cert(tmp_path / "certs", ips=("nope",))
    assert not (tmp_path / "certs").exists()
