"""Policy, the first stage: every statement is decided before it reaches the database.

The decision point (the in-process engine, or the policy Lambda) decides the statement under
each search-path candidate; the most restrictive decision wins, and it goes on the
statement, whole (effect, rules, deciding rule, policy version, masks, approval), for the
stages after this one. Allowed statements go on. Denied ones are refused with the rule's
message. Masked and approval-requiring ones go on to the masking and approval stages when
the session has them, and are refused otherwise: a statement must never run unmasked or
unapproved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Protocol

from custos.policy.engine import Decision, Effect
from custos.protocol import sqlstates
from custos.session.hints import StarHints
from custos.session.reached import CATALOG_UNREADABLE, FunctionReach, ViewWorkers
from custos.session.refusal import Refusal
from custos.session.resolution import runs_another
from custos.session.stages import FORWARD, Plan, Refuse, Settled, Stage, WaitFor
from custos.session.statement import Candidates, Statement, uses_parameters
from custos.sql.facts import Analysis

_RESTRICTIVENESS = {
    Effect.ALLOW: 0,
    Effect.MASK: 1,
    Effect.REQUIRE_APPROVAL: 2,
    Effect.DENY: 3,
}

UNREACHABLE = Refusal(
    sqlstates.INSUFFICIENT_PRIVILEGE,
    "the gateway could not reach its policy decision point, so it refuses the statement",
    "try again shortly",
)


class DecisionPoint(Protocol):
    """Where decisions come from: the in-process engine or the policy Lambda."""

    # Whether it reads a statement's own text (the Lambda sends it). One that does not
    # decides a text by the cached analysis of another text of its shape, which decides alike.
    reads_statement_text: bool

    def decide(
        self,
        role: str,
        analysis: Analysis,
        parameters: tuple[str | None, ...],
        search_path: tuple[str, ...],
    ) -> Decision | Awaitable[Decision]: ...


class PolicyStage(Stage):
    def __init__(
        self,
        role: str,
        decision_point: DecisionPoint,
        hints: StarHints | None = None,
        reach: FunctionReach | None = None,
        workers: ViewWorkers | None = None,
        *,
        masks_results: bool = False,
        approves: bool = False,
    ) -> None:
        self._role = role
        self._decision_point = decision_point
        self._hints = hints
        self._reach = reach
        # Where statements are read through their views when that would hold the loop.
        self._workers = workers
        # A masking stage follows (custos/masking/stage.py): masked statements run.
        self._masks_results = masks_results
        # An approval stage follows (custos/approvals/stage.py): approved statements run.
        self._approves = approves

    def plan(self, statement: Statement) -> Plan:
        reach = self._reach
        if reach is None:
            return self._decide(statement, statement.candidates)
        applied = reach.applied(statement.candidates)
        if applied is not None:
            return self._decide(statement, applied)
        # Tasks, not coroutines: a wait is cancelled when its session closes. What this
        # load finds absent holds for this statement (FunctionReach.applied).
        started = reach.now()
        loading = asyncio.ensure_future(
            reach.load(statement.candidates, self._workers, absent_since=started)
        )
        return WaitFor(loading, lambda settled: self._reached(statement, settled, started))

    def _reached(self, statement: Statement, settled: Settled, started: float) -> Plan:
        assert self._reach is not None
        reach = self._reach
        applied = (
            None
            if settled.error is not None
            else reach.applied(statement.candidates, absent_since=started)
        )
        if applied is None:
            return Refuse(CATALOG_UNREADABLE)
        return self._decide(statement, applied)

    def _decide(self, statement: Statement, candidates: Candidates) -> Plan:
        """Decides the statement as its candidates read (with what they reach)."""
        parameters = statement.parameters
        decide = self._decision_point.decide
        statement.decided = candidates[0][0] if candidates else None
        if len(candidates) == 1:
            analysis, path = candidates[0]
            outcome = decide(self._role, analysis, parameters, path)
            if isinstance(outcome, Decision):
                if outcome.effect is Effect.ALLOW and not analysis.session_effects:
                    statement.decision = outcome
                    return FORWARD  # the common case, kept short
                return self._planned(statement, outcome)
            return WaitFor(outcome, lambda settled: self._resumed(statement, settled))
        outcomes = [decide(self._role, a, parameters, path) for a, path in candidates]
        decided = [outcome for outcome in outcomes if isinstance(outcome, Decision)]
        if len(decided) == len(outcomes):
            return self._planned(statement, most_restrictive(decided))
        # gather: cancelling the wait (the session closed) cancels every decision under way.
        pending = asyncio.gather(*(_awaited(outcome) for outcome in outcomes))
        return WaitFor(pending, lambda settled: self._resumed(statement, settled))

    def refuse_text(self, candidates: Candidates) -> Refusal | None:
        """Refuses at Parse what policy denies whatever the Bind values: nothing of it then
        reaches the database. A text whose decision may depend on them (a LIMIT $1, a
        pattern $1), one that runs another statement (EXECUTE, FETCH: decided on what they
        run), and one the decision point cannot decide at once wait for their Execute."""
        if uses_parameters(candidates) or runs_another(candidates):
            return None
        if self._reach is not None:
            # Until the catalog is read, decided on the text alone: what the relations reach
            # can only add reasons to refuse, so a text refused without it is refused with it
            # (one allowed is decided again at its Execute, with it).
            candidates = self._reach.applied(candidates) or candidates
        decisions: list[Decision] = []
        for analysis, path in candidates:
            outcome = self._decision_point.decide(self._role, analysis, (), path)
            if not isinstance(outcome, Decision):
                _discard(outcome)
                return None
            decisions.append(outcome)
        decision = most_restrictive(decisions)
        # A text that needs approval passes its Parse, as a masked one does: the approval
        # is asked for at its Execute, with its parameters.
        return None if self._runs(decision) else refusal_for(decision)

    def _resumed(self, statement: Statement, settled: Settled) -> Plan:
        value = settled.value
        if isinstance(value, Decision):
            return self._planned(statement, value)
        if settled.error is not None or not isinstance(value, list) or not value:
            return Refuse(UNREACHABLE)
        return self._planned(statement, most_restrictive(value))

    def _runs(self, decision: Decision) -> bool:
        """Whether a statement so decided runs (masked, by the stage after this one)."""
        effect = decision.effect
        return (
            effect is Effect.ALLOW
            or (effect is Effect.MASK and self._masks_results)
            or (effect is Effect.REQUIRE_APPROVAL and self._approves)
        )

    def _planned(self, statement: Statement, decision: Decision) -> Plan:
        statement.decision = decision
        if self._runs(decision):
            if self._hints is not None:
                self._hints.after_allowed(statement.analysis)
            return FORWARD
        refusal = refusal_for(decision)
        if self._hints is None:
            return Refuse(refusal)
        hinted = self._hints.on_refusal(refusal, _analyses(statement.candidates))
        if isinstance(hinted, Refusal):
            return Refuse(hinted)
        return WaitFor(hinted, lambda settled: Refuse(_hinted_or(settled, refusal)))


def most_restrictive(decisions: Sequence[Decision]) -> Decision:
    # Among equals, a decision an explicit rule made speaks better to the agent than a
    # default deny about a schema that may not even hold the table.
    return max(
        decisions,
        key=lambda decision: (
            _RESTRICTIVENESS[decision.effect],
            decision.deciding_rule is not None,
        ),
    )


def refusal_for(decision: Decision) -> Refusal:
    """The client's error for a decision that does not let the statement run (yet)."""
    if decision.effect is Effect.MASK:
        # Masking rewrites result values; until the session can do that, a statement
        # whose results policy wants masked must not run unmasked.
        return Refusal(
            sqlstates.INSUFFICIENT_PRIVILEGE,
            decision.message
            or "policy requires personal data in these results to be masked, and this gateway"
            " cannot mask results yet",
            _rule_hint(decision),
        )
    if decision.effect is Effect.REQUIRE_APPROVAL:
        # Without an approvals service nobody can approve it: it must not run unapproved.
        return Refusal(
            sqlstates.INSUFFICIENT_PRIVILEGE,
            f"{decision.message}; this gateway has no approvals service configured, so it"
            " cannot ask for one",
            "ask the gateway's operator to configure approvals, or leave the change to a person",
        )
    return Refusal(sqlstates.INSUFFICIENT_PRIVILEGE, decision.message, _rule_hint(decision))


def _rule_hint(decision: Decision) -> str:
    rule = f"rule {decision.deciding_rule}" if decision.deciding_rule else "the default rule"
    return f"decided by {rule} of policy version {decision.policy_version[:12]}"


def _analyses(candidates: Candidates) -> list[Analysis]:
    return [analysis for analysis, _ in candidates]


def _hinted_or(settled: Settled, refusal: Refusal) -> Refusal:
    return settled.value if isinstance(settled.value, Refusal) else refusal


def _discard(outcome: Awaitable[Decision]) -> None:
    """An awaitable decision nobody will wait for: closed (a coroutine) or left to finish."""
    close = getattr(outcome, "close", None)
    if close is not None:
        close()


async def _awaited(outcome: Decision | Awaitable[Decision]) -> Decision:
    return outcome if isinstance(outcome, Decision) else await outcome
