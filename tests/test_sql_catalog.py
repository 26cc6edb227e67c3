"""The analysis' lists of special functions, checked against the server's own catalog.

A built-in the lists miss would be a way past policy: a function that runs SQL given as text
(dynamic), one that takes a whole row in field notation (`t.row_to_json`), or an aggregate
that gathers many rows' values into one (a bulk export under LIMIT 1).
"""

from __future__ import annotations

import psycopg
import pytest

from custos.sql.exposure import STATEMENT_FUNCTIONS, STATISTICS_RELATIONS
from custos.sql.names import CATALOG_RELATIONS, INFORMATION_SCHEMA_RELATIONS
from custos.sql.risks import (
    BUILTIN_OPERATORS,
    COLLECTING_AGGREGATES,
    EFFECT_FUNCTIONS,
    ROW_FUNCTIONS,
    SELECTING_AGGREGATES,
    SET_RETURNING_FUNCTIONS,
    SQL_TEXT_FUNCTIONS,
    has_effects,
)

_ROW_TYPES = (
    "'record', 'anyelement', 'anycompatible', '\"any\"', 'anynonarray', 'anycompatiblenonarray'"
)


@pytest.fixture(scope="module")
def catalog(pg_dsn: str) -> psycopg.Connection:
    connection = psycopg.connect(pg_dsn, autocommit=True)
    yield connection
    connection.close()


def names(connection: psycopg.Connection, sql: str) -> set[str]:
    return {row[0] for row in connection.execute(sql).fetchall()}


def test_every_builtin_that_runs_a_query_or_reads_a_named_table_is_dynamic(catalog) -> None:
    # Their input arguments are named for what they take: a query, a cursor, a table or a
    # schema whose rows they read.
    found = names(
        catalog,
        """
        SELECT p.proname FROM pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace AND (
          'refcursor'::regtype = ANY (p.proargtypes)
          OR EXISTS (
            SELECT 1 FROM unnest(
              p.proargnames,
              coalesce(p.proargmodes,
                       array_fill('i'::"char", ARRAY[coalesce(cardinality(p.proargnames), 0)]))
            ) AS a(n, m)
            WHERE a.m IN ('i', 'b', 'v')
              AND a.n IN ('query', 'sqlquery', 'cursor', 'tbl', 'schema'))
          OR p.proname LIKE 'database\\_to\\_xml%'
          -- C functions that run their text argument through SPI, whatever it is named
          OR p.prosrc IN ('tsquery_rewrite_query', 'ts_stat1', 'ts_stat2'))
        """,
    )
    assert found, "the catalog query found nothing: it no longer matches the server's catalog"
    assert found - SQL_TEXT_FUNCTIONS == set()


def test_every_builtin_that_takes_a_whole_row_is_a_row_function(catalog) -> None:
    found = names(
        catalog,
        f"""
        SELECT p.proname FROM pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind = 'f'
          AND p.pronargs - p.pronargdefaults <= 1 AND p.pronargs >= 1
          AND p.proargtypes[0] IN (SELECT t::regtype FROM unnest(ARRAY[{_ROW_TYPES}]) t)
        """,
    )
    assert "row_to_json" in found
    assert found - ROW_FUNCTIONS == set()


def test_every_builtin_aggregate_that_gathers_values_is_collecting(catalog) -> None:
    # An aggregate whose result can hold many input values: an array, a text, JSON, XML,
    # bytes or a multirange. min and max return one input value whatever their type.
    found = names(
        catalog,
        """
        SELECT p.proname FROM pg_proc p JOIN pg_aggregate a ON a.aggfnoid = p.oid
        JOIN pg_type t ON t.oid = p.prorettype
        WHERE p.pronamespace = 'pg_catalog'::regnamespace
          AND p.proname NOT IN ('min', 'max', 'mode')
          AND (t.typcategory IN ('A', 'S', 'U', 'R', 'P') OR t.typname IN ('json', 'jsonb', 'xml'))
        """,
    )
    assert {"string_agg", "array_agg", "xmlagg"} <= found
    assert found - COLLECTING_AGGREGATES == set()


def test_the_statistics_relations_and_activity_functions_exist(catalog) -> None:
    # Names that no longer exist would silently protect nothing.
    relations = names(
        catalog,
        "SELECT 'pg_catalog.' || relname FROM pg_class"
        " WHERE relnamespace = 'pg_catalog'::regnamespace",
    )
    assert relations >= STATISTICS_RELATIONS
    functions = names(catalog, "SELECT proname FROM pg_proc")
    assert STATEMENT_FUNCTIONS - {"pg_stat_statements"} <= functions


@pytest.mark.parametrize(
    ("schema", "listed"),
    [("pg_catalog", CATALOG_RELATIONS), ("information_schema", INFORMATION_SCHEMA_RELATIONS)],
)
def test_every_relation_of_the_system_schemas_is_listed(
    catalog, schema: str, listed: frozenset[str]
) -> None:
    # An unqualified catalog name resolves to pg_catalog, and information_schema's own
    # relations are not asked about: a name missing here would be read as a user's.
    relations = names(
        catalog,
        "SELECT relname FROM pg_class WHERE relkind IN ('r', 'v', 'm', 'p', 'f')"
        f" AND relnamespace = '{schema}'::regnamespace",
    )
    assert relations <= listed


def test_every_builtin_operator_name_is_listed(catalog) -> None:
    # An operator of a name not listed is taken for someone's, its operands searched.
    names_found = names(catalog, "SELECT oprname FROM pg_operator WHERE oid < 16384")
    assert names_found == BUILTIN_OPERATORS


def test_every_builtin_with_effects_beyond_the_statement_is_listed(catalog) -> None:
    # Found by what they touch: large objects, files, backends, configuration, WAL and
    # replication, the statistics the server keeps for everyone.
    found = names(
        catalog,
        r"""
        SELECT p.proname FROM pg_proc p
        WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind = 'f' AND (
          p.proname ~ '^(lo_|lo(read|write)$|pg_(read|ls)_|pg_stat_file$)'
          OR p.proname ~ '^pg_(cancel|terminate)_backend$|^pg_(reload_conf|rotate_logfile)$'
          OR p.proname ~ '^pg_(promote|switch_wal|create_restore_point|backup_(start|stop))$'
          OR p.proname ~ '^pg_log_backend_memory_contexts$|^pg_import_system_collations$'
          OR p.proname ~ 'replication_slot|^pg_logical_|^pg_replication_origin_'
          OR p.proname ~ '^pg_wal_replay_(pause|resume)$|^pg_stat_reset')
          AND p.proname NOT IN ('pg_get_replication_slots', 'pg_stat_get_replication_slot')
        """,
    )
    assert len(found) > 40, "the catalog query no longer matches the server's catalog"
    assert {name for name in found if not has_effects(name)} == set()
    # Reading a replication slot's state stays a plain call, as do ordinary functions.
    ordinary = ("lower", "length", "pg_sleep", "now", "pg_get_replication_slots")
    assert not any(has_effects(name) for name in ordinary)


def test_every_listed_function_with_effects_exists(catalog) -> None:
    builtins = names(catalog, "SELECT proname FROM pg_proc")
    # Those of extensions the test server does not install, and of older servers.
    elsewhere = {"pg_stat_statements_reset", "pg_start_backup", "pg_stop_backup"}
    assert EFFECT_FUNCTIONS - builtins - elsewhere == set()


def test_every_builtin_aggregate_but_count_makes_limit_no_bound(catalog) -> None:
    found = names(
        catalog, "SELECT p.proname FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid"
    )
    assert "sum" in found, "the catalog query no longer matches the server's catalog"
    assert found - COLLECTING_AGGREGATES - SELECTING_AGGREGATES == {"count"}


def test_every_builtin_returning_rows_from_arguments_is_listed(catalog) -> None:
    found = names(
        catalog,
        "SELECT proname FROM pg_proc WHERE proretset AND pronargs > 0"
        " AND pronamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)",
    )
    assert "generate_series" in found, "the catalog query no longer matches the catalog"
    assert found - SET_RETURNING_FUNCTIONS == set()
