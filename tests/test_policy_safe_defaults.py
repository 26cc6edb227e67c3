"""Safe defaults: functions whose effects reach beyond a statement's tables are refused
unless a rule allows them by name, even in a policy that names none of them.

Before, a policy with one rule allowing `select` on crm.orders let `SELECT (-1).lo_creat`
and `SELECT pg_terminate_backend(pid)` through: a SELECT that names no table was covered by
any rule allowing select.
"""

from __future__ import annotations

import pytest
import yaml

from custos.policy.engine import DecisionRequest, Effect, PolicyEngine
from custos.policy.models import PolicyDocument
from custos.sql.analysis import analyze

ORDERS_ONLY = """
rules:
  - id: read-orders
    match: {kinds: [select], relations: [crm.orders]}
    effect: allow
"""
NAMED = (
    ORDERS_ONLY
    + """
  - id: dba-may-create-large-objects
    match: {roles: [dba], functions: [lo_creat]}
    effect: allow
"""
)


def decide(policy: str, sql: str, role: str = "agent") -> tuple[Effect, str | None, str]:
    engine = PolicyEngine(PolicyDocument.model_validate(yaml.safe_load(policy)))
    decision = engine.decide(DecisionRequest(role, analyze(sql, ("public",)), ()))
    return decision.effect, decision.deciding_rule, decision.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT (-1).lo_creat",
        "SELECT lo_creat(-1)",
        "SELECT lo_from_bytea(0, 'x')",
        "SELECT loread(0, 10)",
        "SELECT (42).pg_terminate_backend",
        "SELECT pg_cancel_backend(42)",
        "SELECT pg_reload_conf()",
        "SELECT pg_ls_dir('.')",
        "SELECT pg_switch_wal()",
        "SELECT pg_create_logical_replication_slot('s', 'test_decoding')",
        "SELECT pg_stat_reset()",
        "SELECT id FROM crm.orders WHERE id = lo_creat(-1)",
    ],
)
def test_a_function_with_effects_is_refused_though_no_rule_names_it(sql: str) -> None:
    effect, rule, message = decide(ORDERS_ONLY, sql)
    assert (effect, rule) == (Effect.DENY, None)
    assert "whose effects reach beyond the statement's own tables" in message


def test_dblink_is_refused_as_dynamic_and_as_a_function_with_effects() -> None:
    assert decide(ORDERS_ONLY, "SELECT public.dblink('dbname=x', 'SELECT 1')")[0] is Effect.DENY
    assert decide(ORDERS_ONLY, "SELECT dblink_connect('dbname=x')")[0] is Effect.DENY


def test_a_rule_that_names_it_allows_it() -> None:
    assert decide(NAMED, "SELECT lo_creat(-1)", role="dba")[0] is Effect.ALLOW
    # Another role, or another function, is still refused.
    assert decide(NAMED, "SELECT lo_creat(-1)")[0] is Effect.DENY
    assert decide(NAMED, "SELECT lo_unlink(1)", role="dba")[0] is Effect.DENY


def test_ordinary_calls_are_decided_as_before() -> None:
    assert decide(ORDERS_ONLY, "SELECT id, lower(status) FROM crm.orders")[:2] == (
        Effect.ALLOW,
        "read-orders",
    )
    assert decide(ORDERS_ONLY, "SELECT pg_sleep(0)")[0] is Effect.ALLOW
