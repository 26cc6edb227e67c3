"""A tiny raw-socket PostgreSQL client, for tests that must write what real clients never would.

It speaks just enough of the protocol to reach an authenticated session
(SSLRequest, StartupMessage, cleartext password) and reads backend messages
one at a time, so a test can send malformed bytes at any point and check
exactly what the gateway answers. Below it, the checks every gateway test
makes afterwards: a healthy session still works, no database session leaked.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from custos.demo.embedded import GATEWAY_LOGIN
from custos.demo.postgres import PostgresServer
from custos.protocol import codes
from custos.protocol.messages import (
    ServerNotice,
    cancel_request,
    parse_notice,
    ssl_request,
    startup_message,
)

if TYPE_CHECKING:
    from gateway_fixtures import GatewayProcess

_HEADER = struct.Struct("!cI")
_INT32 = struct.Struct("!i")
_TWO_INT32 = struct.Struct("!ii")


class ConnectionEnded(Exception):
    """The gateway closed the connection while a message was expected."""


@dataclass(frozen=True)
class Message:
    """One backend message: its type as a one-character string, and its body."""

    type: str
    body: bytes

    @property
    def notice(self) -> ServerNotice:
        assert self.type in "EN", f"not an ErrorResponse or NoticeResponse: {self}"
        return parse_notice(self.body)


def frontend_message(message_type: bytes, body: bytes = b"") -> bytes:
    return message_type + struct.pack("!I", len(body) + 4) + body


def query(sql: str) -> bytes:
    return frontend_message(b"Q", sql.encode() + b"\x00")


def password(text: str) -> bytes:
    return frontend_message(b"p", text.encode() + b"\x00")


def copy_data(data: bytes) -> bytes:
    return frontend_message(b"d", data)


SYNC = frontend_message(b"S")
TERMINATE = frontend_message(b"X")


class WireClient:
    """One connection to a PostgreSQL server or the gateway, driven byte by byte."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket = sock
        self._buffer = bytearray()
        self.backend_key: tuple[int, int] | None = None
        self.parameters: dict[str, str] = {}

    @classmethod
    def connect(cls, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> WireClient:
        """Over TCP, or a Unix socket when `host` is a directory, as libpq reads it."""
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(f"{host}/.s.PGSQL.{port}")
            return cls(sock)
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Closes with a reset, as a crashed client would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def start_tls(self, ca_cert: Path) -> None:
        """SSLRequest, then the TLS handshake verified against `ca_cert`."""
        self.send(ssl_request())
        answer = self.read_exact(1)
        assert answer == b"S", f"expected the server to accept TLS, got {answer!r}"
        self.wrap_tls(ca_cert)

    def wrap_tls(self, ca_cert: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca_cert))
        context.check_hostname = False
        self.sock = context.wrap_socket(self.sock)

    def startup(self, parameters: Mapping[str, str]) -> None:
        self.send(startup_message(parameters))

    def login(self, ca_cert: Path, role: str, token: str, database: str, **params: str) -> None:
        """TLS, StartupMessage and token, up to the first ReadyForQuery."""
        self.start_tls(ca_cert)
        self.startup({"user": role, "database": database, **params})
        self.expect_password_request()
        self.send(password(token))
        for message in self.read_until("Z"):
            if message.type == "E":
                raise AssertionError(f"login refused: {message.notice.fields}")
            if message.type == "K":
                self.backend_key = _TWO_INT32.unpack(message.body)
            elif message.type == "S":
                name, value, _ = message.body.split(b"\x00")
                self.parameters[name.decode()] = value.decode()

    def expect_password_request(self) -> None:
        request = self.read_message()
        assert request.type == "R", f"expected an authentication request, got {request}"
        assert request.body == _INT32.pack(codes.AUTH_CLEARTEXT_PASSWORD), request

    def cancel(self, process_id: int, secret_key: int) -> None:
        """Sends a CancelRequest on this (fresh) connection and waits for the close."""
        self.send(cancel_request(process_id, secret_key))
        assert self.read_to_end() == b"", "the server answered a CancelRequest"

    def read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self.sock.recv(max(size - len(self._buffer), 65536))
            if not chunk:
                raise ConnectionEnded(
                    f"connection closed with {len(self._buffer)} of {size} bytes received"
                )
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_some(self, size: int) -> int:
        """Receives at most `size` bytes into the buffer, as a slow reader would."""
        chunk = self.sock.recv(size)
        if not chunk:
            raise ConnectionEnded("connection closed")
        self._buffer += chunk
        return len(chunk)

    def read_message(self) -> Message:
        message_type, length = _HEADER.unpack(self.read_exact(5))
        assert length >= 4, f"server sent an invalid length {length}"
        return Message(message_type.decode("latin-1"), self.read_exact(length - 4))

    def read_until(self, last_type: str) -> list[Message]:
        """Messages up to and including the first of type `last_type`."""
        messages = [self.read_message()]
        while messages[-1].type != last_type:
            try:
                messages.append(self.read_message())
            except ConnectionEnded as ended:
                errors = [m.notice.fields for m in messages if m.type == "E"]
                raise ConnectionEnded(f"{ended} after these errors: {errors}") from None
        return messages

    def run(self, sql: str) -> list[Message]:
        """A simple Query, and everything the server answers up to ReadyForQuery."""
        self.send(query(sql))
        return self.read_until("Z")

    def count_until_ready(self, chunk_size: int = 1 << 20) -> Counter[str]:
        """Reads up to ReadyForQuery counting messages by type, without keeping them:
        for results too large to hold."""
        counts: Counter[str] = Counter()
        buffer = self._buffer
        position = 0
        while True:
            while len(buffer) - position >= 5:
                message_type, length = _HEADER.unpack_from(buffer, position)
                end = position + 1 + length
                if end > len(buffer):
                    break
                counts[message_type.decode("latin-1")] += 1
                position = end
                if message_type == b"Z":
                    del buffer[:position]
                    return counts
            del buffer[:position]
            position = 0
            chunk = self.sock.recv(chunk_size)
            if not chunk:
                raise ConnectionEnded("connection closed before ReadyForQuery")
            buffer += chunk

    def read_to_end(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        data = bytes(self._buffer)
        self._buffer.clear()
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            except ssl.SSLError as error:
                # A server that drops TLS without close_notify ends the stream just the same.
                if "EOF" in str(error) or "UNEXPECTED_EOF" in str(error):
                    return data
                raise
            if not chunk:
                return data
            data += chunk

    def expect_refusal(self, sqlstates: Collection[str] | str) -> ServerNotice:
        """The server answers one FATAL ErrorResponse and closes the connection.

        Fails if it asks for a password or sends anything else first.
        """
        message = self.read_message()
        assert message.type == "E", f"expected an ErrorResponse, got {message}"
        notice = message.notice
        expected = {sqlstates} if isinstance(sqlstates, str) else set(sqlstates)
        assert notice.sqlstate in expected, notice.fields
        assert notice.severity == "FATAL", notice.fields
        rest = self.read_to_end()
        assert rest == b"", f"the server sent {len(rest)} more bytes after a FATAL error"
        return notice


def split_messages(data: bytes) -> list[Message]:
    """Cuts a whole backend stream into messages; fails on a partial or malformed one."""
    messages = []
    position = 0
    while position < len(data):
        assert len(data) - position >= 5, "stream ends inside a message header"
        message_type, length = _HEADER.unpack_from(data, position)
        assert length >= 4, f"invalid message length {length}"
        end = position + 1 + length
        assert end <= len(data), "stream ends inside a message"
        messages.append(Message(message_type.decode("latin-1"), data[position + 5 : end]))
        position = end
    return messages


def data_row_values(message: Message) -> list[bytes | None]:
    """The column values of a DataRow, None for SQL NULL."""
    assert message.type == "D", message
    (count,) = struct.unpack_from("!h", message.body)
    position = 2
    values: list[bytes | None] = []
    for _ in range(count):
        (length,) = _INT32.unpack_from(message.body, position)
        position += 4
        if length < 0:
            values.append(None)
        else:
            values.append(message.body[position : position + length])
            position += length
    return values


def login_as_agent(gateway: GatewayProcess, timeout: float = 10.0, **params: str) -> WireClient:
    """A raw session through the gateway as role `agent`, up to the first ReadyForQuery."""
    client = WireClient.connect(gateway.port, timeout=timeout)
    client.login(gateway.tls.ca_cert, "agent", gateway.token(), gateway.database, **params)
    assert client.backend_key is not None
    return client


def database_pid(client: WireClient) -> int:
    """The pid of the database backend behind a gateway session."""
    rows = [m for m in client.run("SELECT pg_backend_pid()") if m.type == "D"]
    value = data_row_values(rows[0])[0]
    assert value is not None
    return int(value)


@contextmanager
def healthy_session(dsn: str) -> Iterator[psycopg.Connection]:
    """A session opened before hostile input, which must still work after it."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
        yield connection
        assert connection.execute("SELECT 2").fetchone() == (2,)


def gateway_backends(pg: PostgresServer) -> int:
    """How many database sessions the gateway's own login holds, seen by the superuser."""
    with psycopg.connect(pg.dsn(), autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [GATEWAY_LOGIN]
        ).fetchone()
    assert row is not None
    count: int = row[0]
    return count


def wait_for_backends(pg: PostgresServer, at_most: int, timeout: float = 10.0) -> None:
    """Polls until the gateway's database sessions are back to `at_most`."""
    deadline = time.monotonic() + timeout
    while (count := gateway_backends(pg)) > at_most:
        if time.monotonic() > deadline:
            pytest.fail(f"the gateway still holds {count} database sessions, expected {at_most}")
        time.sleep(0.05)
