"""Hostile bytes at the gateway, before and after authentication.

Each case checks three things: the client gets a clear FATAL ErrorResponse
where the protocol allows one, the connection is closed (and its database
backend with it), and a healthy session opened beforehand keeps working.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from gateway_fixtures import GatewayProcess, start_gateway
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from wire import (
    SYNC,
    ConnectionEnded,
    WireClient,
    copy_data,
    data_row_values,
    frontend_message,
    gateway_backends,
    healthy_session,
    login_as_agent,
    password,
    query,
    split_messages,
    wait_for_backends,
)

from custos.demo.certificates import generate_ca_and_server_cert
from custos.demo.postgres import PostgresServer
from custos.protocol import codes
from custos.protocol.messages import ssl_request, startup_message

SMALL_MESSAGE_LIMIT = 4096


def log_after(gateway: GatewayProcess, offset: int) -> str:
    return gateway.log()[offset:]


def wait_for_log(gateway: GatewayProcess, offset: int, text: str) -> None:
    """The gateway logs after it answers: wait for its line before reading the log."""
    deadline = time.monotonic() + 10
    while text not in log_after(gateway, offset):
        assert time.monotonic() < deadline, f"the gateway never logged {text!r}"
        time.sleep(0.02)


def assert_no_crash_in_log(text: str) -> None:
    assert "Traceback" not in text, text
    assert "exception was never retrieved" not in text, text


@pytest.fixture(scope="module")
def small_gateway(
    gateway: GatewayProcess, pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway whose message limit is small enough to reach with a test's bytes."""
    running = start_gateway(
        tmp_path_factory.mktemp("small-gateway"),
        pg,
        # The session gateway's credential: provisioning a new one would lock it out.
        upstream_dsn=gateway.upstream_dsn,
        extra_config={
            "limits": {
                "max_message_bytes": SMALL_MESSAGE_LIMIT,
                "startup_timeout_seconds": 1.5,
                "shutdown_grace_seconds": 5,
            }
        },
    )
    yield running
    assert running.stop() == 0


# Before authentication ---------------------------------------------------------------


def _startup_packet(version: int, parameters: dict[str, str]) -> bytes:
    body = struct.pack("!i", version)
    body += b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in parameters.items())
    body += b"\x00"
    return struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(random.Random(7).randbytes(64), id="random-bytes"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n", id="http-request"),
        pytest.param(struct.pack("!I", 0), id="length-zero"),
        pytest.param(struct.pack("!I", 4), id="length-four"),
        pytest.param(struct.pack("!I", 10_001) + b"\x00" * 32, id="length-over-limit"),
        pytest.param(struct.pack("!I", 0xFFFF_FFFF) + b"\x00" * 32, id="length-huge"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-without-sslrequest"),
    ],
)
def test_startup_garbage_is_refused(gateway: GatewayProcess, garbage: bytes) -> None:
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        client.send(garbage)
        notice = client.expect_refusal("08P01")
        assert "startup packet length" in notice.message


def test_truncated_startup_then_disconnect(gateway: GatewayProcess) -> None:
    offset = len(gateway.log())
    with healthy_session(gateway.dsn()):
        with WireClient.connect(gateway.port) as client:
            client.send(startup_message({"user": "agent", "database": gateway.database})[:13])
        with WireClient.connect(gateway.port) as client:
            client.start_tls(gateway.tls.ca_cert)
            client.send(startup_message({"user": "agent"})[:9])
    assert_no_crash_in_log(log_after(gateway, offset))


def test_startup_without_user_is_refused(gateway: GatewayProcess) -> None:
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        client.start_tls(gateway.tls.ca_cert)
        client.startup({"database": gateway.database})
        notice = client.expect_refusal("28000")
        assert "no role given" in notice.message


def test_protocol_version_2_is_refused(gateway: GatewayProcess) -> None:
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        client.send(_startup_packet(2 << 16, {"user": "agent", "database": gateway.database}))
        notice = client.expect_refusal("0A000")
        assert "unsupported frontend protocol 2.0" in notice.message


def test_replication_connection_is_refused(gateway: GatewayProcess) -> None:
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        client.start_tls(gateway.tls.ca_cert)
        client.startup({"user": "agent", "database": gateway.database, "replication": "database"})
        notice = client.expect_refusal("0A000")
        assert "replication connections are not supported" in notice.message


def test_plaintext_startup_behind_ssl_request_is_refused(gateway: GatewayProcess) -> None:
    # CVE-2021-23214: bytes that arrived before TLS must never be read as if they came over it.
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        client.send(ssl_request() + startup_message({"user": "agent"}))
        notice = client.expect_refusal("08P01")
        assert notice.message == "received unencrypted data after SSL request"


def test_gssenc_request_is_declined_and_tls_follows(gateway: GatewayProcess) -> None:
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        client.send(struct.pack("!Ii", 8, codes.GSSENC_REQUEST_CODE))
        assert client.read_exact(1) == b"N"
        client.login(gateway.tls.ca_cert, "agent", gateway.token(), gateway.database)
        rows = [m for m in client.run("SELECT 41 + 1") if m.type == "D"]
        assert [data_row_values(m) for m in rows] == [[b"42"]]


def test_second_ssl_request_after_tls_is_refused(gateway: GatewayProcess) -> None:
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        client.start_tls(gateway.tls.ca_cert)
        client.send(ssl_request())
        first = client.read_exact(1)
        assert first == b"E", f"the gateway answered {first!r} to a second SSLRequest"
        messages = split_messages(first + client.read_to_end())
        assert [m.notice.sqlstate for m in messages] in (["08P01"], ["0A000"])
        assert messages[0].notice.severity == "FATAL"


def test_startup_dripped_byte_by_byte(gateway: GatewayProcess) -> None:
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        for byte in ssl_request():
            client.send(bytes([byte]))
        assert client.read_exact(1) == b"S"
        client.wrap_tls(gateway.tls.ca_cert)
        for byte in startup_message({"user": "agent", "database": gateway.database}):
            client.send(bytes([byte]))
        client.expect_password_request()
        for byte in password(gateway.token()):
            client.send(bytes([byte]))
        assert client.read_until("Z")[-1].body == b"I"


def test_first_query_pipelined_behind_the_password(gateway: GatewayProcess) -> None:
    # PostgreSQL reads the bytes after a PasswordMessage as the session's first messages.
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port) as client:
        client.start_tls(gateway.tls.ca_cert)
        client.startup({"user": "agent", "database": gateway.database})
        client.expect_password_request()
        client.send(password(gateway.token()) + query("SELECT 'eager'"))
        first = client.read_message()
        assert first.type != "E", f"refused: {first.notice.message}"
        assert client.read_until("Z")[-1].type == "Z"
        answers = client.read_until("Z")
        assert [data_row_values(m) for m in answers if m.type == "D"] == [[b"eager"]]


_LOG_LINE_START = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ custos\.")


@pytest.mark.parametrize("where", ["user", "application_name"])
def test_startup_values_cannot_forge_log_lines(gateway: GatewayProcess, where: str) -> None:
    forged = "\n2026-01-01 00:00:00,000 INFO custos.session session opened role=dba subject=x"
    offset = len(gateway.log())
    with WireClient.connect(gateway.port) as client:
        client.start_tls(gateway.tls.ca_cert)
        if where == "user":
            client.startup({"user": "agent" + forged, "database": gateway.database})
            client.expect_password_request()
            client.send(password(gateway.token()))
            client.expect_refusal("28000")
        else:
            client.startup(
                {"user": "agent", "database": gateway.database, "application_name": forged}
            )
            client.expect_password_request()
            client.send(password(gateway.token()))
            client.read_until("Z")
    wait_for_log(gateway, offset, "authentication failed" if where == "user" else "session closed")
    lines = log_after(gateway, offset).splitlines()
    assert lines, "the gateway logged nothing about the connection"
    for line in lines:
        assert _LOG_LINE_START.match(line), f"a log line does not start as ours: {line!r}"
        assert not line.startswith("2026-01-01"), f"a client forged this log line: {line!r}"


def test_tls_handshake_garbage_closes_the_connection(gateway: GatewayProcess) -> None:
    offset = len(gateway.log())
    with healthy_session(gateway.dsn()), WireClient.connect(gateway.port, timeout=5) as client:
        client.send(ssl_request())
        assert client.read_exact(1) == b"S"
        client.send(b"this is not a TLS ClientHello\r\n" * 4)
        # No ErrorResponse is possible here: the client expects TLS records, not messages.
        client.read_to_end()
    assert_no_crash_in_log(log_after(gateway, offset))


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "over-tls"])
def test_silent_client_is_dropped_after_the_startup_timeout(
    small_gateway: GatewayProcess, tls: bool
) -> None:
    with healthy_session(small_gateway.dsn()), WireClient.connect(small_gateway.port) as client:
        if tls:
            client.start_tls(small_gateway.tls.ca_cert)
        notice = client.expect_refusal("08006")
    assert "did not complete startup in time" in notice.message


def test_failed_tls_handshakes_release_their_connection_slot(
    gateway: GatewayProcess, pg: PostgresServer, tmp_path: Path
) -> None:
    limited = start_gateway(
        tmp_path / "gateway",
        pg,
        upstream_dsn=gateway.upstream_dsn,
        extra_config={"limits": {"max_connections": 2, "shutdown_grace_seconds": 5}},
    )
    try:
        # A client that does not trust the gateway's certificate aborts the handshake.
        wrong_ca = generate_ca_and_server_cert(tmp_path / "other-ca").ca_cert
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(limited.dsn(sslrootcert=str(wrong_ca))).close()
        with WireClient.connect(limited.port, timeout=5) as client:
            client.send(ssl_request())
            assert client.read_exact(1) == b"S"
            client.send(b"this is not a TLS ClientHello\r\n")
            client.read_to_end()
        with WireClient.connect(limited.port, timeout=5) as client:
            client.send(ssl_request())
            assert client.read_exact(1) == b"S"
        # Three handshakes failed; none of them may still hold one of the two slots.
        with psycopg.connect(limited.dsn()) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
    finally:
        limited.stop()


# After authentication -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "sqlstate", "text"),
    [
        pytest.param(b"\x01\x00\x00\x00\x04", "08P01", "invalid frontend message type", id="type"),
        pytest.param(b"R\x00\x00\x00\x08\x00\x00\x00\x00", "08P01", "invalid frontend", id="R"),
        pytest.param(b"Q\x00\x00\x00\x03", "08P01", "invalid message length 3", id="length-3"),
        pytest.param(b"Q\x00\x00\x00\x00", "08P01", "invalid message length 0", id="length-0"),
        pytest.param(b"Q\xff\xff\xff\xff", "54000", "limit of 4096 bytes", id="length-huge"),
        pytest.param(
            b"Q" + struct.pack("!I", SMALL_MESSAGE_LIMIT + 1),
            "54000",
            f"exceeds the gateway's limit of {SMALL_MESSAGE_LIMIT} bytes",
            id="length-over-limit",
        ),
    ],
)
def test_malformed_message_after_login_is_refused(
    small_gateway: GatewayProcess, pg: PostgresServer, raw: bytes, sqlstate: str, text: str
) -> None:
    with healthy_session(small_gateway.dsn()):
        before = gateway_backends(pg)
        with login_as_agent(small_gateway) as client:
            client.send(raw)
            notice = client.expect_refusal(sqlstate)
        assert text in notice.message
        wait_for_backends(pg, before)


def test_oversized_query_sent_whole_is_refused(
    small_gateway: GatewayProcess, pg: PostgresServer
) -> None:
    with healthy_session(small_gateway.dsn()), login_as_agent(small_gateway) as client:
        statement = "SELECT '" + "x" * SMALL_MESSAGE_LIMIT + "'"
        # The gateway may close before it has read everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.send(query(statement))
        notice = client.expect_refusal("54000")
        assert "limits.max_message_bytes" in notice.message


def test_truncated_message_then_disconnect_ends_the_backend(
    gateway: GatewayProcess, pg: PostgresServer
) -> None:
    with healthy_session(gateway.dsn()):
        before = gateway_backends(pg)
        client = login_as_agent(gateway)
        assert gateway_backends(pg) == before + 1
        client.send(b"Q" + struct.pack("!I", 100) + b"SELECT 1")
        client.close()
        wait_for_backends(pg, before)


def test_disconnect_mid_copy_from_stdin_ends_the_backend(
    gateway: GatewayProcess, pg: PostgresServer
) -> None:
    with healthy_session(gateway.dsn()):
        before = gateway_backends(pg)
        client = login_as_agent(gateway)
        client.run("CREATE TEMP TABLE landing (line text)")
        client.send(query("COPY landing FROM STDIN"))
        assert client.read_message().type == "G"
        client.send(copy_data(b"first row\n") + copy_data(b"second "))
        client.abort()
        wait_for_backends(pg, before)


def test_disconnect_mid_large_result_ends_the_backend(
    gateway: GatewayProcess, pg: PostgresServer
) -> None:
    with healthy_session(gateway.dsn()):
        before = gateway_backends(pg)
        client = login_as_agent(gateway)
        client.send(query("SELECT repeat('x', 1000) FROM generate_series(1, 200000)"))
        assert client.read_message().type == "T"
        for _ in range(100):
            assert client.read_message().type == "D"
        client.abort()
        wait_for_backends(pg, before)


# Fuzzing ------------------------------------------------------------------------------

_FUZZ_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _gateway_alive(gateway: GatewayProcess) -> None:
    assert gateway.process.poll() is None, f"the gateway exited:\n{gateway.log()}"


@_FUZZ_SETTINGS
@given(garbage=st.binary(min_size=1, max_size=200))
def test_fuzz_before_startup(small_gateway: GatewayProcess, garbage: bytes) -> None:
    with WireClient.connect(small_gateway.port, timeout=10) as client:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.send(garbage)
            # End of input: whatever the gateway was waiting for will never come.
            client.sock.shutdown(socket.SHUT_WR)
        answer = client.read_to_end()
    # The gateway may answer SSLRequest ('S' or 'N') and GSSENCRequest ('N') with one byte,
    # and anything it refuses with a FATAL ErrorResponse.
    while answer[:1] in (b"S", b"N"):
        answer = answer[1:]
    for message in split_messages(answer):
        if message.type == "v":
            continue  # NegotiateProtocolVersion, before refusing a 3.x startup in clear
        assert message.type == "E", message
        assert message.notice.severity == "FATAL"
        assert message.notice.sqlstate in {"08P01", "0A000", "28000"}, message.notice.fields
    _gateway_alive(small_gateway)


def _completed(data: bytes) -> tuple[bytes, list[int], str]:
    """`data` with the bytes that complete its last message, the types of the messages the
    gateway will read, and what it must do: "refuse", "terminate" or "relay".

    A partial header gets a length word ending in 4, so padding never invents a length.
    """
    types: list[int] = []
    position = 0
    while position < len(data):
        remaining = len(data) - position
        if remaining < 5:
            data += b"\x00" * (4 - remaining) + b"\x04"
        message_type, length = struct.unpack_from("!BI", data, position)
        types.append(message_type)
        if message_type not in codes.FRONTEND_TYPES or not 4 <= length <= SMALL_MESSAGE_LIMIT:
            return data, types, "refuse"
        position += 1 + length
        data += b"\x00" * max(0, position - len(data))
        if message_type == codes.TERMINATE:
            return data, types, "terminate"
    return data, types, "relay"


_frontend_frame = st.builds(
    lambda message_type, body: frontend_message(bytes([message_type]), body),
    st.sampled_from(sorted(codes.FRONTEND_TYPES - {codes.FUNCTION_CALL, codes.TERMINATE})),
    st.binary(max_size=64),
)


@_FUZZ_SETTINGS
@given(
    garbage=st.one_of(
        st.binary(min_size=1, max_size=200),
        st.lists(_frontend_frame, min_size=1, max_size=4).map(b"".join),
        st.tuples(_frontend_frame, st.binary(min_size=1, max_size=16)).map(b"".join),
    )
)
def test_fuzz_after_login(small_gateway: GatewayProcess, garbage: bytes) -> None:
    data, types, verdict = _completed(garbage)
    # A FunctionCall with random arguments could call any function: keep the fuzzer to
    # messages whose worst case is an error.
    assume(codes.FUNCTION_CALL not in types)
    with login_as_agent(small_gateway) as client:
        probe = SYNC + query("SELECT 'fuzz-probe'")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.send(data if verdict != "relay" else data + probe)
        if verdict == "relay":
            _read_until_probe_or_close(client)
        else:
            messages = split_messages(client.read_to_end())
            if verdict == "refuse":
                # Messages before the faulty one may have reached the database and been
                # answered; the gateway's FATAL comes last.
                notice = messages[-1].notice
                assert notice.severity == "FATAL", notice.fields
                assert notice.sqlstate in {"08P01", "54000"}, notice.fields
    _gateway_alive(small_gateway)


def _read_until_probe_or_close(client: WireClient) -> None:
    """Reads answers until the probe's row (the session survived) or the end of the
    connection (the gateway or database ended it, as a Terminate or a FATAL may)."""
    while True:
        try:
            message = client.read_message()
        except (ConnectionEnded, ConnectionResetError):
            return
        if message.type == "D" and data_row_values(message) == [b"fuzz-probe"]:
            assert client.read_until("Z")[-1].type == "Z"
            return


def test_gateway_survives_fuzzing(small_gateway: GatewayProcess) -> None:
    """Runs after the fuzzers: the process lives and a fresh session works."""
    _gateway_alive(small_gateway)
    assert_no_crash_in_log(small_gateway.log())
    with healthy_session(small_gateway.dsn()) as connection:
        assert connection.execute("SELECT current_user").fetchone() is not None
