"""What a user-defined function's body calls, as the catalog gives it (custos/sql/bodies.py).

A SQL body's statements and each query and expression of a PL/pgSQL body are analysed; SQL
built at run time (EXECUTE), and bodies in languages the gateway cannot read, are unseen.
"""

from __future__ import annotations

import pytest

from custos.sql.bodies import UNSEEN, body_reach
from custos.sql.reached import Reach


def plpgsql(body: str, declare: str = "x int; r record; c refcursor;") -> str:
    return (
        "CREATE OR REPLACE FUNCTION crm.f(a integer) RETURNS SETOF integer"
        f" LANGUAGE plpgsql AS $function$ DECLARE {declare} BEGIN {body} END $function$"
    )


@pytest.mark.parametrize(
    ("body", "called"),
    [
        ("PERFORM lo_creat(-1);", "lo_creat"),
        ("x := a + pg_backend_pid();", "pg_backend_pid"),
        ("x = length(pg_read_file('/etc/passwd'));", "pg_read_file"),
        ("IF lo_unlink(a) > 0 THEN RETURN; END IF;", "lo_unlink"),
        ("RAISE NOTICE '%', pg_notify('c', 'x');", "pg_notify"),
        (
            "FOR r IN SELECT pg_terminate_backend(pid) FROM pg_stat_activity LOOP END LOOP;",
            "pg_terminate_backend",
        ),
        ("RETURN QUERY SELECT lo_creat(-1)::int;", "lo_creat"),
        ("OPEN c FOR SELECT set_config('role', 'x', false);", "set_config"),
        ("CALL crm.p();", "crm.p"),
        ("ASSERT pg_advisory_lock(1) IS NULL;", "pg_advisory_lock"),
        ("SELECT count(*) INTO x FROM crm.orders WHERE dblink_mark(a::text);", "dblink_mark"),
    ],
)
def test_plpgsql_statements_and_expressions_are_followed(body: str, called: str) -> None:
    reach = body_reach("plpgsql", plpgsql(body))
    assert called in reach.read
    assert not reach.unknown


@pytest.mark.parametrize(
    "body",
    [
        "EXECUTE 'SELECT 1';",
        "EXECUTE format('SELECT %s', a);",
        "FOR r IN EXECUTE 'SELECT 1' LOOP END LOOP;",
        "RETURN QUERY EXECUTE 'SELECT 1';",
        "OPEN c FOR EXECUTE 'SELECT 1';",
        "PERFORM query_to_xml('SELECT 1', true, true, '');",
    ],
)
def test_sql_built_at_run_time_is_unseen(body: str) -> None:
    reach = body_reach("plpgsql", plpgsql(body))
    dynamic = reach.unknown or "query_to_xml" in reach.read  # named: dynamic by its name
    assert dynamic


@pytest.mark.parametrize(
    ("body", "called"),
    [
        ("SELECT lo_creat(-1)", {"lo_creat"}),
        ("SELECT 1; SELECT pg_notify('c', $1)", {"pg_notify"}),
        ("RETURN (lo_creat(-1) + 1)", {"lo_creat"}),
        ("BEGIN ATOMIC\n SELECT pg_notify('c'::text, 'x'::text);\n SELECT 1;\nEND", {"pg_notify"}),
        ("SELECT $1 * 2", set()),
    ],
)
def test_sql_bodies_are_analysed_like_statements(body: str, called: set[str]) -> None:
    assert body_reach("sql", body) == Reach(frozenset(called))


def test_languages_the_gateway_cannot_read_are_unseen() -> None:
    for language in ("plpython3u", "plperl", "plperlu", "pltcl", "plv8", ""):
        assert body_reach(language, "return 1") is UNSEEN
    # Compiled code a superuser installed is matched by the name it is called by.
    assert body_reach("c", "dblink") == Reach()
    assert body_reach("internal", "lo_creat") == Reach()


@pytest.mark.parametrize(
    "body",
    [
        "not a function at all",
        plpgsql("x := ;"),
        plpgsql("PERFORM (;"),
    ],
)
def test_bodies_that_do_not_parse_are_unseen(body: str) -> None:
    assert body_reach("plpgsql", body) is UNSEEN


def test_a_sql_body_that_does_not_parse_is_unseen() -> None:
    assert body_reach("sql", "SELECT (") is UNSEEN


@pytest.mark.parametrize(
    ("language", "body"),
    [
        ("sql", "INSERT INTO crm.t VALUES (1); SELECT 1"),
        ("sql", "NOTIFY c, 'hello'; SELECT 1"),
        ("sql", "UPDATE crm.orders SET status = status"),
        ("plpgsql", plpgsql("LOCK TABLE crm.orders IN ACCESS EXCLUSIVE MODE;")),
        ("plpgsql", plpgsql("SET standard_conforming_strings = off;")),
        ("plpgsql", plpgsql("DELETE FROM crm.orders WHERE id = a;")),
    ],
)
def test_a_body_that_does_more_than_read_is_unseen(language: str, body: str) -> None:
    # Its writes, NOTIFY, LOCK or SET are not carried to the calling statement.
    assert body_reach(language, body) is UNSEEN
