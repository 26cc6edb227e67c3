"""pgbench and pg_dump, libpq programs with their own protocol habits, through the gateway."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest
from compare import libpq_environment, run_program
from gateway_fixtures import GatewayProcess, client_program

_PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers")
# pg_dump >= 17.6, 16.10 and 15.14 fence its script with \restrict KEY ... \unrestrict KEY
# (CVE-2025-8714), drawing a fresh random KEY on every run: two dumps of one database
# differ in these lines by design, wherever they connect.
_RESTRICT_LINE = re.compile(r"\\(un)?restrict [A-Za-z0-9]+")


def _pgbench_tables(gateway: GatewayProcess) -> list[str]:
    with psycopg.connect(gateway.upstream_dsn) as observer:
        rows = observer.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'pgbench\\_%' ORDER BY 1"
        ).fetchall()
    return [name for (name,) in rows]


@pytest.fixture(scope="module")
def pgbench_tables(gateway: GatewayProcess) -> Iterator[str]:
    """pgbench's tables at scale 1, created through the gateway and dropped after."""
    pgbench = client_program("pgbench")
    environment = libpq_environment(gateway, "gateway")
    created = run_program(pgbench, ["-i", "-s", "1", "--unlogged-tables"], environment)
    try:
        assert created.returncode == 0, created.stderr
        yield pgbench
    finally:
        # Init step "d" alone drops pgbench's tables and creates nothing.
        dropped = run_program(pgbench, ["-i", "-I", "d"], environment)
        assert dropped.returncode == 0, dropped.stderr
        assert _pgbench_tables(gateway) == []


def test_pgbench_initialises_its_tables_through_the_gateway(
    pgbench_tables: str, gateway: GatewayProcess
) -> None:
    assert _pgbench_tables(gateway) == sorted(_PGBENCH_TABLES)
    with psycopg.connect(gateway.upstream_dsn) as observer:
        counts = observer.execute(
            "SELECT (SELECT count(*) FROM pgbench_accounts),"
            " (SELECT count(*) FROM pgbench_tellers), (SELECT count(*) FROM pgbench_branches),"
            " (SELECT relpersistence FROM pg_class WHERE relname = 'pgbench_accounts')"
        ).fetchone()
    assert counts == (100_000, 10, 1, "u")


def _report_number(report: str, label: str) -> int:
    found = re.search(rf"^{re.escape(label)}: (\d+)", report, re.MULTILINE)
    assert found, f"pgbench did not report {label!r}:\n{report}"
    return int(found.group(1))


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only_runs_without_failures(
    pgbench_tables: str, gateway: GatewayProcess, mode: str
) -> None:
    result = run_program(
        pgbench_tables,
        ["-S", "-n", "-T", "3", "-c", "4", "-j", "2", "-M", mode],
        libpq_environment(gateway, "gateway"),
    )
    assert result.returncode == 0, result.stderr
    assert f"query mode: {mode}" in result.stdout
    assert _report_number(result.stdout, "number of transactions actually processed") > 0
    assert _report_number(result.stdout, "number of failed transactions") == 0


def test_pg_dump_through_the_gateway_equals_the_direct_dump(gateway: GatewayProcess) -> None:
    pg_dump = client_program("pg_dump")
    direct, through = (
        run_program(pg_dump, ["--schema=crm"], libpq_environment(gateway, side))
        for side in ("direct", "gateway")
    )
    assert direct.returncode == 0, direct.stderr
    assert through.returncode == 0, through.stderr
    assert through.stderr == direct.stderr == ""
    direct_lines = direct.stdout.splitlines()
    through_lines = through.stdout.splitlines()
    assert len(through_lines) == len(direct_lines)
    differing = [
        (ours, theirs)
        for ours, theirs in zip(through_lines, direct_lines, strict=True)
        if ours != theirs
    ]
    for ours, theirs in differing:
        assert _RESTRICT_LINE.fullmatch(ours), ours
        assert _RESTRICT_LINE.fullmatch(theirs), theirs
    assert "CREATE TABLE crm.customers (" in through.stdout
    assert "COPY crm.orders (id, customer_id, ordered_at, total_cents, currency, status)" in (
        through.stdout
    )
