"""Builds the gateway from its configuration and runs it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable

from custos.config import ConfigError, GatewayConfig
from custos.identity.authenticator import Authenticator
from custos.identity.dev_issuer import DevIssuer
from custos.identity.models import RoleConfig
from custos.upstream.credentials import credential_source
from proxy_task.gateway import Gateway, GatewayServices

log = logging.getLogger("custos.gateway")

DEV_ISSUER_PLACEHOLDER = "dev"
"""In a role's trust statement, `issuer: dev` names the gateway's dev issuer."""


def build_services(config: GatewayConfig) -> GatewayServices:
    if config.upstream is None:
        raise ConfigError("no upstream database: pass --upstream DSN or set upstream in the config")
    roles = config.roles
    dev_issuer = DevIssuer.open_or_create(config.dev_issuer_dir) if config.dev_issuer_dir else None
    if dev_issuer is not None:
        roles = [_resolve_dev_issuer(role, dev_issuer.issuer_config().issuer) for role in roles]
    elif any(
        statement.issuer == DEV_ISSUER_PLACEHOLDER for role in roles for statement in role.trust
    ):
        raise ConfigError("a role trusts the dev issuer, but no --dev-issuer DIR was given")
    if not roles:
        log.warning("no roles are configured: every connection will be refused")
    authenticator = Authenticator(config.issuers, roles)
    if dev_issuer is not None:
        authenticator.add_static_issuer(dev_issuer.issuer_config(), dev_issuer.jwks())
    return GatewayServices(
        authenticator=authenticator,
        credentials=credential_source(config.upstream),
        tls_context=_server_tls_context(config),
    )


def _resolve_dev_issuer(role: RoleConfig, dev_issuer: str) -> RoleConfig:
    trust = [
        statement.model_copy(update={"issuer": dev_issuer})
        if statement.issuer == DEV_ISSUER_PLACEHOLDER
        else statement
        for statement in role.trust
    ]
    return role.model_copy(update={"trust": trust})


def _server_tls_context(config: GatewayConfig) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"cannot load the TLS certificate {config.tls.cert_file} and key"
            f" {config.tls.key_file}: {error}"
        ) from None
    return context


def install_event_loop_policy() -> None:
    """Uses uvloop when it is installed: it roughly halves the cost of each relay hop."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(
    config: GatewayConfig,
    services: GatewayServices,
    on_ready: Callable[[Gateway], Awaitable[None] | None] | None = None,
) -> None:
    """Runs the gateway until SIGTERM or SIGINT, then shuts down gracefully."""
    gateway = Gateway(config, services)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        if on_ready is not None:
            ready = on_ready(gateway)
            if ready is not None:
                await ready
        await stop.wait()
    finally:
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signal_number)
        await gateway.shutdown()


def run(config: GatewayConfig) -> None:
    services = build_services(config)
    install_event_loop_policy()
    asyncio.run(serve(config, services))
