"""The approval stage in the session machine, sans-IO: events in, exact actions out.

The stage is real, and so is its backend (the local one, decided through its own
approver-side methods); only the network is absent. The client's bytes are fed whole, one
byte at a time, and split at random: the statement's bytes go upstream exactly once, and
only after an approval.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest
from playbook import DEMO_POLICY, SYNC, bind, execute, message, new_machine, parse, query, ready

from custos.approvals.backend import MAX_PENDING_PER_REQUESTER, TooManyPending
from custos.approvals.local import LocalApprovals
from custos.approvals.models import ApprovalRequest, Approver, Requester, new_request_id
from custos.approvals.stage import APPROVALS_UNAVAILABLE, ApprovalStage
from custos.policy.source import FilePolicySource
from custos.protocol.messages import parse_notice
from custos.session.actions import SendToClient, SendToServer, StartWait
from custos.session.decision import InProcessDecisionPoint
from custos.session.machine import SessionMachine
from custos.session.own_messages import REFUSAL_QUERY
from custos.session.policy_stage import PolicyStage
from custos.session.stages import Settled

UPDATE = "UPDATE crm.customers SET city = 'Elsewhere' WHERE id = 1"
DPO = Approver(subject="dpo-1", issuer="https://issuer.test", groups=("dpo",))
KEY = b"k" * 32


def machine_with(approvals: LocalApprovals, subject: str = "agent-1") -> SessionMachine:
    source = FilePolicySource(DEMO_POLICY)
    policy = PolicyStage("agent", InProcessDecisionPoint(source), approves=True)
    requester = Requester(subject=subject, issuer="https://issuer.test", role="agent")
    stage = ApprovalStage(approvals, requester, "crm", KEY, lambda: source.current().catalog)
    return new_machine([policy, stage])


def pieces(data: bytes, how: str) -> Iterator[bytes]:
    if how == "whole":
        yield data
    elif how == "bytes":
        yield from (data[i : i + 1] for i in range(len(data)))
    else:
        rng = random.Random(len(data))
        position = 0
        while position < len(data):
            step = rng.randint(1, 7)
            yield data[position : position + step]
            position += step


def fed(machine: SessionMachine, data: bytes, how: str) -> list[Any]:
    actions: list[Any] = []
    for piece in pieces(data, how):
        actions += machine.client_data(piece)
    return actions


async def submitted(approvals: LocalApprovals) -> ApprovalRequest:
    """The one request the stage submitted, once its task has run."""
    for _ in range(50):
        requests = approvals.requests()
        if requests:
            (request,) = requests
            return request
        await asyncio.sleep(0)
    raise AssertionError("the stage submitted no request")


def split_actions(actions: list[Any]) -> tuple[list[bytes], list[bytes], list[StartWait]]:
    to_client = [a.data for a in actions if isinstance(a, SendToClient)]
    to_server = [a.data for a in actions if isinstance(a, SendToServer)]
    waits = [a for a in actions if isinstance(a, StartWait)]
    return to_client, to_server, waits


@pytest.mark.parametrize("how", ["whole", "bytes", "random"])
def test_an_approved_statement_goes_upstream_once_after_the_approval(how: str) -> None:
    async def scenario() -> None:
        approvals = LocalApprovals("http://approvals.test")
        machine = machine_with(approvals)
        message = query(UPDATE)
        to_client, to_server, waits = split_actions(fed(machine, message, how))
        assert to_server == []
        assert len(waits) == 1
        assert len(to_client) == 1  # the notice, at once: the database is idle
        notice = parse_notice(to_client[0][5:])
        request = await submitted(approvals)
        assert request.id in notice.message
        assert f"http://approvals.test/requests/{request.id}" in notice.fields.get("H", "")
        await approvals.vote(request.id, DPO, True, None)
        decided = await waits[0].awaitable  # type: ignore[misc]
        actions = machine.settled(waits[0].awaitable, Settled(decided))
        assert actions == [SendToServer(message)]

    asyncio.run(scenario())


@pytest.mark.parametrize("how", ["whole", "bytes", "random"])
def test_a_denied_statement_is_refused_in_place(how: str) -> None:
    async def scenario() -> None:
        approvals = LocalApprovals("http://approvals.test")
        machine = machine_with(approvals)
        _, _, waits = split_actions(fed(machine, query(UPDATE), how))
        request = await submitted(approvals)
        await approvals.vote(request.id, DPO, False, "not now")
        decided = await waits[0].awaitable  # type: ignore[misc]
        actions = machine.settled(waits[0].awaitable, Settled(decided))
        assert actions == [SendToServer(REFUSAL_QUERY)]

    asyncio.run(scenario())


def test_the_extended_protocol_waits_at_execute_and_binds_the_parameters() -> None:
    async def scenario() -> None:
        approvals = LocalApprovals("http://approvals.test")
        machine = machine_with(approvals)
        text = "UPDATE crm.customers SET email = $1 WHERE id = $2"
        prepared = parse("", text) + bind("", "", [b"someone@example.org", b"1"])
        _, to_server, waits = split_actions(machine.client_data(prepared + execute() + SYNC))
        assert to_server == [prepared]  # parsed and bound upstream; the Execute waits
        assert len(waits) == 1
        request = await submitted(approvals)
        assert request.parameters == ("***@example.org", "1")
        assert "someone@example.org" not in request.model_dump_json()
        await approvals.vote(request.id, DPO, True, None)
        decided = await waits[0].awaitable  # type: ignore[misc]
        actions = machine.settled(waits[0].awaitable, Settled(decided))
        assert actions == [SendToServer(execute() + SYNC)]

    asyncio.run(scenario())


def test_a_backend_that_fails_refuses_the_statement() -> None:
    class Broken(LocalApprovals):
        async def submit(self, request: Any) -> None:
            raise ConnectionError("down")

    async def scenario() -> None:
        machine = machine_with(Broken("http://approvals.test"))
        _, _, waits = split_actions(machine.client_data(query(UPDATE)))
        with pytest.raises(ConnectionError):
            await waits[0].awaitable  # type: ignore[misc]
        actions = machine.settled(waits[0].awaitable, Settled(error=ConnectionError("down")))
        assert actions == [SendToServer(REFUSAL_QUERY)]

    asyncio.run(scenario())
    assert "approvals service" in APPROVALS_UNAVAILABLE.message


def test_a_cancel_withdraws_the_waiting_request() -> None:
    async def scenario() -> None:
        approvals = LocalApprovals("http://approvals.test")
        machine = machine_with(approvals)
        machine.client_data(query(UPDATE))
        request = await submitted(approvals)
        actions = machine.cancel_requested()
        assert actions == [SendToServer(REFUSAL_QUERY)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert approvals.get(request.id).status.value == "withdrawn"

    asyncio.run(scenario())


def test_a_disconnect_withdraws_the_waiting_request() -> None:
    async def scenario() -> None:
        approvals = LocalApprovals("http://approvals.test")
        machine = machine_with(approvals)
        machine.client_data(query(UPDATE))
        request = await submitted(approvals)
        machine.client_lost()
        for _ in range(5):
            await asyncio.sleep(0)
        assert approvals.get(request.id).status.value == "withdrawn"

    asyncio.run(scenario())


def test_statements_that_need_no_approval_pass_untouched() -> None:
    async def scenario() -> None:
        approvals = LocalApprovals("http://approvals.test")
        machine = machine_with(approvals)
        message = query("SELECT id FROM crm.orders WHERE id = 1")
        assert machine.client_data(message) == [SendToServer(message)]
        assert approvals.requests() == []

    asyncio.run(scenario())


def test_a_requester_with_too_many_requests_waiting_is_refused_another() -> None:
    async def scenario() -> None:
        approvals = LocalApprovals("http://approvals.test")
        machine = machine_with(approvals)
        machine.client_data(query(UPDATE))
        first = await submitted(approvals)
        for _ in range(MAX_PENDING_PER_REQUESTER - 1):
            await approvals.submit(first.model_copy(update={"id": new_request_id()}))
        other = machine_with(approvals)
        _, _, waits = split_actions(other.client_data(query(UPDATE)))
        with pytest.raises(TooManyPending):
            await waits[0].awaitable  # type: ignore[misc]
        actions = other.settled(waits[0].awaitable, Settled(error=TooManyPending()))
        assert actions == [SendToServer(REFUSAL_QUERY)]
        assert len(approvals.requests()) == MAX_PENDING_PER_REQUESTER
        # Another identity still asks.
        stranger = machine_with(approvals, subject="agent-2")
        stranger.client_data(query(UPDATE))
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(approvals.requests()) == MAX_PENDING_PER_REQUESTER + 1

    asyncio.run(scenario())


def test_an_execute_of_a_statement_that_needs_approval_is_refused_without_a_request() -> None:
    async def scenario() -> None:
        approvals = LocalApprovals("http://approvals.test")
        machine = machine_with(approvals)
        prepared = parse("p", UPDATE) + SYNC
        assert machine.client_data(prepared) == [SendToServer(prepared)]
        machine.server_data(message("1") + ready())
        actions = machine.client_data(query("EXECUTE p"))
        assert actions == [SendToServer(REFUSAL_QUERY)]
        for _ in range(10):
            await asyncio.sleep(0)
        assert approvals.requests() == []

    asyncio.run(scenario())
