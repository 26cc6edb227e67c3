"""The in-process decision point: the policy engine, called directly."""

from __future__ import annotations

from custos.policy.engine import Decision, DecisionRequest
from custos.policy.source import PolicySource
from custos.sql.facts import Analysis


class InProcessDecisionPoint:
    """Decides with whatever policy version the source holds right now."""

    def __init__(self, source: PolicySource) -> None:
        self._source = source

    def decide(
        self,
        role: str,
        analysis: Analysis,
        parameters: tuple[str | None, ...],
        search_path: tuple[str, ...],
    ) -> Decision:
        return self._source.current().decide(DecisionRequest(role, analysis, parameters))
