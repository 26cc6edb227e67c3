"""Python time per transaction on the session's path, in-process, for pgbench -S traffic.

    .venv/bin/python bench/session_path.py [--transactions 20000] [--profile]

Feeds a session machine what pgbench -S sends and what PostgreSQL answers, without
sockets, and prints microseconds per transaction for the bare relay and for the governed
session under the benchmark's policy (the demo policy, with pgbench's tables readable),
in the simple and the extended protocol. This is the
gateway's own work per transaction; the live figures (bench/pgbench_gateway.py) add the
event loop and the socket calls. --profile runs the governed paths under cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(REPOSITORY / "bench"))

from pgbench_gateway import bench_policy  # noqa: E402

from custos.policy.source import FilePolicySource  # noqa: E402
from custos.session.decision import InProcessDecisionPoint  # noqa: E402
from custos.session.lexical import LexicalSettings  # noqa: E402
from custos.session.machine import SessionLimits, SessionMachine  # noqa: E402
from custos.session.policy_stage import PolicyStage  # noqa: E402
from custos.session.reached import FunctionReach  # noqa: E402
from custos.session.relay import RelayMachine  # noqa: E402
from custos.session.stages import Plan, ResultRewriter, Rewrite, Stage  # noqa: E402
from custos.session.statement import Statement  # noqa: E402
from custos.session.texts import TextAnalyser  # noqa: E402
from custos.sql.cache import AnalysisCache  # noqa: E402
from custos.upstream.columns import ColumnCatalog  # noqa: E402

POLICY = bench_policy(Path(tempfile.mkdtemp(prefix="custos-bench-")))
SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _answer(extended: bool) -> bytes:
    description = _message(
        b"T", struct.pack("!h", 1) + b"abalance\x00" + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0)
    )
    rows = _message(b"D", struct.pack("!hi", 1, 4) + b"4711")
    done = _message(b"C", b"SELECT 1\x00") + _message(b"Z", b"I")
    if extended:
        return _message(b"1", b"") + _message(b"2", b"") + description + rows + done
    return description + rows + done


def _request(extended: bool, aid: int) -> bytes:
    if not extended:
        return _message(b"Q", SELECT.format(aid).encode() + b"\x00")
    sql = SELECT.format("$1").encode()
    value = str(aid).encode()
    return (
        _message(b"P", b"\x00" + sql + b"\x00" + struct.pack("!h", 0))
        + _message(b"B", b"\x00\x00" + struct.pack("!hhi", 0, 1, len(value)) + value + b"\x00\x00")
        + _message(b"D", b"P\x00")
        + _message(b"E", b"\x00" + struct.pack("!i", 0))
        + _message(b"S", b"")
    )


class _CatalogOfPlainTables:
    """The database's catalog for pgbench's tables: no views, defaults or triggers that run
    anything, no user-defined operators (what a live gateway reads once and remembers)."""

    closed = False

    async def query(self, sql: str) -> list[tuple[str | None, ...]]:
        return []

    def close(self) -> None:
        pass


def _reach() -> FunctionReach:
    async def connect() -> _CatalogOfPlainTables:
        return _CatalogOfPlainTables()

    catalog = ColumnCatalog(connect)

    async def read() -> None:
        await catalog.load(["public.pgbench_accounts"])
        await catalog.load_behind("operator", ["="])

    asyncio.run(read())
    return FunctionReach(catalog)


def _governed() -> SessionMachine:
    point = InProcessDecisionPoint(FilePolicySource(POLICY))
    return SessionMachine(
        stages=[PolicyStage("bench", point, reach=_reach())],
        analyser=TextAnalyser(AnalysisCache(), exact_texts=False),
        search_path=("public",),
        lexical=LexicalSettings(),
        limits=SessionLimits(),
    )


def _run(machine: SessionMachine | RelayMachine, extended: bool, transactions: int) -> float:
    answer = _answer(extended)
    requests = [_request(extended, 1 + (index * 7919) % 100_000) for index in range(transactions)]
    started = time.perf_counter()
    for request in requests:
        machine.client_data(request)
        machine.server_data(answer)
    return (time.perf_counter() - started) / transactions * 1e6


LARGE_ROW = 16 << 20


def _large_row_milliseconds() -> float:
    """A row the session must hold whole (a rewriter reads it), arriving in many chunks."""

    class Reading(ResultRewriter):
        pass

    class Rewriting(Stage):
        def plan(self, statement: Statement) -> Plan:
            return Rewrite(Reading())

    machine = SessionMachine(
        stages=[Rewriting()],
        analyser=TextAnalyser(AnalysisCache(), exact_texts=False),
        search_path=("public",),
        lexical=LexicalSettings(),
        limits=SessionLimits(),
    )
    machine.client_data(_message(b"Q", b"SELECT big FROM t\x00"))
    description = _message(
        b"T", struct.pack("!h", 1) + b"big\x00" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    )
    row = description + _message(b"D", struct.pack("!hi", 1, LARGE_ROW) + b"x" * LARGE_ROW)
    chunks = [row[start : start + 65536] for start in range(0, len(row), 65536)]
    started = time.perf_counter()
    for chunk in chunks:
        machine.server_data(chunk)
    return (time.perf_counter() - started) * 1000


def _best(make: Callable[[], SessionMachine | RelayMachine], extended: bool, n: int) -> float:
    return min(_run(make(), extended, n) for _ in range(5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    arguments = parser.parse_args()
    n = arguments.transactions
    print(f"µs of Python per pgbench -S transaction, best of 5 passes of {n}\n")
    print(f"{'protocol':10}{'bare relay':>12}{'governed':>12}{'difference':>12}")
    for extended in (False, True):
        bare = _best(lambda: RelayMachine(1 << 26), extended, n)
        governed = _best(_governed, extended, n)
        name = "extended" if extended else "simple"
        print(f"{name:10}{bare:12.2f}{governed:12.2f}{governed - bare:12.2f}")
    print(
        f"\nms to pass one {LARGE_ROW >> 20} MiB row a stage rewrites, in 64 KiB chunks:", end=" "
    )
    print(f"{_large_row_milliseconds():.1f}")
    if arguments.profile:
        for extended in (False, True):
            profiler = cProfile.Profile()
            machine = _governed()
            profiler.runcall(_run, machine, extended, n)
            print(f"\n--- governed, {'extended' if extended else 'simple'} ---")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
