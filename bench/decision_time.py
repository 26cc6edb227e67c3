"""Time to analyse and decide one statement, uncached and cached, under the demo policy.

    .venv/bin/python bench/decision_time.py [--rounds 2000]

Prints microseconds per statement for: pglast's JSON parse alone (the floor),
our analysis uncached, the analysis cache hit (the same text), the shape hit
(the same statement with other values in literals the analysis does not read, as
the simple protocol sends it), and the engine's decision on a cached analysis.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from pglast.parser import parse_sql_json  # noqa: E402

from custos.policy.engine import DecisionRequest, PolicyEngine  # noqa: E402
from custos.policy.source import load_policy  # noqa: E402
from custos.sql.analysis import analyze  # noqa: E402
from custos.sql.cache import AnalysisCache  # noqa: E402

STATEMENTS = {
    "point select": "SELECT id, status FROM crm.orders WHERE id = 42",
    "pgbench -S": "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
    "join + LIMIT": (
        "SELECT c.id, o.total_cents FROM crm.customers c JOIN crm.orders o"
        " ON o.customer_id = c.id WHERE o.status = 'paid' ORDER BY o.ordered_at DESC LIMIT 20"
    ),
    "CTE write": (
        "WITH gone AS (DELETE FROM crm.orders WHERE status = 'void' RETURNING id)"
        " SELECT count(*) FROM gone"
    ),
    "wildcard search": "SELECT id FROM crm.customers WHERE email LIKE '%@example.org' LIMIT 10",
}
# The literal each statement varies for the shape hit (None: policy reads all its literals).
VARIED_LITERAL = {
    "point select": "42",
    "pgbench -S": "4711",
    "join + LIMIT": "'paid'",
    "CTE write": "'void'",
    "wildcard search": None,
}
SEARCH_PATH = ("crm", "public")


def per_call_microseconds(function: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(rounds):
            function()
        best = min(best, time.perf_counter() - started)
    return best / rounds * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    arguments = parser.parse_args()
    engine = PolicyEngine(load_policy(REPOSITORY / "custos" / "demo" / "policy.yaml"))
    print(f"demo policy, {len(engine.document.rules)} rules; µs per statement, best of 3\n")
    header = (
        f"{'statement':<18}{'pglast json':>12}{'analyse':>10}{'cache hit':>11}"
        f"{'shape hit':>11}{'decide':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, sql in STATEMENTS.items():
        cache = AnalysisCache()
        analysis = cache.analyze(sql, SEARCH_PATH)
        request = DecisionRequest("agent", analysis)
        rounds = arguments.rounds
        parsed = per_call_microseconds(lambda sql=sql: parse_sql_json(sql), rounds)
        analysed = per_call_microseconds(lambda sql=sql: analyze(sql, SEARCH_PATH), rounds)
        hit = per_call_microseconds(
            lambda sql=sql, cache=cache: cache.analyze(sql, SEARCH_PATH), rounds
        )
        shaped = "n/a"
        literal = VARIED_LITERAL[name]
        if literal is not None:
            quote = "'" if literal.startswith("'") else ""
            variants = [
                sql.replace(literal, f"{quote}{n}{quote}") for n in range(1000, 1000 + rounds)
            ]
            cache.analyze(variants[0], SEARCH_PATH)
            texts = iter(variants * 3)
            shaped = "{:.2f}".format(
                per_call_microseconds(
                    lambda cache=cache, texts=texts: cache.analyze(next(texts), SEARCH_PATH), rounds
                )
            )
        decided = per_call_microseconds(lambda request=request: engine.decide(request), rounds)
        print(f"{name:<18}{parsed:>12.1f}{analysed:>10.1f}{hit:>11.2f}{shaped:>11}{decided:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
