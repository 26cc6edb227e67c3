"""The statement gate: what one session knows, and the verdict on each statement.

It follows the session's state the way PostgreSQL will resolve names:
the search path (changed by SET, reverted by ROLLBACK), statements prepared
by PREPARE and by the extended protocol's Parse, and portals bound to them.
Analysis happens when a statement arrives (Query, Parse, PREPARE); the
decision happens when it would run (Query, Execute, EXECUTE), with the Bind
parameters at hand.

Unqualified names are resolved against every schema the session's path may
hold, because the gateway does not know which schema holds which table: a
statement is treated as reading each candidate, and the most restrictive
decision wins. That never lets a statement through that PostgreSQL would
resolve to a protected table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

from custos.policy.engine import Decision, Effect
from custos.protocol.frontend import Close, bind_message, leading_names, parse_message
from custos.session.hints import StarHints
from custos.session.refusal import Refusal
from custos.sql.cache import AnalysisCache
from custos.sql.facts import Analysis, ParameterRef, StatementFacts
from custos.upstream.columns import ColumnCatalog

Verdict = Refusal | None
"""None lets the statement run; a Refusal is sent instead of it."""

_RESTRICTIVENESS = {
    Effect.ALLOW: 0,
    Effect.MASK: 1,
    Effect.REQUIRE_APPROVAL: 2,
    Effect.DENY: 3,
}


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


Candidates = tuple[tuple[Analysis, tuple[str, ...]], ...]
"""A statement analysed once per schema its unqualified names may resolve to."""

NO_PARAMETERS: tuple[str | None, ...] = ()

# Clients send the same Parse again and again; its analysis is kept by the message bytes.
_PARSE_MEMO_ENTRIES = 2048


@dataclass(frozen=True, slots=True)
class _Prepared:
    candidates: Candidates
    parameter_types: tuple[int, ...]
    # Policy reads Bind values only for LIMIT $n and LIKE $n; otherwise they are not decoded.
    uses_parameters: bool


_Portal = tuple[_Prepared, bytes]
"""A bound portal: its statement and the Bind body (a tuple: one is made per Bind)."""


class StatementGate:
    def __init__(
        self,
        role: str,
        decision_point: DecisionPoint,
        analyses: AnalysisCache,
        search_path: Sequence[str],
        columns: ColumnCatalog | None = None,
    ) -> None:
        self._role = role
        self._hints = StarHints(columns) if columns is not None else None
        self._decision_point = decision_point
        self._analyses = analyses
        self._default_path = tuple(search_path)
        self._schemas: tuple[str, ...] = _schemas_of(search_path)
        self._prepared: dict[str, Candidates] = {}  # SQL-level PREPARE
        self._statements: dict[str, _Prepared] = {}  # protocol-level Parse
        self._portals: dict[str, _Portal] = {}
        self._parse_memo: dict[tuple[bytes, tuple[str, ...]], tuple[str, _Prepared]] = {}

    @property
    def candidate_schemas(self) -> tuple[str, ...]:
        return self._schemas

    def on_query(self, sql: str, uncertain: bool) -> Verdict | Awaitable[Verdict]:
        return self._decide_and_follow(self._analyse(sql), NO_PARAMETERS, uncertain)

    def on_parse(self, body: bytes) -> None:
        """A Parse message's body: the statement is analysed now, decided at Execute."""
        key = (body, self._schemas)
        remembered = self._parse_memo.get(key)
        if remembered is None:
            message = parse_message(body)
            candidates = self._analyse(message.query)
            remembered = (
                message.statement,
                _Prepared(candidates, message.parameter_types, _uses_parameters(candidates)),
            )
            if len(self._parse_memo) >= _PARSE_MEMO_ENTRIES:
                self._parse_memo.clear()
            self._parse_memo[key] = remembered
        self._statements[remembered[0]] = remembered[1]

    def on_bind(self, body: bytes) -> None:
        portal, statement = leading_names(body, 2, "Bind")
        prepared = self._statements.get(statement)
        if prepared is None and statement in self._prepared:
            # A statement from SQL-level PREPARE can be bound through the protocol too.
            candidates = self._prepared[statement]
            prepared = _Prepared(candidates, (), _uses_parameters(candidates))
        if prepared is not None:
            self._portals[portal] = (prepared, body)

    def on_execute(self, body: bytes, uncertain: bool) -> Verdict | Awaitable[Verdict]:
        (portal_name,) = leading_names(body, 1, "Execute")
        portal = self._portals.get(portal_name)
        if portal is None:
            # PostgreSQL refuses an unknown portal itself; nothing runs.
            return None
        prepared, bind_body = portal
        parameters = NO_PARAMETERS
        if prepared.uses_parameters:
            parameters = bind_message(bind_body).texts(prepared.parameter_types)
        return self._decide_and_follow(prepared.candidates, parameters, uncertain)

    def on_close(self, message: Close) -> None:
        if message.kind == "S":
            self._statements.pop(message.name, None)
        else:
            self._portals.pop(message.name, None)

    def _analyse(self, sql: str) -> Candidates:
        if len(self._schemas) == 1:
            return ((self._analysis(sql, self._schemas), self._schemas),)
        return tuple((self._analysis(sql, (schema,)), (schema,)) for schema in self._schemas)

    def _analysis(self, sql: str, path: tuple[str, ...]) -> Analysis:
        # A decision point that reads no statement text decides a text by the analysis of
        # another text of its shape anyway; then none is built for this one. Its texts are
        # that other text's, which nothing downstream of such a decision point reads.
        if not self._decision_point.reads_statement_text:
            alike = self._analyses.decided_alike(sql, path)
            if alike is not None:
                return alike
        return self._analyses.analyze(sql, path)

    def _decide_and_follow(
        self, candidates: Candidates, parameters: tuple[str | None, ...], uncertain: bool
    ) -> Verdict | Awaitable[Verdict]:
        """The verdict; once a statement is let through, the session's state follows it.

        `uncertain`: the statement may yet be rolled back (it runs inside a
        transaction, or behind pipelined statements), so a search path it sets
        is added to the candidates rather than replacing them.
        """
        if len(candidates) == 1 and not candidates[0][0].session_effects:
            # The common case, kept short: one schema to try, nothing for the session to follow.
            analysis, path = candidates[0]
            outcome = self._decision_point.decide(self._role, analysis, parameters, path)
            if isinstance(outcome, Decision):
                if outcome.effect is Effect.ALLOW:
                    return None
                verdict: Verdict | Awaitable[Verdict] = _verdict(outcome)
            else:
                verdict = asyncio.ensure_future(_await_verdict([asyncio.ensure_future(outcome)]))
        else:
            verdict = self._decide(candidates, parameters)
        if verdict is None:
            self._follow(candidates, uncertain)
            return None
        if isinstance(verdict, Refusal):
            return self._refused(verdict, candidates)
        # Tasks, not bare coroutines: a session that closes first cancels them cleanly.
        return asyncio.ensure_future(self._follow_when_allowed(verdict, candidates, uncertain))

    async def _follow_when_allowed(
        self, pending: Awaitable[Verdict], candidates: Candidates, uncertain: bool
    ) -> Verdict:
        verdict = await pending
        if verdict is None:
            self._follow(candidates, uncertain)
            return None
        hinted = self._refused(verdict, candidates)
        return hinted if isinstance(hinted, Refusal) else await hinted

    def _refused(self, refusal: Refusal, candidates: Candidates) -> Refusal | Awaitable[Verdict]:
        """The refusal, its hint naming the columns behind a `*` it read (see hints.py)."""
        if self._hints is None:
            return refusal
        analyses = (self._resolve_execute(analysis) for analysis, _ in candidates)
        return self._hints.on_refusal(refusal, [a for a in analyses if isinstance(a, Analysis)])

    def _decide(
        self, candidates: Candidates, parameters: tuple[str | None, ...]
    ) -> Verdict | Awaitable[Verdict]:
        outcomes: list[Decision | Awaitable[Decision]] = []
        for analysis, path in candidates:
            resolved = self._resolve_execute(analysis)
            if isinstance(resolved, str):
                return Refusal(
                    "26000",
                    f'prepared statement "{resolved}" was not prepared through this gateway',
                    "PREPARE it in this session first",
                )
            outcomes.append(self._decision_point.decide(self._role, resolved, parameters, path))
        decisions = [outcome for outcome in outcomes if isinstance(outcome, Decision)]
        if len(decisions) == len(outcomes):
            return _verdict(_most_restrictive(decisions))
        pending = [
            outcome if isinstance(outcome, Decision) else asyncio.ensure_future(outcome)
            for outcome in outcomes
        ]
        return asyncio.ensure_future(_await_verdict(pending))

    def _resolve_execute(self, analysis: Analysis) -> Analysis | str:
        """Replaces `EXECUTE name` with the statement PREPARE gave that name."""
        if not any(statement.executes for statement in analysis.statements):
            return analysis
        statements: list[StatementFacts] = []
        texts: list[str] = []
        for statement, text in zip(analysis.statements, analysis.texts, strict=True):
            if statement.executes is None:
                statements.append(statement)
                texts.append(text)
                continue
            prepared = self._prepared.get(statement.executes)
            if prepared is None:
                return statement.executes
            for candidate, _ in prepared:
                statements.extend(candidate.statements)
                texts.extend(candidate.texts)
        # A new analysis, not a copy of a shared one: it must not be decided as its canonical.
        return Analysis(tuple(statements), tuple(texts))

    def _follow(self, candidates: Candidates, uncertain: bool) -> None:
        first = candidates[0][0]
        if self._hints is not None:
            self._hints.after_allowed(first)
        uncertain = uncertain or first.multiple_statements
        for index, statement in enumerate(first.statements):
            if statement.prepares is not None:
                self._prepared[statement.prepares] = tuple(
                    (Analysis((analysis.statements[index],), (analysis.texts[index],)), path)
                    for analysis, path in candidates
                    if len(analysis.statements) > index
                )
            if statement.deallocates == "*":
                self._prepared.clear()
            elif statement.deallocates is not None:
                self._prepared.pop(statement.deallocates, None)
            if statement.new_search_path is not None:
                new_schemas = _schemas_of(statement.new_search_path or self._default_path)
                self._schemas = (
                    tuple(dict.fromkeys(self._schemas + new_schemas)) if uncertain else new_schemas
                )


def _schemas_of(search_path: Sequence[str]) -> tuple[str, ...]:
    schemas = tuple(dict.fromkeys(schema for schema in search_path if schema))
    return schemas or ("public",)


def _most_restrictive(decisions: Sequence[Decision]) -> Decision:
    # Among equals, a decision an explicit rule made speaks better to the agent than a
    # default deny about a schema that may not even hold the table.
    return max(
        decisions,
        key=lambda decision: (
            _RESTRICTIVENESS[decision.effect],
            decision.deciding_rule is not None,
        ),
    )


def _verdict(decision: Decision) -> Verdict:
    if decision.effect is Effect.ALLOW:
        return None
    if decision.effect is Effect.DENY:
        return Refusal("42501", decision.message, _rule_hint(decision))
    if decision.effect is Effect.REQUIRE_APPROVAL:
        return Refusal("42501", decision.message, _rule_hint(decision))
    # Masking rewrites result values; until the session can do that, a statement
    # whose results policy wants masked must not run unmasked.
    return Refusal(
        "42501",
        decision.message
        or "policy requires personal data in these results to be masked, and this gateway"
        " cannot mask results yet",
        _rule_hint(decision),
    )


def _rule_hint(decision: Decision) -> str:
    rule = f"rule {decision.deciding_rule}" if decision.deciding_rule else "the default rule"
    return f"decided by {rule} of policy version {decision.policy_version[:12]}"


async def _await_verdict(outcomes: Sequence[Decision | Awaitable[Decision]]) -> Verdict:
    decisions = [
        outcome if isinstance(outcome, Decision) else await outcome for outcome in outcomes
    ]
    return _verdict(_most_restrictive(decisions))


def _uses_parameters(candidates: Candidates) -> bool:
    """Whether any fact policy reads holds a parameter: a LIMIT $n or a pattern $n."""
    for analysis, _ in candidates:
        for statement in analysis.statements:
            if isinstance(statement.limit, ParameterRef):
                return True
            if any(isinstance(match.pattern, ParameterRef) for match in statement.pattern_matches):
                return True
    return False
