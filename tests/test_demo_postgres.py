from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from custos.demo.certificates import generate_ca_and_server_cert
from custos.demo.postgres import (
    PostgresNotFoundError,
    PostgresServer,
    PostgresStartError,
    TemporaryPostgres,
    create_demo_database,
    find_server_binaries,
    pgserver_binaries,
    server_from_dsn,
)

EMAIL = re.compile(r"^[a-z]+\.[a-z]+[0-9]+@example\.(com|org)$")
PHONE = re.compile(r"^\+44 7700 900[0-9]{3}$")
IBAN = re.compile(r"^GB[0-9]{2}[A-Z]{4}[0-9]{14}$")


def _select_one(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


def _iban_is_valid(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(digits) % 97 == 1


# The session server


def test_answers_over_tcp_with_scram(pg: PostgresServer) -> None:
    assert _select_one(pg.dsn()) == 1
    with psycopg.connect(pg.dsn()) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = current_user"
        ).fetchone()
    assert row is not None
    assert str(row[0]).startswith("SCRAM-SHA-256$")


def test_refuses_a_wrong_password(pg_cluster: TemporaryPostgres) -> None:
    server = pg_cluster.server
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _select_one(server.dsn(password="not-the-password", sslmode="disable"))


def test_answers_over_tls_with_verify_full(pg: PostgresServer) -> None:
    if pg.ca_cert is None:
        pytest.skip("the session server has no TLS certificate of ours")
    dsn = pg.dsn(sslmode="verify-full", sslrootcert=str(pg.ca_cert))
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)


def test_verify_full_fails_against_another_ca(pg: PostgresServer, tmp_path: Path) -> None:
    if pg.ca_cert is None:
        pytest.skip("the session server has no TLS certificate of ours")
    stranger = generate_ca_and_server_cert(tmp_path)
    dsn = pg.dsn(sslmode="verify-full", sslrootcert=str(stranger.ca_cert))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _select_one(dsn)


def test_pg_dsn_reaches_the_demo_database(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT current_database(), current_setting('search_path')").fetchone()
    assert row == ("custos_demo", "crm, public")


# The demo data


def test_demo_tables_have_the_expected_sizes(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        counts = {
            table: conn.execute(
                sql.SQL("SELECT count(*), count(DISTINCT id) FROM {}").format(sql.Identifier(table))
            ).fetchone()
            for table in ("customers", "orders", "support_tickets", "products")
        }
    assert counts == {
        "customers": (5000, 5000),
        "orders": (20000, 20000),
        "support_tickets": (2000, 2000),
        "products": (12, 12),
    }


def test_customers_look_plausible(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT full_name, email, phone, iban, birth_date, country FROM customers"
        ).fetchall()
    for full_name, email, phone, iban, birth_date, country in rows:
        assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", full_name)
        assert EMAIL.match(email)
        assert PHONE.match(phone)
        assert IBAN.match(iban)
        assert _iban_is_valid(iban)
        assert 1950 <= birth_date.year <= 2005
        assert country == "United Kingdom"
    assert len({email for _, email, *_ in rows}) == len(rows)
    assert len({full_name for full_name, *_ in rows}) > 500


def test_orders_and_tickets_belong_to_customers(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        orphans = conn.execute(
            """
            SELECT
                (SELECT count(*) FROM orders o
                 LEFT JOIN customers c ON c.id = o.customer_id WHERE c.id IS NULL),
                (SELECT count(*) FROM support_tickets t
                 LEFT JOIN customers c ON c.id = t.customer_id WHERE c.id IS NULL),
                (SELECT count(DISTINCT customer_id) FROM orders)
            """
        ).fetchone()
    assert orphans is not None
    assert orphans[:2] == (0, 0)
    assert orphans[2] > 3000


def test_some_tickets_quote_their_customers_email(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            """
            SELECT
                count(*) FILTER (WHERE strpos(t.body, c.email) > 0),
                count(*) FILTER (WHERE strpos(t.body, c.phone) > 0),
                count(*) FILTER (WHERE t.body ~ '@example\\.(com|org)'
                                   AND strpos(t.body, c.email) = 0)
            FROM support_tickets t JOIN customers c ON c.id = t.customer_id
            """
        ).fetchone()
    assert row is not None
    with_email, with_phone, with_someone_elses_email = row
    assert 200 < with_email < 2000
    assert 0 < with_phone < with_email
    assert with_someone_elses_email == 0


def test_personal_data_columns_are_labelled(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        labels: dict[str, str] = dict(
            conn.execute(
                """
                SELECT a.attname, col_description(a.attrelid, a.attnum)
                FROM pg_attribute a
                WHERE a.attrelid = 'crm.customers'::regclass AND a.attnum > 0
                """
            ).fetchall()
        )
        products = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'crm.products'::regclass "
            "AND attnum > 0 AND col_description(attrelid, attnum) LIKE 'personal data%'"
        ).fetchone()
    for column in ("full_name", "email", "phone", "iban", "birth_date", "street_address"):
        assert labels[column].startswith("personal data"), column
    assert labels["created_at"].startswith("not personal data")
    assert products == (0,)


def test_demo_data_is_deterministic_and_loading_is_idempotent(pg: PostgresServer) -> None:
    fingerprint = (
        "SELECT md5(string_agg(c::text, '|' ORDER BY id)) FROM customers c"
        " UNION ALL SELECT md5(string_agg(o::text, '|' ORDER BY id)) FROM orders o"
        " UNION ALL SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM support_tickets t"
    )
    copy = "custos_demo_determinism"
    create_demo_database(pg, copy)
    try:
        create_demo_database(pg, copy)
        with psycopg.connect(pg.dsn()) as original, psycopg.connect(pg.dsn(database=copy)) as dup:
            # The same clock zone on both, so timestamptz renders alike.
            for conn in (original, dup):
                conn.execute("SET TIME ZONE 'UTC'")
            assert original.execute(fingerprint).fetchall() == dup.execute(fingerprint).fetchall()
    finally:
        with psycopg.connect(pg.dsn(database="postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(copy)))


# Throwaway clusters of our own


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the server user can reach when tests run as root (tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="custos-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_two_clusters_run_at_once_and_stop_removes_their_directories() -> None:
    first, second = TemporaryPostgres(tls=False), TemporaryPostgres(tls=False)
    with first as a, second as b:
        directories = (first.data_dir.parent, second.data_dir.parent)
        assert a.port != b.port
        assert directories[0] != directories[1]
        assert _select_one(a.dsn()) == _select_one(b.dsn()) == 1
        assert all(directory.is_dir() for directory in directories)
    assert not any(directory.exists() for directory in directories)
    with pytest.raises(psycopg.OperationalError):
        _select_one(a.dsn(connect_timeout="2"))


def test_stop_keeps_a_directory_the_caller_gave(open_dir: Path) -> None:
    root = open_dir / "cluster"
    cluster = TemporaryPostgres(tls=False, root_dir=root)
    server = cluster.start()
    cluster.stop()
    assert (root / "data" / "PG_VERSION").exists()
    assert not (root / "data" / "postmaster.pid").exists()
    with pytest.raises(psycopg.OperationalError):
        _select_one(server.dsn(connect_timeout="2"))


def test_stop_is_idempotent_and_safe_before_start() -> None:
    cluster = TemporaryPostgres(tls=False)
    cluster.stop()
    cluster.start()
    cluster.stop()
    cluster.stop()


def test_a_taken_port_is_a_clear_error(open_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        cluster = TemporaryPostgres(port=port, tls=False, root_dir=open_dir / "cluster")
        with pytest.raises(PostgresStartError, match=rf"127\.0\.0\.1:{port}.*already in use"):
            cluster.start()
    assert not (open_dir / "cluster" / "data" / "postmaster.pid").exists()


def test_a_directory_holding_a_cluster_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(PostgresStartError, match="already holds a cluster"):
        TemporaryPostgres(tls=False, root_dir=tmp_path).start()


def test_hba_rules_added_before_start_and_while_running() -> None:
    cluster = TemporaryPostgres(tls=False)
    cluster.add_hba_rule("host all trusted_early 127.0.0.1/32 trust")
    with cluster as server, psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("CREATE ROLE trusted_early LOGIN")
        admin.execute("SET password_encryption = 'md5'")
        admin.execute("CREATE ROLE md5_user LOGIN PASSWORD 'md5-secret'")
        assert _select_one(server.dsn(user="trusted_early", database="postgres")) == 1

        cluster.add_hba_rule("host all md5_user 127.0.0.1/32 md5")
        assert _select_one(server.dsn(user="md5_user", password="md5-secret")) == 1
        # The md5 rule comes first now, so scram-only clients are asked for md5.
        with pytest.raises(psycopg.OperationalError, match="server requested"):
            _select_one(
                server.dsn(user="md5_user", password="md5-secret", require_auth="scram-sha-256")
            )


def test_session_cluster_accepts_a_trusted_user(pg_cluster: TemporaryPostgres) -> None:
    server = pg_cluster.server
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS conftest_trusted")
        admin.execute("CREATE ROLE conftest_trusted LOGIN")
    pg_cluster.add_hba_rule("host all conftest_trusted 127.0.0.1/32 trust")
    assert _select_one(server.dsn(user="conftest_trusted")) == 1


def test_log_callback_reports_progress_without_the_password() -> None:
    messages: list[str] = []
    with TemporaryPostgres(tls=False, log=messages.append) as server:
        pass
    assert any(f"127.0.0.1:{server.port}" in message for message in messages)
    assert not any(server.superuser_password in message for message in messages)


def test_pgserver_binaries_behave_the_same() -> None:
    bin_dir = pgserver_binaries()
    if bin_dir is None:
        pytest.skip("pgserver is not installed")
    with TemporaryPostgres(tls=False, bin_dir=bin_dir) as server:
        create_demo_database(server)
        with psycopg.connect(server.dsn(database="custos_demo")) as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (5000,)


def test_tls_without_openssl_binaries_is_a_clear_error() -> None:
    bin_dir = pgserver_binaries()
    if bin_dir is None:
        pytest.skip("pgserver is not installed")
    with pytest.raises(PostgresStartError, match=r"without TLS support.*tls=False"):
        TemporaryPostgres(tls=True, bin_dir=bin_dir).start()


def test_missing_binaries_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(
        PostgresNotFoundError, match=r"apt-get install postgresql.*pip install pgserver"
    ):
        TemporaryPostgres(bin_dir=tmp_path).start()


def test_found_binaries_include_the_server() -> None:
    bin_dir = find_server_binaries()
    assert bin_dir is not None
    assert all((bin_dir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to another user")
def test_an_unreachable_directory_is_a_clear_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    with pytest.raises(PostgresStartError, match="custos-pg cannot enter"):
        TemporaryPostgres(tls=False, root_dir=tmp_path / "cluster").start()


def test_misuse_is_refused() -> None:
    cluster = TemporaryPostgres(tls=False)
    with pytest.raises(RuntimeError, match="call start"):
        _ = cluster.server
    with pytest.raises(RuntimeError, match="call start"):
        cluster.reload()
    with pytest.raises(ValueError, match=r"one pg_hba\.conf rule"):
        cluster.add_hba_rule("host all all 0.0.0.0/0 trust\nlocal all all trust")
    with cluster, pytest.raises(RuntimeError, match="already running"):
        cluster.start()


# Describing servers


def test_dsn_percent_encodes_credentials() -> None:
    server = PostgresServer(
        host="127.0.0.1",
        port=6543,
        superuser="post@gres",
        superuser_password="p/ss:w@rd?&=",
        database="my db",
        socket_dir=None,
        ca_cert=None,
    )
    parts = conninfo_to_dict(server.dsn(sslmode="verify-full", sslrootcert="/tmp/c a.crt"))
    assert parts == {
        "user": "post@gres",
        "password": "p/ss:w@rd?&=",
        "host": "127.0.0.1",
        "port": "6543",
        "dbname": "my db",
        "sslmode": "verify-full",
        "sslrootcert": "/tmp/c a.crt",
    }
    other = conninfo_to_dict(server.dsn(user="agent", database="postgres"))
    assert "password" not in other
    assert other["user"] == "agent"


def test_server_from_dsn_reads_uri_and_keyword_forms() -> None:
    server = server_from_dsn(
        "postgresql://admin:s%40cret@db.internal:5433/app?sslrootcert=/etc/ca.pem"
    )
    assert server == PostgresServer(
        host="db.internal",
        port=5433,
        superuser="admin",
        superuser_password="s@cret",
        database="app",
        socket_dir=None,
        ca_cert=Path("/etc/ca.pem"),
    )
    local = server_from_dsn("host=/var/run/postgresql user=postgres")
    assert (local.host, local.port, local.socket_dir) == (
        "/var/run/postgresql",
        5432,
        "/var/run/postgresql",
    )
    assert local.database == "postgres"
    assert conninfo_to_dict(local.dsn())["host"] == "/var/run/postgresql"


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgresql://u@h:notaport/db", "could not be parsed|not a number"),
        ("host=h port=5x", "not a number"),
        ("this is = not a dsn", "could not be parsed"),
    ],
)
def test_server_from_dsn_rejects_bad_input(dsn: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        server_from_dsn(dsn)
