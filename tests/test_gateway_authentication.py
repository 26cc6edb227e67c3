"""Authentication failures on the wire, as a real client sees them.

Every refusal reaches the client as a FATAL ErrorResponse with the SQLSTATE
PostgreSQL itself would use (28P01 for a bad token, 28000 for a role it may
not assume) and a message that says what to do next; the token never reaches
the gateway's log; and a session already open keeps working.

libpq keeps the SQLSTATE of a connection-time error to itself, so psycopg
shows the message a person would read and the raw wire client the SQLSTATE.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from gateway_fixtures import GatewayProcess, start_gateway
from oidc_fixtures import craft, ec_key, mint
from wire import WireClient, frontend_message, healthy_session, password

from custos.demo.postgres import PostgresServer
from custos.identity.dev_issuer import DevIssuer
from custos.protocol.messages import ServerNotice


def _claims(gateway: GatewayProcess, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "iss": gateway.issuer.issuer,
        "aud": "custos",
        "sub": "agent-forger",
        "custos_role": "agent",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        **overrides,
    }


def _expired(gateway: GatewayProcess, tmp_path: Path) -> str:
    now = int(time.time())
    old = {"iat": now - 3600, "nbf": now - 3600, "exp": now - 600}
    return gateway.token("agent", "agent-late", extra_claims=old)


def _alg_none(gateway: GatewayProcess, tmp_path: Path) -> str:
    return craft({"alg": "none", "typ": "JWT", "kid": gateway.issuer.kid}, _claims(gateway))


def _alg_hs256(gateway: GatewayProcess, tmp_path: Path) -> str:
    return craft({"alg": "HS256", "typ": "JWT", "kid": gateway.issuer.kid}, _claims(gateway), b"x")


def _untrusted_issuer(gateway: GatewayProcess, tmp_path: Path) -> str:
    return DevIssuer.open_or_create(tmp_path / "other-issuer").mint("agent", "agent-stranger")


def _foreign_key_same_issuer(gateway: GatewayProcess, tmp_path: Path) -> str:
    # The gateway's issuer name and key id, signed by a key the gateway never saw.
    return mint(ec_key(kid=gateway.issuer.kid), _claims(gateway))


def _altered_claims(gateway: GatewayProcess, tmp_path: Path) -> str:
    header, _, signature = gateway.token("agent", "agent-honest").split(".")
    forged = craft({}, _claims(gateway, sub="agent-admin")).split(".")[1]
    return f"{header}.{forged}.{signature}"


TokenMaker = Callable[[GatewayProcess, Path], str]

REFUSED_TOKENS: list[tuple[str, TokenMaker, str, str]] = [
    ("agent", _expired, "28P01", "token expired at"),
    ("agent", lambda g, _: "not-a-token", "28P01", "token is not a JWT"),
    ("agent", lambda g, _: "a.b.c", "28P01", "token is not a JWT"),
    ("agent", _alg_none, "28P01", "alg none is not accepted"),
    ("agent", _alg_hs256, "28P01", "alg HS256 is not accepted"),
    ("agent", _untrusted_issuer, "28P01", "is not trusted by this gateway"),
    ("agent", _foreign_key_same_issuer, "28P01", "signature does not verify"),
    ("agent", _altered_claims, "28P01", "signature does not verify"),
    (
        "agent",
        lambda g, _: g.token("analyst", "agent-7", groups=["analysts"]),
        "28000",
        "token was issued for role 'analyst', not 'agent'",
    ),
    ("ghost", lambda g, _: g.token("ghost", "agent-7"), "28000", "role 'ghost' does not exist"),
    (
        "dba",
        lambda g, _: g.token("dba", "agent-7", groups=["analysts"]),
        "28000",
        "role 'dba' cannot be assumed by subject 'agent-7'",
    ),
]


@pytest.mark.parametrize(
    ("role", "make_token", "sqlstate", "text"),
    REFUSED_TOKENS,
    ids=[
        "expired",
        "garbage",
        "not-base64-json",
        "alg-none",
        "alg-hs256",
        "untrusted-issuer",
        "foreign-key",
        "altered-claims",
        "other-role",
        "unknown-role",
        "untrusted-for-role",
    ],
)
def test_refused_token(
    gateway: GatewayProcess,
    tmp_path: Path,
    role: str,
    make_token: TokenMaker,
    sqlstate: str,
    text: str,
) -> None:
    token = make_token(gateway, tmp_path)
    with healthy_session(gateway.dsn()):
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(gateway.dsn(role, token)).close()
        assert text in str(refused.value)
        notice = wire_refusal(gateway, role, token, sqlstate)
        assert text in notice.message
    log = gateway.log()
    assert f"authentication failed role={role}" in log
    assert token not in log
    assert all(part not in log for part in token.split(".") if len(part) > 16)


def wire_refusal(gateway: GatewayProcess, role: str, token: str, sqlstate: str) -> ServerNotice:
    with WireClient.connect(gateway.port) as client:
        client.start_tls(gateway.tls.ca_cert)
        client.startup({"user": role, "database": gateway.database})
        client.expect_password_request()
        client.send(password(token))
        return client.expect_refusal(sqlstate)


def test_refusal_carries_a_hint(gateway: GatewayProcess) -> None:
    notice = wire_refusal(gateway, "ghost", gateway.token("ghost", "agent-7"), "28000")
    assert "ask your administrator" in notice.fields["H"]


@pytest.mark.parametrize(
    ("reply", "sqlstate", "text"),
    [
        pytest.param(password(""), "28P01", "no token given", id="empty-password"),
        pytest.param(
            frontend_message(b"p", b"two\x00strings\x00"),
            "08P01",
            "malformed password message",
            id="two-strings",
        ),
        pytest.param(
            frontend_message(b"p", b"no terminator"),
            "08P01",
            "malformed password message",
            id="unterminated",
        ),
        pytest.param(
            frontend_message(b"p", b"\xff\xfe\x00"), "08P01", "not valid UTF-8", id="not-utf8"
        ),
        pytest.param(
            frontend_message(b"Q", b"SELECT 1\x00"),
            "08P01",
            "message type 81",
            id="query-instead",
        ),
    ],
)
def test_malformed_password_reply_is_refused(
    gateway: GatewayProcess, reply: bytes, sqlstate: str, text: str
) -> None:
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        client.start_tls(gateway.tls.ca_cert)
        client.startup({"user": "agent", "database": gateway.database})
        client.expect_password_request()
        client.send(reply)
        notice = client.expect_refusal(sqlstate)
    assert text in notice.message


def test_oversized_password_reply_gives_advice_that_helps(gateway: GatewayProcess) -> None:
    with WireClient.connect(gateway.port) as client:
        client.start_tls(gateway.tls.ca_cert)
        client.startup({"user": "agent", "database": gateway.database})
        client.expect_password_request()
        client.send(b"p" + (1 << 20).to_bytes(4, "big"))
        notice = client.expect_refusal({"54000", "08P01", "28P01"})
    assert "max_message_bytes" not in notice.message, notice.message


def test_disconnect_at_password_request(gateway: GatewayProcess) -> None:
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        client.start_tls(gateway.tls.ca_cert)
        client.startup({"user": "agent", "database": gateway.database})
        client.expect_password_request()
        client.send(b"p\x00\x00")
    assert "Traceback" not in gateway.log()


def test_cleartext_without_tls_is_refused_before_the_password(gateway: GatewayProcess) -> None:
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        client.startup({"user": "agent", "database": gateway.database})
        # A FATAL error, never an AuthenticationCleartextPassword: the token must not be sent.
        notice = client.expect_refusal("28000")
    assert "only over TLS" in notice.message
    assert "sslmode=require" in notice.message


def test_psycopg_without_tls_is_refused(gateway: GatewayProcess) -> None:
    token = gateway.token()
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(gateway.dsn(token=token, sslmode="disable")).close()
    assert "accepts tokens only over TLS" in str(refused.value)
    assert token not in gateway.log()


@pytest.fixture(scope="module")
def cleartext_gateway(
    gateway: GatewayProcess, pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    running = start_gateway(
        tmp_path_factory.mktemp("cleartext-gateway"),
        pg,
        # The session gateway's credential: provisioning a new one would lock it out.
        upstream_dsn=gateway.upstream_dsn,
        extra_config={"allow_loopback_cleartext": True},
    )
    yield running
    assert running.stop() == 0


def test_loopback_cleartext_when_allowed(cleartext_gateway: GatewayProcess) -> None:
    with psycopg.connect(cleartext_gateway.dsn(sslmode="disable")) as connection:
        assert not connection.info.pgconn.ssl_in_use
        assert connection.execute("SELECT current_user").fetchone() is not None
    with WireClient.connect(cleartext_gateway.port) as client:
        client.startup({"user": "agent", "database": cleartext_gateway.database})
        client.expect_password_request()


def test_loopback_cleartext_still_checks_the_token(cleartext_gateway: GatewayProcess) -> None:
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(cleartext_gateway.dsn(token="not-a-token", sslmode="disable")).close()
    assert "token is not a JWT" in str(refused.value)
