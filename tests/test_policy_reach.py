"""Functions a statement reaches without naming them: views, defaults, checks, domains,
triggers and row-level security run functions the text never calls.

Before, the analysis saw only the text: `SELECT * FROM crm.reach_lo`, a view over
`lo_creat(-1)`, created a large object for the agent although every `lo_*` function is
denied; an INSERT into a table whose default, domain or trigger calls a denied function
ran it. Now the gateway reads from the catalog what each relation reaches
(custos/upstream/reach.py) and decides as if the statement called it. Each attack is
judged by evidence: large objects created, rows written by the functions, rows inserted.
"""

from __future__ import annotations

# ruff: noqa: F811 - the fixtures of test_session_attacks, imported, are redefined as arguments
import asyncio
from collections.abc import Iterator

import psycopg
import pytest
from gateway_fixtures import GatewayProcess
from test_policy_attacks import refused
from test_policy_commands import DEMO_POLICY, run
from test_policy_evasions import K, assert_smiths_found_and_refused
from test_session_attacks import (  # noqa: F401 - fixtures
    governed,
    psycopg_connect,
    rows_of,
    superuser,
)

from custos.demo.embedded import GATEWAY_LOGIN
from custos.sql.reached import Reach
from custos.upstream.reach import functions_called, reach_from_rows, reach_query

# A denied function by the demo's `no-server-side-access` rule ("dblink*"), with an effect
# that shows: it writes a row to crm.reach_marks.
OBJECTS = """
CREATE TABLE crm.reach_marks (via text);
CREATE FUNCTION crm.dblink_mark(via text) RETURNS boolean LANGUAGE sql
  AS $$ INSERT INTO crm.reach_marks VALUES (via) RETURNING true $$;
CREATE FUNCTION crm.dblink_mark_row() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN INSERT INTO crm.reach_marks VALUES ('trigger'); RETURN NEW; END $$;
CREATE FUNCTION crm.dblink_compare(a text, b text) RETURNS boolean LANGUAGE sql
  AS $$ SELECT crm.dblink_mark('operator') $$;
CREATE OPERATOR crm.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = crm.dblink_compare);

CREATE VIEW crm.reach_lo AS SELECT lo_creat(-1) AS created;
CREATE VIEW crm.reach_outer AS SELECT created FROM crm.reach_lo;
CREATE VIEW crm.reach_operator AS SELECT 'a'::text OPERATOR(crm.===) 'b'::text AS same;
CREATE VIEW crm.reach_activity AS SELECT query FROM pg_stat_get_activity(NULL);
CREATE VIEW crm.reach_plain AS SELECT id, status FROM crm.orders;

CREATE TABLE crm.reach_defaulted (id int, created oid DEFAULT lo_creat(-1));
CREATE TABLE crm.reach_checked (id int CHECK (crm.dblink_mark('check')));
CREATE DOMAIN crm.marked_int AS int CHECK (crm.dblink_mark('domain'));
CREATE TABLE crm.reach_domain (id crm.marked_int);
CREATE TABLE crm.reach_triggered (id int);
CREATE TRIGGER mark BEFORE INSERT ON crm.reach_triggered
  FOR EACH ROW EXECUTE FUNCTION crm.dblink_mark_row();
CREATE TABLE crm.reach_secured (id int);
ALTER TABLE crm.reach_secured ENABLE ROW LEVEL SECURITY;
CREATE POLICY marked ON crm.reach_secured USING (crm.dblink_mark('policy'));

-- Functions named like any other whose bodies call a denied one.
CREATE FUNCTION crm.reach_sql_body() RETURNS oid LANGUAGE sql AS $$ SELECT lo_creat(-1) $$;
CREATE FUNCTION crm.reach_plpgsql_body() RETURNS int LANGUAGE plpgsql
  AS $$ BEGIN PERFORM lo_creat(-1); RETURN 1; END $$;
CREATE FUNCTION crm.reach_chain() RETURNS int LANGUAGE sql
  AS $$ SELECT crm.reach_plpgsql_body() $$;
CREATE FUNCTION crm.reach_atomic() RETURNS oid LANGUAGE sql
  BEGIN ATOMIC SELECT lo_creat(-1); END;
CREATE FUNCTION crm.reach_dynamic() RETURNS int LANGUAGE plpgsql
  AS $$ BEGIN EXECUTE 'SELECT lo_creat(-1)'; RETURN 1; END $$;
CREATE FUNCTION crm.reach_harmless(n int) RETURNS int LANGUAGE sql AS $$ SELECT n * 2 $$;
CREATE FUNCTION crm.reach_rows(n int) RETURNS SETOF int LANGUAGE sql
  AS $$ SELECT generate_series(1, n) $$;
CREATE FUNCTION crm.reach_table(n int) RETURNS TABLE (i int) LANGUAGE plpgsql
  AS $$ BEGIN IF n > 0 THEN RETURN QUERY SELECT 1; END IF; END $$;
CREATE FUNCTION crm.reach_defaulted_argument(x oid DEFAULT lo_creat(-1)) RETURNS oid
  LANGUAGE sql AS $$ SELECT $1 $$;
CREATE FUNCTION crm.reach_step(total int, n int) RETURNS int LANGUAGE plpgsql
  AS $$ BEGIN PERFORM lo_creat(-1); RETURN coalesce(total, 0) + n; END $$;
CREATE AGGREGATE crm.reach_sum(int) (SFUNC = crm.reach_step, STYPE = int);
CREATE FUNCTION crm.reach_stamp() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN PERFORM lo_creat(-1); RETURN NEW; END $$;
CREATE TABLE crm.reach_stamped (id int);
CREATE TRIGGER stamp BEFORE INSERT ON crm.reach_stamped
  FOR EACH ROW EXECUTE FUNCTION crm.reach_stamp();
"""
RELATIONS = [
    "reach_lo",
    "reach_outer",
    "reach_operator",
    "reach_activity",
    "reach_plain",
    "reach_defaulted",
    "reach_checked",
    "reach_domain",
    "reach_triggered",
    "reach_secured",
    "reach_marks",
    "reach_stamped",
]


@pytest.fixture(scope="module")
def reaching(pg_dsn: str, governed: GatewayProcess) -> Iterator[None]:
    # After the gateway fixtures: they provision the login the objects are given to.
    with psycopg.connect(pg_dsn, dbname="custos_demo", autocommit=True) as connection:
        connection.execute(OBJECTS)
        for relation in RELATIONS:
            connection.execute(f"ALTER TABLE crm.{relation} OWNER TO {GATEWAY_LOGIN}")
        yield
        connection.execute(
            "DROP VIEW crm.reach_outer, crm.reach_lo, crm.reach_operator, crm.reach_activity,"
            " crm.reach_plain;"
            "DROP TABLE crm.reach_defaulted, crm.reach_checked, crm.reach_domain,"
            " crm.reach_triggered, crm.reach_secured, crm.reach_marks;"
            "DROP DOMAIN crm.marked_int; DROP OPERATOR crm.=== (text, text);"
            "DROP FUNCTION crm.dblink_compare, crm.dblink_mark, crm.dblink_mark_row;"
            "DROP TABLE crm.reach_stamped; DROP AGGREGATE crm.reach_sum (int);"
            "DROP FUNCTION crm.reach_sql_body, crm.reach_chain, crm.reach_plpgsql_body,"
            " crm.reach_atomic, crm.reach_dynamic, crm.reach_harmless, crm.reach_step,"
            " crm.reach_rows, crm.reach_table,"
            " crm.reach_defaulted_argument,"
            " crm.reach_stamp"
        )


@pytest.fixture
def demo_superuser(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, dbname="custos_demo", autocommit=True) as connection:
        yield connection


def large_objects(connection: psycopg.Connection) -> int:
    (count,) = connection.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    return int(count)


def marks(connection: psycopg.Connection) -> list[str]:
    return [via for (via,) in connection.execute("SELECT via FROM crm.reach_marks").fetchall()]


# --- what the catalog says ----------------------------------------------------------------


def test_the_catalog_names_what_each_relation_reaches(
    reaching: None, demo_superuser: psycopg.Connection
) -> None:
    relations = [f"crm.{name}" for name in RELATIONS]
    rows = demo_superuser.execute(reach_query(relations)).fetchall()
    reach = reach_from_rows(rows, functions_called)
    assert "lo_creat" in reach["crm.reach_lo"].read
    assert "lo_creat" in reach["crm.reach_outer"].read  # through the view it reads
    assert "crm.dblink_compare" in reach["crm.reach_operator"].read  # the operator's function
    assert "pg_stat_get_activity" in reach["crm.reach_activity"].read
    assert reach["crm.reach_defaulted"] == Reach(write=frozenset({"lo_creat"}))
    assert reach["crm.reach_checked"].write == {"dblink_mark", "crm.dblink_mark"}
    assert reach["crm.reach_domain"].write == {"dblink_mark", "crm.dblink_mark"}
    assert reach["crm.reach_triggered"].write == {"dblink_mark_row", "crm.dblink_mark_row"}
    assert reach["crm.reach_secured"].read == {"dblink_mark", "crm.dblink_mark"}
    assert "crm.reach_marks" not in reach  # a plain table reaches nothing
    assert not reach["crm.reach_plain"].read & {"lo_creat", "dblink_mark"}


# --- through the gateway, by evidence --------------------------------------------------------


def test_a_view_over_a_denied_function_is_refused_and_creates_nothing(
    reaching: None, governed: GatewayProcess, demo_superuser: psycopg.Connection
) -> None:
    before = large_objects(demo_superuser)
    with psycopg_connect(governed) as agent:
        assert refused(agent, "SELECT lo_creat(-1)") == "42501"  # the known spelling
        assert refused(agent, "SELECT * FROM crm.reach_lo") == "42501"
        assert refused(agent, "SELECT created FROM crm.reach_outer") == "42501"
        assert refused(agent, "SELECT count(*) FROM crm.reach_lo") == "42501"
        # A view that reaches nothing denied reads as before.
        assert rows_of(agent, "SELECT count(*) FROM crm.reach_plain") != []
    assert large_objects(demo_superuser) == before


def test_a_view_whose_operator_calls_a_denied_function_is_refused(
    reaching: None, governed: GatewayProcess, demo_superuser: psycopg.Connection
) -> None:
    with psycopg_connect(governed) as agent:
        assert refused(agent, "SELECT same FROM crm.reach_operator") == "42501"
    assert marks(demo_superuser) == []


def test_an_operator_in_the_statement_runs_its_function_and_is_decided_so(
    reaching: None, governed: GatewayProcess, demo_superuser: psycopg.Connection
) -> None:
    with psycopg_connect(governed) as agent:
        assert refused(agent, "SELECT 'a'::text OPERATOR(crm.===) 'b'::text") == "42501"
        agent.execute("SET search_path TO crm, public")
        assert refused(agent, "SELECT 'a'::text === 'b'::text") == "42501"
        # The database's own operators run nothing that matters.
        assert rows_of(agent, "SELECT 'a'::text = 'b'::text, 1 + 2") == [(False, 3)]
    assert marks(demo_superuser) == []


def test_a_cast_to_a_domain_runs_its_check_and_is_decided_so(
    reaching: None, governed: GatewayProcess, demo_superuser: psycopg.Connection
) -> None:
    with psycopg_connect(governed) as agent:
        assert refused(agent, "SELECT '1'::crm.marked_int") == "42501"
        assert refused(agent, "SELECT CAST(1 AS crm.marked_int)") == "42501"
        # Casts to the database's own types run nothing that matters.
        assert rows_of(agent, "SELECT '1'::int + 1, CAST(2 AS text)") == [(2, "2")]
    assert marks(demo_superuser) == []


def test_a_view_over_other_sessions_statements_counts_as_reading_them(
    reaching: None, governed: GatewayProcess, demo_superuser: psycopg.Connection
) -> None:
    marker = "SELECT 'reach-activity-marker', pg_sleep(0)"
    demo_superuser.execute("BEGIN")
    demo_superuser.execute(marker)  # idle in transaction: its text stays in pg_stat_activity
    try:
        with psycopg_connect(governed) as agent:
            assert refused(agent, "SELECT query FROM crm.reach_activity") == "42501"
            seen = rows_of(agent, "SELECT query FROM crm.reach_activity")
    finally:
        demo_superuser.execute("ROLLBACK")
    assert not any("reach-activity-marker" in str(value) for row in seen for value in row)


@pytest.mark.parametrize(
    ("table", "mark"),
    [
        ("crm.reach_checked", "check"),
        ("crm.reach_domain", "domain"),
        ("crm.reach_triggered", "trigger"),
    ],
)
def test_a_write_whose_table_runs_a_denied_function_is_refused(
    reaching: None,
    governed: GatewayProcess,
    demo_superuser: psycopg.Connection,
    table: str,
    mark: str,
) -> None:
    with psycopg_connect(governed, role="dba") as dba:
        assert refused(dba, f"INSERT INTO {table} (id) VALUES (1)") == "42501"
    (rows,) = demo_superuser.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert rows == 0
    assert mark not in marks(demo_superuser)


def test_an_insert_whose_default_creates_a_large_object_is_refused(
    reaching: None, governed: GatewayProcess, demo_superuser: psycopg.Connection
) -> None:
    before = large_objects(demo_superuser)
    with psycopg_connect(governed, role="dba") as dba:
        assert refused(dba, "INSERT INTO crm.reach_defaulted (id) VALUES (1)") == "42501"
        # Reading the table runs no default: it reads as any other.
        assert rows_of(dba, "SELECT count(*) FROM crm.reach_defaulted") == [(0,)]
    assert large_objects(demo_superuser) == before


def test_a_table_whose_row_security_calls_a_denied_function_is_refused(
    reaching: None, governed: GatewayProcess, demo_superuser: psycopg.Connection
) -> None:
    with psycopg_connect(governed) as agent:
        assert refused(agent, "SELECT * FROM crm.reach_secured") == "42501"
    assert marks(demo_superuser) == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT crm.reach_sql_body()",
        "SELECT crm.reach_plpgsql_body()",
        "SELECT crm.reach_chain()",  # a SQL function calling a PL/pgSQL one
        "SELECT crm.reach_atomic()",
        "SELECT crm.reach_dynamic()",  # EXECUTE of a string: not seen into, so dynamic
        "SELECT crm.reach_sum(id::int) FROM crm.orders WHERE id < 3",  # its step function
        "SELECT (1).reach_chain",
        "SELECT crm.reach_defaulted_argument()",  # its argument's default
    ],
)
def test_a_function_whose_body_calls_a_denied_one_is_refused(
    reaching: None, governed: GatewayProcess, demo_superuser: psycopg.Connection, sql: str
) -> None:
    before = large_objects(demo_superuser)
    with psycopg_connect(governed) as agent:
        assert refused(agent, sql) == "42501"
        # A function whose body calls nothing denied runs as any other.
        assert rows_of(agent, "SELECT crm.reach_harmless(2)") == [(4,)]
    assert large_objects(demo_superuser) == before


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT id, full_name, crm.reach_rows({K}) FROM crm.customers ORDER BY id LIMIT 100",
        f"SELECT id, full_name FROM (SELECT id, full_name, crm.reach_table({K}) FROM"
        " crm.customers) s ORDER BY id LIMIT 100",
        f"SELECT id, full_name, length(crm.reach_rows({K})::text) FROM crm.customers"
        " ORDER BY id LIMIT 100",
    ],
)
def test_a_user_defined_set_returning_function_given_a_column_is_a_search(
    reaching: None, governed: GatewayProcess, demo_superuser: psycopg.Connection, sql: str
) -> None:
    # K is 1 for a Smith and 0 for anyone else: the function returns no row for the others.
    assert_smiths_found_and_refused(governed, demo_superuser, sql)
    with psycopg_connect(governed) as agent:
        # Given no column, or a scalar function given one: no search.
        assert rows_of(agent, "SELECT crm.reach_rows(2)") == [(1,), (2,)]
        harmless = "SELECT crm.reach_harmless(id::int) FROM crm.orders ORDER BY id LIMIT 2"
        assert len(rows_of(agent, harmless)) == 2


def test_a_trigger_whose_body_calls_a_denied_function_refuses_the_write(
    reaching: None, governed: GatewayProcess, demo_superuser: psycopg.Connection
) -> None:
    before = large_objects(demo_superuser)
    with (
        psycopg_connect(governed, role="dba") as dba,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as refusal,
    ):
        dba.execute("INSERT INTO crm.reach_stamped VALUES (1)")
    # Denied for the function its body calls (not held for approval as unseen code).
    assert "no-server-side-access" in (refusal.value.diag.message_hint or "")
    assert demo_superuser.execute("SELECT count(*) FROM crm.reach_stamped").fetchone() == (0,)
    assert large_objects(demo_superuser) == before


def test_the_refusal_names_the_reached_function_rule(
    reaching: None, governed: GatewayProcess
) -> None:
    with (
        psycopg_connect(governed) as agent,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as refusal,
    ):
        agent.execute("SELECT * FROM crm.reach_lo")
    assert refusal.value.diag.message_hint is not None
    assert "no-server-side-access" in refusal.value.diag.message_hint


def test_a_catalog_that_cannot_be_read_refuses_what_it_would_decide() -> None:
    from custos.session.reached import CATALOG_UNREADABLE, FunctionReach
    from custos.session.texts import TextAnalyser
    from custos.sql.cache import AnalysisCache
    from custos.upstream.columns import ColumnCatalog

    class Unreachable:
        closed = False

        async def query(self, sql: str) -> list[tuple[str | None, ...]]:
            raise OSError("connection refused")

        def close(self) -> None:
            pass

    async def connect() -> Unreachable:
        return Unreachable()

    reach = FunctionReach(ColumnCatalog(connect))  # type: ignore[arg-type]
    candidates = TextAnalyser(AnalysisCache(), True).candidates("SELECT * FROM crm.v", ("crm",))
    assert isinstance(candidates, tuple)
    assert reach.applied(candidates) is None
    with pytest.raises(Exception, match="cannot list the columns"):
        asyncio.run(reach.load(candidates))
    assert reach.applied(candidates) is None  # and the policy stage refuses with:
    assert CATALOG_UNREADABLE.sqlstate == "42501"


def test_explain_with_the_database_shows_what_a_statement_reaches(
    reaching: None, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("policy", "explain", DEMO_POLICY, "--role", "agent")
    assert run(*argv, "SELECT * FROM crm.reach_lo") == 0  # on the text alone: allowed
    assert "decision:        allow" in capsys.readouterr().out.splitlines()
    assert run(*argv, "--upstream", pg_dsn, "SELECT * FROM crm.reach_lo") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "decision:        deny" in lines
    assert "deciding rule:   no-server-side-access" in lines
    assert any(line.startswith("  functions:") and "lo_creat" in line for line in lines)
