"""Project-wide fixtures: one PostgreSQL per test session, with the demo database loaded.

Set CUSTOS_TEST_PG_DSN to a superuser DSN to test against an existing server instead of a
throwaway one; tests that need to change server configuration then skip.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from custos.demo.postgres import (
    DEMO_DATABASE,
    PostgresServer,
    TemporaryPostgres,
    binaries_support_tls,
    create_demo_database,
    find_server_binaries,
    server_from_dsn,
)

PG_DSN_ENV = "CUSTOS_TEST_PG_DSN"
REPOSITORY = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Refuses to test a compiled module older than its source: the source would go untested."""
    for compiled in [*REPOSITORY.glob("custos/**/*.so"), *REPOSITORY.glob("proxy_task/*.so")]:
        stem = compiled.name.split(".", 1)[0]
        for source in (compiled.parent / f"{stem}.py", compiled.parent / f"{stem}.pyx"):
            if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
                pytest.exit(
                    f"{compiled.relative_to(REPOSITORY)} is older than its source: run `make"
                    " test` to compile the hot path again, or `make pure` to test it as plain"
                    " Python",
                    returncode=2,
                )


# Timings belong in bench/: a per-example deadline is a timed assertion that a busy
# machine (CI runs on two cores) would fail for no fault of the code.
settings.register_profile("custos", deadline=None)
settings.load_profile("custos")


@pytest.fixture(scope="session")
def _pg_cluster_or_none() -> Iterator[TemporaryPostgres | None]:
    if os.environ.get(PG_DSN_ENV):
        yield None
        return
    bin_dir = find_server_binaries()
    # pgserver's binaries lack OpenSSL; TLS tests skip there rather than the whole suite failing.
    tls = bin_dir is not None and binaries_support_tls(bin_dir)
    cluster = TemporaryPostgres(tls=tls, bin_dir=bin_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg(_pg_cluster_or_none: TemporaryPostgres | None) -> PostgresServer:
    """The session's server, described with `custos_demo` as its database."""
    if _pg_cluster_or_none is None:
        server = server_from_dsn(os.environ[PG_DSN_ENV])
    else:
        server = _pg_cluster_or_none.server
    create_demo_database(server, DEMO_DATABASE)
    return dataclasses.replace(server, database=DEMO_DATABASE)


@pytest.fixture(scope="session")
def pg_dsn(pg: PostgresServer) -> str:
    """Superuser libpq URI to the demo database."""
    return pg.dsn()


@pytest.fixture
def pg_cluster(
    _pg_cluster_or_none: TemporaryPostgres | None, pg: PostgresServer
) -> TemporaryPostgres:
    """The session's throwaway cluster, for tests that add pg_hba rules or reload it."""
    if _pg_cluster_or_none is None:
        pytest.skip(f"{PG_DSN_ENV} points at an external server whose config tests must not change")
    return _pg_cluster_or_none


pytest_plugins = ["gateway_fixtures", "cdk_fixtures"]
