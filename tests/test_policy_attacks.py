"""Policy under attack: ways SQL reaches personal data or server functions past the rules.

Each class is one way in, tried as the role `agent` under the demo policy through the real
gateway, and judged by evidence: the values that came back, or what changed in the database.
Every class also runs the same data through an allowed path first, so a test cannot pass
because nothing would ever have come back.
"""

# ruff: noqa: F811 - the fixtures of test_session_attacks, imported, are redefined as arguments

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from gateway_fixtures import GatewayProcess, psycopg_session, start_gateway
from test_session_attacks import (  # noqa: F401 - fixtures
    DEMO_POLICY,
    assert_no_email_in_clear,
    customer_emails,
    customer_names,
    emails_in_rows,
    governed,
    login,
    psycopg_connect,
    rows_of,
    superuser,
)
from wire import ConnectionEnded, WireClient

from custos.demo.postgres import PostgresServer, TemporaryPostgres
from custos.sql import budget
from custos.sql.analysis import analyze


def names_in(rows: list[tuple], names: frozenset[str]) -> set[str]:
    """Customer names found anywhere in the values received, however they were joined."""
    text = " ".join(str(value) for row in rows for value in row)
    return {name for name in names if name in text}


def refused(connection: psycopg.Connection, sql: str) -> str | None:
    """The SQLSTATE of the error the statement got, or None when it ran."""
    try:
        connection.execute(sql).fetchall()
    except psycopg.Error as error:
        return error.sqlstate
    return None


def assert_search_refused(
    governed: GatewayProcess, superuser: psycopg.Connection, condition: str
) -> None:
    """The search finds customers directly, and nothing as the agent: refused by policy."""
    sql = f"SELECT id FROM crm.customers WHERE {condition} ORDER BY id LIMIT 5"
    assert superuser.execute(sql).fetchall(), "the search finds customers directly"
    with psycopg_connect(governed) as agent:
        assert refused(agent, sql) == "42501"
        assert rows_of(agent, sql) == []


# --- functions called in field notation ----------------------------------------------------


class TestFieldNotation:
    """`(x).f` and `t.f` call f(x) and f(t) when f is a function: rules on f apply."""

    def test_a_large_object_is_not_created_through_field_notation(
        self, governed: GatewayProcess, superuser: psycopg.Connection
    ) -> None:
        count = "SELECT count(*) FROM pg_largeobject_metadata"
        (before,) = superuser.execute(count).fetchone()
        with psycopg_connect(governed) as agent:
            for sql in ("SELECT (-1).lo_creat", "SELECT (-1).pg_catalog.lo_creat"):
                assert refused(agent, sql) is not None, sql
            assert refused(agent, "SELECT 1") is None
        (after,) = superuser.execute(count).fetchone()
        assert after == before

    @pytest.mark.parametrize(
        "template",
        [
            "SELECT ({pid}).pg_terminate_backend",
            "SELECT ({pid}::int).pg_terminate_backend",
            "SELECT (p.pid).pg_terminate_backend FROM (SELECT {pid} AS pid) p",
        ],
    )
    def test_another_session_is_not_terminated_through_field_notation(
        self, governed: GatewayProcess, template: str
    ) -> None:
        # A session of the gateway's own database role, which that role may terminate.
        with psycopg.connect(governed.upstream_dsn, autocommit=True) as victim:
            (pid,) = victim.execute("SELECT pg_backend_pid()").fetchone()
            with psycopg_connect(governed) as agent:
                refused(agent, template.format(pid=pid))
            time.sleep(0.1)
            assert victim.execute("SELECT 1").fetchone() == (1,)

    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT c.row_to_json::text FROM crm.customers c ORDER BY c.id LIMIT 5",
            "SELECT (c).row_to_json::text FROM crm.customers c ORDER BY c.id LIMIT 5",
            "SELECT c.to_jsonb::text FROM crm.customers c ORDER BY c.id LIMIT 5",
            "SELECT c.record_out::text FROM crm.customers c ORDER BY c.id LIMIT 5",
            "SELECT s.to_json::text FROM (SELECT id, email FROM crm.customers) s LIMIT 5",
            "SELECT s.concat FROM (SELECT id, email FROM crm.customers) s LIMIT 5",
        ],
    )
    def test_a_whole_row_through_field_notation_is_a_read_of_every_column(
        self, governed: GatewayProcess, customer_emails: frozenset[bytes], sql: str
    ) -> None:
        with psycopg_connect(governed) as agent:
            rows = rows_of(agent, sql)
            # The same rows without the personal columns the masking rule covers are allowed.
            allowed = rows_of(agent, "SELECT id, full_name FROM crm.customers LIMIT 5")
        assert len(allowed) == 5
        assert not emails_in_rows(rows, customer_emails)


# --- catalog views and functions that expose other data ---------------------------------------


class TestExposingViews:
    """Reading the statistics or other sessions' activity is reading what they hold."""

    @pytest.fixture
    def analysed(self, superuser: psycopg.Connection) -> Iterator[None]:
        superuser.execute(
            "CREATE STATISTICS IF NOT EXISTS crm.custos_attack_stats (mcv)"
            " ON email, phone FROM crm.customers"
        )
        superuser.execute("ANALYZE crm.customers")
        yield
        superuser.execute("DROP STATISTICS IF EXISTS crm.custos_attack_stats")

    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT most_common_vals::text, histogram_bounds::text FROM pg_stats"
            " WHERE schemaname = 'crm' AND tablename = 'customers'",
            "SELECT histogram_bounds::text FROM pg_catalog.pg_stats"
            " WHERE attname = 'email' LIMIT 1",
            "SELECT most_common_vals::text FROM pg_stats_ext WHERE tablename = 'customers'",
            "SELECT x FROM (SELECT histogram_bounds::text AS x FROM pg_stats"
            " WHERE attname = 'email') s",
        ],
    )
    def test_the_statistics_do_not_return_customers_values(
        self,
        governed: GatewayProcess,
        superuser: psycopg.Connection,
        customer_emails: frozenset[bytes],
        analysed: None,
        sql: str,
    ) -> None:
        # The statistics hold emails in clear: the superuser sees them.
        direct = rows_of(superuser, sql)
        assert emails_in_rows(direct, customer_emails)
        with psycopg_connect(governed) as agent:
            assert refused(agent, sql) is not None
            assert not emails_in_rows(rows_of(agent, sql), customer_emails)
            # Other catalogs stay readable.
            assert rows_of(agent, "SELECT relname FROM pg_class WHERE relname = 'customers'")

    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT query FROM pg_stat_get_activity(NULL)",
            "SELECT pg_catalog.pg_stat_get_activity(NULL)::text",
            "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
        ],
    )
    def test_other_sessions_statements_are_not_returned(
        self,
        governed: GatewayProcess,
        pg_dsn: str,
        customer_emails: frozenset[bytes],
        sql: str,
    ) -> None:
        email = sorted(customer_emails)[0].decode()
        with (
            psycopg.connect(pg_dsn, autocommit=True) as victim,
            psycopg.connect(pg_dsn, autocommit=True) as observer,
        ):
            # The victim's last statement, with its email, stays in its activity entry.
            victim.execute(f"SELECT id FROM crm.customers WHERE email = '{email}'").fetchall()
            assert emails_in_rows(rows_of(observer, sql), customer_emails)
            with psycopg_connect(governed) as agent:
                assert refused(agent, sql) is not None
                assert not emails_in_rows(rows_of(agent, sql), customer_emails)


# --- bulk export measured in rows read ----------------------------------------------------------


class TestRowsRead:
    """An aggregate returns many customers in one row: LIMIT bounds rows, not rows read."""

    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT string_agg(full_name, '|') FROM crm.customers LIMIT 1",
            "SELECT array_agg(full_name)::text FROM crm.customers LIMIT 1",
            "SELECT json_agg(full_name)::text FROM crm.customers LIMIT 1",
            "SELECT jsonb_agg(c.full_name)::text FROM crm.customers c LIMIT 1",
            "SELECT xmlagg(xmlelement(name n, full_name))::text FROM crm.customers LIMIT 1",
            "SELECT json_object_agg(id, full_name)::text FROM crm.customers LIMIT 1",
            "SELECT (SELECT string_agg(full_name, '|') FROM crm.customers) LIMIT 1",
            "SELECT * FROM (SELECT string_agg(full_name, '|') FROM crm.customers) s LIMIT 1",
            "SELECT array(SELECT full_name FROM crm.customers)::text LIMIT 1",
            "SELECT array_to_string(ARRAY(SELECT full_name FROM crm.customers), '|') LIMIT 1",
            "SELECT string_agg(full_name, '|') OVER () FROM crm.customers LIMIT 1",
            "SELECT percentile_disc('{" + ",".join(str(i / 200) for i in range(200)) + "}'"
            "::float8[]) WITHIN GROUP (ORDER BY full_name)::text FROM crm.customers LIMIT 1",
            "WITH RECURSIVE r(n, s) AS (SELECT 0, ''::text UNION ALL SELECT r.n + 1, r.s || '|'"
            " || (SELECT full_name FROM crm.customers WHERE id = r.n + 1) FROM r WHERE r.n < 500)"
            " SELECT s FROM r ORDER BY n DESC LIMIT 1",
        ],
    )
    def test_an_aggregate_under_limit_1_does_not_return_every_customer(
        self, governed: GatewayProcess, customer_names: frozenset[str], sql: str
    ) -> None:
        with psycopg_connect(governed) as agent:
            rows = rows_of(agent, sql)
            # A page of 100 names is allowed, and a count reads no value.
            page = rows_of(agent, "SELECT full_name FROM crm.customers ORDER BY id LIMIT 100")
            counted = rows_of(agent, "SELECT count(*) FROM crm.customers LIMIT 1")
        assert len(names_in(page, customer_names)) > 50
        assert counted
        assert counted[0][0] > 100
        assert len(names_in(rows, customer_names)) <= 100


# --- pattern searches by any means --------------------------------------------------------------


class TestPatternSearches:
    """A search of a personal column not anchored to a fixed prefix is a wildcard search,
    whatever function or operator writes it."""

    @pytest.mark.parametrize(
        "condition",
        [
            "strpos(full_name, 'Begum') > 0",
            "position('Begum' in full_name) > 0",
            "textlike(full_name, '%Begum%')",
            "texticlike(full_name, '%begum%')",
            "full_name ~ '^T?.*Begum'",
            "full_name ~ '^.*Begum'",
            "regexp_like(full_name, 'Begum')",
            "regexp_match(full_name, 'Begum') IS NOT NULL",
            "regexp_count(full_name, 'Begum') > 0",
            "textregexeq(full_name, 'Begum')",
            "substring(full_name from 'Begum') IS NOT NULL",
            "full_name SIMILAR TO 'T*%Begum%'",
            "full_name LIKE 'T%Begum%'",
            "starts_with(full_name, '')",
            "full_name ^@ ''",
            "full_name ILIKE ANY (ARRAY['%begum%'])",
            "NOT (full_name !~~ '%Begum%')",
        ],
    )
    def test_an_unanchored_search_is_refused(
        self, governed: GatewayProcess, superuser: psycopg.Connection, condition: str
    ) -> None:
        assert_search_refused(governed, superuser, condition)

    @pytest.mark.parametrize(
        "condition",
        [
            "full_name LIKE 'Theo%'",
            "full_name ~ '^Theo'",
            "starts_with(full_name, 'Theo')",
            "full_name SIMILAR TO 'Theo%'",
            "full_name = 'Theo Begum'",
        ],
    )
    def test_a_search_by_prefix_is_allowed(self, governed: GatewayProcess, condition: str) -> None:
        sql = f"SELECT id FROM crm.customers WHERE {condition} ORDER BY id LIMIT 5"
        with psycopg_connect(governed) as agent:
            assert rows_of(agent, sql)


# --- startup parameters are statements ---------------------------------------------------------


class TestStartupSettings:
    """A setting in the startup packet is decided as the SET it amounts to."""

    @pytest.mark.parametrize(
        "options",
        [
            "-c role=postgres",
            "-crole=postgres",
            "--role=postgres",
            "-c search_path=crm -c session_authorization=postgres",
            "-c\\ role=postgres",
        ],
    )
    def test_a_role_change_in_options_refuses_the_connection(
        self, governed: GatewayProcess, options: str
    ) -> None:
        with pytest.raises(psycopg.OperationalError) as raised:
            psycopg_connect(governed, options=options).close()
        message = str(raised.value)
        assert "startup setting" in message
        assert "no-role-change" in message or "not supported" in message

    def test_a_role_change_as_a_startup_parameter_refuses_the_connection(
        self, governed: GatewayProcess
    ) -> None:
        with pytest.raises(ConnectionEnded, match="no-role-change"):
            login(governed, "agent", session_authorization="postgres").close()

    def test_an_unknown_switch_in_options_refuses_the_connection(
        self, governed: GatewayProcess
    ) -> None:
        with pytest.raises(psycopg.OperationalError, match="not supported through the gateway"):
            psycopg_connect(governed, options="-B 100").close()

    def test_an_allowed_setting_applies_and_the_gateway_follows_it(
        self, governed: GatewayProcess, customer_emails: frozenset[bytes]
    ) -> None:
        with psycopg_connect(governed, options="-c search_path=crm") as agent:
            assert rows_of(agent, "SHOW search_path") == [("crm",)]
            # Unqualified names resolve in crm: the policy for crm.customers applies.
            assert rows_of(agent, "SELECT full_name FROM customers ORDER BY id LIMIT 1")
            # The policy for crm.customers.email applies: masked.
            masked = assert_no_email_in_clear(
                agent, "SELECT email FROM customers ORDER BY id LIMIT 1", customer_emails
            )
            assert masked == [("***@example.org",)] or masked == [("***@example.com",)]


# --- sessions: no identity takes every slot ------------------------------------------------------


@pytest.fixture(scope="module")
def limited(
    pg: PostgresServer, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    running = start_gateway(
        tmp_path_factory.mktemp("limited"),
        pg,
        upstream_dsn=gateway.upstream_dsn,
        extra_config={
            "roles": [],
            "policy": {"file": str(DEMO_POLICY)},
            "limits": {
                "max_sessions_per_subject": 2,
                "max_sessions_per_role": 3,
                "max_statement_chars": 4096,
            },
        },
    )
    yield running
    running.stop()


def connect_as(gateway: GatewayProcess, subject: str) -> psycopg.Connection:
    return psycopg_session(gateway, "agent", subject)


class TestSessionLimits:
    def test_one_identity_holds_at_most_its_limit_of_sessions(
        self, limited: GatewayProcess
    ) -> None:
        first, second = connect_as(limited, "agent-a"), connect_as(limited, "agent-a")
        with pytest.raises(psycopg.OperationalError, match="max_sessions_per_subject"):
            connect_as(limited, "agent-a")
        raw = WireClient.connect(limited.port, timeout=5.0)
        with pytest.raises(ConnectionEnded, match="'C': '53300'"):
            raw.login(
                limited.tls.ca_cert, "agent", limited.token("agent", "agent-a"), limited.database
            )
        raw.close()
        # Another identity still gets in, and a closed session frees its slot.
        other = connect_as(limited, "agent-b")
        assert other.execute("SELECT 1").fetchone() == (1,)
        first.close()
        again = connect_as(limited, "agent-a")
        assert again.execute("SELECT 1").fetchone() == (1,)
        for connection in (second, other, again):
            connection.close()

    def test_a_role_holds_at_most_its_limit_of_sessions(self, limited: GatewayProcess) -> None:
        time.sleep(0.3)  # the sessions of the test before end as the gateway notices
        held = [connect_as(limited, f"agent-{n}") for n in range(3)]
        with pytest.raises(psycopg.OperationalError, match="max_sessions_per_role"):
            connect_as(limited, "agent-9")
        for connection in held:
            connection.close()
        time.sleep(0.2)
        connect_as(limited, "agent-9").close()

    def test_refused_logins_leave_no_slot_taken(self, limited: GatewayProcess) -> None:
        # Logins refused after admission (a database the gateway does not serve) give their
        # slot back: more of them than the limit, then a session still opens.
        token = limited.token("agent", "agent-c")
        for _ in range(4):
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(limited.dsn("agent", token, dbname="elsewhere")).close()
        connect_as(limited, "agent-c").close()

    def test_the_statement_limit_is_the_configured_one(self, limited: GatewayProcess) -> None:
        time.sleep(0.3)  # the sessions of the tests before end as the gateway notices
        long = "SELECT " + ", ".join(["1"] * 1500)  # 4.5 KB: under the default, over 4096
        with connect_as(limited, "agent-d") as agent:
            with pytest.raises(psycopg.errors.StatementTooComplex, match="more than the 4096"):
                agent.execute(long)
            assert agent.execute("SELECT 1").fetchone() == (1,)

    def test_the_gateway_stays_below_the_databases_connection_limit(
        self, limited: GatewayProcess, superuser: psycopg.Connection
    ) -> None:
        (slots,) = superuser.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
        ).fetchone()
        # 3 left free for administrators, 1 for the gateway's own catalog connection.
        assert f"at most {slots - 3 - 1} sessions" in limited.log()


# --- no statement holds the gateway -------------------------------------------------------------


class TestAnalysisBudget:
    """A statement built to be expensive to analyse is refused once it has cost its budget."""

    CROSS = "SELECT " + ", ".join(["x"] * 6000) + " FROM " + ", ".join(f"t{i}" for i in range(6000))

    def test_a_statement_past_the_budget_is_refused_and_the_session_goes_on(
        self, governed: GatewayProcess
    ) -> None:
        with psycopg_connect(governed) as agent:
            with pytest.raises(psycopg.errors.StatementTooComplex, match="too complex"):
                agent.execute(self.CROSS)
            assert agent.execute("SELECT 1").fetchone() == (1,)

    def test_a_statement_past_the_size_limit_is_refused_before_it_is_parsed(
        self, governed: GatewayProcess
    ) -> None:
        huge = "SELECT " + ", ".join(["1"] * (budget.MAX_STATEMENT_CHARS // 3 + 10))
        with psycopg_connect(governed) as agent:
            with pytest.raises(psycopg.errors.StatementTooComplex, match="characters long"):
                agent.execute(huge)
            assert agent.execute("SELECT 1").fetchone() == (1,)

    def test_the_budget_holds_for_every_expensive_shape(self) -> None:
        # Without the budget, this one analysed for minutes (quadratic in its size).
        analysis = analyze(self.CROSS, ("public",))
        assert analysis.statements == ()
        assert analysis.error is not None
        assert "too complex" in analysis.error


# --- one capability, one decision, whether by statement or by function ---------------------------


class TestConsistentKinds:
    """A function that does what a statement does is decided as that statement."""

    @pytest.mark.parametrize(
        "sql", ["NOTIFY custos_attack, 'hello'", "SELECT pg_notify('custos_attack', 'hello')"]
    )
    def test_a_notification_is_refused_either_way(
        self, governed: GatewayProcess, pg_dsn: str, sql: str
    ) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as listener:
            listener.execute("LISTEN custos_attack")
            with psycopg_connect(governed) as agent:
                assert refused(agent, sql) == "42501"
            listener.execute("SELECT 1")
            assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
            # The same statement directly does notify: the test can see one.
            with psycopg.connect(pg_dsn, autocommit=True) as other:
                other.execute(sql)
            assert len(list(listener.notifies(timeout=2, stop_after=1))) == 1

    @pytest.mark.parametrize(
        "sql", ["SELECT pg_advisory_lock(4711)", "SELECT pg_try_advisory_xact_lock(4711)"]
    )
    def test_an_advisory_lock_is_decided_as_a_lock(
        self, governed: GatewayProcess, superuser: psycopg.Connection, sql: str
    ) -> None:
        with psycopg_connect(governed) as agent:
            assert refused(agent, sql) == "42501"
            locks = superuser.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4711"
            ).fetchone()
            assert locks == (0,)

    def test_reading_a_server_file_through_a_large_object_is_copy_from_a_file(self) -> None:
        (statement,) = analyze("SELECT lo_import('/etc/passwd')", ("public",)).statements
        (copy,) = analyze("COPY t FROM '/etc/passwd'", ("public",)).statements
        assert statement.kind is copy.kind
        assert statement.copy_destination == copy.copy_destination == "file"


# --- nothing of a refused statement leaks ---------------------------------------------------------


class TestRefusalsLeakNothing:
    """A refused statement's values reach neither the database (its log, pg_stat_activity)
    nor the gateway's log; the client that sent an unparsable one alone sees its token."""

    MARKER = "leak.canary.4711@example.org"

    @pytest.mark.parametrize(
        "sql",
        [
            f"SELECT id FROM crm.customers WHERE email = '{MARKER}'",  # masked: refused
            f"SELECT id FROM crm.customers WHERE email LIKE '%{MARKER}'",  # wildcard
            f"SELEC '{MARKER}'",  # a syntax error
            f"SELECT (-1).lo_creat, '{MARKER}'",  # a denied function
            f"SELECT x, '{MARKER}' FROM " + ", ".join(f"t{i}" for i in range(3000)),
        ],
        ids=["masked", "wildcard", "syntax", "function", "too_complex"],
    )
    def test_a_refused_statements_values_are_nowhere_but_its_own_error(
        self,
        governed: GatewayProcess,
        pg_cluster: TemporaryPostgres,
        superuser: psycopg.Connection,
        sql: str,
    ) -> None:
        with psycopg_connect(governed) as agent:
            with pytest.raises(psycopg.Error) as raised:
                agent.execute(sql)
            activity = superuser.execute(
                "SELECT string_agg(query, ' ') FROM pg_stat_activity"
            ).fetchone()
        if "SELEC " in sql:
            assert self.MARKER in str(raised.value)  # PostgreSQL's own syntax error
        else:
            assert self.MARKER not in str(raised.value)
        assert self.MARKER not in (activity[0] or "")
        assert self.MARKER not in pg_cluster.log_file.read_text(errors="replace")
        assert self.MARKER not in governed.log()

    def test_the_database_log_shows_the_text_of_a_statement_that_failed_there(
        self, pg_cluster: TemporaryPostgres, superuser: psycopg.Connection
    ) -> None:
        # What the scans above would find, had the statement reached the database.
        marker = "direct.canary.4712@example.org"
        with pytest.raises(psycopg.errors.SyntaxError):
            superuser.execute(f"SELEC '{marker}'")
        deadline = time.monotonic() + 5
        while marker not in pg_cluster.log_file.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the database did not log the failed statement"
            time.sleep(0.05)
