"""A real gateway process (`custos serve`) in front of the test database."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from custos.demo.certificates import CertificateBundle, generate_ca_and_server_cert
from custos.demo.embedded import (
    DEMO_POLICY,
    DEMO_ROLES,
    provision_gateway_login,
    write_masking_key,
)
from custos.demo.postgres import PostgresServer, pgserver_binaries
from custos.identity.dev_issuer import DevIssuer

REPOSITORY = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def client_program(name: str) -> str:
    """A PostgreSQL client program: the system's, else the one shipped with pgserver."""
    found = shutil.which(name)
    if found:
        return found
    shipped = pgserver_binaries()
    if shipped is not None and (shipped / name).exists():
        return str(shipped / name)
    pytest.fail(f"{name} is not installed: run `make test`, which installs pgserver's copy")


@dataclass
class GatewayProcess:
    """A running `custos serve` and what it takes to connect through it."""

    port: int
    directory: Path
    issuer: DevIssuer
    tls: CertificateBundle
    upstream_dsn: str
    database: str
    process: subprocess.Popen[bytes]
    log_path: Path
    environment: dict[str, str] = field(default_factory=dict)

    def token(self, role: str = "agent", subject: str = "agent-test", **options: Any) -> str:
        return self.issuer.mint(role, subject, **options)

    def dsn(self, role: str = "agent", token: str | None = None, **params: str) -> str:
        values = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "dbname": self.database,
            "user": role,
            "password": token if token is not None else self.token(role),
            "sslmode": "verify-ca",
            "sslrootcert": str(self.tls.ca_cert),
            **params,
        }
        return " ".join(f"{key}='{value}'" for key, value in values.items())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


_gateway_logins: dict[tuple[str, int, str], str] = {}


def gateway_login(pg: PostgresServer, database: str = "custos_demo") -> str:
    """The gateway's own upstream DSN, provisioned once per server and database.

    Provisioning sets a new password, so doing it again would lock out the
    gateways already running with the previous one.
    """
    key = (pg.host, pg.port, database)
    if key not in _gateway_logins:
        _gateway_logins[key] = provision_gateway_login(pg, database)
    return _gateway_logins[key]


def start_gateway(
    directory: Path,
    pg: PostgresServer,
    upstream_dsn: str | None = None,
    extra_config: dict[str, Any] | None = None,
    database: str = "custos_demo",
    preexec_fn: Callable[[], None] | None = None,
) -> GatewayProcess:
    """A gateway process (`preexec_fn` runs in it before it starts: resource limits)."""
    directory.mkdir(parents=True, exist_ok=True)
    tls = generate_ca_and_server_cert(directory / "tls")
    issuer = DevIssuer.open_or_create(directory / "dev-issuer")
    upstream = upstream_dsn or gateway_login(pg, database)
    port = free_port()
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "upstream": {"dsn": upstream},
        "tls": {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key)},
        "dev_issuer_dir": str(directory / "dev-issuer"),
        "roles": DEMO_ROLES,
        "masking": {"key_file": str(write_masking_key(directory / "masking.key"))},
        "limits": {"shutdown_grace_seconds": 5},
        **(extra_config or {}),
    }
    config_path = directory / "custos.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = directory / "gateway.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "custos", "serve", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPOSITORY,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=preexec_fn,
        )
    gateway = GatewayProcess(port, directory, issuer, tls, upstream, database, process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited early:\n{gateway.log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return gateway
        except OSError:
            time.sleep(0.05)
    gateway.stop()
    raise RuntimeError(f"the gateway did not start listening:\n{gateway.log()}")


def start_audited_gateway(
    directory: Path,
    pg: PostgresServer,
    upstream_dsn: str,
    audit: dict[str, Any] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> GatewayProcess:
    """A gateway deciding by the demo policy and recording to `directory / "audit"`, its
    audit key at `directory / "audit.key"`; `audit` adds to its audit settings."""
    directory.mkdir(parents=True, exist_ok=True)
    key_file = write_masking_key(directory / "audit.key")
    settings = {"dir": str(directory / "audit"), "key": {"key_file": str(key_file)}}
    return start_gateway(
        directory,
        pg,
        upstream_dsn=upstream_dsn,
        extra_config={
            "roles": [],
            "policy": {"file": str(DEMO_POLICY)},
            "audit": {**settings, **(audit or {})},
        },
        preexec_fn=preexec_fn,
    )


@pytest.fixture(scope="session")
def gateway(
    pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    running = start_gateway(tmp_path_factory.mktemp("gateway"), pg)
    yield running
    running.stop()


def psycopg_session(
    gateway: GatewayProcess, role: str, subject: str, **params: str
) -> psycopg.Connection:
    """A psycopg connection through the gateway as `role`, with a token for `subject`
    (the demo's analysts and DBAs in their groups), in autocommit."""
    groups = {"analyst": ["analysts"], "dba": ["dba"]}.get(role, [])
    token = gateway.token(role, subject, groups=groups)
    return psycopg.connect(gateway.dsn(role, token, **params), autocommit=True)


def rows_of(connection: psycopg.Connection, sql: str) -> list[tuple[Any, ...]]:
    """Every row of every result of `sql`; none when the gateway or the database refuses it."""
    rows: list[tuple[Any, ...]] = []
    try:
        cursor = connection.execute(sql)
        while True:
            if cursor.description is not None:
                rows.extend(cursor.fetchall())
            if not cursor.nextset():
                break
    except psycopg.Error:
        pass
    return rows
