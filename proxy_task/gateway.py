"""The gateway server: listens, tracks sessions, shuts down gracefully."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

from custos.config import GatewayConfig
from custos.identity.authenticator import Authenticator
from custos.policy.source import FilePolicySource, S3PolicySource
from custos.protocol import sqlstates
from custos.session.policy_stage import DecisionPoint
from custos.sql.cache import AnalysisCache
from custos.upstream.columns import ColumnCatalog
from custos.upstream.credentials import CredentialSource
from proxy_task.cancel import CancelRegistry
from proxy_task.client import ClientConnection
from proxy_task.session import Session

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


class Gateway:
    def __init__(self, config: GatewayConfig, services: GatewayServices) -> None:
        self.config = config
        self.authenticator = services.authenticator
        self.credentials = services.credentials
        self.tls_context = services.tls_context
        self.policy = services.policy
        self.decision_point = services.decision_point
        self.columns = services.columns
        self.analyses = AnalysisCache()
        self._policy_watch: asyncio.Task[None] | None = None
        self.cancels = CancelRegistry()
        self._handshaking: set[ClientConnection] = set()
        self._sessions: set[Session] = set()
        self._server: asyncio.Server | None = None
        self._all_closed = asyncio.Event()

    @property
    def at_capacity(self) -> bool:
        total = len(self._handshaking) + len(self._sessions)
        return total > self.config.limits.max_connections

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
        self._server = await loop.create_server(
            lambda: ClientConnection(self),
            self.config.listen_host,
            self.config.listen_port,
            backlog=1024,
            reuse_address=True,
        )
        if self.policy is not None:
            self._policy_watch = loop.create_task(self.policy.watch())
        log.info(
            "gateway listening on %s:%d (tls=%s, policy=%s)",
            self.config.listen_host,
            self.port,
            self.tls_context is not None,
            self.policy.current().version[:12] if self.policy else "none",
        )

    async def shutdown(self) -> None:
        """Stops accepting, lets sessions finish their transactions, then closes the rest."""
        self._all_closed.clear()
        if self._policy_watch is not None:
            self._policy_watch.cancel()
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
        log.info("gateway stopped")

    def connection_opened(self, connection: ClientConnection) -> None:
        self._handshaking.add(connection)

    def connection_closed(self, connection: ClientConnection) -> None:
        self._handshaking.discard(connection)

    def session_opened(self, connection: ClientConnection, session: Session) -> None:
        self._handshaking.discard(connection)
        self._sessions.add(session)

    def session_closed(self, session: Session) -> None:
        self._sessions.discard(session)
        self.cancels.unregister(session.cancel_key)
        if not self._sessions:
            self._all_closed.set()
