"""The demo policy against a corpus of statements, evasion attempts included.

Every entry of tests/policy_corpus.yaml is analysed and decided; all mismatches are
reported at once, so one run shows everything a change to the policy or the analysis moved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from custos.policy import DecisionRequest, Effect, PolicyEngine, load_policy
from custos.sql.analysis import analyze

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).with_name("policy_corpus.yaml")
DEMO_POLICY = ROOT / "custos" / "demo" / "policy.yaml"
ENTRY_KEYS = {"role", "sql", "expect", "rule", "search_path", "params"}


def corpus() -> list[dict[str, Any]]:
    entries = yaml.safe_load(CORPUS.read_text())
    assert isinstance(entries, list)
    return entries


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy(DEMO_POLICY))


def test_corpus_is_well_formed(engine: PolicyEngine) -> None:
    entries = corpus()
    assert len(entries) >= 200
    rule_ids = {rule.id for rule in engine.document.rules}
    for number, entry in enumerate(entries):
        assert set(entry) <= ENTRY_KEYS, (number, entry)
        assert {"role", "sql", "expect", "rule"} <= set(entry), (number, entry)
        assert entry["expect"] in {effect.value for effect in Effect}, (number, entry)
        assert entry["rule"] is None or entry["rule"] in rule_ids, (number, entry)
    pairs = [
        (entry["role"], entry["sql"], str(entry.get("params")), str(entry.get("search_path")))
        for entry in entries
    ]
    assert len(pairs) == len(set(pairs)), "an entry appears twice"


def test_every_rule_of_the_demo_policy_decides_some_entry(engine: PolicyEngine) -> None:
    deciding = {entry["rule"] for entry in corpus()}
    unused = [rule.id for rule in engine.document.rules if rule.id not in deciding]
    # dba-other only covers kind other for dba; dba-everything, earlier, decides those.
    assert unused == ["dba-other"]


def test_demo_policy_decides_the_corpus_as_expected(engine: PolicyEngine) -> None:
    mismatches = []
    for number, entry in enumerate(corpus()):
        analysis = analyze(entry["sql"], tuple(entry.get("search_path", ["public"])))
        params = tuple(None if p is None else str(p) for p in entry.get("params", []))
        decision = engine.decide(DecisionRequest(entry["role"], analysis, params))
        if (decision.effect.value, decision.deciding_rule) != (entry["expect"], entry["rule"]):
            mismatches.append(
                f"#{number} {entry['role']}: {entry['sql']!r}\n"
                f"    expected {entry['expect']} ({entry['rule']}), "
                f"got {decision.effect} ({decision.deciding_rule}): {decision.message}"
            )
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches)
