"""The in-process decision point: the policy engine, called directly, with a memo.

A session sends the same few statements over and over (an ORM's queries, a
benchmark's one SELECT). The analysis cache hands back the same Analysis
object for the same text, so a decision can be remembered by that object's
identity, the role and the parameters, for as long as the policy version
stays the same and no rule depends on the time of day.
"""

from __future__ import annotations

from collections import OrderedDict

from custos.policy.engine import Decision, DecisionRequest, PolicyEngine
from custos.policy.source import PolicySource
from custos.sql.facts import HEAVY_BYTES, Analysis, analysis_bytes

_MemoKey = tuple[str, int, tuple[str | None, ...]]
# Parameters are part of the key; large values (a document being inserted) are not worth it.
_MEMO_PARAMETER_BYTES = 4096


class InProcessDecisionPoint:
    reads_statement_text = False

    def __init__(self, source: PolicySource, memo_entries: int = 10_000) -> None:
        self._source = source
        self._memo_entries = memo_entries
        self._memo: OrderedDict[_MemoKey, tuple[Analysis, Decision]] = OrderedDict()
        self._memo_engine: PolicyEngine | None = None

    def decide(
        self,
        role: str,
        analysis: Analysis,
        parameters: tuple[str | None, ...],
        search_path: tuple[str, ...],
    ) -> Decision:
        engine = self._source.current()
        # Texts that differ only in literals the analysis did not read decide alike.
        analysis = analysis.canonical or analysis
        if (
            engine.time_dependent
            or (parameters and _too_large(parameters))
            or analysis_bytes(analysis) > HEAVY_BYTES
        ):
            return engine.decide(DecisionRequest(role, analysis, parameters))
        if engine is not self._memo_engine:
            self._memo.clear()
            self._memo_engine = engine
        key = (role, id(analysis), parameters)
        remembered = self._memo.get(key)
        # The entry holds the analysis, so its id cannot be reused while the entry lives.
        if remembered is not None and remembered[0] is analysis:
            return remembered[1]
        decision = engine.decide(DecisionRequest(role, analysis, parameters))
        self._memo[key] = (analysis, decision)
        if len(self._memo) > self._memo_entries:
            self._memo.popitem(last=False)
        return decision


def _too_large(parameters: tuple[str | None, ...]) -> bool:
    return sum(len(value) for value in parameters if value is not None) > _MEMO_PARAMETER_BYTES
