"""The gateway's own login to the database: TLS, methods, and what clients see when it fails."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from gateway_fixtures import GatewayProcess, free_port, gateway_login, start_gateway

from custos.demo.certificates import generate_ca_and_server_cert
from custos.demo.postgres import PostgresServer, TemporaryPostgres


def connect(gateway: GatewayProcess, **params: str) -> psycopg.Connection:
    return psycopg.connect(gateway.dsn(**params), connect_timeout=10)


def with_params(dsn: str, **params: str) -> str:
    separator = "&" if "?" in dsn else "?"
    return dsn + separator + "&".join(f"{key}={value}" for key, value in params.items())


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path


def test_upstream_tls_with_verify_full(pg: PostgresServer, scratch: Path):
    if pg.ca_cert is None:
        pytest.skip("the test server has no TLS (pgserver binaries or an external server)")
    upstream = with_params(gateway_login(pg), sslmode="verify-full", sslrootcert=str(pg.ca_cert))
    gateway = start_gateway(scratch, pg, upstream_dsn=upstream)
    try:
        with connect(gateway) as connection:
            ssl_in_use = connection.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert ssl_in_use == (True,)
    finally:
        gateway.stop()


def test_upstream_certificate_from_an_untrusted_ca_is_refused(pg: PostgresServer, scratch: Path):
    if pg.ca_cert is None:
        pytest.skip("the test server has no TLS (pgserver binaries or an external server)")
    other_ca = generate_ca_and_server_cert(scratch / "other-ca").ca_cert
    upstream = with_params(gateway_login(pg), sslmode="verify-full", sslrootcert=str(other_ca))
    gateway = start_gateway(scratch / "gateway", pg, upstream_dsn=upstream)
    try:
        with pytest.raises(psycopg.OperationalError, match="TLS with the database"):
            connect(gateway)
    finally:
        gateway.stop()


def test_md5_and_trust_upstream_logins(pg_cluster: TemporaryPostgres, pg: PostgresServer, scratch):
    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        admin.execute("SET password_encryption = 'md5'")
        admin.execute("DROP ROLE IF EXISTS gateway_md5")
        admin.execute("CREATE ROLE gateway_md5 LOGIN PASSWORD 'md5-secret'")
        admin.execute("DROP ROLE IF EXISTS gateway_trust")
        admin.execute("CREATE ROLE gateway_trust LOGIN")
    pg_cluster.add_hba_rule("host all gateway_md5 127.0.0.1/32 md5")
    pg_cluster.add_hba_rule("host all gateway_trust 127.0.0.1/32 trust")
    for user, password in (("gateway_md5", "md5-secret"), ("gateway_trust", None)):
        gateway = start_gateway(
            scratch / user, pg, upstream_dsn=pg.dsn(user=user, password=password)
        )
        try:
            with connect(gateway) as connection:
                assert connection.execute("SELECT current_user").fetchone() == (user,)
        finally:
            gateway.stop()


def test_a_rejected_gateway_credential_is_reported_without_its_details(
    pg: PostgresServer, scratch: Path
):
    upstream = pg.dsn(user="custos_gateway", password="not-the-password")
    gateway = start_gateway(scratch, pg, upstream_dsn=upstream)
    try:
        with pytest.raises(psycopg.OperationalError) as raised:
            connect(gateway)
        message = str(raised.value)
        assert "rejected the gateway's own credential" in message
        assert "not-the-password" not in message
        assert "not-the-password" not in gateway.log()
    finally:
        gateway.stop()


def test_an_unreachable_database_is_reported(pg: PostgresServer, scratch: Path):
    upstream = pg.dsn().replace(f":{pg.port}/", f":{free_port()}/")
    gateway = start_gateway(scratch, pg, upstream_dsn=upstream)
    try:
        with pytest.raises(psycopg.OperationalError, match="cannot reach the database"):
            connect(gateway)
    finally:
        gateway.stop()


def test_only_the_served_database_can_be_named(gateway: GatewayProcess):
    with connect(gateway, dbname="agent") as connection:
        assert connection.execute("SELECT current_database()").fetchone() == ("custos_demo",)
    with pytest.raises(psycopg.OperationalError, match='connect to database "custos_demo"'):
        connect(gateway, dbname="postgres")
