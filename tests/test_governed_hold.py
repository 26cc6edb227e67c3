"""A governed session waiting on a decision that is not ready at once (the policy Lambda).

The session runs in-process over recording transports (the sockets are the only stand-in);
its decisions come from the real Lambda decision point, whose client runs the real handler.
Later messages must wait, in order, and go on exactly once the decision is in.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playbook import new_machine, query

from custos.identity.principal import Principal
from custos.policy.lambda_point import LambdaDecisionPoint
from custos.protocol.framing import MessageFramer
from custos.session.policy_stage import PolicyStage
from proxy_task.cancel import UpstreamCancelKey
from proxy_task.session import Session

# function_clock gives the in-process function its policy; imported so pytest finds it.
from tests.test_lambda_decision_point import FUNCTION, InProcessLambda, function_clock  # noqa: F401

pytestmark = pytest.mark.usefixtures("function_clock")


class RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def messages(self) -> list[tuple[str, bytes]]:
        chunk, spans = MessageFramer(1 << 20, range(256)).feed(b"".join(self.written))
        return [(chr(kind), chunk[start + 5 : end]) for kind, start, end in spans]


def session_with(client: InProcessLambda) -> tuple[Session, RecordingTransport, RecordingTransport]:
    point = LambdaDecisionPoint(FUNCTION, client_factory=lambda: client)
    machine = new_machine([PolicyStage("agent", point)], search_path=("crm",))
    principal = Principal("agent", "agent-7", "https://idp", (), {}, "127.0.0.1:1", None, 0)
    client_side = RecordingTransport()
    upstream = RecordingTransport()
    session = Session(
        machine,
        principal,
        client_side,  # type: ignore[arg-type]
        upstream,  # type: ignore[arg-type]
        UpstreamCancelKey("127.0.0.1", 1, 1, 2),
        lambda session: None,
    )
    return session, client_side, upstream


async def settle(condition: Any, seconds: float = 10.0) -> None:
    # The decision arrives through a worker thread and a done-callback; the test can only
    # watch for its effect on the upstream transport.
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def test_later_messages_wait_in_order_behind_a_pending_decision():
    client = InProcessLambda()

    async def scenario() -> None:
        session, client_side, upstream = session_with(client)
        session.from_client(query("SELECT id FROM crm.orders WHERE id = 1"))
        session.from_client(query("UPDATE crm.orders SET status = 'x'"))
        session.from_client(query("SELECT 2 FROM crm.orders LIMIT 1"))
        assert upstream.written == []
        # Still read: a disconnect now would withdraw what waits.
        assert client_side.reading
        await settle(lambda: len(upstream.messages()) == 3)
        sent = [body for _, body in upstream.messages()]
        assert sent[0] == b"SELECT id FROM crm.orders WHERE id = 1\x00"
        assert b"RAISE EXCEPTION" in sent[1]
        assert sent[2] == b"SELECT 2 FROM crm.orders LIMIT 1\x00"
        assert client.calls == 3

    asyncio.run(scenario())


def test_a_decided_statement_is_answered_from_the_cache_without_waiting():
    client = InProcessLambda()

    async def scenario() -> None:
        session, _, upstream = session_with(client)
        session.from_client(query("SELECT id FROM crm.orders WHERE id = 1"))
        await settle(lambda: len(upstream.messages()) == 1)
        session.from_client(query("SELECT id FROM crm.orders WHERE id = 1"))
        assert len(upstream.messages()) == 2
        assert client.calls == 1

    asyncio.run(scenario())


def test_closing_the_session_withdraws_a_pending_statement():
    client = InProcessLambda()

    async def scenario() -> None:
        session, _, upstream = session_with(client)
        session.from_client(query("SELECT id FROM crm.orders WHERE id = 1"))
        session.client_lost(None)
        await asyncio.sleep(0.2)
        assert [kind for kind, _ in upstream.messages()] == ["X"]

    asyncio.run(scenario())
