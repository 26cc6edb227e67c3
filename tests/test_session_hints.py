"""Refusal hints naming the columns behind `*`: through the statement gate, from a real database."""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import Awaitable
from pathlib import Path

import pytest
from test_session_gate import bind_body, execute_body, parse_body

from custos.policy.source import FilePolicySource
from custos.session.decision import InProcessDecisionPoint
from custos.session.gate import StatementGate, Verdict
from custos.session.hints import with_columns
from custos.session.refusal import Refusal
from custos.sql.cache import AnalysisCache
from custos.upstream.columns import ColumnCatalog
from custos.upstream.credentials import credential_source
from custos.upstream.settings import UpstreamSettings
from proxy_task.upstream import side_connector

DEMO_POLICY = Path(__file__).resolve().parent.parent / "custos" / "demo" / "policy.yaml"
CUSTOMER_COLUMNS = (
    "id, full_name, email, phone, iban, birth_date, street_address, city, country, created_at,"
    " marketing_opt_in"
)
STAR_ADVICE = "select only the columns the task needs instead of *"


@pytest.fixture
def ddl_policy(tmp_path: Path) -> Path:
    """The demo policy, but a DBA's schema changes need no approval."""
    text = DEMO_POLICY.read_text()
    approval = "match: {roles: [dba], kinds: [ddl, grant]}"
    assert approval in text
    path = tmp_path / "policy.yaml"
    path.write_text(text.replace(approval, "match: {roles: [nobody], kinds: [ddl, grant]}"))
    return path


class Connector:
    """The gateway's real side connector, counting the connections it opens."""

    def __init__(self, dsn: str) -> None:
        credentials = credential_source(UpstreamSettings.model_validate({"dsn": dsn}))
        self._connect = side_connector(credentials, f"custos-hints-{secrets.token_hex(3)}", 10)
        self.opened = 0

    async def __call__(self):
        self.opened += 1
        return await self._connect()


def gate(
    catalog: ColumnCatalog | None,
    role: str = "agent",
    policy: Path = DEMO_POLICY,
    path: tuple[str, ...] = ("crm", "public"),
) -> StatementGate:
    point = InProcessDecisionPoint(FilePolicySource(policy))
    return StatementGate(role, point, AnalysisCache(), path, columns=catalog)


async def settled(verdict: Verdict | Awaitable[Verdict]) -> Verdict:
    return await verdict if inspect.isawaitable(verdict) else verdict


def test_a_refused_star_names_the_tables_columns(pg_dsn):
    connector = Connector(pg_dsn)
    catalog = ColumnCatalog(connector)

    async def scenario() -> None:
        subject = gate(catalog)
        pending = subject.on_query("SELECT * FROM customers", uncertain=False)
        # Not known yet: the verdict waits for the database.
        assert inspect.isawaitable(pending)
        refusal = await pending
        assert isinstance(refusal, Refusal)
        assert refusal.sqlstate == "42501"
        assert "agents-no-bulk-export" in refusal.message
        # Only crm.customers exists of the path's candidates crm and public.
        assert refusal.hint is not None
        assert refusal.hint.startswith(
            f"crm.customers has columns {CUSTOMER_COLUMNS}: {STAR_ADVICE}; decided by rule"
            " agents-no-bulk-export of policy version "
        )
        # Known now: the next refusal is immediate and says the same.
        again = subject.on_query("SELECT * FROM customers", uncertain=False)
        assert isinstance(again, Refusal)
        assert again.hint == refusal.hint
        catalog.close()

    asyncio.run(scenario())
    assert connector.opened == 1


def test_allowed_statements_and_refusals_without_star_never_touch_the_catalog(pg_dsn):
    connector = Connector(pg_dsn)
    catalog = ColumnCatalog(connector)

    async def scenario() -> None:
        subject = gate(catalog)
        assert subject.on_query("SELECT * FROM crm.products", uncertain=False) is None
        assert subject.on_query("SELECT o.* FROM crm.orders o LIMIT 3", uncertain=False) is None
        refusal = subject.on_query("SELECT id FROM crm.customers", uncertain=False)
        assert isinstance(refusal, Refusal)
        assert STAR_ADVICE not in (refusal.hint or "")
        unknown = subject.on_query("EXECUTE never_prepared", uncertain=False)
        assert isinstance(unknown, Refusal)
        assert unknown.sqlstate == "26000"

    asyncio.run(scenario())
    assert connector.opened == 0


def test_a_star_refused_at_execute_is_hinted_too(pg_dsn):
    catalog = ColumnCatalog(Connector(pg_dsn))

    async def scenario() -> None:
        subject = gate(catalog)
        subject.on_parse(parse_body("page", "SELECT c.* FROM crm.customers c LIMIT $1"))
        subject.on_bind(bind_body("", "page", [b"10000"]))
        refusal = await settled(subject.on_execute(execute_body(""), uncertain=False))
        assert isinstance(refusal, Refusal)
        assert "agents-no-bulk-export" in refusal.message
        assert refusal.hint is not None
        assert refusal.hint.startswith(f"crm.customers has columns {CUSTOMER_COLUMNS}")
        catalog.close()

    asyncio.run(scenario())


def test_a_schema_change_let_through_forgets_the_columns(pg_dsn, ddl_policy):
    catalog = ColumnCatalog(Connector(pg_dsn))

    async def scenario() -> None:
        agent = gate(catalog)
        dba = gate(catalog, role="dba", policy=ddl_policy)
        await settled(agent.on_query("SELECT * FROM crm.customers", uncertain=False))
        assert catalog.known(["crm.customers"])
        # Decided only: the gate does not run it, but it is on its way to the database.
        assert dba.on_query("ALTER TABLE crm.orders ADD COLUMN x int", uncertain=False) is None
        assert catalog.known(["crm.customers"]) == {}
        # In a transaction the change shows to other connections only after COMMIT.
        assert dba.on_query("BEGIN", uncertain=False) is None
        assert dba.on_query("CREATE INDEX ON crm.orders (status)", uncertain=True) is None
        await settled(agent.on_query("SELECT * FROM crm.customers", uncertain=False))
        assert catalog.known(["crm.customers"])
        assert dba.on_query("COMMIT", uncertain=True) is None
        assert catalog.known(["crm.customers"]) == {}
        await settled(agent.on_query("SELECT * FROM crm.customers", uncertain=False))
        assert dba.on_query("COMMIT", uncertain=False) is None
        assert catalog.known(["crm.customers"]), "only the transaction with the change forgets"
        catalog.close()

    asyncio.run(scenario())


def test_a_refused_schema_change_forgets_nothing(pg_dsn):
    catalog = ColumnCatalog(Connector(pg_dsn))

    async def scenario() -> None:
        agent = gate(catalog)
        await settled(agent.on_query("SELECT * FROM crm.customers", uncertain=False))
        refusal = agent.on_query("ALTER TABLE crm.orders ADD COLUMN x int", uncertain=False)
        assert isinstance(refusal, Refusal)
        assert catalog.known(["crm.customers"])
        catalog.close()

    asyncio.run(scenario())


def test_the_refusal_goes_out_as_it_was_when_the_database_cannot_say(pg_dsn):
    async def scenario() -> None:
        # A server that accepts the connection and never answers.
        server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        silent = Connector(f"postgresql://nobody@127.0.0.1:{port}/custos_demo")
        catalog = ColumnCatalog(silent, timeout_seconds=0.3)
        plain = gate(None).on_query("SELECT * FROM crm.customers", uncertain=False)
        assert isinstance(plain, Refusal)
        assert plain.hint is not None
        assert STAR_ADVICE not in plain.hint
        assert await settled(gate(catalog).on_query("SELECT * FROM crm.customers", False)) == plain
        unreachable = ColumnCatalog(Connector("postgresql://nobody@127.0.0.1:1/custos_demo"))
        assert await settled(gate(unreachable).on_query("SELECT * FROM crm.customers", False)) == (
            plain
        )
        server.close()

    asyncio.run(scenario())


def test_hint_wording_quotes_what_must_be_quoted_and_stays_short():
    refusal = Refusal("42501", "denied", "decided by the default rule")
    hinted = with_columns(
        refusal,
        {
            "crm.t": ("id", "user", "Name", "a b", 'q"t', "left"),
            '"odd.schema".Upper': ("x",),
            "crm.empty": (),
        },
    )
    assert hinted.hint == (
        '"odd.schema"."Upper" has columns x; crm.t has columns id, "user", "Name", "a b",'
        f' "q""t", "left": {STAR_ADVICE}; decided by the default rule'
    )
    wide = with_columns(Refusal("42501", "denied"), {"crm.wide": tuple(f"c{i}" for i in range(45))})
    assert wide.hint is not None
    assert wide.hint.startswith("crm.wide has columns c0, c1,")
    assert f"c39 and 5 more: {STAR_ADVICE}" in wide.hint
    assert "c40" not in wide.hint
    assert with_columns(refusal, {"crm.empty": ()}) is refusal
