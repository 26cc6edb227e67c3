"""Token verification against a real OIDC issuer served over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from custos.identity import (
    AuthenticationError,
    Authenticator,
    IssuerConfig,
    JwksCache,
    RoleConfig,
    TokenVerifier,
    TrustStatement,
)
from custos.identity.jwks import parse_jwks
from tests.oidc_fixtures import (
    AUDIENCE,
    DISCOVERY_PATH,
    JWKS_PATH,
    OidcServer,
    SigningKey,
    b64url,
    claims_for,
    closed_port_url,
    craft,
    ec_key,
    mint,
    oidc_server,
    rsa_key,
)


@pytest.fixture(scope="module")
def rsa_signer() -> SigningKey:
    return rsa_key("rsa-1")


@pytest.fixture(scope="module")
def ec_signer() -> SigningKey:
    return ec_key("ec-1")


@pytest.fixture
def server(rsa_signer: SigningKey, ec_signer: SigningKey) -> Iterator[OidcServer]:
    with oidc_server(rsa_signer, ec_signer) as running:
        yield running


class FakeClock:
    """A monotonic clock the test moves by hand, for TTL and rate limits."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier_for(
    server: OidcServer, jwks: JwksCache | None = None, **issuer_fields: Any
) -> TokenVerifier:
    config = IssuerConfig(issuer=server.issuer, audiences=[AUDIENCE], **issuer_fields)
    return TokenVerifier([config], jwks or JwksCache())


def verify(verifier: TokenVerifier, token: str) -> dict[str, Any]:
    return asyncio.run(verifier.verify(token))


def rejected(verifier: TokenVerifier, token: str) -> AuthenticationError:
    """The refusal of ``token``, after checking it is a 28P01 that does not echo the token."""
    with pytest.raises(AuthenticationError) as caught:
        verify(verifier, token)
    error = caught.value
    assert error.sqlstate == "28P01"
    assert_token_not_echoed(error, token)
    return error


def assert_token_not_echoed(error: AuthenticationError, token: str) -> None:
    # An empty or blank token is a substring of everything; nothing to echo there.
    if token.strip():
        assert token not in str(error)
        assert token not in error.message
        assert error.hint is None or token not in error.hint
        for segment in token.split(".")[:2]:
            if len(segment) > 16:
                assert segment not in str(error)


# --- tokens that must pass ---------------------------------------------------------------


def test_valid_rs256_token_returns_its_claims(server: OidcServer, rsa_signer: SigningKey) -> None:
    verifier = verifier_for(server)
    claims = verify(verifier, mint(rsa_signer, claims_for(server.issuer)))
    assert claims["sub"] == "agent-7"
    assert claims["iss"] == server.issuer
    assert server.count(DISCOVERY_PATH) == 1
    assert server.count(JWKS_PATH) == 1


def test_valid_es256_token_returns_its_claims(server: OidcServer, ec_signer: SigningKey) -> None:
    claims = verify(verifier_for(server), mint(ec_signer, claims_for(server.issuer, sub="ci")))
    assert claims["sub"] == "ci"


def test_keys_are_cached_between_tokens(
    server: OidcServer, rsa_signer: SigningKey, ec_signer: SigningKey
) -> None:
    verifier = verifier_for(server)
    for signer in (rsa_signer, ec_signer, rsa_signer):
        verify(verifier, mint(signer, claims_for(server.issuer)))
    assert server.count(DISCOVERY_PATH) == 1
    assert server.count(JWKS_PATH) == 1


def test_rsa_key_without_alg_verifies_other_configured_rsa_algorithms(
    server: OidcServer, rsa_signer: SigningKey
) -> None:
    verifier = verifier_for(server, algorithms=["RS256", "RS384", "PS256"])
    for alg in ("RS384", "PS256"):
        token = mint(rsa_signer, claims_for(server.issuer), alg=alg)
        assert verify(verifier, token)["sub"] == "agent-7"


def test_es384_token_verifies_with_a_p384_key() -> None:
    signer = ec_key("ec-384", "ES384")
    with oidc_server(signer) as server:
        verifier = verifier_for(server, algorithms=["ES384"])
        assert verify(verifier, mint(signer, claims_for(server.issuer)))["sub"] == "agent-7"


def test_token_with_trailing_newline_is_accepted(
    server: OidcServer, rsa_signer: SigningKey
) -> None:
    token = mint(rsa_signer, claims_for(server.issuer))
    assert verify(verifier_for(server), token + "\n")["sub"] == "agent-7"


def test_audience_list_needs_only_one_accepted_value(
    server: OidcServer, rsa_signer: SigningKey
) -> None:
    token = mint(rsa_signer, claims_for(server.issuer, aud=["other", AUDIENCE]))
    assert verify(verifier_for(server), token)["aud"] == ["other", AUDIENCE]


def test_token_without_kid_uses_the_only_key_of_its_type(
    server: OidcServer, rsa_signer: SigningKey
) -> None:
    token = mint(rsa_signer, claims_for(server.issuer), kid=None)
    assert verify(verifier_for(server), token)["sub"] == "agent-7"


def test_expiry_within_leeway_is_accepted(server: OidcServer, rsa_signer: SigningKey) -> None:
    now = int(time.time())
    token = mint(rsa_signer, claims_for(server.issuer, exp=now - 10, iat=now - 300, nbf=now - 300))
    assert verify(verifier_for(server, leeway_seconds=30), token)["sub"] == "agent-7"


def test_not_before_within_leeway_is_accepted(server: OidcServer, rsa_signer: SigningKey) -> None:
    now = int(time.time())
    token = mint(rsa_signer, claims_for(server.issuer, nbf=now + 10, iat=now + 10))
    assert verify(verifier_for(server, leeway_seconds=30), token)["sub"] == "agent-7"


# --- validity period ---------------------------------------------------------------------


def test_expired_token_says_when_it_expired(server: OidcServer, rsa_signer: SigningKey) -> None:
    exp = int(time.time()) - 3600
    token = mint(rsa_signer, claims_for(server.issuer, exp=exp, iat=exp - 60, nbf=exp - 60))
    error = rejected(verifier_for(server), token)
    expected_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
    assert error.message.startswith(f"token expired at {expected_time} (now ")
    assert error.message.endswith("; request a fresh token")


def test_expiry_beyond_leeway_is_refused(server: OidcServer, rsa_signer: SigningKey) -> None:
    now = int(time.time())
    token = mint(rsa_signer, claims_for(server.issuer, exp=now - 10, iat=now - 300, nbf=now - 300))
    assert "token expired at" in rejected(verifier_for(server, leeway_seconds=0), token).message


def test_token_not_yet_valid_says_from_when(server: OidcServer, rsa_signer: SigningKey) -> None:
    nbf = int(time.time()) + 3600
    token = mint(rsa_signer, claims_for(server.issuer, nbf=nbf, iat=None, ttl=7200))
    error = rejected(verifier_for(server), token)
    expected_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(nbf))
    assert error.message.startswith(f"token is not valid before {expected_time}")
    assert "clock" in error.message


def test_token_issued_in_the_future_is_refused(server: OidcServer, rsa_signer: SigningKey) -> None:
    now = int(time.time())
    token = mint(rsa_signer, claims_for(server.issuer, iat=now + 3600, nbf=None, ttl=7200))
    assert "issued at" in rejected(verifier_for(server), token).message


# --- issuer and audience -----------------------------------------------------------------


def test_wrong_audience_shows_what_is_expected(server: OidcServer, rsa_signer: SigningKey) -> None:
    token = mint(rsa_signer, claims_for(server.issuer, aud=["x"]))
    error = rejected(verifier_for(server), token)
    assert error.message == (
        f"token audience ['x'] is not accepted by issuer {server.issuer}; "
        "expected one of ['custos']"
    )


def test_untrusted_issuer_is_refused_without_fetching_anything(
    server: OidcServer, rsa_signer: SigningKey
) -> None:
    token = mint(rsa_signer, claims_for("https://evil.example"))
    error = rejected(verifier_for(server), token)
    assert error.message == "token issuer https://evil.example is not trusted by this gateway"
    assert server.count(DISCOVERY_PATH) == server.count(JWKS_PATH) == 0


def test_issuer_with_control_characters_is_escaped(
    server: OidcServer, rsa_signer: SigningKey
) -> None:
    token = mint(rsa_signer, claims_for("https://evil\n2026 forged log line\x1b[31m"))
    error = rejected(verifier_for(server), token)
    assert "\n" not in error.message
    assert "\x1b" not in error.message


@pytest.mark.parametrize("missing", ["sub", "exp", "aud"])
def test_missing_required_claim_is_named(
    server: OidcServer, rsa_signer: SigningKey, missing: str
) -> None:
    claims = claims_for(server.issuer)
    del claims[missing]
    error = rejected(verifier_for(server), mint(rsa_signer, claims))
    assert error.message.startswith(f"token has no '{missing}' claim")


def test_missing_issuer_is_refused(server: OidcServer, rsa_signer: SigningKey) -> None:
    token = mint(rsa_signer, claims_for(server.issuer, iss=None))
    assert "has no iss claim" in rejected(verifier_for(server), token).message


def test_issuer_that_is_not_a_string_is_refused(server: OidcServer, rsa_signer: SigningKey) -> None:
    token = craft({"alg": "RS256"}, {**claims_for(server.issuer), "iss": ["a", "b"]})
    assert "iss claim that is not a string" in rejected(verifier_for(server), token).message


@pytest.mark.parametrize(
    ("claim", "value", "expected"),
    [
        ("exp", str(int(time.time()) + 600), "claim 'exp' is not a number"),
        ("sub", "", "empty 'sub' claim"),
        ("sub", 42, "token is malformed: Subject must be a string"),
        ("aud", 42, "token audience 42 is not accepted"),
    ],
)
def test_claims_of_the_wrong_type_are_refused(
    server: OidcServer, rsa_signer: SigningKey, claim: str, value: object, expected: str
) -> None:
    token = mint(rsa_signer, {**claims_for(server.issuer), claim: value})
    assert expected in rejected(verifier_for(server), token).message


# --- forged and altered tokens -----------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_alg_none_token_is_refused(server: OidcServer, alg: str) -> None:
    token = craft({"alg": alg, "typ": "JWT"}, claims_for(server.issuer))
    error = rejected(verifier_for(server), token)
    assert error.message == (
        f"alg {alg} is not accepted: tokens must be signed with the issuer's public-key algorithms"
    )


@pytest.mark.parametrize(("alg", "digest"), [("HS256", hashlib.sha256), ("HS512", hashlib.sha512)])
def test_hmac_signed_with_the_public_key_is_refused(
    server: OidcServer, rsa_signer: SigningKey, alg: str, digest: Any
) -> None:
    # The key-confusion attack: a verifier that lets the token choose the
    # algorithm would check this HMAC with the (public) RSA key as its secret.
    header = b64url(json.dumps({"alg": alg, "typ": "JWT", "kid": rsa_signer.kid}).encode())
    payload = b64url(json.dumps(claims_for(server.issuer)).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(rsa_signer.public_pem(), signing_input, digest).digest()
    token = f"{header}.{payload}.{b64url(signature)}"
    error = rejected(verifier_for(server), token)
    assert error.message == (
        f"alg {alg} is not accepted: tokens must be signed with the issuer's public-key algorithms"
    )


def test_algorithm_not_configured_for_the_issuer_is_refused(
    server: OidcServer, rsa_signer: SigningKey
) -> None:
    token = mint(rsa_signer, claims_for(server.issuer), alg="RS512")
    error = rejected(verifier_for(server), token)
    assert error.message == (
        f"alg RS512 is not accepted for issuer {server.issuer}; expected one of ['RS256', 'ES256']"
    )


def test_signature_by_another_key_with_the_same_kid_is_refused(server: OidcServer) -> None:
    impostor = rsa_key("rsa-1")
    error = rejected(verifier_for(server), mint(impostor, claims_for(server.issuer)))
    assert error.message.startswith("token signature does not verify with key 'rsa-1'")


def test_tampered_payload_is_refused(server: OidcServer, rsa_signer: SigningKey) -> None:
    header, _, signature = mint(rsa_signer, claims_for(server.issuer)).split(".")
    forged = b64url(json.dumps(claims_for(server.issuer, sub="admin")).encode())
    error = rejected(verifier_for(server), f"{header}.{forged}.{signature}")
    assert "signature does not verify" in error.message


def test_stripped_signature_is_refused(server: OidcServer, rsa_signer: SigningKey) -> None:
    header, payload, _ = mint(rsa_signer, claims_for(server.issuer)).split(".")
    error = rejected(verifier_for(server), f"{header}.{payload}.")
    assert "signature does not verify" in error.message


def test_ec_signature_naming_an_rsa_key_is_refused(
    server: OidcServer, rsa_signer: SigningKey, ec_signer: SigningKey
) -> None:
    token = mint(ec_signer, claims_for(server.issuer), kid=rsa_signer.kid)
    error = rejected(verifier_for(server), token)
    assert error.message == (
        f"signing key 'rsa-1' of issuer {server.issuer} is an RSA key "
        "and cannot verify ES256 signatures"
    )


def test_rsa_signature_naming_an_ec_key_is_refused(
    server: OidcServer, rsa_signer: SigningKey, ec_signer: SigningKey
) -> None:
    token = mint(rsa_signer, claims_for(server.issuer), kid=ec_signer.kid)
    error = rejected(verifier_for(server), token)
    assert "is an EC secp256r1 key and cannot verify RS256 signatures" in error.message


def test_token_without_kid_is_refused_when_the_key_is_ambiguous(rsa_signer: SigningKey) -> None:
    with oidc_server(rsa_signer, rsa_key("rsa-2")) as server:
        token = mint(rsa_signer, claims_for(server.issuer), kid=None)
        error = rejected(verifier_for(server), token)
        assert "must name its key" in error.message


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # minting it
def test_key_too_short_to_trust_is_refused() -> None:
    weak = rsa_key("weak", bits=1024)
    with oidc_server(weak) as server:
        error = rejected(verifier_for(server), mint(weak, claims_for(server.issuer)))
        assert "too weak to trust" in error.message


def test_unsupported_critical_header_is_refused(server: OidcServer, rsa_signer: SigningKey) -> None:
    token = mint(rsa_signer, claims_for(server.issuer), crit=["x\nforged log line" + "y" * 500])
    message = rejected(verifier_for(server), token).message
    assert "header is invalid" in message
    assert "\n" not in message
    assert len(message) < 300


# --- key discovery, rotation and outages -------------------------------------------------


def test_unknown_kid_after_rotation_refreshes_once(rsa_signer: SigningKey) -> None:
    rotated = rsa_key("rsa-2")
    clock = FakeClock()
    with oidc_server(rsa_signer) as server:
        verifier = verifier_for(server, JwksCache(clock=clock))
        verify(verifier, mint(rsa_signer, claims_for(server.issuer)))
        assert server.count(JWKS_PATH) == 1

        server.keys = [rotated]
        new_token = mint(rotated, claims_for(server.issuer))
        clock.now += 5  # too soon after the last fetch: forged kids must not force refetches
        assert "publishes no signing key with kid 'rsa-2'" in rejected(verifier, new_token).message
        assert server.count(JWKS_PATH) == 1

        clock.now += 30

        async def two_at_once() -> list[dict[str, Any]]:
            return [*await asyncio.gather(verifier.verify(new_token), verifier.verify(new_token))]

        assert [c["sub"] for c in asyncio.run(two_at_once())] == ["agent-7", "agent-7"]
        assert server.count(JWKS_PATH) == 2
        assert server.count(DISCOVERY_PATH) == 1

        ghost = mint(rotated, claims_for(server.issuer), kid="ghost")
        assert "no signing key with kid 'ghost'" in rejected(verifier, ghost).message
        assert server.count(JWKS_PATH) == 2


def test_keys_are_fetched_again_after_their_ttl(server: OidcServer, rsa_signer: SigningKey) -> None:
    clock = FakeClock()
    verifier = verifier_for(server, JwksCache(ttl_seconds=60, clock=clock))
    token = mint(rsa_signer, claims_for(server.issuer))
    verify(verifier, token)
    clock.now += 59
    verify(verifier, token)
    assert server.count(JWKS_PATH) == 1
    clock.now += 1
    verify(verifier, token)
    assert server.count(JWKS_PATH) == 2


def test_jwks_endpoint_down_refuses_with_a_clear_error(
    server: OidcServer, rsa_signer: SigningKey
) -> None:
    server.down = True
    token = mint(rsa_signer, claims_for(server.issuer))
    error = rejected(verifier_for(server), token)
    assert error.message.startswith(f"cannot fetch signing keys for issuer {server.issuer} (")
    assert "HTTP 503" in error.message
    assert error.message.endswith("; try again later")


def test_verification_recovers_when_the_issuer_comes_back(
    server: OidcServer, rsa_signer: SigningKey
) -> None:
    server.down = True
    verifier = verifier_for(server)
    token = mint(rsa_signer, claims_for(server.issuer))
    rejected(verifier, token)
    server.down = False
    assert verify(verifier, token)["sub"] == "agent-7"


def test_unreachable_jwks_uri_refuses_with_a_clear_error(rsa_signer: SigningKey) -> None:
    issuer = "https://issuer.custos.invalid"
    config = IssuerConfig(
        issuer=issuer, audiences=[AUDIENCE], jwks_uri=closed_port_url() + JWKS_PATH
    )
    verifier = TokenVerifier([config], JwksCache(fetch_timeout_seconds=2))
    token = mint(rsa_signer, claims_for(issuer))
    with pytest.raises(AuthenticationError) as caught:
        verify(verifier, token)
    assert caught.value.sqlstate == "28P01"
    assert caught.value.message.startswith(f"cannot fetch signing keys for issuer {issuer} (")
    assert_token_not_echoed(caught.value, token)


def test_configured_jwks_uri_skips_discovery(server: OidcServer, rsa_signer: SigningKey) -> None:
    verifier = verifier_for(server, jwks_uri=server.issuer + JWKS_PATH)
    verify(verifier, mint(rsa_signer, claims_for(server.issuer)))
    assert server.count(DISCOVERY_PATH) == 0
    assert server.count(JWKS_PATH) == 1


def test_discovery_document_for_another_issuer_is_refused(rsa_signer: SigningKey) -> None:
    with oidc_server(rsa_signer, announced_issuer="https://elsewhere.example") as server:
        error = rejected(verifier_for(server), mint(rsa_signer, claims_for(server.issuer)))
        assert "names issuer https://elsewhere.example" in error.message
        assert server.count(JWKS_PATH) == 0


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (DISCOVERY_PATH, b'{"issuer": "ISSUER"}', "has no http(s) jwks_uri"),
        (
            DISCOVERY_PATH,
            b'{"issuer": "ISSUER", "jwks_uri": "file:///etc/passwd"}',
            "has no http(s) jwks_uri",
        ),
        (JWKS_PATH, b"<html>maintenance</html>", "is not JSON"),
        (JWKS_PATH, b"[1, 2, 3]", "is not a JSON object"),
        (JWKS_PATH, b'{"keys": {}}', "the key set has no 'keys' list"),
        (JWKS_PATH, b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable RSA or EC"),
        (JWKS_PATH, b'{"keys": [], "pad": "' + b"x" * (1 << 20) + b'"}', "larger than"),
    ],
)
def test_faulty_issuer_documents_are_refused(
    server: OidcServer, rsa_signer: SigningKey, path: str, body: bytes, expected: str
) -> None:
    server.overrides[path] = body.replace(b"ISSUER", server.issuer.encode())
    error = rejected(verifier_for(server), mint(rsa_signer, claims_for(server.issuer)))
    assert error.message.startswith(f"cannot fetch signing keys for issuer {server.issuer} (")
    assert expected in error.message


def test_token_without_kid_is_refused_when_no_key_fits_its_alg(ec_signer: SigningKey) -> None:
    with oidc_server(ec_signer) as server:
        token = mint(rsa_key("rsa-x"), claims_for(server.issuer), kid=None)
        error = rejected(verifier_for(server), token)
        assert "publishes no key that can verify RS256 signatures" in error.message


def test_two_keys_with_the_same_kid_are_refused(rsa_signer: SigningKey) -> None:
    twin = SigningKey(rsa_signer.kid, "RS256", rsa_key().private_key)
    with oidc_server(rsa_signer, twin) as server:
        error = rejected(verifier_for(server), mint(rsa_signer, claims_for(server.issuer)))
        assert "publishes 2 keys with kid 'rsa-1'" in error.message


def test_key_set_parsing_keeps_only_public_signing_keys(
    rsa_signer: SigningKey, ec_signer: SigningKey
) -> None:
    document = {
        "keys": [
            {"kty": "oct", "k": b64url(b"a shared secret is never a signing key"), "kid": "h"},
            rsa_signer.public_jwk(use="enc", kid="enc"),
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not a key",
            rsa_signer.public_jwk(alg="RS384"),
            ec_signer.public_jwk(),
        ]
    }
    keys = parse_jwks(document)
    assert [(key.kid, key.algorithm) for key in keys] == [("rsa-1", "RS384"), ("ec-1", None)]
    assert keys[0].fits("RS384")
    assert not keys[0].fits("RS256")
    assert keys[1].fits("ES256")
    assert not keys[1].fits("ES384")
    with pytest.raises(ValueError, match="no 'keys' list"):
        parse_jwks({"keys": "nope"})


# --- input that is not a JWT at all ------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("", "the password is empty"),
        ("  \n\t", "the password is empty"),
        ("hunter2-my-database-password", "has 1 dot-separated segment(s), not 3"),
        ("Qx1lmnop.Qx2lmnop", "has 2 dot-separated segment(s), not 3"),
        ("Qa12.Qb34.Qc56.Qd78.Qe90", "encrypted JWE"),
        ("Qa12.Qb34.Qc56.Qd78", "has 4 dot-separated segment(s), not 3"),
        ("ñandú€😀.Qx12.Qy34", "outside the base64url alphabet"),
        ("\x00\xff\xfe\udcff.\x01.\x02", "outside the base64url alphabet"),
        ("Qx1lmnop.Qx2lmnop.Qx3lmnop", "header is invalid"),
        ("eyJhbGc=.e30.", "header is invalid"),
        (b64url(b"[1, 2]") + ".e30.", "header is invalid"),
        (b64url(b'{"alg": "RS256"}') + "." + b64url(b'"str"') + ".", "payload is invalid"),
        (b64url(b'{"alg": "RS256"}') + ".bm90IGpzb24.", "payload is invalid"),
        (b64url(b'{"alg": "RS256", "kid": 7}') + ".e30.", "header is invalid"),
        ("A" * 1_000_000, "1000000 characters long"),
        ("eyJ" + "a.b" * 400_000, "characters long"),
    ],
)
def test_garbage_is_refused_clearly(server: OidcServer, token: str, expected: str) -> None:
    error = rejected(verifier_for(server), token)
    assert error.message.startswith("token is not a")
    assert expected in error.message
    assert error.hint is not None
    assert server.count(DISCOVERY_PATH) == 0


def test_header_without_alg_is_refused(server: OidcServer) -> None:
    token = craft({"typ": "JWT"}, claims_for(server.issuer))
    assert rejected(verifier_for(server), token).message == "token header names no alg"


# --- through the Authenticator -----------------------------------------------------------


def test_authenticator_returns_a_read_only_principal(
    server: OidcServer, rsa_signer: SigningKey
) -> None:
    role = RoleConfig(name="reader", trust=[TrustStatement(issuer=server.issuer)])
    issuer = IssuerConfig(issuer=server.issuer, audiences=[AUDIENCE])
    authenticator = Authenticator([issuer], [role])
    claims = claims_for(server.issuer, groups=["eng", 7, "ops"])
    token = mint(rsa_signer, claims)
    principal = asyncio.run(authenticator.authenticate(token, "reader", "10.0.0.5:51234", "psql"))
    assert principal.role == "reader"
    assert principal.subject == "agent-7"
    assert principal.issuer == server.issuer
    assert principal.groups == ("eng", "ops")
    assert principal.token_expires_at == claims["exp"]
    assert principal.client_address == "10.0.0.5:51234"
    assert principal.application_name == "psql"
    assert principal.claims["sub"] == "agent-7"
    with pytest.raises(TypeError):
        principal.claims["sub"] = "admin"  # type: ignore[index]


def test_authenticator_refuses_a_bad_token_before_looking_at_roles(
    server: OidcServer, rsa_signer: SigningKey
) -> None:
    issuer = IssuerConfig(issuer=server.issuer, audiences=[AUDIENCE])
    authenticator = Authenticator([issuer], [])
    token = mint(rsa_key("rsa-1"), claims_for(server.issuer))
    with pytest.raises(AuthenticationError) as caught:
        asyncio.run(authenticator.authenticate(token, "nonexistent", "127.0.0.1:1", None))
    assert caught.value.sqlstate == "28P01"
    assert_token_not_echoed(caught.value, token)


def test_the_same_issuer_cannot_be_configured_twice(server: OidcServer) -> None:
    issuer = IssuerConfig(issuer=server.issuer, audiences=[AUDIENCE])
    with pytest.raises(ValueError, match="more than once"):
        TokenVerifier([issuer, issuer], JwksCache())
    authenticator = Authenticator([issuer], [])
    with pytest.raises(ValueError, match="more than once"):
        authenticator.add_static_issuer(issuer, {"keys": [ec_key().public_jwk()]})
