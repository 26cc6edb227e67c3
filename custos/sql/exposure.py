"""Catalog views and functions that expose what other relations or sessions hold.

Reading them counts as reading what they expose, so the rules for that apply:

- **Other sessions' statements.** `pg_stat_get_activity(NULL)` returns every session's query
  text, as `pg_stat_activity` does; so do `pg_stat_get_backend_activity` and
  `pg_stat_statements()`. A statement that reads one reads `pg_catalog.pg_stat_activity`,
  the relation policies name for other sessions' statements.
- **Sample values of columns.** The planner's statistics (`pg_stats`' `most_common_vals` and
  `histogram_bounds`, the extended statistics, `pg_statistic` itself) hold values of the
  columns they describe: a statement that reads them reads every column of every relation
  (`StatementFacts.reads_statistics`), in as many rows as the statistics hold.
"""

from __future__ import annotations

from collections.abc import Iterable

ACTIVITY_RELATION = "pg_catalog.pg_stat_activity"

STATEMENT_FUNCTIONS = frozenset(
    {"pg_stat_get_activity", "pg_stat_get_backend_activity", "pg_stat_statements"}
)

STATISTICS_RELATIONS = frozenset(
    {
        "pg_catalog.pg_stats",
        "pg_catalog.pg_stats_ext",
        "pg_catalog.pg_stats_ext_exprs",
        "pg_catalog.pg_statistic",
        "pg_catalog.pg_statistic_ext",
        "pg_catalog.pg_statistic_ext_data",
    }
)
STATISTICS_FUNCTIONS = frozenset({"pg_mcv_list_items"})


def _bare(function: str) -> str:
    return function.rpartition(".")[2]


def reads_other_sessions_statements(functions: Iterable[str]) -> bool:
    return any(_bare(function) in STATEMENT_FUNCTIONS for function in functions)


def reads_statistics(relations: Iterable[str], functions: Iterable[str]) -> bool:
    return any(relation in STATISTICS_RELATIONS for relation in relations) or any(
        _bare(function) in STATISTICS_FUNCTIONS for function in functions
    )
