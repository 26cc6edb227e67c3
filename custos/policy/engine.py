"""The decision engine: allow, deny, require approval or mask, and why.

How a query (one query string, one or more statements) is decided:

1. A query that does not parse is denied; no rule is evaluated. An empty query is allowed.
2. Each statement is checked against every rule for the role; a rule *fires* when all of
   its conditions hold for some statement. ``kinds``, ``functions``, ``reads`` and
   ``writes`` hold when any of the statement's kinds, functions or categories is listed.
   ``relations`` holds when any relation the statement reads or writes matches; an allow
   rule's ``relations`` also holds for a statement that touches no relation at all
   (``SELECT 1``, ``SET``, ``BEGIN``), so allowing reads of ``crm.*`` does not forbid those.
   ``statement_types`` names parse nodes (``VariableShowStmt``) to single out statements
   within a kind. Risks hold when present; ``wildcard_pattern`` and ``limit_above`` look
   at the Bind values (``limit_above`` concerns statements that return rows, so not
   EXPLAIN or INSERT ... SELECT); ``multiple_statements`` and ``time_window`` are about the whole
   query and the time it runs; ``copies_personal_data`` holds when the statement stores
   personal data where masking cannot follow it (custos/policy/copies.py).
3. Each statement gets an effect:
   - deny when a deny rule fires on it;
   - otherwise deny by default unless it is *covered*: each of its kinds is listed by, and
     each relation it touches matches, some allow, mask or require_approval rule that
     fired on it (a rule without ``kinds`` covers every kind, ``other`` included; a rule
     without ``relations`` covers every relation). Dynamic code
     (DO blocks, dynamic SQL) is also denied unless an allow or require_approval rule
     with ``risks: {dynamic: true}`` fired on it;
   - otherwise require_approval if such a rule fired, else mask if a mask rule fired,
     else allow.
4. The query's effect is the strongest of its statements' effects:
   deny > require_approval > mask > allow.
   The deciding rule is, among the rules that produced that effect, the first in document
   order; a deny by an explicit rule is preferred to a default deny, whose deciding rule
   is None. The approval asked for is the deciding rule's.
5. Every mask rule that fired is in ``Decision.masks``: masks apply whenever the query
   runs, including after an approval.

Messages and facts name kinds, relations, columns, categories, functions and the policy's
own thresholds; never a literal or parameter value from the SQL, which can be personal data.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from custos.identity.durations import parse_duration
from custos.identity.errors import shown
from custos.policy.catalog import FREE_TEXT, PersonalDataCatalog
from custos.policy.conditions import (
    CompiledTimeWindow,
    bounded_limit,
    describe_missing_limit,
    pattern_risk,
)
from custos.policy.copies import copies_risk
from custos.policy.masks import ColumnMask, column_masks
from custos.policy.models import Effect, MaskMethod, PolicyDocument, Rule
from custos.policy.patterns import PolicyPattern
from custos.policy.version import policy_version
from custos.sql.facts import (
    ALL_COLUMNS,
    HEAVY_BYTES,
    Analysis,
    ParameterRef,
    PatternMatch,
    StatementFacts,
    StatementKind,
    statement_bytes,
)
from custos.sql.risks import has_effects

__all__ = [
    "ApprovalRequirement",
    "Decision",
    "DecisionFacts",
    "DecisionRequest",
    "Effect",
    "MaskSpec",
    "PolicyEngine",
]

_STRENGTH = {Effect.ALLOW: 0, Effect.MASK: 1, Effect.REQUIRE_APPROVAL: 2, Effect.DENY: 3}
_PERMITTING_DYNAMIC = frozenset({Effect.ALLOW, Effect.REQUIRE_APPROVAL})
# Statement profiles are cached per analysed statement object; analyses are cached by text
# upstream, so a bounded cache here keeps the hot statements' work done once.
_PROFILE_CACHE_SIZE = 4096
_ROLE_CACHE_SIZE = 1024
_READS_STATISTICS = (
    "reads the planner's statistics, which hold sample values of every column they describe"
)
_COLLECTS_ROWS = (
    "gathers many rows into one value (string_agg, array_agg, json_agg, xmlagg, ARRAY(SELECT"
    " ...), a recursive WITH): LIMIT does not bound the rows read"
)
_SETS_ROLE = "changes the role later statements run as"
_MULTIPLE = "multiple statements in one query"


@dataclass(frozen=True, slots=True)
class ApprovalRequirement:
    rule: str
    group: str
    approvals: int
    grant_for_seconds: int | None  # None: an approved retry runs within the request's expiry
    mode: str = "wait"  # ApprovalMode's value
    expires_seconds: int = 900
    estimate_rows: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "group": self.group,
            "approvals": self.approvals,
            "grant_for_seconds": self.grant_for_seconds,
            "mode": self.mode,
            "expires_seconds": self.expires_seconds,
            "estimate_rows": self.estimate_rows,
        }


@dataclass(frozen=True, slots=True)
class MaskSpec:
    rule: str
    categories: frozenset[str]
    method: MaskMethod

    def as_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "categories": sorted(self.categories),
            "method": self.method.value,
        }


@dataclass(frozen=True, slots=True)
class DecisionFacts:
    """What the decision was drawn from, free of personal data: fit for audit and explain."""

    statements: int
    kinds: tuple[str, ...] = ()
    relations_read: tuple[str, ...] = ()
    relations_written: tuple[str, ...] = ()
    categories_read: tuple[str, ...] = ()
    categories_written: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    risks: tuple[str, ...] = ()
    unparsable: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "statements": self.statements,
            "kinds": list(self.kinds),
            "relations_read": list(self.relations_read),
            "relations_written": list(self.relations_written),
            "categories_read": list(self.categories_read),
            "categories_written": list(self.categories_written),
            "functions": list(self.functions),
            "risks": list(self.risks),
            "unparsable": self.unparsable,
        }


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    role: str
    analysis: Analysis
    # Bind parameter values in text form ($1 is params[0]); None: NULL, binary or unknown.
    params: tuple[str | None, ...] = ()
    now: datetime | None = None  # default: the current time, UTC


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    rules: tuple[str, ...]  # every rule that fired, in document order
    deciding_rule: str | None  # None: denied by default (no rule), or unparsable
    message: str  # for the client: why, and what to do next
    policy_version: str
    approval: ApprovalRequirement | None
    masks: tuple[MaskSpec, ...]
    facts: DecisionFacts
    # For a masked decision: per statement, the result columns to mask and how, and the
    # names the analysis expects the result's columns to have (None: unknown width), which
    # the rewriter checks against the columns the database describes.
    column_masks: tuple[tuple[ColumnMask, ...], ...] = ()
    result_columns: tuple[tuple[str | None, ...], ...] = ()
    # The policy's patterns for the categories a masked decision masks: masked free text
    # is searched for them too (custos/masking/detect.py).
    patterns: tuple[PolicyPattern, ...] = ()
    # For a statement that LISTENs: every mask rule that may apply to the role, by which
    # the payloads of the notifications it will receive are masked. A payload comes from
    # another session's NOTIFY, whose text no analysis sees: what it holds is not known.
    notification_masks: tuple[MaskSpec, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "effect": self.effect.value,
            "rules": list(self.rules),
            "deciding_rule": self.deciding_rule,
            "message": self.message,
            "policy_version": self.policy_version,
            "approval": self.approval.as_dict() if self.approval else None,
            "masks": [mask.as_dict() for mask in self.masks],
            "column_masks": [[mask.as_dict() for mask in each] for each in self.column_masks],
            "result_columns": [list(names) for names in self.result_columns],
            "patterns": [pattern.as_dict() for pattern in self.patterns],
            "notification_masks": [mask.as_dict() for mask in self.notification_masks],
            "facts": self.facts.as_dict(),
        }


@dataclass(frozen=True, slots=True)
class _Rule:
    """A rule compiled for evaluation: globs as regular expressions, lists as sets."""

    index: int
    id: str
    effect: Effect
    message: str
    roles: re.Pattern[str] | None
    kinds: frozenset[StatementKind] | None
    statement_types: frozenset[str] | None
    relations: re.Pattern[str] | None
    reads: frozenset[str] | None
    writes: frozenset[str] | None
    functions: re.Pattern[str] | None
    without_where: bool
    copy_to: frozenset[str] | None
    copy_from: frozenset[str] | None
    dynamic: bool
    sets_role: bool
    copies_personal_data: bool
    # Conditions that depend on Bind values, the whole query or the time of day.
    wildcard_pattern: bool
    limit_above: int | None
    multiple_statements: bool
    time_window: CompiledTimeWindow | None
    per_execution: bool  # any of the four above
    approval: ApprovalRequirement | None
    mask: MaskSpec | None

    def covers_kind(self, kind: StatementKind) -> bool:
        return self.kinds is None or kind in self.kinds

    def covers_relation(self, relation: str) -> bool:
        return self.relations is None or self.relations.match(relation) is not None

    def allows_function(self, function: str) -> bool:
        """Whether this permitting rule names the function (bare or as qualified)."""
        if self.functions is None or self.effect is Effect.DENY:
            return False
        bare = function.rpartition(".")[2]
        return bool(self.functions.match(function) or self.functions.match(bare))


@dataclass(frozen=True, slots=True)
class _Profile:
    """What a statement says under this policy, before parameters and time are known."""

    statement: StatementFacts
    kinds: frozenset[StatementKind]
    kind_names: tuple[StatementKind, ...]  # the same, sorted
    relations: tuple[str, ...]  # read or written, sorted
    categories_read: frozenset[str]
    categories_written: frozenset[str]
    # Relations with personal data whose rows the statement returns to the client, sorted;
    # empty unless it returns rows: LIMIT matters only then.
    personal_reads: tuple[str, ...]
    # Patterns on personal columns whose risk depends on Bind values.
    parameter_patterns: tuple[PatternMatch, ...]
    pattern_risks: tuple[str, ...]  # the other patterns' risks, described
    without_where_risk: str | None
    copy_risk: str | None
    copies_risk: str | None  # copies_personal_data, described
    static_risks: tuple[str, ...]  # every risk that depends neither on parameters nor LIMIT
    # The facts of this statement alone; complete unless it depends on Bind values.
    facts: DecisionFacts
    depends_on_parameters: bool
    # Functions called whose effects reach beyond the statement's tables (risks.has_effects),
    # sorted: refused unless a permitting rule that fired names them.
    effect_functions: tuple[str, ...]
    # role -> the role's rules whose conditions on the statement alone hold.
    candidates: dict[str, tuple[_Rule, ...]]


@dataclass(slots=True)
class _Outcome:
    """One statement's effect and what produced it."""

    position: int
    fired: list[_Rule]
    wildcard_risks: tuple[str, ...]
    limit: int | None
    effect: Effect = Effect.DENY
    rule: _Rule | None = None
    reason: str = ""  # for a deny without a rule: what went uncovered


class PolicyEngine:
    """Decides statements under one policy document; build a new engine for a new policy."""

    def __init__(self, document: PolicyDocument) -> None:
        self.document = document
        self.version = policy_version(document)
        self.catalog = PersonalDataCatalog(document.catalog, document.detect)
        self._patterns = tuple(
            PolicyPattern(category, detect.pattern) for category, detect in document.detect.items()
        )
        self._rules = tuple(_compile(index, rule) for index, rule in enumerate(document.rules))
        self._thresholds = sorted(
            {rule.limit_above for rule in self._rules if rule.limit_above is not None}
        )
        self._has_time_windows = any(rule.time_window for rule in self._rules)
        self._role_rules: dict[str, tuple[_Rule, ...]] = {}
        # id of the statement -> (the statement, its profile)
        self._profiles: dict[int, tuple[StatementFacts, _Profile]] = {}

    @property
    def time_dependent(self) -> bool:
        """True when a rule has a time window: a statement's decision may change by the hour."""
        return self._has_time_windows

    def decide(self, request: DecisionRequest) -> Decision:
        analysis = request.analysis
        if analysis.error is not None:
            return self._unparsable(analysis.error)
        statements = analysis.statements
        if not statements:
            return Decision(
                effect=Effect.ALLOW,
                rules=(),
                deciding_rule=None,
                message="the query is empty; nothing runs",
                policy_version=self.version,
                approval=None,
                masks=(),
                facts=DecisionFacts(statements=0),
            )
        now = (request.now or datetime.now(UTC)) if self._has_time_windows else None
        multiple = len(statements) > 1
        profiles = [self._profile(statement) for statement in statements]
        outcomes = [
            self._decide_statement(request, position, profile, multiple, now)
            for position, profile in enumerate(profiles)
        ]
        decision = self._combine(profiles, outcomes)
        if any(statement.statement_type == "ListenStmt" for statement in statements):
            role_masks = tuple(rule.mask for rule in self._rules_for(request.role) if rule.mask)
            return replace(decision, notification_masks=role_masks)
        return decision

    # --- one statement -------------------------------------------------------------------

    def _decide_statement(
        self,
        request: DecisionRequest,
        position: int,
        profile: _Profile,
        multiple: bool,
        now: datetime | None,
    ) -> _Outcome:
        statement = profile.statement
        wildcard_risks = profile.pattern_risks
        if profile.parameter_patterns:
            wildcard_risks += _described_risks(profile.parameter_patterns, request.params)
        limit = bounded_limit(statement.limit, request.params)
        fired = [
            rule
            for rule in self._candidates(profile, request.role)
            if not rule.per_execution
            or _fires_per_execution(rule, profile, wildcard_risks, limit, multiple, now)
        ]
        outcome = _Outcome(position, fired, wildcard_risks, limit)
        for rule in fired:
            if rule.effect is Effect.DENY:
                outcome.rule = rule
                return outcome
        if statement.dynamic and not any(
            rule.dynamic and rule.effect in _PERMITTING_DYNAMIC for rule in fired
        ):
            outcome.reason = (
                "it is dynamic code (a DO block or dynamic SQL) the gateway cannot see into, "
                f"and no rule allows role '{shown(request.role)}' to run dynamic code "
                "(a rule must say risks: {dynamic: true}); send the statements themselves"
            )
            return outcome
        unnamed = [
            function
            for function in profile.effect_functions
            if not any(rule.allows_function(function) for rule in fired)
        ]
        if unnamed:
            outcome.reason = (
                f"it calls {', '.join(shown(name) for name in unnamed)}, whose effects reach"
                " beyond the statement's own tables (large objects, server files, other"
                " sessions, configuration, replication, other databases), and no rule allows"
                f" role '{shown(request.role)}' to call it by name; ask a DBA, or the policy"
                " owner for a rule naming it"
            )
            return outcome
        kinds = [kind for kind in profile.kind_names if not any(r.covers_kind(kind) for r in fired)]
        relations = [
            relation
            for relation in profile.relations
            if not any(rule.covers_relation(relation) for rule in fired)
        ]
        if kinds or relations:
            outcome.reason = _no_rule_allows(request.role, profile, kinds, relations)
            return outcome
        for effect in (Effect.REQUIRE_APPROVAL, Effect.MASK, Effect.ALLOW):
            for rule in fired:
                if rule.effect is effect:
                    outcome.effect = effect
                    outcome.rule = rule
                    return outcome
        raise AssertionError("a covered statement has a permitting rule")

    # --- the whole query -----------------------------------------------------------------

    def _combine(self, profiles: list[_Profile], outcomes: list[_Outcome]) -> Decision:
        if len(outcomes) == 1:
            deciding = outcomes[0]
            ordered = deciding.fired
            where = ""
        else:
            strongest = max(_STRENGTH[outcome.effect] for outcome in outcomes)
            candidates = [o for o in outcomes if _STRENGTH[o.effect] == strongest]
            # Rule-less outcomes (default denies) sort after every rule.
            deciding = min(candidates, key=lambda o: o.rule.index if o.rule else len(self._rules))
            fired = {rule.index: rule for outcome in outcomes for rule in outcome.fired}
            ordered = [fired[index] for index in sorted(fired)]
            where = f" (statement {deciding.position + 1} of {len(outcomes)})"
        effect = deciding.effect
        rule = deciding.rule
        approval: ApprovalRequirement | None = None
        masks = tuple(r.mask for r in ordered if r.mask is not None)
        # An approved statement's results are masked as the mask rules that fired say: an
        # approval lets it run, it does not lift masking.
        masked = bool(masks) and effect in (Effect.MASK, Effect.REQUIRE_APPROVAL)
        if rule is None:
            message = f"denied{where}: {deciding.reason}"
        elif effect is Effect.DENY:
            message = f"denied by rule '{rule.id}'{where}: {rule.message}"
            reasons = self._reasons(rule, profiles[deciding.position], deciding)
            if reasons:
                message += f" ({'; '.join(reasons)})"
        elif effect is Effect.REQUIRE_APPROVAL:
            assert rule.approval is not None
            required = [r.approval for r in ordered if r.approval is not None]
            approval = combined_approval(required)
            if approval is None:
                # Approvals of different groups: one request cannot carry them all.
                effect = Effect.DENY
                groups = ", ".join(sorted({a.group for a in required}))
                message = (
                    f"denied{where}: rules {', '.join(a.rule for a in required)} require"
                    f" approvals by different groups ({groups}), which one request cannot"
                    " carry; send the statements (or the parts of one) that need each"
                    " group's approval separately"
                )
            else:
                message = (
                    f"rule '{rule.id}' requires approval by {rule.approval.group}{where}: "
                    f"{rule.message}"
                )
        elif effect is Effect.MASK:
            categories = sorted({c for mask in masks for c in mask.categories})
            names = ", ".join(f"'{mask.rule}'" for mask in masks)
            message = f"allowed with {', '.join(categories)} masked (rules {names})"
        else:
            message = f"allowed by rule '{rule.id}'"
        return Decision(
            effect=effect,
            rules=tuple(r.id for r in ordered),
            deciding_rule=rule.id if rule else None,
            message=message,
            policy_version=self.version,
            approval=approval if effect is Effect.REQUIRE_APPROVAL else None,
            masks=masks,
            facts=self._facts(profiles, outcomes),
            column_masks=tuple(
                column_masks(
                    profile.statement.output_columns,
                    self.catalog,
                    masks,
                    profile.statement.function_reads,
                    profile.statement.reads_statistics,
                    _tested(profile.statement),
                )
                for profile in profiles
            )
            if masked
            else (),
            result_columns=tuple(
                tuple(output.name for output in profile.statement.output_columns)
                for profile in profiles
            )
            if masked
            else (),
            patterns=tuple(
                pattern
                for pattern in self._patterns
                # A rule that masks free text masks all it is searched for.
                if any(
                    pattern.category in mask.categories or FREE_TEXT in mask.categories
                    for mask in masks
                )
            )
            if masked
            else (),
        )

    def _reasons(self, rule: _Rule, profile: _Profile, outcome: _Outcome) -> list[str]:
        """The risks and functions that made ``rule`` fire, in words free of SQL values."""
        statement = profile.statement
        reasons: list[str] = []
        if rule.functions is not None:
            called = sorted(f for f in statement.functions if rule.functions.match(f))
            reasons.append(f"calls {', '.join(shown(name) for name in called)}")
        if rule.without_where and profile.without_where_risk:
            reasons.append(profile.without_where_risk)
        if rule.wildcard_pattern:
            reasons.extend(outcome.wildcard_risks)
        if rule.limit_above is not None:
            reasons.append(
                _limit_risk(
                    profile.personal_reads, statement.limit, outcome.limit, rule.limit_above
                )
            )
        if (rule.copy_to is not None or rule.copy_from is not None) and profile.copy_risk:
            reasons.append(profile.copy_risk)
        if rule.sets_role:
            reasons.append(_SETS_ROLE)
        if rule.copies_personal_data and profile.copies_risk:
            reasons.append(profile.copies_risk)
        if rule.multiple_statements:
            reasons.append(_MULTIPLE)
        if rule.time_window is not None:
            reasons.append("at this time of day")
        return reasons

    def _facts(self, profiles: list[_Profile], outcomes: list[_Outcome]) -> DecisionFacts:
        if len(profiles) == 1 and not profiles[0].depends_on_parameters:
            return profiles[0].facts
        risks: list[str] = []
        for profile, outcome in zip(profiles, outcomes, strict=True):
            risks.extend(profile.static_risks)
            risks.extend(outcome.wildcard_risks[len(profile.pattern_risks) :])
            limit_risk = self._limit_fact(
                profile.personal_reads, profile.statement.limit, outcome.limit
            )
            if limit_risk is not None:
                risks.append(limit_risk)
        if len(profiles) > 1:
            risks.append(_MULTIPLE)
        facts = [profile.facts for profile in profiles]
        if len(facts) == 1:
            only = facts[0]
            return DecisionFacts(
                statements=1,
                kinds=only.kinds,
                relations_read=only.relations_read,
                relations_written=only.relations_written,
                categories_read=only.categories_read,
                categories_written=only.categories_written,
                functions=only.functions,
                risks=tuple(risks),
            )
        return DecisionFacts(
            statements=len(profiles),
            kinds=_sorted_union(f.kinds for f in facts),
            relations_read=_sorted_union(f.relations_read for f in facts),
            relations_written=_sorted_union(f.relations_written for f in facts),
            categories_read=_sorted_union(f.categories_read for f in facts),
            categories_written=_sorted_union(f.categories_written for f in facts),
            functions=_sorted_union(f.functions for f in facts),
            risks=tuple(dict.fromkeys(risks)),
        )

    def _limit_fact(
        self, personal_reads: tuple[str, ...], written: int | ParameterRef | None, limit: int | None
    ) -> str | None:
        """The LIMIT risk for the facts: absent, or above the highest threshold it passes."""
        if not personal_reads:
            return None
        if limit is None:
            return _limit_risk(personal_reads, written, None, 0)
        exceeded = [threshold for threshold in self._thresholds if limit > threshold]
        return _limit_risk(personal_reads, written, limit, exceeded[-1]) if exceeded else None

    def _unparsable(self, error: str) -> Decision:
        return Decision(
            effect=Effect.DENY,
            rules=(),
            deciding_rule=None,
            message=(
                f"the gateway could not parse this statement: {shown(error)}; "
                "it refuses what it cannot analyse"
            ),
            policy_version=self.version,
            approval=None,
            masks=(),
            facts=DecisionFacts(statements=0, unparsable=True),
        )

    # --- caches --------------------------------------------------------------------------

    def _candidates(self, profile: _Profile, role: str) -> tuple[_Rule, ...]:
        """The role's rules whose conditions on the statement alone hold, cached."""
        rules = profile.candidates.get(role)
        if rules is None:
            rules = tuple(r for r in self._rules_for(role) if _fires_on_statement(r, profile))
            if len(profile.candidates) >= _ROLE_CACHE_SIZE:
                profile.candidates.clear()
            profile.candidates[role] = rules
        return rules

    def _rules_for(self, role: str) -> tuple[_Rule, ...]:
        rules = self._role_rules.get(role)
        if rules is None:
            rules = tuple(r for r in self._rules if r.roles is None or r.roles.match(role))
            if len(self._role_rules) >= _ROLE_CACHE_SIZE:
                self._role_rules.clear()
            self._role_rules[role] = rules
        return rules

    def _profile(self, statement: StatementFacts) -> _Profile:
        # Keyed by identity: the profile holds the statement, so its id cannot be reused
        # while cached. StatementFacts holds dicts and cannot be hashed by value.
        cached = self._profiles.get(id(statement))
        if cached is not None and cached[0] is statement:
            return cached[1]
        profile = self._build_profile(self._exposed(statement))
        if statement_bytes(statement) > HEAVY_BYTES:
            return profile  # not kept (facts.HEAVY_BYTES)
        if len(self._profiles) >= _PROFILE_CACHE_SIZE:
            del self._profiles[next(iter(self._profiles))]
        self._profiles[id(statement)] = (statement, profile)
        return profile

    def _exposed(self, statement: StatementFacts) -> StatementFacts:
        """The statement with what it exposes counted as read: the statistics hold sample
        values of every column, in rows no LIMIT of the statement bounds; rows gathered into
        one value are not bounded by the LIMIT either."""
        if not statement.reads_statistics:
            return (
                dataclasses.replace(statement, limit=None) if statement.collects_rows else statement
            )
        relations = self.catalog.relations
        every_column = frozenset({ALL_COLUMNS})
        return dataclasses.replace(
            statement,
            relations_read=statement.relations_read | frozenset(relations),
            columns_read={**statement.columns_read, **dict.fromkeys(relations, every_column)},
            limit=None,
        )

    def _build_profile(self, statement: StatementFacts) -> _Profile:
        catalog = self.catalog
        kinds = statement.kinds | {statement.kind}
        parameter_patterns: list[PatternMatch] = []
        pattern_risks: list[str] = []
        for match in statement.pattern_matches:
            table = catalog.table(match.relation)
            if table is None or not table.is_personal_column(match.column):
                continue
            if isinstance(match.pattern, ParameterRef) and not match.negated:
                parameter_patterns.append(match)
                continue
            risk = pattern_risk(match, ())
            if risk is not None:
                pattern_risks.append(f"{risk} on {_column(match)}")
        without_where_risk = None
        if statement.update_or_delete_without_where:
            verb = {StatementKind.DELETE: "DELETE", StatementKind.UPDATE: "UPDATE"}.get(
                statement.kind, "UPDATE or DELETE"
            )
            written = ", ".join(shown(r) for r in sorted(statement.relations_written))
            without_where_risk = f"{verb} without WHERE" + (f" on {written}" if written else "")
        copy_risk = None
        if statement.copy_destination is not None:
            direction = "TO" if StatementKind.COPY_TO in kinds else "FROM"
            copy_risk = f"COPY {direction} {statement.copy_destination}"
        dynamic_risk = "dynamic code (a DO block or dynamic SQL)" if statement.dynamic else None
        role_risk = _SETS_ROLE if statement.sets_role else None
        personal_copies = copies_risk(statement, catalog)
        exposures = (
            _READS_STATISTICS if statement.reads_statistics else None,
            _COLLECTS_ROWS if statement.collects_rows else None,
        )
        static_risks = tuple(
            risk
            for risk in (
                without_where_risk,
                copy_risk,
                dynamic_risk,
                role_risk,
                personal_copies,
                *exposures,
                *pattern_risks,
            )
            if risk is not None
        )
        categories_read = catalog.categories(statement.columns_read)
        categories_written = catalog.categories(statement.columns_written)
        personal_reads = (
            catalog.personal_relations(statement.relations_read) if _returns_rows(statement) else ()
        )
        limit = statement.limit if isinstance(statement.limit, int) else None
        limit_risk = self._limit_fact(personal_reads, statement.limit, limit)
        facts = DecisionFacts(
            statements=1,
            kinds=tuple(sorted(kinds)),
            relations_read=tuple(sorted(statement.relations_read)),
            relations_written=tuple(sorted(statement.relations_written)),
            categories_read=tuple(sorted(categories_read)),
            categories_written=tuple(sorted(categories_written)),
            functions=tuple(sorted(statement.functions)),
            risks=static_risks + ((limit_risk,) if limit_risk else ()),
        )
        return _Profile(
            statement=statement,
            kinds=kinds,
            kind_names=tuple(sorted(kinds)),
            relations=tuple(sorted(statement.relations_read | statement.relations_written)),
            categories_read=categories_read,
            categories_written=categories_written,
            personal_reads=personal_reads,
            parameter_patterns=tuple(parameter_patterns),
            pattern_risks=tuple(pattern_risks),
            without_where_risk=without_where_risk,
            copy_risk=copy_risk,
            copies_risk=personal_copies,
            static_risks=static_risks,
            facts=facts,
            depends_on_parameters=bool(parameter_patterns)
            or isinstance(statement.limit, ParameterRef),
            effect_functions=tuple(sorted(f for f in statement.functions if has_effects(f))),
            candidates={},
        )


# --- compiling rules and profiling statements ---------------------------------------------


def combined_approval(required: Sequence[ApprovalRequirement]) -> ApprovalRequirement | None:
    """What every fired require_approval rule asks, as one request: the most approvals,
    wait mode over retry, the shortest expiry and grant, a row estimate if any asks; None
    when they name different groups."""
    if len({approval.group for approval in required}) != 1:
        return None
    first = required[0]
    grants = [a.grant_for_seconds for a in required if a.grant_for_seconds is not None]
    return ApprovalRequirement(
        rule=first.rule,
        group=first.group,
        approvals=max(a.approvals for a in required),
        grant_for_seconds=min(grants) if grants else None,
        mode="wait" if any(a.mode == "wait" for a in required) else "retry",
        expires_seconds=min(a.expires_seconds for a in required),
        estimate_rows=any(a.estimate_rows for a in required),
    )


def _compile(index: int, rule: Rule) -> _Rule:
    match = rule.match
    risks = match.risks
    approval = None
    if rule.approval is not None:
        grant_for = rule.approval.grant_for
        approval = ApprovalRequirement(
            rule=rule.id,
            group=rule.approval.group,
            approvals=rule.approval.approvals,
            grant_for_seconds=parse_duration(grant_for) if grant_for is not None else None,
            mode=rule.approval.mode.value,
            expires_seconds=parse_duration(rule.approval.expires_after),
            estimate_rows=rule.approval.estimate_rows,
        )
    mask = None
    if rule.mask is not None:
        mask = MaskSpec(rule.id, frozenset(rule.mask.categories), rule.mask.method)
    return _Rule(
        index=index,
        id=rule.id,
        effect=rule.effect,
        message=rule.message.strip(),
        roles=_globs(match.roles, _plain_glob),
        kinds=frozenset(match.kinds) if match.kinds is not None else None,
        statement_types=_optional_set(match.statement_types),
        relations=_globs(match.relations, _plain_glob),
        reads=_optional_set(match.reads),
        writes=_optional_set(match.writes),
        functions=_globs(match.functions, _function_glob),
        without_where=bool(risks.without_where),
        wildcard_pattern=bool(risks.wildcard_pattern),
        limit_above=risks.limit_above,
        multiple_statements=bool(risks.multiple_statements),
        copy_to=_optional_set(risks.copy_to),
        copy_from=_optional_set(risks.copy_from),
        dynamic=bool(risks.dynamic),
        sets_role=bool(risks.sets_role),
        copies_personal_data=bool(risks.copies_personal_data),
        time_window=CompiledTimeWindow(risks.time_window) if risks.time_window else None,
        per_execution=bool(
            risks.wildcard_pattern
            or risks.limit_above is not None
            or risks.multiple_statements
            or risks.time_window
        ),
        approval=approval,
        mask=mask,
    )


def _optional_set(values: Sequence[str] | None) -> frozenset[str] | None:
    return frozenset(values) if values is not None else None


def _globs(globs: Sequence[str] | None, translate: Callable[[str], str]) -> re.Pattern[str] | None:
    if globs is None:
        return None
    return re.compile("|".join(f"(?:{translate(glob)})" for glob in globs))


def _plain_glob(glob: str) -> str:
    return fnmatch.translate(glob)


def _function_glob(glob: str) -> str:
    # A bare name matches the function in any schema: `pg_read_file` also catches
    # `pg_catalog.pg_read_file`. And pg_catalog is searched first, so `pg_catalog.f`
    # also catches a bare `f`.
    if "." not in glob:
        return r"(?:[^.]*\.)?" + fnmatch.translate(glob)
    if glob.startswith("pg_catalog."):
        return r"(?:pg_catalog\.)?" + fnmatch.translate(glob.removeprefix("pg_catalog."))
    return fnmatch.translate(glob)


def _tested(statement: StatementFacts) -> frozenset[tuple[str, str]]:
    """The columns the statement searches, or compares with values it makes."""
    searched = {(match.relation, match.column) for match in statement.pattern_matches}
    return statement.compared | searched


def _returns_rows(statement: StatementFacts) -> bool:
    """Whether the statement sends rows to the client (EXPLAIN and INSERT ... SELECT do not).

    A SELECT or COPY TO counts even without output columns, in case the analysis found none.
    """
    if statement.output_columns:
        return True
    return (
        statement.kind in (StatementKind.SELECT, StatementKind.COPY_TO)
        and statement.statement_type != "ExplainStmt"
    )


def _fires_on_statement(rule: _Rule, profile: _Profile) -> bool:
    """Whether the rule's conditions on the statement itself hold."""
    statement = profile.statement
    if rule.kinds is not None and rule.kinds.isdisjoint(profile.kinds):
        return False
    if rule.statement_types is not None and statement.statement_type not in rule.statement_types:
        return False
    if rule.relations is not None:
        if profile.relations:
            pattern = rule.relations
            if not any(pattern.match(relation) for relation in profile.relations):
                return False
        elif rule.effect is not Effect.ALLOW:
            return False
    if rule.functions is not None:
        pattern = rule.functions
        if not any(pattern.match(function) for function in statement.functions):
            return False
    if rule.reads is not None and rule.reads.isdisjoint(profile.categories_read):
        return False
    if rule.writes is not None and rule.writes.isdisjoint(profile.categories_written):
        return False
    if rule.without_where and not statement.update_or_delete_without_where:
        return False
    if rule.copy_to is not None and not (
        StatementKind.COPY_TO in profile.kinds and statement.copy_destination in rule.copy_to
    ):
        return False
    if rule.copy_from is not None and not (
        StatementKind.COPY_FROM in profile.kinds and statement.copy_destination in rule.copy_from
    ):
        return False
    if rule.dynamic and not statement.dynamic:
        return False
    if rule.copies_personal_data and profile.copies_risk is None:
        return False
    return not rule.sets_role or statement.sets_role


def _fires_per_execution(
    rule: _Rule,
    profile: _Profile,
    wildcard_risks: tuple[str, ...],
    limit: int | None,
    multiple: bool,
    now: datetime | None,
) -> bool:
    """Whether the rule's conditions on Bind values, the whole query and the time hold."""
    if rule.wildcard_pattern and not wildcard_risks:
        return False
    if rule.limit_above is not None and not (
        profile.personal_reads and (limit is None or limit > rule.limit_above)
    ):
        return False
    if rule.multiple_statements and not multiple:
        return False
    return rule.time_window is None or (now is not None and rule.time_window.matches(now))


def _described_risks(
    patterns: Iterable[PatternMatch], params: Sequence[str | None]
) -> tuple[str, ...]:
    risks = []
    for match in patterns:
        risk = pattern_risk(match, params)
        if risk is not None:
            risks.append(f"{risk} on {_column(match)}")
    return tuple(risks)


def _limit_risk(
    personal_reads: tuple[str, ...],
    written: int | ParameterRef | None,
    limit: int | None,
    threshold: int,
) -> str:
    reads = ", ".join(shown(relation) for relation in personal_reads)
    if limit is None:
        return f"{describe_missing_limit(written)} on a read of {reads}"
    return f"LIMIT above {threshold} on a read of {reads}"


def _column(match: PatternMatch) -> str:
    return shown(f"{match.relation}.{match.column}")


def _no_rule_allows(
    role: str, profile: _Profile, kinds: list[StatementKind], relations: list[str]
) -> str:
    named_kinds = kinds or sorted(profile.kinds)
    named_relations = relations or list(profile.relations)
    text = f"no rule allows role '{shown(role)}' to run {' and '.join(named_kinds)}"
    if named_relations:
        text += f" on {', '.join(shown(r) for r in named_relations)}"
    return text + "; ask the policy owner for a rule"


def _sorted_union(groups: Iterable[Iterable[str]]) -> tuple[str, ...]:
    merged: set[str] = set()
    for group in groups:
        merged.update(group)
    return tuple(sorted(merged))
