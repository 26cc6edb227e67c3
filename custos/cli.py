"""The `custos` command: serve, token, demo, policy, audit, approvals."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from custos.approvals.commands import add_approvals_commands
from custos.audit.commands import add_audit_commands
from custos.config import ConfigError, load_config
from custos.identity.durations import parse_duration
from custos.policy.commands import add_policy_commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, arguments.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = arguments.command(arguments)
    except ConfigError as error:
        print(f"custos: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="custos",
        description="A GDPR evidence gateway between AI agents and PostgreSQL.",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway in the foreground")
    serve.add_argument("--upstream", metavar="DSN", help="the database to protect (libpq DSN)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on")
    serve.add_argument("--config", type=Path, metavar="FILE", help="gateway configuration (YAML)")
    serve.add_argument("--dev-issuer", type=Path, metavar="DIR", help="trust a local dev issuer")
    serve.add_argument(
        "--policy", type=Path, metavar="FILE", help="govern statements with this policy (YAML)"
    )
    serve.add_argument(
        "--audit",
        type=Path,
        metavar="DIR",
        help="record every session and statement in this folder (the local audit store;"
        " its key from the config's audit.key or $CUSTOS_AUDIT_KEY)",
    )
    serve.add_argument(
        "--approvals",
        metavar="HOST:PORT",
        help="serve the approvals page and API here: statements policy says need approval"
        " wait for an approver's decision (approvers sign in with a trusted issuer's token)",
    )
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="TLS certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="TLS private key (PEM)")
    serve.add_argument(
        "--allow-loopback-cleartext",
        action="store_true",
        default=None,
        help="accept tokens without TLS from loopback clients (local testing only)",
    )
    serve.set_defaults(command=_serve)

    token = commands.add_parser("token", help="print a token signed by a local dev issuer")
    token.add_argument("--dev-issuer", type=Path, metavar="DIR", required=True)
    token.add_argument("--role", required=True, help="the role the token is for")
    token.add_argument("--sub", default=None, help="subject (default: dev-<role>)")
    token.add_argument("--groups", default="", help="comma-separated groups")
    token.add_argument("--ttl", default="15m", help="lifetime, e.g. 30s, 15m, 1h (default 15m)")
    token.set_defaults(command=_token)

    add_policy_commands(commands)
    add_audit_commands(commands)
    add_approvals_commands(commands)

    demo = commands.add_parser(
        "demo", help="start a throwaway database with fake customers behind the gateway"
    )
    demo.add_argument("--listen", default="127.0.0.1:6432", metavar="HOST:PORT")
    demo.add_argument(
        "--approvals",
        default="127.0.0.1:6480",
        metavar="HOST:PORT",
        help="where the demo serves its approvals page (default 127.0.0.1:6480)",
    )
    demo.set_defaults(command=_demo)
    return parser


def _serve(arguments: argparse.Namespace) -> int:
    from custos.gateway import gateway_runner

    overrides: dict[str, object] = {
        "listen": arguments.listen,
        "dev_issuer_dir": arguments.dev_issuer,
        "allow_loopback_cleartext": arguments.allow_loopback_cleartext,
    }
    if arguments.upstream:
        overrides["upstream"] = {"dsn": arguments.upstream}
    if arguments.policy:
        overrides["policy"] = {"file": arguments.policy}
    if arguments.audit:
        overrides["audit"] = {"store": "local", "dir": arguments.audit}
    if arguments.approvals:
        overrides["approvals"] = {"backend": "local", "listen": arguments.approvals}
    if arguments.tls_cert or arguments.tls_key:
        if not (arguments.tls_cert and arguments.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give both")
        overrides["tls"] = {"cert_file": arguments.tls_cert, "key_file": arguments.tls_key}
    gateway_runner()(load_config(arguments.config, overrides))
    return 0


def _token(arguments: argparse.Namespace) -> int:
    from custos.identity.dev_issuer import DevIssuer

    try:
        ttl = parse_duration(arguments.ttl)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    issuer = DevIssuer.open_or_create(arguments.dev_issuer)
    groups = [group.strip() for group in arguments.groups.split(",") if group.strip()]
    subject = arguments.sub or f"dev-{arguments.role}"
    print(issuer.mint(arguments.role, subject, groups=groups, ttl_seconds=ttl))
    return 0


def _demo(arguments: argparse.Namespace) -> int:
    from custos.demo.embedded import run_demo

    return run_demo(arguments.listen, arguments.approvals)
