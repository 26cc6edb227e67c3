"""The statement gate alone (sans-IO): what it follows in the session, and what it decides."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from custos.policy.engine import Decision
from custos.policy.source import FilePolicySource
from custos.session.decision import InProcessDecisionPoint
from custos.session.gate import StatementGate
from custos.session.refusal import Refusal
from custos.sql.cache import AnalysisCache
from custos.sql.facts import Analysis

DEMO_POLICY = Path(__file__).resolve().parent.parent / "custos" / "demo" / "policy.yaml"


class RecordingDecisionPoint:
    """The real in-process decision point, noting which statements it was asked about."""

    reads_statement_text = True  # so that it is asked with each statement's own text

    def __init__(self) -> None:
        self._inner = InProcessDecisionPoint(FilePolicySource(DEMO_POLICY))
        self.asked: list[tuple[str, ...]] = []

    def decide(
        self,
        role: str,
        analysis: Analysis,
        parameters: tuple[str | None, ...],
        search_path: tuple[str, ...],
    ) -> Decision:
        self.asked.append(analysis.texts)
        return self._inner.decide(role, analysis, parameters, search_path)


def gate(role: str = "agent", path: tuple[str, ...] = ("crm", "public")) -> StatementGate:
    return StatementGate(role, RecordingDecisionPoint(), AnalysisCache(), path)


def cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def parse_body(name: str, sql: str) -> bytes:
    return cstring(name) + cstring(sql) + struct.pack("!h", 0)


def bind_body(portal: str, statement: str, values: list[bytes]) -> bytes:
    body = cstring(portal) + cstring(statement) + struct.pack("!h", 0)
    body += struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", len(value)) + value
    return body + struct.pack("!h", 0)


def execute_body(portal: str) -> bytes:
    return cstring(portal) + struct.pack("!i", 0)


def test_unqualified_names_are_checked_against_every_schema_on_the_path():
    subject = gate(path=("public", "crm"))
    refusal = subject.on_query("SELECT email FROM customers", uncertain=False)
    assert isinstance(refusal, Refusal)
    assert "agents-no-bulk-export" in refusal.message


def test_a_search_path_set_inside_a_transaction_keeps_the_old_one_as_a_candidate():
    subject = gate(path=("crm",))
    assert subject.on_query("SET search_path TO public", uncertain=True) is None
    assert subject.candidate_schemas == ("crm", "public")
    assert subject.on_query("SET search_path TO public", uncertain=False) is None
    assert subject.candidate_schemas == ("public",)


def test_execute_is_decided_on_what_prepare_prepared():
    subject = gate()
    assert subject.on_query("PREPARE page AS SELECT id FROM crm.orders LIMIT 5", False) is None
    assert subject.on_query("EXECUTE page", False) is None
    refusal = subject.on_query("EXECUTE never_prepared", False)
    assert isinstance(refusal, Refusal)
    assert refusal.sqlstate == "26000"


def test_execute_with_new_arguments_is_decided_on_what_prepare_prepared():
    # The second EXECUTE shares the first one's shape; its decision must still be made on
    # the prepared statement, not on the bare EXECUTE the shape was first seen as.
    subject = gate()
    assert subject.on_query("PREPARE q(int) AS SELECT id FROM crm.orders LIMIT $1", False) is None
    assert subject.on_query("EXECUTE q(1)", False) is None
    assert subject.on_query("EXECUTE q(2)", False) is None


def test_the_in_process_shortcut_decides_as_the_full_path():
    # The in-process decision point does not read statement texts, so the gate decides a
    # known shape by its cached analysis; refusals and statements the session must follow
    # still take the full path.
    subject = StatementGate(
        "agent", InProcessDecisionPoint(FilePolicySource(DEMO_POLICY)), AnalysisCache(), ("crm",)
    )
    for order in (1, 2, 3):
        assert subject.on_query(f"SELECT id FROM orders WHERE id = {order}", False) is None
    for customer in (1, 2):
        refusal = subject.on_query(f"SELECT email FROM customers WHERE id = {customer}", False)
        assert isinstance(refusal, Refusal)
        assert "agents-no-bulk-export" in refusal.message
    assert subject.on_query("SET search_path TO 'public'", False) is None
    assert subject.candidate_schemas == ("public",)
    assert subject.on_query("SET search_path TO 'crm', 'public'", False) is None
    assert subject.candidate_schemas == ("crm", "public")


def test_bind_values_decide_at_execute():
    subject = gate()
    subject.on_parse(parse_body("", "SELECT id FROM crm.customers LIMIT $1"))
    subject.on_bind(bind_body("", "", [b"10"]))
    assert subject.on_execute(execute_body(""), False) is None
    subject.on_bind(bind_body("", "", [b"10000"]))
    refusal = subject.on_execute(execute_body(""), False)
    assert isinstance(refusal, Refusal)
    assert "agents-no-bulk-export" in refusal.message


def test_a_prepared_statement_bound_through_the_protocol_is_decided():
    point = RecordingDecisionPoint()
    subject = StatementGate("agent", point, AnalysisCache(), ("crm",))
    assert subject.on_query("PREPARE page AS SELECT id FROM crm.orders LIMIT 5", False) is None
    point.asked.clear()
    subject.on_bind(bind_body("p", "page", []))
    assert subject.on_execute(execute_body("p"), False) is None
    assert point.asked == [("PREPARE page AS SELECT id FROM crm.orders LIMIT 5",)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_read_file('/etc/passwd')",
        "COPY crm.orders TO PROGRAM 'cat'",
        "SET ROLE postgres",
        "WITH gone AS (DELETE FROM crm.orders RETURNING id) SELECT count(*) FROM gone",
        "EXPLAIN ANALYZE DELETE FROM crm.orders",
        "SELECT 1; DROP TABLE crm.orders",
    ],
)
def test_evasions_are_refused(sql):
    assert isinstance(gate().on_query(sql, False), Refusal)
