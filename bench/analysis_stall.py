"""How long the worst statements hold the gateway's event loop while they are analysed.

The analysis runs on the event loop, so its time is the delay every other session sees
while it runs. Each statement below is built to be expensive; the figure is the wall time
of one analysis (parse included), best of three, with what the analysis said.

    .venv/bin/python bench/analysis_stall.py
"""

from __future__ import annotations

import time

from custos.sql import budget
from custos.sql.analysis import analyze


def _statements() -> dict[str, str]:
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
    return {
        f"SELECT 1, 1, ... ({len(ones) // 1024} KiB)": ones,
        f"SELECT x, ... FROM t0, ..., t{tables - 1} ({len(cross) // 1024} KiB)": cross,
        f"INSERT ... VALUES (...), ... ({len(values) // 1024} KiB)": values,
        "200 nested scalar subqueries": nested,
        f"3000 chained CTEs ({len(ctes) // 1024} KiB)": ctes,
        "over the size limit": "SELECT " + ", ".join(["1"] * (limit // 3 + 10)),
    }


def main() -> None:
    print(
        f"analysis budget {budget.DEFAULT_SECONDS * 1000:.0f} ms,"
        f" statements up to {budget.MAX_STATEMENT_CHARS // 1024} KiB\n"
    )
    print(f"{'statement':48} {'ms':>8}  outcome")
    for label, sql in _statements().items():
        best = float("inf")
        outcome = ""
        for _ in range(3):
            started = time.perf_counter()
            analysis = analyze(sql, ("public",))
            best = min(best, time.perf_counter() - started)
            outcome = "analysed" if analysis.error is None else analysis.error.split(";")[0][:48]
        print(f"{label:48} {best * 1000:8.1f}  {outcome}")


if __name__ == "__main__":
    main()
