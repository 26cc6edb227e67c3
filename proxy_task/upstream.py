"""The gateway's connection to the database: connect, TLS, startup, authentication."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from custos.protocol import codes, sqlstates
from custos.protocol.errors import ProtocolViolation
from custos.protocol.framing import MessageFramer
from custos.protocol.frontend import encode_query
from custos.protocol.messages import (
    ServerNotice,
    backend_key_data_values,
    data_row_values,
    parse_notice,
    ssl_request,
    startup_message,
)
from custos.upstream.auth import UpstreamAuthExchange
from custos.upstream.credentials import CredentialSource
from custos.upstream.target import UpstreamTarget
from proxy_task.peer import PeerConnection
from proxy_task.reader import ConnectionClosed

if TYPE_CHECKING:
    from proxy_task.session import Session

_ANY_MESSAGE_TYPE = range(256)
_HANDSHAKE_MESSAGE_LIMIT = 1 << 20
_TLS_REQUIRED_MODES = frozenset({"require", "verify-ca", "verify-full"})
_PASSWORD_REJECTED = frozenset(
    {sqlstates.INVALID_PASSWORD, sqlstates.INVALID_AUTHORIZATION_SPECIFICATION}
)


class UpstreamConnectError(Exception):
    """The database could not be reached or refused the gateway.

    `message` is for the client: it says what failed without upstream secrets.
    """

    def __init__(
        self,
        message: str,
        sqlstate: str = sqlstates.CONNECTION_FAILURE,
        notice: ServerNotice | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.notice = notice


@dataclass(slots=True)
class UpstreamReady:
    """What the database said during startup, to replay to the client."""

    connection: UpstreamConnection
    target: UpstreamTarget
    process_id: int
    secret_key: int
    transaction_status: bytes
    # ParameterStatus and NoticeResponse messages, whole, in arrival order.
    messages: list[bytes] = field(default_factory=list)


class UpstreamConnection(PeerConnection):
    """The database side of one session."""

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is not None:
            session.from_upstream(data)
        else:
            self.reader.feed(data)

    def _session_lost(self, session: Session, exc: Exception | None) -> None:
        session.upstream_lost(exc)

    def _write_paused(self, session: Session, paused: bool) -> None:
        session.upstream_write_paused(paused)


async def connect_upstream(
    credentials: CredentialSource,
    client_parameters: Mapping[str, str],
    requested_database: str | None,
    timeout_seconds: float,
) -> UpstreamReady:
    """Opens an authenticated session on the database for one client.

    If the database rejects the credential, it is fetched once more (a secret
    may have been rotated) before the client is told.
    """
    for attempt in (1, 2):
        target = await credentials.resolve()
        if requested_database not in (None, target.database):
            raise UpstreamConnectError(
                f'database "{requested_database}" is not served by this gateway;'
                f' connect to database "{target.database}"',
                sqlstate=sqlstates.INVALID_CATALOG_NAME,
            )
        try:
            async with asyncio.timeout(timeout_seconds):
                return await _open(target, client_parameters)
        except TimeoutError:
            raise UpstreamConnectError(
                f"the database at {_where(target)} did not answer within {timeout_seconds:g} s;"
                " try again, and tell the operator if it persists"
            ) from None
        except UpstreamConnectError as error:
            if attempt == 1 and error.notice is not None and error.sqlstate in _PASSWORD_REJECTED:
                credentials.invalidate()
                continue
            raise
    raise AssertionError("unreachable")


async def _open(target: UpstreamTarget, client_parameters: Mapping[str, str]) -> UpstreamReady:
    loop = asyncio.get_running_loop()
    try:
        if target.host.startswith("/"):
            path = f"{target.host}/.s.PGSQL.{target.port}"
            _, connection = await loop.create_unix_connection(UpstreamConnection, path)
        else:
            _transport, connection = await loop.create_connection(
                UpstreamConnection, target.host, target.port
            )
    except OSError as error:
        raise UpstreamConnectError(
            f"cannot reach the database at {_where(target)}: {error.strerror or error};"
            " tell the operator of this gateway"
        ) from None
    try:
        if target.sslmode not in ("disable", "allow") and not target.host.startswith("/"):
            await _negotiate_tls(connection, target)
        return await _startup(connection, target, client_parameters)
    except BaseException:
        if connection.transport is not None:
            connection.transport.abort()
        raise


async def _negotiate_tls(connection: UpstreamConnection, target: UpstreamTarget) -> None:
    assert connection.transport is not None
    connection.transport.write(ssl_request())
    answer = await _read_or_fail(connection, target)
    if answer[:1] == b"N":
        if target.sslmode in _TLS_REQUIRED_MODES:
            raise UpstreamConnectError(
                f"the database at {_where(target)} does not accept TLS but sslmode is"
                f" {target.sslmode}; enable ssl on the server or change the target's sslmode"
            )
        return
    if answer != b"S":
        raise UpstreamConnectError(
            f"the database at {_where(target)} answered TLS negotiation oddly"
        )
    loop = asyncio.get_running_loop()
    try:
        connection.transport = await loop.start_tls(
            connection.transport,
            connection,
            _client_tls_context(target),
            server_hostname=target.host,
        )
    except (ssl.SSLError, ssl.CertificateError, OSError) as error:
        raise UpstreamConnectError(
            f"TLS with the database at {_where(target)} failed ({error});"
            " check the target's sslrootcert and host name"
        ) from None


def _client_tls_context(target: UpstreamTarget) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=target.sslrootcert)
    if target.sslmode == "verify-full":
        return context
    context.check_hostname = False
    if target.sslmode == "verify-ca" or (target.sslmode == "require" and target.sslrootcert):
        return context
    context.verify_mode = ssl.CERT_NONE
    return context


async def _startup(
    connection: UpstreamConnection, target: UpstreamTarget, client_parameters: Mapping[str, str]
) -> UpstreamReady:
    assert connection.transport is not None
    parameters = {**client_parameters, **target.options}
    parameters["user"] = target.user
    parameters["database"] = target.database
    connection.transport.write(startup_message(parameters))
    exchange = UpstreamAuthExchange(
        target.user, target.password, tls_server_certificate=_server_certificate(connection)
    )
    framer = MessageFramer(_HANDSHAKE_MESSAGE_LIMIT, _ANY_MESSAGE_TYPE)
    process_id = secret_key = 0
    forwarded: list[bytes] = []
    while True:
        chunk, spans = framer.feed(await _read_or_fail(connection, target))
        for message_type, start, end in spans:
            body = chunk[start + 5 : end]
            if message_type == codes.AUTHENTICATION:
                # AuthenticationOk goes through the exchange too: after SCRAM it is
                # accepted only once the server has proved it knows the password.
                reply = exchange.on_authentication(body)
                if reply:
                    connection.transport.write(reply)
            elif message_type == codes.ERROR_RESPONSE:
                raise _rejected(parse_notice(body), target)
            elif message_type == codes.BACKEND_KEY_DATA:
                process_id, secret_key = backend_key_data_values(body)
            elif message_type in (codes.PARAMETER_STATUS, codes.NOTICE_RESPONSE):
                forwarded.append(chunk[start:end])
            elif message_type == codes.READY_FOR_QUERY:
                if not exchange.done:
                    raise ProtocolViolation("the database skipped authentication")
                if framer.buffered or end != len(chunk):
                    raise ProtocolViolation("the database sent data after ReadyForQuery")
                return UpstreamReady(connection, target, process_id, secret_key, body, forwarded)
            elif message_type != codes.NEGOTIATE_PROTOCOL_VERSION:
                raise ProtocolViolation(
                    f"the database sent message type {chr(message_type)!r} during startup"
                )


def _server_certificate(connection: UpstreamConnection) -> bytes | None:
    """The database's TLS certificate (DER), for SCRAM channel binding."""
    assert connection.transport is not None
    ssl_object = connection.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    certificate: bytes | None = ssl_object.getpeercert(binary_form=True)
    return certificate


async def _read_or_fail(connection: UpstreamConnection, target: UpstreamTarget) -> bytes:
    try:
        return await connection.reader.read()
    except ConnectionClosed:
        raise UpstreamConnectError(
            f"the database at {_where(target)} closed the connection during startup;"
            " tell the operator of this gateway"
        ) from None


def _rejected(notice: ServerNotice, target: UpstreamTarget) -> UpstreamConnectError:
    if notice.sqlstate in _PASSWORD_REJECTED:
        return UpstreamConnectError(
            f"the database at {_where(target)} rejected the gateway's own credential"
            f" (SQLSTATE {notice.sqlstate}); the operator must check the target's credential",
            sqlstate=sqlstates.SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
            notice=notice,
        )
    return UpstreamConnectError(notice.message, sqlstate=notice.sqlstate, notice=notice)


def _where(target: UpstreamTarget) -> str:
    return f"{target.host}:{target.port}"


async def run_query(ready: UpstreamReady, sql: str) -> list[tuple[str | None, ...]]:
    """The rows of a simple query, as text, on a connection no session relays yet (or ever).

    Raises UpstreamConnectError if the query fails or the connection closes.
    """
    connection = ready.connection
    assert connection.transport is not None
    connection.transport.write(encode_query(sql))
    framer = MessageFramer(_HANDSHAKE_MESSAGE_LIMIT, _ANY_MESSAGE_TYPE)
    rows: list[tuple[str | None, ...]] = []
    while True:
        chunk, spans = framer.feed(await _read_or_fail(connection, ready.target))
        for message_type, start, end in spans:
            if message_type == codes.DATA_ROW:
                rows.append(data_row_values(chunk[start + 5 : end]))
            elif message_type == codes.ERROR_RESPONSE:
                raise _rejected(parse_notice(chunk[start + 5 : end]), ready.target)
            elif message_type == codes.READY_FOR_QUERY:
                return rows


async def fetch_search_path(ready: UpstreamReady) -> tuple[str, ...]:
    """The session's effective search path, asked of the database before the client arrives.

    `current_schemas(false)` resolves "$user" and leaves out schemas that do not
    exist, so the gateway starts from the path PostgreSQL will really use.
    """
    schemas: list[str] = []
    for row in await run_query(ready, "SELECT unnest(current_schemas(false))"):
        if len(row) != 1 or row[0] is None:
            raise ProtocolViolation("the database answered the search path query oddly")
        schemas.append(row[0])
    return tuple(schemas)


async def database_session_slots(connection: SideConnection) -> int:
    """How many ordinary sessions the database accepts at once: its max_connections less
    the slots it reserves for superusers (and, from PostgreSQL 16, reserved roles)."""
    rows = await connection.query(
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
        " - coalesce(current_setting('reserved_connections', true)::int, 0)",
    )
    if len(rows) != 1 or len(rows[0]) != 1 or rows[0][0] is None:
        raise ProtocolViolation("the database answered the connection limit query oddly")
    return int(rows[0][0])


class SideConnection:
    """A connection the gateway opens for its own catalog queries (see ColumnCatalog)."""

    def __init__(self, ready: UpstreamReady) -> None:
        self._ready = ready

    @property
    def closed(self) -> bool:
        transport = self._ready.connection.transport
        return transport is None or transport.is_closing()

    async def query(self, sql: str) -> list[tuple[str | None, ...]]:
        return await run_query(self._ready, sql)

    def close(self) -> None:
        transport = self._ready.connection.transport
        if transport is not None:
            transport.abort()


def side_connector(
    credentials: CredentialSource, application_name: str, timeout_seconds: float
) -> Callable[[], Awaitable[SideConnection]]:
    """Opens side connections with the gateway's own credential, named in pg_stat_activity."""
    # UTF8, whatever the database's encoding: run_query decodes every value as UTF-8.
    parameters = {"application_name": application_name, "client_encoding": "UTF8"}

    async def connect() -> SideConnection:
        return SideConnection(
            await connect_upstream(credentials, parameters, None, timeout_seconds)
        )

    return connect
