"""Refusal hints naming the columns behind `*`: through the policy stage, from a real database."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from playbook import planned, statement_of

from custos.policy.source import FilePolicySource
from custos.session.decision import InProcessDecisionPoint
from custos.session.hints import StarHints, with_columns
from custos.session.policy_stage import PolicyStage
from custos.session.refusal import Refusal
from custos.session.stages import Refuse
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


def stage(
    catalog: ColumnCatalog | None, role: str = "agent", policy: Path = DEMO_POLICY
) -> PolicyStage:
    point = InProcessDecisionPoint(FilePolicySource(policy))
    return PolicyStage(role, point, StarHints(catalog) if catalog is not None else None)


async def decided(
    subject: PolicyStage, sql: str, parameters: tuple[str | None, ...] = ()
) -> Refusal | None:
    return await planned(subject, statement_of(sql, parameters=parameters))


def test_a_refused_star_names_the_tables_columns(pg_dsn):
    connector = Connector(pg_dsn)
    catalog = ColumnCatalog(connector)

    async def scenario() -> None:
        subject = stage(catalog)
        # Not known yet: the plan waits for the database.
        assert not isinstance(subject.plan(statement_of("SELECT * FROM customers")), Refuse)
        refusal = await decided(subject, "SELECT * FROM customers")
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
        again = subject.plan(statement_of("SELECT * FROM customers"))
        assert isinstance(again, Refuse)
        assert again.refusal.hint == refusal.hint
        catalog.close()

    asyncio.run(scenario())
    assert connector.opened == 1


def test_allowed_statements_and_refusals_without_star_never_touch_the_catalog(pg_dsn):
    connector = Connector(pg_dsn)
    catalog = ColumnCatalog(connector)

    async def scenario() -> None:
        subject = stage(catalog)
        assert await decided(subject, "SELECT * FROM crm.products") is None
        assert await decided(subject, "SELECT o.* FROM crm.orders o LIMIT 3") is None
        refusal = await decided(subject, "SELECT id FROM crm.customers")
        assert isinstance(refusal, Refusal)
        assert STAR_ADVICE not in (refusal.hint or "")

    asyncio.run(scenario())
    assert connector.opened == 0


def test_a_star_refused_at_execute_is_hinted_too(pg_dsn):
    catalog = ColumnCatalog(Connector(pg_dsn))

    async def scenario() -> None:
        subject = stage(catalog)
        sql = "SELECT c.* FROM crm.customers c LIMIT $1"
        refusal = await decided(subject, sql, parameters=("10000",))
        assert isinstance(refusal, Refusal)
        assert "agents-no-bulk-export" in refusal.message
        assert refusal.hint is not None
        assert refusal.hint.startswith(f"crm.customers has columns {CUSTOMER_COLUMNS}")
        catalog.close()

    asyncio.run(scenario())


def test_a_schema_change_let_through_forgets_the_columns(pg_dsn, ddl_policy):
    catalog = ColumnCatalog(Connector(pg_dsn))

    async def scenario() -> None:
        agent = stage(catalog)
        dba = stage(catalog, role="dba", policy=ddl_policy)
        await decided(agent, "SELECT * FROM crm.customers")
        assert catalog.known(["crm.customers"])
        # Decided only: the stage does not run it, but it is on its way to the database.
        assert await decided(dba, "ALTER TABLE crm.orders ADD COLUMN x int") is None
        assert catalog.known(["crm.customers"]) == {}
        # In a transaction the change shows to other connections only after COMMIT.
        assert await decided(dba, "BEGIN") is None
        assert await decided(dba, "CREATE INDEX ON crm.orders (status)") is None
        await decided(agent, "SELECT * FROM crm.customers")
        assert catalog.known(["crm.customers"])
        assert await decided(dba, "COMMIT") is None
        assert catalog.known(["crm.customers"]) == {}
        await decided(agent, "SELECT * FROM crm.customers")
        assert await decided(dba, "COMMIT") is None
        assert catalog.known(["crm.customers"]), "only the transaction with the change forgets"
        catalog.close()

    asyncio.run(scenario())


def test_a_refused_schema_change_forgets_nothing(pg_dsn):
    catalog = ColumnCatalog(Connector(pg_dsn))

    async def scenario() -> None:
        agent = stage(catalog)
        await decided(agent, "SELECT * FROM crm.customers")
        refusal = await decided(agent, "ALTER TABLE crm.orders ADD COLUMN x int")
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
        plain = await decided(stage(None), "SELECT * FROM crm.customers")
        assert isinstance(plain, Refusal)
        assert plain.hint is not None
        assert STAR_ADVICE not in plain.hint
        assert await decided(stage(catalog), "SELECT * FROM crm.customers") == plain
        unreachable = ColumnCatalog(Connector("postgresql://nobody@127.0.0.1:1/custos_demo"))
        assert await decided(stage(unreachable), "SELECT * FROM crm.customers") == plain
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
