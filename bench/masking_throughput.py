"""Masked reads: 100,000 rows with 4 masked columns, directly and through Custos.

The client (psycopg, text and binary results) reads every row. Prints the time of each
path, best of --repeat, and its ratio to the direct time (target: at most 3x): through
Custos unmasked (the same rows from a table the catalog does not classify: the cost of
the gateway alone), then masked by each method, `partial` (the demo agent's) and
`pseudonym` (keyed HMAC, the costliest), with the values masked per second; then how much
the gateway's memory grows (its peak resident set) while a client reads a 1,000,000-row
pseudonymised result (target: under 100 MB). Usage:

    .venv/bin/python bench/masking_throughput.py [--rows 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml
from pgbench_gateway import free_port, running

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from custos.demo.postgres import TemporaryPostgres  # noqa: E402
from custos.identity.dev_issuer import DevIssuer  # noqa: E402

COLUMNS = "full_name, email, phone, iban"
POLICY = {
    "roles": [
        {"name": method, "trust": [{"issuer": "dev", "subjects": ["bench"]}]}
        for method in ("partial", "pseudonym")
    ],
    "catalog": {
        "public.people": {
            "subject": "id",
            "columns": {"full_name": "name", "email": "email", "phone": "phone", "iban": "iban"},
        }
    },
    "rules": [
        *(
            {
                "id": f"bench-{method}",
                "match": {"roles": [method], "reads": ["name", "email", "phone", "iban"]},
                "effect": "mask",
                "mask": {"categories": ["name", "email", "phone", "iban"], "method": method},
            }
            for method in ("partial", "pseudonym")
        ),
        {
            "id": "bench-reads",
            "match": {"kinds": ["select"], "relations": ["public.*"]},
            "effect": "allow",
        },
        {
            "id": "bench-transactions-and-cursors",
            "match": {
                "roles": ["partial", "pseudonym"],
                "kinds": ["transaction", "other"],
                "statement_types": ["TransactionStmt", "FetchStmt", "ClosePortalStmt"],
            },
            "effect": "allow",
        },
    ],
}
PEOPLE = """
CREATE TABLE people AS
SELECT i AS id,
       'Person ' || i AS full_name,
       'person' || i || '@example.com' AS email,
       '+44 7700 ' || lpad((i % 1000000)::text, 6, '0') AS phone,
       'GB82 WEST 1234 ' || lpad((i % 100000000)::text, 8, '0') AS iban
FROM generate_series(1, {rows}) AS i;
CREATE TABLE unclassified AS TABLE people
"""


def read_all(dsn: str, sql: str, binary: bool) -> tuple[float, int]:
    with psycopg.connect(dsn) as connection:
        started = time.perf_counter()
        rows = connection.cursor(binary=binary).execute(sql).fetchall()
        return time.perf_counter() - started, len(rows)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc: measure memory on Linux")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-rows", type=int, default=1_000_000)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="custos-bench-") as scratch:
        work = Path(scratch)
        work.chmod(0o755)
        with TemporaryPostgres(tls=False) as server:
            subprocess.run(["psql", server.dsn(), "-qc", "CREATE DATABASE bench"], check=True)
            direct = server.dsn(database="bench", sslmode="disable")
            with psycopg.connect(direct, autocommit=True) as connection:
                connection.execute(PEOPLE.format(rows=max(arguments.rows, 1)))
            policy = work / "policy.yaml"
            policy.write_text(yaml.safe_dump(POLICY, sort_keys=False))
            key = work / "masking.key"
            key.write_text(secrets.token_hex(32))
            issuer = DevIssuer.open_or_create(work / "dev-issuer")
            port = free_port()
            config = {
                "listen": f"127.0.0.1:{port}",
                "upstream": {"dsn": direct},
                "dev_issuer_dir": str(work / "dev-issuer"),
                "allow_loopback_cleartext": True,
                "policy": {"file": str(policy)},
                "masking": {"key_file": str(key)},
            }
            (work / "custos.yaml").write_text(yaml.safe_dump(config))
            gateways = {
                method: f"host=127.0.0.1 port={port} dbname=bench user={method}"
                f" password={issuer.mint(method, 'bench', ttl_seconds=3600)} sslmode=disable"
                for method in ("partial", "pseudonym")
            }
            command = [sys.executable, "-m", "custos", "--log-level", "warning", "serve"]
            command += ["--config", str(work / "custos.yaml")]
            with running(command, port, "custos", work / "custos.log") as pid:
                return report(direct, gateways, pid, arguments)


def report(direct: str, gateways: dict[str, str], pid: int, arguments: argparse.Namespace) -> int:
    sql = f"SELECT {COLUMNS} FROM people"
    for method in ("partial", "pseudonym"):
        with psycopg.connect(gateways[method]) as connection:
            sample = connection.execute(f"{sql} ORDER BY id LIMIT 1").fetchone()
        if sample is None or "Person" in sample[0]:
            raise SystemExit(f"the gateway did not mask the bench's names ({method})")
    paths = {
        "direct": (direct, sql),
        "custos, unmasked": (gateways["partial"], f"SELECT {COLUMNS} FROM unclassified"),
        "custos, partial": (gateways["partial"], sql),
        "custos, pseudonym": (gateways["pseudonym"], sql),
    }
    print(f"{arguments.rows} rows x 4 columns, psycopg; seconds, best of {arguments.repeat}")
    print(f"{'format':<7} {'path':<18} {'seconds':>8} {'ratio':>7} {'values/s':>10}")
    for binary in (False, True):
        label = "binary" if binary else "text"
        best = {
            name: min(read_all(dsn, query, binary)[0] for _ in range(arguments.repeat))
            for name, (dsn, query) in paths.items()
        }
        for name, seconds in best.items():
            ratio = seconds / best["direct"]
            masked = name.endswith(("partial", "pseudonym"))
            rate = f"{4 * arguments.rows / seconds:,.0f}" if masked else ""
            print(f"{label:<7} {name:<18} {seconds:>8.3f} {ratio:>6.2f}x {rate:>10}")
    before = peak_rss_kib(pid)
    repeat = max(1, arguments.memory_rows // max(arguments.rows, 1))
    big = f"SELECT {COLUMNS} FROM people, generate_series(1, {repeat})"
    with (
        psycopg.connect(gateways["pseudonym"]) as connection,
        connection.cursor(name="stream") as cursor,
    ):
        cursor.itersize = 10_000
        read = sum(1 for _ in cursor.execute(big))
    growth = (peak_rss_kib(pid) - before) / 1024
    print(f"gateway peak memory growth over a {read:,}-row masked result: {growth:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
