"""How long the worst statements take to analyse, and what they cost every other session.

Part one: the wall time of one analysis of each statement built to be expensive, best of
three, with what the analysis said (in this process, no gateway).

Part two, through a running gateway with the demo policy: one client sends those
statements over and over, each text new (so none is answered from the cache), while
another times `SELECT 1` in a loop. The figure is how much later the other session's
`SELECT 1` comes back than with nobody attacking (its median and worst), with the
analysis in worker processes (the default) and, for comparison, on the event loop
(`limits.analysis_processes: 0`). The target: at most 50 ms of delay.

    .venv/bin/python bench/analysis_stall.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path

from pgbench_gateway import custos_gateway

from custos.demo.postgres import TemporaryPostgres
from custos.sql import budget
from custos.sql.analysis import analyze

TARGET_MS = 50.0


def worst_statements() -> dict[str, str]:
    limit = budget.MAX_STATEMENT_CHARS
    ones = "SELECT " + ", ".join(["1"] * (limit // 3 - 10))
    tables = 6000
    cross = (
        "SELECT " + ", ".join(["x"] * tables) + " FROM " + ", ".join(f"t{i}" for i in range(tables))
    )
    values = "INSERT INTO t (a, b, c) VALUES " + ", ".join(["(1, 'x', 2)"] * (limit // 14))
    nested = "SELECT " + "(SELECT " * 200 + "1" + ")" * 200
    ctes = "WITH " + ", ".join(f"c{i} AS (SELECT * FROM c{i - 1})" for i in range(1, 3000))
    ctes = (
        ctes.replace("c1 AS (SELECT * FROM c0)", "c1 AS (SELECT 1 AS x)") + " SELECT * FROM c2999"
    )
    stars = (
        "WITH c0 AS (SELECT "
        + ", ".join(f"1 a{n}" for n in range(100))
        + ")"
        + "".join(f", c{n} AS (SELECT * FROM c{n - 1} x, c{n - 1} y)" for n in range(1, 12))
        + " SELECT * FROM c11"
    )
    return {
        f"SELECT 1, 1, ... ({len(ones) // 1024} KiB)": ones,
        f"SELECT x, ... FROM t0, ..., t{tables - 1} ({len(cross) // 1024} KiB)": cross,
        f"INSERT ... VALUES (...), ... ({len(values) // 1024} KiB)": values,
        "200 nested scalar subqueries": nested,
        f"3000 chained CTEs ({len(ctes) // 1024} KiB)": ctes,
        f"stars over 11 self-joined CTEs ({len(stars)} B)": stars,
        "over the size limit": "SELECT " + ", ".join(["1"] * (limit // 3 + 10)),
    }


def analysis_times() -> None:
    print(
        f"analysis budget {budget.DEFAULT_SECONDS * 1000:.0f} ms,"
        f" statements up to {budget.MAX_STATEMENT_CHARS // 1024} KiB\n"
    )
    print(f"{'statement':48} {'ms':>8}  outcome")
    for label, sql in worst_statements().items():
        best = float("inf")
        outcome = ""
        for _ in range(3):
            started = time.perf_counter()
            analysis = analyze(sql, ("public",))
            best = min(best, time.perf_counter() - started)
            outcome = "analysed" if analysis.error is None else analysis.error.split(";")[0][:48]
        print(f"{label:48} {best * 1000:8.1f}  {outcome}")


def probe(port: int, environment: dict[str, str], seconds: float, out: list[float]) -> None:
    """Times `SELECT 1` over one session for the given seconds (in its own process)."""
    import psycopg

    os.environ.update(environment)
    with psycopg.connect(host="127.0.0.1", port=port, dbname="bench", autocommit=True) as conn:
        conn.execute("SELECT 1")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchall()
            out.append((time.perf_counter() - started) * 1000)
            time.sleep(0.002)


def attack(port: int, environment: dict[str, str], stop: Event) -> None:
    """Sends the worst statements, each text new, until told to stop."""
    import psycopg

    os.environ.update(environment)
    # Not the chained CTEs: PostgreSQL's own parse analysis of them takes minutes, and does
    # not stop for statement_timeout; the analysis is what is measured here.
    statements = [
        sql
        for label, sql in worst_statements().items()
        if "limit" not in label and "chained" not in label
    ]
    with psycopg.connect(host="127.0.0.1", port=port, dbname="bench", autocommit=True) as conn:
        round_number = 0
        while not stop.is_set():
            round_number += 1
            for sql in statements:
                # Refused or failed in the database: analysed either way.
                with contextlib.suppress(psycopg.Error):
                    conn.execute(f"{sql} /* {round_number} */".encode())


def delays(port: int, environment: dict[str, str], seconds: float) -> tuple[float, float, float]:
    """Median and worst `SELECT 1` alone, then its worst under attack, in milliseconds."""
    quiet: list[float] = []
    probe(port, environment, min(seconds, 3.0), quiet)
    stop = multiprocessing.Event()
    attacker = multiprocessing.Process(target=attack, args=(port, environment, stop))
    attacker.start()
    time.sleep(1.0)  # the attack is under way
    attacked: list[float] = []
    probe(port, environment, seconds, attacked)
    stop.set()
    attacker.join(60)
    return statistics.median(quiet), max(quiet), max(attacked)


def gateway_delays(seconds: float) -> None:
    print(f"\nanother session's SELECT 1 while one client sends them ({seconds:g} s each)\n")
    print(f"{'analysis':28} {'alone p50':>10} {'alone max':>10} {'attacked max':>13} {'delay':>8}")
    with tempfile.TemporaryDirectory(prefix="custos-bench-") as scratch:
        work = Path(scratch)
        work.chmod(0o755)
        with TemporaryPostgres(tls=False) as server:
            subprocess.run(["psql", server.dsn(), "-qc", "CREATE DATABASE bench"], check=True)
            for label, processes in (("in a worker process", 1), ("on the event loop", 0)):
                limits = {"analysis_processes": processes}
                with custos_gateway(
                    server, work / label.replace(" ", "-"), tls=False, policy=True, limits=limits
                ) as (endpoint, _):
                    p50, alone, attacked = delays(endpoint.port, endpoint.environment, seconds)
                verdict = "met" if attacked - p50 <= TARGET_MS else "missed"
                print(
                    f"{label:28} {p50:10.1f} {alone:10.1f} {attacked:13.1f}"
                    f" {attacked - p50:8.1f}  ({(attacked - p50) / TARGET_MS:.2f} of the"
                    f" {TARGET_MS:g} ms target: {verdict})"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each probe")
    arguments = parser.parse_args()
    analysis_times()
    gateway_delays(arguments.seconds)


if __name__ == "__main__":
    sys.exit(main())
