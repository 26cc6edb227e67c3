"""The bare relay machine: bytes pass as they are, however they are split; Terminate, idle,
and the gateway's FATAL only between the server's messages."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from playbook import TERMINATE, data_row, query, ready, sent_to_client, sent_to_server, split

from custos.protocol.messages import parse_notice
from custos.session.actions import FORWARD_CANCEL, CloseSession, SendToClient, SendToServer
from custos.session.relay import RelayMachine

backend_messages = st.lists(
    st.tuples(st.integers(0x20, 0x7E), st.binary(max_size=300)),
    max_size=12,
)


def message(message_type: int, body: bytes) -> bytes:
    return bytes([message_type]) + struct.pack("!I", len(body) + 4) + body


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, previous = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[previous:point])
        previous = point
    return pieces


@settings(max_examples=300)
@given(backend_messages, st.lists(st.integers(0, 10_000), max_size=8))
def test_the_servers_stream_passes_unchanged_however_it_is_split(messages, cuts):
    stream = b"".join(message(kind, body) for kind, body in messages) + ready()
    for pieces in (
        [stream],
        split_at(stream, cuts),
        [stream[i : i + 1] for i in range(len(stream))],
    ):
        relay = RelayMachine(1 << 20)
        relay.client_data(query("SELECT 1"))
        forwarded = b"".join(sent_to_client(relay.server_data(piece)) for piece in pieces)
        assert forwarded == stream
        assert relay.idle


def test_the_clients_messages_pass_whole_and_terminate_ends_the_session():
    relay = RelayMachine(1 << 20)
    request = query("SELECT 1")
    assert relay.client_data(request[:3]) == []
    assert relay.client_data(request[3:]) == [SendToServer(request)]
    assert relay.cancel_requested() == [FORWARD_CANCEL]
    assert relay.client_data(TERMINATE) == [
        SendToServer(TERMINATE),
        CloseSession("client ended the session"),
    ]


def test_a_shutdown_fatal_waits_for_the_row_under_way():
    relay = RelayMachine(1 << 20)
    relay.client_data(query("SELECT x"))
    row = data_row(b"x" * 100)
    assert relay.server_data(row[:30]) == [SendToClient(row[:30])]
    assert relay.close("57P01", "the gateway is shutting down") == []
    actions = relay.server_data(row[30:] + ready())
    fatal = split(sent_to_client(actions)[len(row) - 30 :])[-1]
    assert parse_notice(fatal[1]).sqlstate == "57P01"
    assert actions[-1] == CloseSession("the gateway is shutting down")


def test_an_oversized_client_message_is_refused_before_it_is_buffered():
    relay = RelayMachine(100)
    actions = relay.client_data(b"Q" + struct.pack("!I", 10_000))
    assert sent_to_server(actions) == b""
    fatal = split(sent_to_client(actions))[0]
    assert parse_notice(fatal[1]).sqlstate == "54000"
