"""`custos demo`: a throwaway database of fake customers behind the gateway.

Everything lives in one temporary directory (database cluster, dev issuer
key, TLS certificate, configuration) and is removed on Ctrl-C.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from psycopg import sql

from custos.config import ConfigError, load_config
from custos.demo.certificates import generate_ca_and_server_cert
from custos.demo.postgres import (
    DEMO_DATABASE,
    PostgresNotFoundError,
    PostgresServer,
    PostgresStartError,
    TemporaryPostgres,
    binaries_support_tls,
    create_demo_database,
    find_server_binaries,
)
from custos.identity.dev_issuer import DevIssuer

GATEWAY_LOGIN = "custos_gateway"
DEMO_POLICY = Path(__file__).resolve().parent / "policy.yaml"
DEMO_APPROVALS = "127.0.0.1:6480"

DEMO_ROLES: list[dict[str, Any]] = [
    {
        "name": "agent",
        "description": "An AI coding agent working on the CRM",
        "trust": [{"issuer": "dev", "subjects": ["agent-*"]}],
    },
    {
        "name": "analyst",
        "description": "People in the analytics team",
        "trust": [{"issuer": "dev", "groups": ["analysts"]}],
    },
    {
        "name": "dba",
        "description": "Database administrators",
        "trust": [{"issuer": "dev", "groups": ["dba"]}],
    },
]


def provision_gateway_login(server: PostgresServer, database: str = DEMO_DATABASE) -> str:
    """Creates the login the gateway itself uses, owning the demo database; returns its DSN.

    The gateway never needs a superuser: this login owns the database and its
    demo schema, which is all that agents reach through it.
    """
    password = secrets.token_urlsafe(24)
    with psycopg.connect(server.dsn(database=database), autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", [GATEWAY_LOGIN]
        ).fetchone()
        verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
        connection.execute(
            sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                verb, sql.Identifier(GATEWAY_LOGIN), sql.Literal(password)
            )
        )
        for statement in (
            "ALTER DATABASE {database} OWNER TO {login}",
            "ALTER SCHEMA crm OWNER TO {login}",
            "GRANT ALL ON ALL TABLES IN SCHEMA crm TO {login}",
            "GRANT ALL ON ALL SEQUENCES IN SCHEMA crm TO {login}",
        ):
            connection.execute(
                sql.SQL(statement).format(
                    database=sql.Identifier(database), login=sql.Identifier(GATEWAY_LOGIN)
                )
            )
        tables = connection.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'crm'"
        ).fetchall()
        for (table,) in tables:
            connection.execute(
                sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                    sql.SQL(table), sql.Identifier(GATEWAY_LOGIN)
                )
            )
    return server.dsn(user=GATEWAY_LOGIN, password=password, database=database)


def write_masking_key(path: Path) -> Path:
    """A new random key (masking or audit), readable by its owner alone (see
    custos/masking/keys.py)."""
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


def write_digest_keys(stem: Path) -> Path:
    """A new Ed25519 key pair for the audit store's digests: the private key at
    `STEM.pem` (returned), the public one, for `custos audit verify`, at `STEM.pub.pem`."""
    key = Ed25519PrivateKey.generate()
    private = stem.with_suffix(".pem")
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    private.chmod(0o600)
    stem.with_suffix(".pub.pem").write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return private


def write_demo_config(
    directory: Path, upstream_dsn: str, listen: str, approvals: str = "127.0.0.1:0"
) -> Path:
    """The demo's gateway config; its audit trail in `directory / "audit"`, its approvals
    page at `approvals`."""
    bundle = generate_ca_and_server_cert(directory / "tls")
    config = {
        "listen": listen,
        "upstream": {"dsn": upstream_dsn},
        "tls": {"cert_file": str(bundle.server_cert), "key_file": str(bundle.server_key)},
        "dev_issuer_dir": str(directory / "dev-issuer"),
        "policy": {"file": str(DEMO_POLICY)},
        "masking": {"key_file": str(write_masking_key(directory / "masking.key"))},
        "audit": {
            "dir": str(directory / "audit"),
            "key": {"key_file": str(write_masking_key(directory / "audit.key"))},
            "digest_key_file": str(write_digest_keys(directory / "audit-digest")),
            "labels": {"repository": "repository", "run_id": "run_id"},
        },
        "approvals": {"listen": approvals},
    }
    path = directory / "custos.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def run_demo(listen: str, approvals: str = DEMO_APPROVALS) -> int:
    from custos.gateway import gateway_runner

    work = Path(tempfile.mkdtemp(prefix="custos-demo-"))
    # The database runs as an unprivileged user when we are root; it must enter this directory.
    work.chmod(0o755)
    binaries = find_server_binaries()
    database = TemporaryPostgres(
        root_dir=work / "postgres",
        log=_say,
        bin_dir=binaries,
        tls=binaries is not None and binaries_support_tls(binaries),
    )
    try:
        _say("starting a throwaway PostgreSQL ...")
        server = database.start()
        create_demo_database(server)
        upstream_dsn = provision_gateway_login(server)
        config_path = write_demo_config(work, upstream_dsn, listen, approvals)
        config = load_config(config_path)
        issuer = DevIssuer.open_or_create(work / "dev-issuer")
        ca_cert = work / "tls" / "ca.crt"

        def announce(port: int) -> None:
            token = issuer.mint("agent", "agent-demo", ttl_seconds=3600)
            # The demo's data-protection officer, who approves what the agent asks.
            dpo_token = work / "dpo.token"
            dpo_token.write_text(issuer.mint("approver", "dpo-dana", ["dpo"], ttl_seconds=3600))
            dpo_token.chmod(0o600)
            _say(_instructions(port, token, ca_cert, work, f"http://{approvals}"))

        try:
            gateway_runner()(config, on_ready=announce)
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {listen}: {error.strerror}; pass --listen 127.0.0.1:PORT"
            ) from None
    except KeyboardInterrupt:
        pass
    except (PostgresNotFoundError, PostgresStartError) as error:
        _say(f"custos demo: {error}")
        return 1
    finally:
        _say("stopping and removing the demo ...")
        database.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


_EXAMPLES = """
  SELECT id, status, total_cents FROM crm.orders ORDER BY id LIMIT 5;   -- allowed
  SELECT id, email, phone FROM crm.customers ORDER BY id LIMIT 5;   -- masked: ***@domain
  SELECT email FROM crm.customers;          -- refused: bulk export of customer data
  DELETE FROM crm.orders;                   -- refused: DELETE without WHERE
  UPDATE crm.orders SET status = 'paid' WHERE id = 1;   -- waits for the DPO's approval
"""


_ANALYST_EXAMPLE = """
  SELECT id, full_name, email FROM crm.customers ORDER BY id LIMIT 5;
"""


_AUDIT_QUERY = (
    "SELECT role, statement, decision FROM custos_audit.events WHERE event_type = 'statement'"
)


def _instructions(port: int, token: str, ca_cert: Path, work: Path, approvals: str) -> str:
    return f"""
Custos demo is running: gateway on 127.0.0.1:{port}, fake customers in schema crm.

Connect as the role 'agent' with a fresh token (valid for 1 hour):

  PGPASSWORD='{token}' \\
  psql "host=localhost port={port} dbname={DEMO_DATABASE} user=agent \\
        sslmode=verify-full sslrootcert={ca_cert}"

The demo policy ({DEMO_POLICY}) decides every statement. Try:
{_EXAMPLES}
and ask why with:  custos policy explain {DEMO_POLICY} --role agent "SELECT ..."

The last example waits: psql prints a NOTICE with the request's id and its page. Approve
it as the demo's data-protection officer on the approvals page ({approvals}, sign in
with the token in {work / "dpo.token"}), or in another terminal:

  custos approvals list --url {approvals} --token @{work / "dpo.token"}
  custos approvals approve apr-... --url {approvals} --token @{work / "dpo.token"}

and psql gets its result (deny it, or press Ctrl-C, and it does not run).

Mint more tokens (roles: agent for subjects agent-*, analyst for group analysts,
dba for group dba):

  custos token --dev-issuer {work / "dev-issuer"} --role analyst --sub alice --groups analysts

As an analyst, names and contact details come back as keyed pseudonyms:
{_ANALYST_EXAMPLE}
Every session and statement is recorded in {work / "audit"}: hash-chained, durable before
each statement runs, free of personal data (values become ? or keyed pseudonyms), with a
signed digest of each hour once it is over.
Read it back while the demo runs:

  custos audit verify --dir {work / "audit"} --public-key {work / "audit-digest.pub.pem"}
  custos audit query --dir {work / "audit"} \\
    "{_AUDIT_QUERY}"
  CUSTOS_AUDIT_KEY=$(cat {work / "audit.key"}) \\
    custos audit subject --dir {work / "audit"} --subject crm.customers:42

Press Ctrl-C to stop; everything is removed, the audit trail too.
"""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
