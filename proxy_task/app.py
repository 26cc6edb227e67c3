"""Builds the gateway from its configuration and runs it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from custos.approvals.models import ApprovalRequest
from custos.approvals.service import ApprovalsConfigError, ApprovalService, approval_service
from custos.audit.digest_schedule import DigestKeyError, DigestSchedule, digest_signing_key
from custos.audit.stores import audit_store
from custos.audit.trail import AuditTrail
from custos.config import ConfigError, GatewayConfig, PolicySettings
from custos.identity.authenticator import Authenticator
from custos.identity.dev_issuer import DevIssuer
from custos.identity.models import IssuerConfig, RoleConfig
from custos.masking.keys import KeyLoadError, secret_key
from custos.policy.lambda_point import LambdaDecisionPoint
from custos.policy.source import FilePolicySource, PolicyError, S3PolicySource
from custos.session.decision import InProcessDecisionPoint
from custos.session.policy_stage import DecisionPoint
from custos.upstream.columns import ColumnCatalog
from custos.upstream.credentials import CredentialSource, credential_source
from proxy_task.gateway import Gateway, GatewayServices
from proxy_task.upstream import side_connector

log = logging.getLogger("custos.gateway")

ReloadingPolicySource = FilePolicySource | S3PolicySource

CATALOG_APPLICATION_NAME = "custos-catalog"
"""How the gateway's own connection for column lists shows in pg_stat_activity."""

DEV_ISSUER_PLACEHOLDER = "dev"
"""In a role's trust statement, `issuer: dev` names the gateway's dev issuer."""


def build_services(config: GatewayConfig) -> GatewayServices:
    if config.upstream is None:
        raise ConfigError("no upstream database: pass --upstream DSN or set upstream in the config")
    dev_issuer = DevIssuer.open_or_create(config.dev_issuer_dir) if config.dev_issuer_dir else None
    dev_issuer_config = dev_issuer.issuer_config() if dev_issuer else None
    if dev_issuer_config is None and any(
        statement.issuer == DEV_ISSUER_PLACEHOLDER
        for role in config.roles
        for statement in role.trust
    ):
        raise ConfigError("a role trusts the dev issuer, but no --dev-issuer DIR was given")
    roles = _with_dev_issuer(config.roles, dev_issuer_config)
    policy = _policy_source(config.policy) if config.policy else None
    if policy is None:
        log.warning("no policy is configured: statements pass through ungoverned")
    authenticator = Authenticator(config.issuers, _role_catalog(roles, policy, dev_issuer_config))
    if dev_issuer is not None and dev_issuer_config is not None:
        authenticator.add_static_issuer(dev_issuer_config, dev_issuer.jwks())
    credentials = credential_source(config.upstream)
    audit = _audit_trail(config, policy)
    return GatewayServices(
        authenticator=authenticator,
        credentials=credentials,
        tls_context=_server_tls_context(config),
        policy=policy,
        decision_point=_decision_point(config.policy, policy),
        columns=_column_catalog(config, credentials),
        masking_key=_masking_key(config),
        audit=audit,
        approvals=_approvals(config, audit),
    )


def _approvals(config: GatewayConfig, audit: AuditTrail | None) -> ApprovalService | None:
    settings = config.approvals
    if settings is None:
        if config.policy is not None:
            log.info("no approvals are configured: statements that need one are refused")
        return None
    if config.policy is None:
        raise ConfigError(
            "approvals carry out what policy requires: configure a policy (policy.file) to"
            " turn them on"
        )

    def decided(request: ApprovalRequest) -> None:
        # A waiting session records its own request's decision in its chain.
        if audit is not None and request.mode == "retry":
            deciders = ", ".join(vote.approver for vote in request.deciders) or None
            audit.approval_decided(
                request.id, request.status.value, deciders, request.requester.role
            )

    try:
        return approval_service(settings, decided)
    except ApprovalsConfigError as error:
        raise ConfigError(str(error)) from None


def _audit_trail(config: GatewayConfig, policy: ReloadingPolicySource | None) -> AuditTrail | None:
    settings = config.audit
    if settings is None:
        return None
    if policy is None:
        raise ConfigError(
            "the audit trail records what policy decides: configure a policy (policy.file)"
            " to turn it on"
        )
    try:
        key = secret_key(settings.key, "audit")
    except KeyLoadError as error:
        raise ConfigError(str(error)) from None
    if key is None:
        raise ConfigError(
            "the audit trail needs a key of its own for its pseudonyms: set audit.key.key_file"
            f" (or key_secret, or ${settings.key.key_env}); `openssl rand -hex 32` makes one"
        )
    digests = None
    if settings.digest_key_file is not None and settings.dir is not None:
        try:
            days = settings.expire_local_after_days
            digests = DigestSchedule(
                settings.dir,
                digest_signing_key(settings.digest_key_file),
                None if days is None else timedelta(days=days),
            )
        except DigestKeyError as error:
            raise ConfigError(str(error)) from None
    source = policy
    return AuditTrail(
        audit_store(settings), key, settings, lambda: source.current().catalog, digests
    )


def _masking_key(config: GatewayConfig) -> bytes | None:
    if config.policy is None:
        return None
    try:
        key = secret_key(config.masking, "masking")
    except KeyLoadError as error:
        raise ConfigError(str(error)) from None
    if key is None:
        log.warning(
            "no masking key is configured (masking.key_file, key_secret or $%s):"
            " statements policy wants pseudonymised are refused",
            config.masking.key_env,
        )
    return key


def _policy_source(settings: PolicySettings) -> ReloadingPolicySource:
    try:
        if settings.file is not None:
            return FilePolicySource(settings.file, poll_seconds=settings.poll_seconds or 2.0)
        assert settings.s3_bucket is not None
        assert settings.s3_key is not None
        return S3PolicySource(
            settings.s3_bucket, settings.s3_key, poll_seconds=settings.poll_seconds or 30.0
        )
    except PolicyError as error:
        raise ConfigError(str(error)) from None


def _decision_point(
    settings: PolicySettings | None, policy: ReloadingPolicySource | None
) -> DecisionPoint | None:
    if settings is None or policy is None:
        return None
    if settings.decision_point == "lambda":
        assert settings.lambda_function is not None
        return LambdaDecisionPoint(settings.lambda_function)
    return InProcessDecisionPoint(policy)


def _column_catalog(config: GatewayConfig, credentials: CredentialSource) -> ColumnCatalog | None:
    """The columns behind `*`, for refusal hints: only policy refuses statements."""
    if config.policy is None:
        return None
    connect = side_connector(
        credentials, CATALOG_APPLICATION_NAME, config.limits.startup_timeout_seconds
    )
    return ColumnCatalog(connect, ttl_seconds=config.policy.column_cache_seconds)


def _role_catalog(
    configured: list[RoleConfig],
    policy: ReloadingPolicySource | None,
    dev_issuer: IssuerConfig | None,
) -> Callable[[], Sequence[RoleConfig]]:
    """The roles in force: the config's, plus the current policy's (which may reload)."""
    cache: dict[str, Sequence[RoleConfig]] = {}

    def current() -> Sequence[RoleConfig]:
        if policy is None:
            return configured
        engine = policy.current()
        if engine.version not in cache:
            from_policy = _with_dev_issuer(engine.document.roles, dev_issuer)
            names = {role.name for role in configured}
            clashes = sorted(names.intersection(role.name for role in from_policy))
            if clashes:
                log.error(
                    "roles %s are defined in both config and policy; the config wins", clashes
                )
            cache.clear()
            cache[engine.version] = configured + [r for r in from_policy if r.name not in names]
        return cache[engine.version]

    if policy is None and not configured:
        log.warning("no roles are configured: every connection will be refused")
    return current


def _with_dev_issuer(
    roles: Sequence[RoleConfig], dev_issuer: IssuerConfig | None
) -> list[RoleConfig]:
    """The roles with `issuer: dev` naming the dev issuer, when the gateway has one."""
    if dev_issuer is None:
        return list(roles)
    return [_trusting(role, dev_issuer.issuer) for role in roles]


def _trusting(role: RoleConfig, dev_issuer: str) -> RoleConfig:
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


def run(config: GatewayConfig, on_ready: Callable[[int], None] | None = None) -> None:
    """The gateway's entry point (`custos.gateway`): runs until SIGTERM or SIGINT.

    `on_ready` gets the port the gateway listens on, once it does.
    """
    services = build_services(config)
    install_event_loop_policy()
    tune_garbage_collection()

    def ready(gateway: Gateway) -> None:
        if on_ready is not None:
            on_ready(gateway.port)

    asyncio.run(serve(config, services, on_ready=ready))


def tune_garbage_collection() -> None:
    """Collects cycles less often: the relay makes short-lived objects for every message.

    What exists at start-up (modules, configuration, policy) is moved out of the collector's
    sight, and the youngest generation is collected after 50,000 allocations rather than
    700: a session's objects are freed by reference counting, not by the collector.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
