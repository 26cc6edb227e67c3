"""The gateway server: listens, tracks sessions, shuts down gracefully."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from custos.approvals.service import ApprovalService
from custos.audit.trail import AuditTrail
from custos.config import GatewayConfig, parse_listen_address
from custos.identity.authenticator import Authenticator
from custos.identity.errors import shown
from custos.identity.principal import Principal
from custos.policy.source import FilePolicySource, S3PolicySource
from custos.protocol import sqlstates
from custos.protocol.errors import ProtocolViolation
from custos.session.policy_stage import DecisionPoint
from custos.session.reached import FunctionReach
from custos.sql.cache import AnalysisCache
from custos.sql.workers import AnalysisWorkers
from custos.upstream.columns import ColumnCatalog
from custos.upstream.credentials import CredentialSource
from custos.upstream.errors import UpstreamError
from proxy_task.cancel import CancelRegistry
from proxy_task.client import ClientConnection
from proxy_task.session import Session
from proxy_task.upstream import UpstreamConnectError, database_session_slots, side_connector

CAPACITY_APPLICATION_NAME = "custos-capacity"
"""How the gateway's start-up query of the database's connection limit shows."""

if TYPE_CHECKING:
    from custos.approvals.server import ApprovalsServer as ApprovalsPage

log = logging.getLogger("custos.gateway")


@dataclass(frozen=True, slots=True)
class GatewayServices:
    """What the gateway needs from the rest of Custos, built from the configuration."""

    authenticator: Authenticator
    credentials: CredentialSource
    tls_context: ssl.SSLContext | None
    policy: FilePolicySource | S3PolicySource | None = None
    decision_point: DecisionPoint | None = None
    columns: ColumnCatalog | None = None
    masking_key: bytes | None = None
    audit: AuditTrail | None = None
    approvals: ApprovalService | None = None


class Gateway:
    def __init__(self, config: GatewayConfig, services: GatewayServices) -> None:
        self.config = config
        self.authenticator = services.authenticator
        self.credentials = services.credentials
        self.tls_context = services.tls_context
        self.policy = services.policy
        self.decision_point = services.decision_point
        self.columns = services.columns
        self.masking_key = services.masking_key
        self.audit = services.audit
        self.approvals = services.approvals
        self._approvals_page: ApprovalsPage | None = None
        # What statements reach through their tables and views (defaults, triggers...).
        self.function_reach = FunctionReach(self.columns) if self.columns is not None else None
        limits = config.limits
        self.analyses = AnalysisCache(
            budget_seconds=limits.analysis_budget_seconds,
            max_statement_chars=limits.max_statement_chars,
        )
        self.analysis_workers = (
            AnalysisWorkers(
                limits.analysis_processes,
                limits.analysis_budget_seconds,
                limits.max_statement_chars,
            )
            if limits.analysis_processes
            else None
        )
        self._policy_watch: asyncio.Task[None] | None = None
        self._digests: asyncio.Task[None] | None = None
        self.cancels = CancelRegistry()
        self._handshaking: set[ClientConnection] = set()
        self._sessions: set[Session] = set()
        self._server: asyncio.Server | None = None
        self._all_closed = asyncio.Event()
        # At most this many sessions at once: the configured limit, kept below what the
        # database accepts (read at start).
        self.max_sessions = config.limits.max_connections
        self._per_subject: Counter[tuple[str, str]] = Counter()
        self._per_role: Counter[str] = Counter()

    @property
    def at_capacity(self) -> bool:
        total = len(self._handshaking) + len(self._sessions)
        return total > self.max_sessions

    def admit(self, principal: Principal) -> str | None:
        """Counts a session for its identity and role; why not, when a limit is reached."""
        limits = self.config.limits
        identity = (principal.issuer, principal.subject)
        if self._per_subject[identity] >= limits.max_sessions_per_subject:
            return (
                f"identity {shown(principal.subject)} already holds"
                f" {limits.max_sessions_per_subject} sessions through the gateway"
                " (limits.max_sessions_per_subject); close one before opening another"
            )
        role_limit = limits.max_sessions_per_role
        if role_limit is not None and self._per_role[principal.role] >= role_limit:
            return (
                f"role {shown(principal.role)} already holds {role_limit} sessions through the"
                " gateway (limits.max_sessions_per_role); close one, or try again shortly"
            )
        self._per_subject[identity] += 1
        self._per_role[principal.role] += 1
        return None

    def release(self, principal: Principal) -> None:
        """A session admit() counted has ended (or never started)."""
        identity = (principal.issuer, principal.subject)
        self._per_subject[identity] -= 1
        if self._per_subject[identity] <= 0:
            del self._per_subject[identity]
        self._per_role[principal.role] -= 1
        if self._per_role[principal.role] <= 0:
            del self._per_role[principal.role]

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def port(self) -> int:
        assert self._server is not None
        assert self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Before the first session: a request's link names the page's address.
        await self._start_approvals_page()
        self._server = await loop.create_server(
            lambda: ClientConnection(self),
            self.config.listen_host,
            self.config.listen_port,
            backlog=1024,
            reuse_address=True,
        )
        self.max_sessions = await self._session_capacity()
        if self.policy is not None:
            self._policy_watch = loop.create_task(self.policy.watch())
            if self.audit is not None:
                self.audit.policy_loaded(self.policy.current().version)
                self.policy.on_loaded = self.audit.policy_loaded
        if self.audit is not None and self.audit.digests is not None:
            self._digests = loop.create_task(self.audit.digests.run())
        log.info(
            "gateway listening on %s:%d (tls=%s, policy=%s)",
            self.config.listen_host,
            self.port,
            self.tls_context is not None,
            self.policy.current().version[:12] if self.policy else "none",
        )

    async def _start_approvals_page(self) -> None:
        """The local approvals page and API, when the gateway's approvals are its own."""
        approvals = self.approvals
        if approvals is None or approvals.local is None:
            return
        from custos.approvals.server import start_approvals_server

        settings = approvals.settings
        assert settings.listen is not None
        host, port = parse_listen_address(settings.listen)
        self._approvals_page = await start_approvals_server(
            approvals.local, self.authenticator.identify, approvals.signer, host, port
        )
        if settings.url is None:
            # Port 0 picked one: the links given to requesters name it.
            shown_host = f"[{host}]" if ":" in host else host
            approvals.local.base_url = f"http://{shown_host}:{self._approvals_page.port}"
        log.info("approvals page at %s", approvals.local.base_url)

    @property
    def approvals_url(self) -> str | None:
        approvals = self.approvals
        return None if approvals is None or approvals.local is None else approvals.local.base_url

    async def _session_capacity(self) -> int:
        """The configured limit, lowered to what the database can take: its slots for
        ordinary sessions, less those left free for administrators and the gateway's own."""
        limits = self.config.limits
        connect = side_connector(
            self.credentials, CAPACITY_APPLICATION_NAME, limits.startup_timeout_seconds
        )
        try:
            connection = await connect()
            try:
                slots = await database_session_slots(connection)
            finally:
                connection.close()
        except (UpstreamConnectError, UpstreamError, ProtocolViolation, OSError) as error:
            log.warning(
                "could not read the database's connection limit (%s); at most %d sessions",
                error,
                limits.max_connections,
            )
            return limits.max_connections
        own = 1 if self.columns is not None else 0
        capacity = min(limits.max_connections, slots - limits.database_reserved_connections - own)
        if capacity < limits.max_connections:
            log.info(
                "at most %d sessions: the database takes %d, %d left free for administrators",
                max(capacity, 1),
                slots,
                limits.database_reserved_connections,
            )
        return max(capacity, 1)

    async def shutdown(self) -> None:
        """Stops accepting, lets sessions finish their transactions, then closes the rest."""
        self._all_closed.clear()
        if self._policy_watch is not None:
            self._policy_watch.cancel()
        if self._digests is not None:
            self._digests.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self._handshaking):
            if connection.transport is not None:
                connection.transport.close()
        for session in list(self._sessions):
            session.drain()
        grace = self.config.limits.shutdown_grace_seconds
        if self._sessions:
            log.info("waiting up to %gs for %d sessions to finish", grace, len(self._sessions))
            try:
                async with asyncio.timeout(grace):
                    await self._all_closed.wait()
            except TimeoutError:
                for session in list(self._sessions):
                    session.close(
                        sqlstates.ADMIN_SHUTDOWN,
                        "the gateway is shutting down; reconnect to continue",
                    )
        if self._server is not None:
            await self._server.wait_closed()
        if self.columns is not None:
            self.columns.close()
        if self.analysis_workers is not None:
            self.analysis_workers.close()
        if self._approvals_page is not None:
            await self._approvals_page.close()
        if self.audit is not None:
            await self.audit.close()
        log.info("gateway stopped")

    def connection_opened(self, connection: ClientConnection) -> None:
        self._handshaking.add(connection)

    def connection_closed(self, connection: ClientConnection) -> None:
        self._handshaking.discard(connection)

    def session_opened(self, connection: ClientConnection, session: Session) -> None:
        self._handshaking.discard(connection)
        self._sessions.add(session)

    def session_closed(self, session: Session) -> None:
        if session in self._sessions:
            self.release(session.principal)
        self._sessions.discard(session)
        self.cancels.unregister(session.cancel_key)
        if not self._sessions:
            self._all_closed.set()
