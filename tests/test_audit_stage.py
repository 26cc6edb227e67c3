"""The audit stage in the session machine, without a network: a statement's bytes go to the
database only once its event is on disk, whether the client's bytes come whole, byte by
byte or split at random; a pipelined chunk shares one commit; a store that cannot write
refuses the statements waiting on it.

The machine is driven by hand (events in, actions out); the stage commits to a real
local store on a real event loop, and the store's files are read back.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from playbook import new_machine, policy_stage, query, ready

from custos.audit.events import AuditEvent, EventType
from custos.audit.local import LocalStore, stored_events
from custos.audit.settings import AuditSettings
from custos.audit.trail import AuditTrail
from custos.identity.principal import Principal
from custos.policy.source import FilePolicySource
from custos.session.actions import SendToServer, StartWait
from custos.session.machine import SessionMachine
from custos.session.own_messages import REFUSAL_QUERY
from custos.session.stages import Settled

DEMO_POLICY = Path(__file__).resolve().parent.parent / "custos" / "demo" / "policy.yaml"
PRINCIPAL = Principal(
    role="agent",
    subject="agent-1",
    issuer="https://issuer.example",
    groups=(),
    claims={},
    client_address="127.0.0.1:5000",
    application_name="stage-test",
    token_expires_at=0,
)
STATEMENTS = [
    "SELECT id FROM crm.customers WHERE id = 1 LIMIT 1",
    "SELECT 2",
    "SELECT full_name FROM crm.customers WHERE id = 3 LIMIT 1",
]


def chunkings(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    yield "whole", [data]
    yield "byte by byte", [data[i : i + 1] for i in range(len(data))]
    cut = random.Random(11)
    for attempt in range(3):
        points = sorted(cut.sample(range(1, len(data)), 4))
        ends = [0, *points, len(data)]
        yield f"split {attempt}", [data[a:b] for a, b in pairwise(ends)]


def recorded_statements(root: Path) -> list[str]:
    return [
        event.statement or ""
        for event in stored_events(root)
        if isinstance(event, AuditEvent) and event.event_type is EventType.STATEMENT
    ]


async def run_session(root: Path, pieces: list[bytes]) -> tuple[list[str], int]:
    """Feeds the pieces, lets every wait settle, and checks each statement that goes to
    the database against what the store holds at that moment; the statements sent, and
    the commits the store took."""
    store = LocalStore(root)
    catalog = FilePolicySource(DEMO_POLICY).current().catalog
    trail = AuditTrail(store, b"k" * 32, AuditSettings(dir=root), lambda: catalog)
    stage = trail.session_stage(PRINCIPAL, "crm", None)
    await stage.started()
    machine = new_machine([policy_stage(), stage])
    sent: list[str] = []
    for piece in pieces:
        await _drive(machine, machine.client_data(piece), root, sent)
    await trail.close()
    return sent, trail.committer.commits


async def _drive(
    machine: SessionMachine, actions: list[object], root: Path, sent: list[str]
) -> None:
    while actions:
        action = actions.pop(0)
        if isinstance(action, StartWait):
            outcome: Settled
            try:
                outcome = Settled(value=await action.awaitable)
            except OSError as error:
                outcome = Settled(error=error)
            actions += machine.settled(action.awaitable, outcome)
        elif isinstance(action, SendToServer):
            recorded = recorded_statements(root)
            for number, sql in enumerate(STATEMENTS, start=1):
                if query(sql) in action.data:
                    # Its event (the session's events go in order) is on disk before its
                    # bytes leave.
                    assert len(recorded) >= number, (sql, recorded)
                    sent.append(sql)
            # The database answers each statement it was sent.
            for _ in range(action.data.count(b"Q")):
                actions += machine.server_data(ready())


@pytest.mark.parametrize("feeding", [name for name, _ in chunkings(b"x" * 10)])
def test_no_statement_leaves_before_its_event_is_on_disk(tmp_path: Path, feeding: str) -> None:
    data = b"".join(query(sql) for sql in STATEMENTS)
    pieces = dict(chunkings(data))[feeding]
    sent, _ = asyncio.run(run_session(tmp_path, pieces))
    assert sent == STATEMENTS
    statements = recorded_statements(tmp_path)
    assert len(statements) == len(STATEMENTS)


def test_a_pipelined_chunk_shares_one_commit(tmp_path: Path) -> None:
    data = b"".join(query(sql) for sql in STATEMENTS)
    sent, commits = asyncio.run(run_session(tmp_path, [data]))
    assert sent == STATEMENTS
    # The session's start, then one commit for the three statements' events (their
    # outcomes and the close ride along or follow).
    assert commits <= 4


def test_a_store_that_cannot_write_refuses_the_waiting_statements(tmp_path: Path) -> None:
    async def session() -> list[object]:
        root = tmp_path / "store"
        store = LocalStore(root)
        catalog = FilePolicySource(DEMO_POLICY).current().catalog
        trail = AuditTrail(store, b"k" * 32, AuditSettings(dir=root), lambda: catalog)
        stage = trail.session_stage(PRINCIPAL, "crm", None)
        await stage.started()
        store.close()
        # From now on nothing can be written where the store writes.
        for folder in (root / "events").glob("dt=*/hour=*"):
            for segment in folder.iterdir():
                segment.unlink()
            folder.rmdir()
        (root / "events").rename(root / "gone")
        (root / "events").write_text("not a folder")
        machine = new_machine([policy_stage(), stage])
        (wait,) = machine.client_data(query("SELECT 2"))
        assert isinstance(wait, StartWait)
        try:
            await wait.awaitable
        except OSError as error:
            return machine.settled(wait.awaitable, Settled(error=error))
        raise AssertionError("the store wrote")

    assert asyncio.run(session()) == [SendToServer(REFUSAL_QUERY)]
