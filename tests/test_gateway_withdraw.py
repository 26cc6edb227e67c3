"""A statement the gateway still holds is withdrawn by a cancel or a disconnect: it never runs.

The gateway runs in-process on its own event loop (uvloop and plain asyncio), with the real
policy engine behind a decision point whose answers the test holds back, as a slow policy
Lambda would. Evidence is the database's: the held INSERT never adds its row, even once
the decision arrives.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvloop
from gateway_fixtures import free_port, gateway_login

from custos.config import GatewayConfig
from custos.demo.certificates import generate_ca_and_server_cert
from custos.demo.postgres import PostgresServer
from custos.identity.dev_issuer import DevIssuer
from custos.policy.engine import Decision
from custos.policy.source import FilePolicySource
from custos.session.decision import InProcessDecisionPoint
from custos.sql.facts import Analysis
from proxy_task.app import build_services
from proxy_task.gateway import Gateway

POLICY = """
roles:
  - name: writer
    trust: [{issuer: dev, subjects: ["writer-*"]}]
rules:
  - id: writer-may-do-anything
    match: {roles: [writer]}
    effect: allow
"""


class HeldDecisions:
    """The engine's own decisions, each handed out only once the test releases it."""

    reads_statement_text = False

    def __init__(self, policy: Path) -> None:
        self._engine = InProcessDecisionPoint(FilePolicySource(policy))
        self._released: asyncio.Event | None = None
        self.asked = threading.Event()

    def decide(
        self,
        role: str,
        analysis: Analysis,
        parameters: tuple[str | None, ...],
        search_path: tuple[str, ...],
    ) -> Awaitable[Decision]:
        decision = self._engine.decide(role, analysis, parameters, search_path)
        return self._after_release(decision)

    async def _after_release(self, decision: Decision) -> Decision:
        if self._released is None:
            self._released = asyncio.Event()
        self.asked.set()
        await self._released.wait()
        return decision

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        def set_event() -> None:
            if self._released is not None:
                self._released.set()

        loop.call_soon_threadsafe(set_event)


class InProcessGateway:
    def __init__(self, loop_factory: Callable[[], asyncio.AbstractEventLoop], **kwargs: Any):
        self._loop_factory = loop_factory
        self._kwargs = kwargs
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InProcessGateway:
        self._thread.start()
        assert self._started.wait(20), "the in-process gateway did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.loop is not None
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    def _run(self) -> None:
        self.loop = self._loop_factory()
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        gateway = Gateway(self._kwargs["config"], self._kwargs["services"])
        await gateway.start()
        self.port = gateway.port
        self._stop = asyncio.Event()
        self._started.set()
        await self._stop.wait()
        await gateway.shutdown()


LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def held(
    request: pytest.FixtureRequest, pg: PostgresServer, tmp_path: Path
) -> Iterator[tuple[InProcessGateway, HeldDecisions, DevIssuer, Path]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    tls = generate_ca_and_server_cert(tmp_path / "tls")
    config = GatewayConfig.model_validate(
        {
            "listen": f"127.0.0.1:{free_port()}",
            "upstream": {"dsn": gateway_login(pg)},
            "tls": {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key)},
            "dev_issuer_dir": str(tmp_path / "dev-issuer"),
            "policy": {"file": str(policy)},
        }
    )
    decisions = HeldDecisions(policy)
    services = replace(build_services(config), decision_point=decisions, columns=None)
    issuer = DevIssuer.open_or_create(tmp_path / "dev-issuer")
    with InProcessGateway(LOOPS[request.param], config=config, services=services) as gateway:
        yield gateway, decisions, issuer, tls.ca_cert


@pytest.fixture
def scratch_table(pg: PostgresServer) -> Iterator[str]:
    name = f"crm.withdrawn_{secrets.token_hex(4)}"
    with psycopg.connect(pg.dsn(), autocommit=True) as superuser:
        superuser.execute(f"CREATE TABLE {name} (id int)")
        superuser.execute(f"GRANT ALL ON {name} TO custos_gateway")
        yield name
        superuser.execute(f"DROP TABLE {name}")


def connect(gateway: InProcessGateway, issuer: DevIssuer, ca_cert: Path) -> psycopg.Connection:
    token = issuer.mint("writer", "writer-1")
    return psycopg.connect(
        host="127.0.0.1",
        port=gateway.port,
        dbname="custos_demo",
        user="writer",
        password=token,
        sslmode="verify-ca",
        sslrootcert=str(ca_cert),
        autocommit=True,
    )


def rows_in(pg: PostgresServer, table: str) -> int:
    with psycopg.connect(pg.dsn(), autocommit=True) as superuser:
        row = superuser.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    count: int = row[0]
    return count


def test_a_cancel_withdraws_the_held_statement_which_never_runs(held, scratch_table, pg):
    gateway, decisions, issuer, ca_cert = held
    with connect(gateway, issuer, ca_cert) as connection:
        outcome: dict[str, BaseException] = {}

        def insert() -> None:
            try:
                connection.execute(f"INSERT INTO {scratch_table} VALUES (1)")
            except BaseException as error:
                outcome["error"] = error

        worker = threading.Thread(target=insert)
        worker.start()
        assert decisions.asked.wait(10), "the statement never reached its decision"
        connection.cancel_safe()
        worker.join(10)
        error = outcome.get("error")
        assert isinstance(error, psycopg.errors.QueryCanceled), error
        assert error.diag.message_primary == "canceling statement due to user request"
        assert gateway.loop is not None
        decisions.release(gateway.loop)
        # The session carries on, as after any cancelled statement.
        assert connection.execute("SELECT 1").fetchone() == (1,)
    assert rows_in(pg, scratch_table) == 0


def test_a_disconnect_withdraws_the_held_statement_which_never_runs(held, scratch_table, pg):
    gateway, decisions, issuer, ca_cert = held
    connection = connect(gateway, issuer, ca_cert)
    connection.pgconn.send_query(f"INSERT INTO {scratch_table} VALUES (1)".encode())
    connection.pgconn.flush()
    assert decisions.asked.wait(10), "the statement never reached its decision"
    connection.pgconn.finish()
    assert gateway.loop is not None
    decisions.release(gateway.loop)
    time.sleep(0.3)  # the decision settles; nothing may run in its wake
    assert rows_in(pg, scratch_table) == 0
