"""The local dev issuer: its files, its tokens, and the durations its CLI accepts."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from custos.identity import (
    AuthenticationError,
    Authenticator,
    DevIssuer,
    RoleConfig,
    TrustStatement,
    parse_duration,
)
from custos.identity.dev_issuer import ISSUER_FILE, KEY_FILE
from custos.identity.principal import Principal


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def authenticator_trusting(dev: DevIssuer, *, groups: list[str] | None = None) -> Authenticator:
    roles = [
        RoleConfig(name="agent", trust=[TrustStatement(issuer=dev.issuer, subjects=["agent-*"])]),
        RoleConfig(name="dba", trust=[TrustStatement(issuer=dev.issuer, groups=groups or ["dba"])]),
    ]
    authenticator = Authenticator([], roles)
    authenticator.add_static_issuer(dev.issuer_config(), dev.jwks())
    return authenticator


def authenticate(authenticator: Authenticator, token: str, role: str) -> Principal:
    return asyncio.run(authenticator.authenticate(token, role, "127.0.0.1:40000", "test"))


def refusal(authenticator: Authenticator, token: str, role: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        authenticate(authenticator, token, role)
    assert token not in str(caught.value)
    assert token not in (caught.value.hint or "")
    return caught.value


# --- files -------------------------------------------------------------------------------


def test_first_use_creates_a_private_directory_and_key(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "dev-issuer"
    dev = DevIssuer.open_or_create(directory)
    assert mode_of(directory) == 0o700
    assert mode_of(directory / KEY_FILE) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == sorted([KEY_FILE, ISSUER_FILE])
    assert (directory / KEY_FILE).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    recorded = json.loads((directory / ISSUER_FILE).read_text())
    assert recorded == {"issuer": dev.issuer, "audience": "custos", "kid": dev.kid}
    assert dev.issuer.startswith("https://dev-issuer.custos.invalid/")
    assert len(dev.issuer.rsplit("/", 1)[1]) == 16


def test_private_key_is_written_only_into_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dev"
    DevIssuer.open_or_create(directory)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [f"dev/{ISSUER_FILE}", f"dev/{KEY_FILE}"]


def test_reopening_yields_the_same_issuer(tmp_path: Path) -> None:
    first = DevIssuer.open_or_create(tmp_path / "dev")
    key_before = (tmp_path / "dev" / KEY_FILE).read_bytes()
    second = DevIssuer.open_or_create(tmp_path / "dev")
    third = DevIssuer(tmp_path / "dev")
    assert first.issuer == second.issuer == third.issuer
    assert first.kid == second.kid == third.kid
    assert (tmp_path / "dev" / KEY_FILE).read_bytes() == key_before
    token = first.mint("agent", "agent-1")
    assert authenticate(authenticator_trusting(third), token, "agent").subject == "agent-1"


def test_two_directories_are_two_issuers(tmp_path: Path) -> None:
    mine = DevIssuer.open_or_create(tmp_path / "mine")
    theirs = DevIssuer.open_or_create(tmp_path / "theirs")
    assert mine.issuer != theirs.issuer
    error = refusal(authenticator_trusting(mine), theirs.mint("agent", "agent-1"), "agent")
    assert error.sqlstate == "28P01"
    assert "is not trusted by this gateway" in error.message


def test_existing_directory_is_used_as_it_is(tmp_path: Path) -> None:
    directory = tmp_path / "dev"
    directory.mkdir(mode=0o750)
    DevIssuer.open_or_create(directory)
    assert mode_of(directory / KEY_FILE) == 0o600


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    DevIssuer.open_or_create(tmp_path / "dev")
    (tmp_path / "dev" / KEY_FILE).chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        DevIssuer(tmp_path / "dev")


def test_missing_key_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="open_or_create"):
        DevIssuer(tmp_path / "nothing-here")


def test_unreadable_key_is_refused(tmp_path: Path) -> None:
    DevIssuer.open_or_create(tmp_path / "dev")
    (tmp_path / "dev" / KEY_FILE).write_bytes(b"not a key")
    with pytest.raises(ValueError, match="cannot read the dev issuer key"):
        DevIssuer(tmp_path / "dev")


def test_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    DevIssuer.open_or_create(tmp_path / "dev")
    other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "dev" / KEY_FILE).write_bytes(other)
    with pytest.raises(ValueError, match="does not hold an EC P-256 private key"):
        DevIssuer(tmp_path / "dev")


def test_issuer_file_that_does_not_match_the_key_is_refused(tmp_path: Path) -> None:
    DevIssuer.open_or_create(tmp_path / "dev")
    issuer_file = tmp_path / "dev" / ISSUER_FILE
    recorded = json.loads(issuer_file.read_text())
    issuer_file.write_text(json.dumps({**recorded, "issuer": "https://elsewhere"}))
    with pytest.raises(ValueError, match="does not describe the key"):
        DevIssuer(tmp_path / "dev")
    issuer_file.unlink()
    assert DevIssuer(tmp_path / "dev").issuer == recorded["issuer"]
    assert json.loads(issuer_file.read_text()) == recorded


# --- tokens ------------------------------------------------------------------------------


def test_minted_token_carries_the_documented_claims(tmp_path: Path) -> None:
    dev = DevIssuer.open_or_create(tmp_path / "dev")
    token = dev.mint("dba", "alice", groups=["dba", "eng"], extra_claims={"team": "crm"})
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"]) == ("ES256", dev.kid)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == dev.issuer
    assert claims["aud"] == "custos"
    assert claims["sub"] == "alice"
    assert claims["groups"] == ["dba", "eng"]
    assert claims["custos_role"] == "dba"
    assert claims["team"] == "crm"
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == 900
    assert isinstance(claims["jti"], str)
    assert (
        claims["jti"]
        != jwt.decode(dev.mint("dba", "alice"), options={"verify_signature": False})["jti"]
    )


def test_round_trip_through_the_authenticator(tmp_path: Path) -> None:
    dev = DevIssuer.open_or_create(tmp_path / "dev")
    token = dev.mint("dba", "alice", groups=["dba"])
    principal = authenticate(authenticator_trusting(dev), token, "dba")
    assert (principal.role, principal.subject, principal.issuer) == ("dba", "alice", dev.issuer)
    assert principal.groups == ("dba",)
    assert principal.claims["custos_role"] == "dba"


def test_static_keys_may_be_given_as_pyjwk_objects(tmp_path: Path) -> None:
    dev = DevIssuer.open_or_create(tmp_path / "dev")
    role = RoleConfig(name="agent", trust=[TrustStatement(issuer=dev.issuer)])
    authenticator = Authenticator([], [role])
    authenticator.add_static_issuer(dev.issuer_config(), [jwt.PyJWK(dev.jwks()["keys"][0])])
    assert authenticate(authenticator, dev.mint("agent", "agent-2"), "agent").role == "agent"


def test_static_keys_must_hold_a_usable_public_key(tmp_path: Path) -> None:
    dev = DevIssuer.open_or_create(tmp_path / "dev")
    authenticator = Authenticator([], [])
    with pytest.raises(ValueError, match="no usable RSA or EC public key"):
        authenticator.add_static_issuer(
            dev.issuer_config(), {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}
        )


def test_jwks_holds_only_the_public_key(tmp_path: Path) -> None:
    dev = DevIssuer.open_or_create(tmp_path / "dev")
    (key,) = dev.jwks()["keys"]
    assert key["kty"] == "EC"
    assert key["crv"] == "P-256"
    assert key["kid"] == dev.kid
    assert "d" not in key
    assert dev.issuer_config().algorithms == ["ES256"]
    assert dev.issuer_config().audiences == ["custos"]


def test_token_for_one_role_cannot_assume_another(tmp_path: Path) -> None:
    dev = DevIssuer.open_or_create(tmp_path / "dev")
    token = dev.mint("agent", "agent-1", groups=["dba"])
    error = refusal(authenticator_trusting(dev), token, "dba")
    assert error.sqlstate == "28000"
    assert error.message == "token was issued for role 'agent', not 'dba'"


def test_trust_statements_still_apply_to_dev_tokens(tmp_path: Path) -> None:
    dev = DevIssuer.open_or_create(tmp_path / "dev")
    error = refusal(authenticator_trusting(dev), dev.mint("dba", "bob", groups=["eng"]), "dba")
    assert error.sqlstate == "28000"
    assert "groups: need one of ['dba']" in error.message


def test_ttl_is_honoured(tmp_path: Path) -> None:
    dev = DevIssuer.open_or_create(tmp_path / "dev")
    claims = jwt.decode(
        dev.mint("agent", "agent-1", ttl_seconds=60), options={"verify_signature": False}
    )
    assert claims["exp"] - claims["iat"] == 60
    past = int(time.time()) - 3600
    expired = dev.mint(
        "agent", "agent-1", extra_claims={"iat": past - 900, "nbf": past - 900, "exp": past}
    )
    error = refusal(authenticator_trusting(dev), expired, "agent")
    assert error.sqlstate == "28P01"
    assert error.message.startswith("token expired at ")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"ttl_seconds": 0}, "ttl_seconds must be positive"),
        ({"ttl_seconds": -5}, "ttl_seconds must be positive"),
        ({"subject": ""}, "subject must not be empty"),
        ({"extra_claims": {"sub": "root"}}, r"may not set \['sub'\]"),
        ({"extra_claims": {"iss": "x", "custos_role": "dba"}}, r"\['custos_role', 'iss'\]"),
    ],
)
def test_mint_refuses_bad_arguments(
    tmp_path: Path, arguments: dict[str, object], expected: str
) -> None:
    dev = DevIssuer.open_or_create(tmp_path / "dev")
    call: dict[str, object] = {"role": "agent", "subject": "agent-1", **arguments}
    with pytest.raises(ValueError, match=expected):
        dev.mint(**call)  # type: ignore[arg-type]


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172_800), (" 5m\n", 300), ("0s", 0)],
)
def test_durations_parse_to_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "15", "1.5h", "15x", "-5m", "1h30m", "m", "15 m", "15M", "9999999999s", "\uff11\uff15m"],
)
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"for example 30s, 15m, 1h or 2d"):
        parse_duration(text)
