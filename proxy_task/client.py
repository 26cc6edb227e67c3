"""The client side of a session: TLS negotiation, token authentication, startup."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from custos.approvals.models import Requester
from custos.approvals.service import ApprovalService
from custos.approvals.stage import ApprovalStage
from custos.audit.stage import AUDIT_UNAVAILABLE, AuditStage
from custos.audit.statements import recorded_text
from custos.config import is_loopback
from custos.identity.errors import AuthenticationError, shown
from custos.identity.principal import Principal
from custos.masking.stage import MaskingStage
from custos.policy.engine import Decision
from custos.policy.models import Effect
from custos.protocol import codes, sqlstates
from custos.protocol.errors import ProtocolViolation
from custos.protocol.messages import (
    authentication_cleartext_password,
    authentication_ok,
    backend_key_data,
    error_response,
    negotiate_protocol_version,
    password_message_text,
    ready_for_query,
)
from custos.protocol.startup import (
    CancelRequest,
    GSSEncRequest,
    SSLRequest,
    StartupDecoder,
    StartupMessage,
)
from custos.session.hints import StarHints
from custos.session.lexical import lexical_settings
from custos.session.machine import SessionLimits, SessionMachine
from custos.session.policy_stage import PolicyStage, refusal_for
from custos.session.refusal import Refusal
from custos.session.relay import RelayMachine
from custos.session.stages import Stage
from custos.session.startup_settings import startup_settings
from custos.session.texts import TextAnalyser
from custos.upstream.errors import UpstreamAuthenticationError
from custos.upstream.errors import UpstreamError as CredentialError
from proxy_task.cancel import UpstreamCancelKey
from proxy_task.estimate import row_estimator
from proxy_task.peer import PeerConnection
from proxy_task.reader import ConnectionClosed
from proxy_task.session import Machine, Session
from proxy_task.upstream import (
    UpstreamConnectError,
    UpstreamReady,
    connect_upstream,
    fetch_search_path,
    side_connector,
)

if TYPE_CHECKING:
    from proxy_task.gateway import Gateway

log = logging.getLogger("custos.client")

ESTIMATE_APPLICATION_NAME = "custos-approval-estimate"
"""How the side connection asking the planner for an approval's row estimate shows."""

# A token is a few kilobytes; anything near this is not a token.
_MAX_PASSWORD_MESSAGE_BYTES = 64 << 10
# Startup parameters that change what kind of connection this is: never forwarded.
_REFUSED_PARAMETERS = frozenset({"replication"})
_GATEWAY_PARAMETERS = frozenset({"user", "database"})
_NO_SEARCH_PATH: tuple[str, ...] = ()  # a SET names no relation


class HandshakeRefused(Exception):
    """The handshake ends with a FATAL error to the client."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint


class ClientConnection(PeerConnection):
    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway
        self.peer = "unknown"
        self._handshake: asyncio.Task[None] | None = None
        self._tls = False
        self._ssl_answered = False
        self._audit: AuditStage | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.set_write_buffer_limits(
            high=self.gateway.config.limits.write_buffer_high_bytes
        )
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
        self.gateway.connection_opened(self)
        self._handshake = asyncio.get_running_loop().create_task(self._run_handshake())

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is not None:
            session.from_client(data)
        else:
            self.reader.feed(data)

    def _session_lost(self, session: Session, exc: Exception | None) -> None:
        session.client_lost(exc)

    def _write_paused(self, session: Session, paused: bool) -> None:
        session.client_write_paused(paused)

    def _handshake_lost(self) -> None:
        if self._handshake is not None:
            self._handshake.cancel()

    async def _run_handshake(self) -> None:
        upstream: UpstreamReady | None = None
        admitted: Principal | None = None
        try:
            async with asyncio.timeout(self.gateway.config.limits.startup_timeout_seconds):
                startup = await self._negotiate()
                if startup is None:
                    return
                principal = await self._authenticate(startup)
                await self._decide_startup_settings(startup, principal)
                self._admit(principal)
                admitted = principal
                upstream = await self._connect_upstream(startup, principal)
                machine = await self._machine(principal, upstream)
            self._start_session(principal, upstream, machine)
            upstream = None
            admitted = None  # the session holds the admission now
        except HandshakeRefused as refusal:
            self._refuse(refusal.sqlstate, refusal.message, refusal.hint)
        except ProtocolViolation as violation:
            self._refuse(violation.sqlstate, violation.message)
        except TimeoutError:
            self._refuse(
                sqlstates.CONNECTION_FAILURE,
                "the connection did not complete startup in time; connect again",
            )
        except ConnectionClosed:
            self._close()
        except asyncio.CancelledError:
            self._close()
        finally:
            if upstream is not None and upstream.connection.transport is not None:
                upstream.connection.transport.abort()
            if admitted is not None:
                self.gateway.release(admitted)

    async def _negotiate(self) -> StartupMessage | None:
        """Reads startup packets until a StartupMessage; None when the connection is done."""
        assert self.transport is not None
        decoder = StartupDecoder()
        while True:
            packet = decoder.next_packet()
            if packet is None:
                decoder.feed(await self.reader.read())
                continue
            if isinstance(packet, SSLRequest):
                await self._answer_ssl_request(decoder)
            elif isinstance(packet, GSSEncRequest):
                self.transport.write(b"N")
            elif isinstance(packet, CancelRequest):
                await self._forward_cancel(packet)
                return None
            else:
                self.reader.feed(decoder.take_buffered())
                return packet

    async def _answer_ssl_request(self, decoder: StartupDecoder) -> None:
        assert self.transport is not None
        if self._ssl_answered:
            raise ProtocolViolation(
                "SSLRequest sent twice: encryption was already negotiated on this connection"
            )
        self._ssl_answered = True
        context = self.gateway.tls_context
        if context is None:
            self.transport.write(b"N")
            return
        if decoder.buffered or self.reader.take():
            raise ProtocolViolation("received unencrypted data after SSL request")
        self.transport.write(b"S")
        loop = asyncio.get_running_loop()
        try:
            new_transport = await loop.start_tls(self.transport, self, context, server_side=True)
        except OSError as error:
            # ssl.SSLError is an OSError: a client that distrusts our certificate, sends
            # something other than TLS, or hangs up mid-handshake.
            raise ConnectionClosed(f"TLS handshake failed: {error}") from None
        if new_transport is None:
            raise ConnectionClosed("TLS handshake did not complete")
        self.transport = new_transport
        self._tls = True

    async def _forward_cancel(self, request: CancelRequest) -> None:
        session = self.gateway.cancels.lookup(request.process_id, request.secret_key)
        if session is None:
            log.info("cancel request with an unknown key from %s ignored", self.peer)
        else:
            delivery = session.cancel_requested()
            if delivery is not None:
                await asyncio.shield(delivery)
        self._close()

    async def _authenticate(self, startup: StartupMessage) -> Principal:
        assert self.transport is not None
        role = startup.parameters.get("user", "")
        if not role:
            raise HandshakeRefused(
                sqlstates.INVALID_AUTHORIZATION_SPECIFICATION,
                "no role given: set the user name to the role you want to assume",
                hint="for example: psql 'host=... user=agent sslmode=require'",
            )
        refused = _REFUSED_PARAMETERS.intersection(startup.parameters)
        if refused:
            raise HandshakeRefused(
                sqlstates.FEATURE_NOT_SUPPORTED,
                f"{', '.join(sorted(refused))} connections are not supported through the gateway",
            )
        if self.gateway.at_capacity:
            raise HandshakeRefused(
                sqlstates.TOO_MANY_CONNECTIONS,
                "the gateway has too many connections; try again shortly",
            )
        if startup.minor != 0 or startup.protocol_options:
            self.transport.write(negotiate_protocol_version(0, startup.protocol_options))
        if not self._tls and not self._cleartext_allowed():
            raise HandshakeRefused(
                sqlstates.INVALID_AUTHORIZATION_SPECIFICATION,
                "the gateway accepts tokens only over TLS: connect with sslmode=require",
                hint="tokens are bearer credentials and must never cross the network in clear",
            )
        self.transport.write(authentication_cleartext_password())
        token = await self._read_password()
        if not token:
            raise HandshakeRefused(
                sqlstates.INVALID_PASSWORD,
                "no token given: pass your OIDC token as the password",
                hint="for example: PGPASSWORD=$(custos token ...) psql ...",
            )
        application_name = startup.parameters.get("application_name")
        try:
            principal = await self.gateway.authenticator.authenticate(
                token, role, self.peer, application_name
            )
        except AuthenticationError as error:
            log.warning(
                "authentication failed role=%s client=%s sqlstate=%s reason=%s",
                shown(role),
                self.peer,
                error.sqlstate,
                error.message,
            )
            audit = self.gateway.audit
            if audit is not None:
                audit.authentication_failed(
                    shown(role), self.peer, shown(application_name), error.sqlstate, error.message
                )
            raise HandshakeRefused(error.sqlstate, error.message, error.hint) from None
        return principal

    def _cleartext_allowed(self) -> bool:
        host = self.peer.rpartition(":")[0]
        return self.gateway.config.allow_loopback_cleartext and is_loopback(host)

    async def _read_password(self) -> str:
        """The PasswordMessage; whatever the client sent after it stays for the session."""
        received = b""
        while True:
            received += await self.reader.read()
            if len(received) < 5:
                continue
            if received[0] != codes.PASSWORD:
                raise ProtocolViolation(
                    f"expected a password message, got message type {received[0]}"
                )
            length = int.from_bytes(received[1:5], "big")
            if not 4 <= length <= _MAX_PASSWORD_MESSAGE_BYTES:
                raise ProtocolViolation(
                    f"password message of {length} bytes: the password must be an OIDC"
                    " token of a few kilobytes"
                )
            if len(received) > length:
                self.reader.feed(received[1 + length :])
                return password_message_text(received[5 : 1 + length])

    def _admit(self, principal: Principal) -> None:
        refused = self.gateway.admit(principal)
        if refused is not None:
            log.info("connection refused role=%s: %s", principal.role, refused)
            raise HandshakeRefused(sqlstates.TOO_MANY_CONNECTIONS, refused)

    async def _decide_startup_settings(self, startup: StartupMessage, principal: Principal) -> None:
        """Policy decides each setting of the startup packet as the SET it amounts to, before
        anything reaches the database; one it refuses refuses the connection."""
        decision_point = self.gateway.decision_point
        if decision_point is None:
            return
        settings = startup_settings(startup.parameters)
        if isinstance(settings, Refusal):
            raise HandshakeRefused(settings.sqlstate, settings.message, settings.hint)
        for setting in settings:
            analysis = self.gateway.analyses.analyze(setting.as_statement(), _NO_SEARCH_PATH)
            outcome = decision_point.decide(principal.role, analysis, (), _NO_SEARCH_PATH)
            decision = outcome if isinstance(outcome, Decision) else await outcome
            if decision.effect is Effect.ALLOW:
                continue
            refusal = refusal_for(decision)
            log.info(
                "connection refused role=%s subject=%s: startup setting %s refused by policy",
                principal.role,
                shown(principal.subject),
                shown(setting.name),
            )
            raise HandshakeRefused(
                refusal.sqlstate,
                f"the startup setting {shown(setting.name)} is refused: {refusal.message}",
                refusal.hint,
            )

    async def _connect_upstream(
        self, startup: StartupMessage, principal: Principal
    ) -> UpstreamReady:
        parameters = {
            name: value
            for name, value in startup.parameters.items()
            if name not in _GATEWAY_PARAMETERS and not name.startswith("_pq_.")
        }
        requested = startup.parameters.get("database")
        if requested == principal.role:
            requested = None
        try:
            return await connect_upstream(
                self.gateway.credentials,
                parameters,
                requested,
                self.gateway.config.limits.startup_timeout_seconds,
            )
        except UpstreamConnectError as error:
            if error.sqlstate == sqlstates.INVALID_CATALOG_NAME:
                # The client asked for a database this gateway does not serve: not a fault.
                log.info("connection refused role=%s: %s", principal.role, error.message)
            else:
                log.error("upstream connection failed role=%s: %s", principal.role, error.message)
            raise HandshakeRefused(error.sqlstate, error.message) from None
        except UpstreamAuthenticationError as error:
            log.error("upstream login failed role=%s: %s", principal.role, error)
            raise HandshakeRefused(
                sqlstates.SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
                "the gateway could not log in to the database; tell the operator of this gateway",
            ) from None
        except CredentialError as error:
            log.error("upstream credential unavailable role=%s: %s", principal.role, error)
            raise HandshakeRefused(
                sqlstates.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                "the gateway cannot obtain its database credential right now;"
                " try again, and tell the operator if it persists",
            ) from None

    async def _machine(self, principal: Principal, upstream: UpstreamReady) -> Machine:
        """The session's machine: the bare relay, or the governed one when there is a policy."""
        limits = self.gateway.config.limits
        decision_point = self.gateway.decision_point
        if decision_point is None:
            return RelayMachine(limits.max_message_bytes, upstream.transaction_status)
        try:
            # The gateway starts from the search path the database itself resolved.
            search_path = await fetch_search_path(upstream)
        except UpstreamConnectError as error:
            raise HandshakeRefused(error.sqlstate, error.message) from None
        columns = self.gateway.columns
        workers = self.gateway.analysis_workers
        identity_workers = (
            workers.for_identity(f"{principal.issuer} {principal.subject}")
            if workers is not None
            else None
        )
        approvals = self.gateway.approvals
        stages: list[Stage] = [
            PolicyStage(
                principal.role,
                decision_point,
                StarHints(columns) if columns is not None else None,
                self.gateway.function_reach,
                identity_workers,
                masks_results=True,
                approves=approvals is not None,
            )
        ]
        audit = await self._audit_stage(principal, upstream)
        if audit is not None:
            stages.append(audit)
        if approvals is not None:
            stages.append(self._approval_stage(approvals, principal, upstream, audit))
        stages.append(MaskingStage(self.gateway.masking_key))
        return SessionMachine(
            stages=stages,
            analyser=TextAnalyser(
                self.gateway.analyses, decision_point.reads_statement_text, identity_workers
            ),
            search_path=search_path,
            lexical=lexical_settings(upstream.messages),
            limits=SessionLimits(
                max_message_bytes=limits.max_message_bytes,
                max_held_message_bytes=limits.max_message_bytes,
                max_prepared_bytes=limits.max_prepared_bytes_per_session,
            ),
            transaction_status=upstream.transaction_status,
            log_context=f"role={principal.role} subject={shown(principal.subject)}",
            login=upstream.target.user,
        )

    def _approval_stage(
        self,
        approvals: ApprovalService,
        principal: Principal,
        upstream: UpstreamReady,
        audit: AuditStage | None,
    ) -> ApprovalStage:
        """Statements policy says need approval wait for a person's, or are refused until it."""
        policy = self.gateway.policy
        assert policy is not None
        requester = Requester(
            subject=principal.subject,
            issuer=principal.issuer,
            role=principal.role,
            groups=principal.groups,
            client_addr=principal.client_address,
            application_name=(
                None
                if principal.application_name is None
                else recorded_text(principal.application_name)
            ),
            labels=audit.identity.labels if audit is not None else {},
            session_id=audit.identity.session_id if audit is not None else None,
        )
        connect = side_connector(
            self.gateway.credentials,
            ESTIMATE_APPLICATION_NAME,
            self.gateway.config.limits.startup_timeout_seconds,
        )
        return ApprovalStage(
            approvals.backend,
            requester,
            self._target_name(upstream),
            approvals.key,
            lambda: policy.current().catalog,
            audit=audit,
            estimate=row_estimator(connect),
        )

    def _target_name(self, upstream: UpstreamReady) -> str:
        """The policy's name for the session's database (its own name if none)."""
        policy = self.gateway.policy
        database = upstream.target.database
        if policy is None:
            return database
        targets = policy.current().document.targets
        return next((t.name for t in targets if t.database == database), database)

    async def _audit_stage(
        self, principal: Principal, upstream: UpstreamReady
    ) -> AuditStage | None:
        """The session's audit stage, once its start event is durable; None without a trail."""
        trail = self.gateway.audit
        policy = self.gateway.policy
        if trail is None or policy is None:
            return None
        document = policy.current().document
        role = next((r for r in document.roles if r.name == principal.role), None)
        stage = trail.session_stage(
            principal, self._target_name(upstream), role.purpose if role else None
        )
        try:
            await stage.started()
        except Exception as error:
            log.error("audit: a session's start could not be recorded: %s", error)
            if not stage.fails_open:
                raise HandshakeRefused(
                    AUDIT_UNAVAILABLE.sqlstate, AUDIT_UNAVAILABLE.message, AUDIT_UNAVAILABLE.hint
                ) from None
        self._audit = stage
        return stage

    def _start_session(
        self, principal: Principal, upstream: UpstreamReady, machine: Machine
    ) -> None:
        assert self.transport is not None
        assert upstream.connection.transport is not None
        upstream_key = UpstreamCancelKey(
            upstream.target.host, upstream.target.port, upstream.process_id, upstream.secret_key
        )
        upstream.connection.transport.set_write_buffer_limits(
            high=self.gateway.config.limits.write_buffer_high_bytes
        )
        session = Session(
            machine,
            principal,
            self.transport,
            upstream.connection.transport,
            upstream_key,
            self._session_closed,
        )
        session.cancel_key = self.gateway.cancels.register(upstream.process_id, session)
        self.transport.write(
            authentication_ok()
            + b"".join(upstream.messages)
            + backend_key_data(*session.cancel_key)
            + ready_for_query(upstream.transaction_status)
        )
        self.session = session
        upstream.connection.session = session
        self.gateway.session_opened(self, session)
        log.info(
            "session opened role=%s subject=%s issuer=%s client=%s application=%s tls=%s",
            principal.role,
            principal.subject,
            principal.issuer,
            self.peer,
            shown(recorded_text(principal.application_name or "")),
            self._tls,
        )
        pending_upstream = upstream.connection.reader.take()
        if pending_upstream:
            session.from_upstream(pending_upstream)
        pending_client = self.reader.take()
        if pending_client:
            session.from_client(pending_client)

    def _session_closed(self, session: Session) -> None:
        if self._audit is not None:
            self._audit.ended(session.close_reason, session.bytes_from_upstream)
        self.gateway.session_closed(session)

    def _refuse(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(error_response(sqlstate, message, severity="FATAL", hint=hint))
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.gateway.connection_closed(self)
