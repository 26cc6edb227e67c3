"""The decision engine, condition by condition, on statement facts built by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from custos.policy import (
    ApprovalRequirement,
    Decision,
    DecisionRequest,
    Effect,
    MaskMethod,
    MaskSpec,
    PolicyEngine,
    load_policy,
)
from custos.sql.facts import (
    ALL_COLUMNS,
    Analysis,
    OutputColumn,
    ParameterRef,
    PatternMatch,
    StatementFacts,
    StatementKind,
)

CATALOG = """
catalog:
  crm.customers:
    subject: id
    columns: {full_name: name, email: email, phone: phone, iban: iban, city: address}
  crm.orders: {subject: customer_id}
"""

SECRET = "alice@example.com"  # a value from the SQL: must never show in messages or facts


def engine(rules: str, catalog: str = CATALOG) -> PolicyEngine:
    return PolicyEngine(load_policy(catalog + "rules:\n" + rules))


def statement(
    kind: str = "select",
    *,
    kinds: tuple[str, ...] = (),
    reads: tuple[str, ...] = (),
    writes: tuple[str, ...] = (),
    columns: dict[str, frozenset[str]] | None = None,
    written_columns: dict[str, frozenset[str]] | None = None,
    functions: tuple[str, ...] = (),
    without_where: bool = False,
    patterns: tuple[PatternMatch, ...] = (),
    limit: int | ParameterRef | None = None,
    copy: str | None = None,
    dynamic: bool = False,
) -> StatementFacts:
    main = StatementKind(kind)
    return StatementFacts(
        kind=main,
        kinds=frozenset({main, *(StatementKind(k) for k in kinds)}),
        relations_read=frozenset(reads),
        relations_written=frozenset(writes),
        columns_read=columns or {},
        columns_written=written_columns or {},
        functions=frozenset(functions),
        update_or_delete_without_where=without_where,
        pattern_matches=patterns,
        limit=limit,
        copy_destination=copy,
        dynamic=dynamic,
    )


def decide(
    policy: PolicyEngine,
    *statements: StatementFacts,
    role: str = "agent",
    params: tuple[str | None, ...] = (),
    now: datetime | None = None,
) -> Decision:
    return policy.decide(DecisionRequest(role, Analysis(statements), params, now))


def like(column: str, pattern: str | ParameterRef | None, **options: object) -> PatternMatch:
    return PatternMatch(
        "crm.customers",
        column,
        str(options.get("operator", "~~")),
        pattern,
        bool(options.get("negated", False)),
    )


def assert_free_of(decision: Decision, *values: str) -> None:
    # The version is a hex digest, which could contain digits from the SQL by chance.
    text = json.dumps({**decision.as_dict(), "policy_version": None})
    for value in values:
        assert value not in text


ALLOW_CRM = """
  - id: agents-read-crm
    match: {roles: [agent], kinds: [select], relations: ["crm.*"]}
    effect: allow
"""


# --- the basics ------------------------------------------------------------------------


def test_matching_allow_rule_allows_and_says_which() -> None:
    policy = engine(ALLOW_CRM)
    decision = decide(policy, statement(reads=("crm.orders",)))
    assert decision.effect is Effect.ALLOW
    assert decision.rules == ("agents-read-crm",)
    assert decision.deciding_rule == "agents-read-crm"
    assert decision.message == "allowed by rule 'agents-read-crm'"
    assert decision.policy_version == policy.version
    assert decision.approval is None
    assert decision.masks == ()


def test_no_rule_denies_by_default_naming_kinds_and_relations() -> None:
    decision = decide(engine(ALLOW_CRM), statement("delete", writes=("crm.orders",)))
    assert decision.effect is Effect.DENY
    assert decision.deciding_rule is None
    assert decision.rules == ()
    assert decision.message == (
        "denied: no rule allows role 'agent' to run delete on crm.orders; "
        "ask the policy owner for a rule"
    )


def test_role_without_rules_is_denied() -> None:
    decision = decide(engine(ALLOW_CRM), statement(reads=("crm.orders",)), role="analyst")
    assert decision.effect is Effect.DENY
    assert "no rule allows role 'analyst' to run select on crm.orders" in decision.message


def test_empty_policy_denies_everything() -> None:
    policy = PolicyEngine(load_policy("rules: []"))
    assert decide(policy, statement()).effect is Effect.DENY


def test_unparsable_query_is_denied_without_evaluating_rules() -> None:
    policy = engine("  - id: everything\n    effect: allow\n")
    decision = policy.decide(DecisionRequest("agent", Analysis((), error="syntax error at end")))
    assert decision.effect is Effect.DENY
    assert decision.rules == ()
    assert decision.message == (
        "the gateway could not parse this statement: syntax error at end; "
        "it refuses what it cannot analyse"
    )
    assert decision.facts.unparsable


def test_empty_query_is_allowed() -> None:
    decision = decide(engine(ALLOW_CRM))
    assert decision.effect is Effect.ALLOW
    assert decision.facts.statements == 0


def test_role_globs() -> None:
    policy = engine("  - id: any-agent\n    match: {roles: ['agent-*']}\n    effect: allow\n")
    assert decide(policy, statement(), role="agent-7").effect is Effect.ALLOW
    assert decide(policy, statement(), role="dba").effect is Effect.DENY


# --- kinds and relations --------------------------------------------------------------


def test_every_kind_of_a_statement_must_be_allowed() -> None:
    # WITH d AS (DELETE FROM crm.orders RETURNING *) SELECT * FROM d
    cte_delete = statement("delete", kinds=("select",), writes=("crm.orders",))
    decision = decide(engine(ALLOW_CRM), cte_delete)
    assert decision.effect is Effect.DENY
    assert decision.rules == ("agents-read-crm",)
    assert "to run delete on crm.orders" in decision.message


def test_kinds_and_relations_can_be_covered_by_different_rules() -> None:
    policy = engine(
        ALLOW_CRM
        + """
  - id: agents-write-orders
    match: {roles: [agent], kinds: [delete], relations: [crm.orders]}
    effect: require_approval
    message: ask first
    approval: {group: dpo}
"""
    )
    cte_delete = statement(
        "delete", kinds=("select",), reads=("crm.customers",), writes=("crm.orders",)
    )
    decision = decide(policy, cte_delete, params=())
    assert decision.effect is Effect.REQUIRE_APPROVAL
    assert decision.rules == ("agents-read-crm", "agents-write-orders")


def test_every_relation_of_a_statement_must_be_allowed() -> None:
    policy = engine(
        "  - id: read-orders\n    match: {kinds: [select], relations: [crm.orders]}\n"
        "    effect: allow\n"
    )
    decision = decide(policy, statement(reads=("crm.orders", "pg_catalog.pg_authid")))
    assert decision.effect is Effect.DENY
    assert decision.rules == ("read-orders",)
    assert "to run select on pg_catalog.pg_authid;" in decision.message


def test_deny_rule_fires_when_any_relation_matches() -> None:
    policy = engine(
        ALLOW_CRM
        + """
  - id: no-customers
    match: {relations: [crm.customers]}
    effect: deny
    message: customers are off limits
"""
    )
    decision = decide(policy, statement(reads=("crm.orders", "crm.customers")))
    assert decision.effect is Effect.DENY
    assert decision.deciding_rule == "no-customers"
    assert decision.message == "denied by rule 'no-customers': customers are off limits"


def test_allow_rule_with_relations_applies_to_statements_touching_none() -> None:
    policy = engine(
        ALLOW_CRM
        + """
  - id: no-crm-functions
    match: {relations: ["crm.*"], functions: [now]}
    effect: deny
    message: not with crm functions
"""
    )
    decision = decide(policy, statement(functions=("now",)))
    assert decision.effect is Effect.ALLOW
    assert decision.rules == ("agents-read-crm",)


def test_a_rule_without_kinds_covers_every_kind_other_included() -> None:
    # FETCH, MOVE, CLOSE, LISTEN, DISCARD and DEALLOCATE are kind other: server-side
    # cursors break if an allow-everything rule refuses them.
    everything = "  - id: everything\n    effect: allow\n"
    assert decide(engine(everything), statement("other")).effect is Effect.ALLOW
    assert decide(engine(everything), statement("ddl", writes=("crm.x",))).effect is Effect.ALLOW
    selects = "  - id: selects\n    match: {kinds: [select]}\n    effect: allow\n"
    assert decide(engine(selects), statement("other")).effect is Effect.DENY
    listed = selects + "  - id: other\n    match: {kinds: [other]}\n    effect: allow\n"
    decision = decide(engine(listed), statement("other"))
    assert decision.effect is Effect.ALLOW
    assert decision.deciding_rule == "other"


# --- categories and functions ---------------------------------------------------------


def test_reads_condition_uses_the_catalog() -> None:
    policy = engine(
        ALLOW_CRM
        + """
  - id: no-iban
    match: {reads: [iban, phone]}
    effect: deny
    message: bank details are off limits
"""
    )
    reads_iban = statement(reads=("crm.customers",), columns={"crm.customers": frozenset({"iban"})})
    reads_city = statement(reads=("crm.customers",), columns={"crm.customers": frozenset({"city"})})
    reads_all = statement(
        reads=("crm.customers",), columns={"crm.customers": frozenset({ALL_COLUMNS})}
    )
    assert decide(policy, reads_iban).effect is Effect.DENY
    assert decide(policy, reads_city).effect is Effect.ALLOW
    decision = decide(policy, reads_all)
    assert decision.effect is Effect.DENY
    assert decision.facts.categories_read == ("address", "email", "iban", "name", "phone")


def test_writes_condition_uses_the_catalog() -> None:
    policy = engine(
        """
  - id: email-changes
    match: {writes: [email]}
    effect: require_approval
    message: changing an email address needs the DPO
    approval: {group: dpo, approvals: 2, grant_for: 1h}
  - id: updates
    match: {kinds: [update]}
    effect: allow
"""
    )
    email = statement(
        "update", writes=("crm.customers",), written_columns={"crm.customers": frozenset({"email"})}
    )
    city = statement(
        "update", writes=("crm.customers",), written_columns={"crm.customers": frozenset({"city"})}
    )
    decision = decide(policy, email)
    assert decision.effect is Effect.REQUIRE_APPROVAL
    assert decision.approval == ApprovalRequirement("email-changes", "dpo", 2, 3600)
    assert decision.message == (
        "rule 'email-changes' requires approval by dpo: changing an email address needs the DPO"
    )
    assert decision.facts.categories_written == ("email",)
    assert decide(policy, city).effect is Effect.ALLOW


@pytest.mark.parametrize(
    ("glob", "function", "fires"),
    [
        ("pg_read_file", "pg_read_file", True),
        ("pg_read_file", "pg_catalog.pg_read_file", True),
        ("pg_read_file", "evil.pg_read_file", True),
        ("pg_read_file", "pg_read_file_x", False),
        ("pg_catalog.pg_read_file", "pg_read_file", True),
        ("pg_catalog.pg_read_file", "pg_catalog.pg_read_file", True),
        ("pg_catalog.pg_read_file", "public.pg_read_file", False),
        ("dblink*", "dblink_exec", True),
        ("dblink*", "public.dblink", True),
        ("dblink*", "my_dblink", False),
        ("lo_*", "pg_catalog.lo_export", True),
        ("public.f?", "public.fx", True),
        ("public.f?", "fx", False),
    ],
)
def test_function_globs(glob: str, function: str, fires: bool) -> None:
    policy = engine(
        "  - id: everything\n    effect: allow\n"
        f"  - id: dangerous\n    match: {{functions: ['{glob}']}}\n    effect: deny\n"
        "    message: not through the gateway\n"
    )
    decision = decide(policy, statement(functions=("now", function)))
    # A function the rule does not match may still be refused, by the safe default for
    # functions with effects (pg_read_file_x); the rule matters here.
    assert (decision.deciding_rule == "dangerous") is fires
    if fires:
        assert decision.message == (
            f"denied by rule 'dangerous': not through the gateway (calls {function})"
        )


# --- risks ----------------------------------------------------------------------------

ALLOW_ALL = "  - id: everything\n    effect: allow\n"


def deny_on(risks: str) -> PolicyEngine:
    return engine(
        ALLOW_ALL + f"  - id: risky\n    match: {{risks: {{{risks}}}}}\n    effect: deny\n"
        "    message: too risky\n"
    )


def test_without_where() -> None:
    policy = deny_on("without_where: true")
    unbounded = statement("delete", writes=("crm.orders",), without_where=True)
    decision = decide(policy, unbounded)
    assert decision.effect is Effect.DENY
    assert decision.message == (
        "denied by rule 'risky': too risky (DELETE without WHERE on crm.orders)"
    )
    assert decide(policy, statement("delete", writes=("crm.orders",))).effect is Effect.ALLOW


@pytest.mark.parametrize(
    ("match", "risk"),
    [
        (like("email", "%example.com"), "a pattern not anchored to a fixed prefix"),
        (like("email", "%"), "a pattern not anchored to a fixed prefix"),
        (like("email", "_lice%"), "a pattern not anchored to a fixed prefix"),
        (like("email", "%", operator="~~*"), "a pattern not anchored to a fixed prefix"),
        (like("email", "alice%", negated=True), "a negated pattern"),
        (like("email", None), "a pattern computed by an expression"),
        (like("email", ".*", operator="~"), "an unanchored regular expression"),
        (like("email", "alice", operator="~*"), "an unanchored regular expression"),
        (like("email", "^.*x", operator="~"), "a pattern not anchored to a fixed prefix"),
        (like("email", "^a|b", operator="~"), "a pattern not anchored to a fixed prefix"),
        (like("email", "%a", operator="similar"), "a pattern not anchored to a fixed prefix"),
        (like("email", "a%", operator="!~~"), "a pattern operator the gateway does not know"),
        (like("id", "%1"), "a pattern not anchored to a fixed prefix"),
        # Anchored to a letter, but the rest searches anywhere.
        (like("email", "a%smith%"), "a pattern not anchored to a fixed prefix"),
        (like("email", "al_ce%"), "a pattern not anchored to a fixed prefix"),
        (
            like("email", "A*%smith%", operator="similar"),
            "a pattern not anchored to a fixed prefix",
        ),
        (like("email", "^A?.*smith", operator="~"), "a pattern not anchored to a fixed prefix"),
        (like("email", "^(?i)smith", operator="~"), "a pattern not anchored to a fixed prefix"),
        (like("email", "", operator="prefix"), "a pattern not anchored to a fixed prefix"),
        (
            like("email", "smith", operator="contains"),
            "a search inside the values (strpos, position)",
        ),
        (like("email", "alice%"), None),
        (like("email", "alice"), None),
        (like("email", ""), None),
        (like("email", "^alice.*", operator="~"), None),
        (like("email", "^alice$", operator="~"), None),
        (like("email", "al", operator="prefix"), None),
        (like("email", "^alice", operator="~"), None),
        (like("email", "alice%", operator="similar"), None),
        (like("country", "%"), None),  # not a personal-data column in the catalog
        (PatternMatch("crm.products", "name", "~~", "%"), None),
    ],
)
def test_wildcard_pattern(match: PatternMatch, risk: str | None) -> None:
    policy = deny_on("wildcard_pattern: true")
    decision = decide(policy, statement(reads=(match.relation,), patterns=(match,), limit=1))
    if risk is None:
        assert decision.effect is Effect.ALLOW
        assert decision.facts.risks == ()
    else:
        described = f"{risk} on {match.relation}.{match.column}"
        assert decision.effect is Effect.DENY
        assert decision.message == f"denied by rule 'risky': too risky ({described})"
        assert decision.facts.risks == (described,)
    assert_free_of(decision, "example.com", "alice")


@pytest.mark.parametrize(
    ("params", "denied"),
    [
        (("%example.com",), True),
        (("alice%",), False),
        ((None,), True),  # NULL or binary: the gateway cannot see the pattern
        ((), True),  # no Bind value at all
    ],
)
def test_wildcard_pattern_parameters_are_checked_against_bind_values(
    params: tuple[str | None, ...], denied: bool
) -> None:
    policy = deny_on("wildcard_pattern: true")
    query = statement(reads=("crm.customers",), patterns=(like("email", ParameterRef(1)),), limit=1)
    decision = decide(policy, query, params=params)
    assert (decision.effect is Effect.DENY) is denied
    assert_free_of(decision, "example.com", "alice")


def test_cached_statement_is_decided_afresh_for_each_bind() -> None:
    policy = deny_on("wildcard_pattern: true")
    query = statement(reads=("crm.customers",), patterns=(like("email", ParameterRef(1)),), limit=1)
    assert decide(policy, query, params=("%x",)).effect is Effect.DENY
    assert decide(policy, query, params=("x%",)).effect is Effect.ALLOW
    assert decide(policy, query, params=("%x",)).effect is Effect.DENY


@pytest.mark.parametrize(
    ("limit", "params", "reason"),
    [
        (None, (), "no LIMIT on a read of crm.customers"),
        (500, (), "LIMIT above 100 on a read of crm.customers"),
        (100, (), None),
        (0, (), None),
        (ParameterRef(1), ("50",), None),
        (ParameterRef(1), (" 100 ",), None),
        (ParameterRef(1), ("5000",), "LIMIT above 100 on a read of crm.customers"),
        (
            ParameterRef(1),
            ("ALL",),
            "a LIMIT from parameter $1 without a usable value on a read of crm.customers",
        ),
        (
            ParameterRef(2),
            ("5",),
            "a LIMIT from parameter $2 without a usable value on a read of crm.customers",
        ),
    ],
)
def test_limit_above(
    limit: int | ParameterRef | None, params: tuple[str, ...], reason: str | None
) -> None:
    policy = deny_on("limit_above: 100")
    decision = decide(policy, statement(reads=("crm.customers",), limit=limit), params=params)
    if reason is None:
        assert decision.effect is Effect.ALLOW
    else:
        assert decision.effect is Effect.DENY
        assert decision.message == f"denied by rule 'risky': too risky ({reason})"
        assert reason in decision.facts.risks
    assert_free_of(decision, "5000", "500")


def test_limit_above_only_concerns_relations_with_personal_data() -> None:
    policy = deny_on("limit_above: 100")
    assert decide(policy, statement(reads=("crm.products",))).effect is Effect.ALLOW
    assert decide(policy, statement(reads=("crm.orders",))).effect is Effect.DENY


def test_limit_above_only_concerns_statements_that_return_rows() -> None:
    policy = deny_on("limit_above: 100")
    explain = StatementFacts(
        kind=StatementKind.SELECT,
        kinds=frozenset({StatementKind.SELECT}),
        relations_read=frozenset({"crm.customers"}),
        statement_type="ExplainStmt",
    )
    insert_select = statement("insert", kinds=("select",), reads=("crm.customers",))
    returning = StatementFacts(
        kind=StatementKind.DELETE,
        kinds=frozenset({StatementKind.DELETE}),
        relations_read=frozenset({"crm.customers"}),
        relations_written=frozenset({"crm.customers"}),
        output_columns=(OutputColumn("email", frozenset({("crm.customers", "email")})),),
    )
    assert decide(policy, explain).effect is Effect.ALLOW
    assert decide(policy, insert_select).effect is Effect.ALLOW
    assert decide(policy, returning).effect is Effect.DENY


def test_multiple_statements_is_a_query_level_risk() -> None:
    policy = deny_on("multiple_statements: true")
    assert decide(policy, statement()).effect is Effect.ALLOW
    decision = decide(policy, statement(), statement())
    assert decision.effect is Effect.DENY
    assert decision.message == (
        "denied by rule 'risky' (statement 1 of 2): too risky (multiple statements in one query)"
    )
    assert "multiple statements in one query" in decision.facts.risks


def test_copy_destinations() -> None:
    policy = deny_on("copy_to: [file, program]")
    for destination, effect in (
        ("program", Effect.DENY),
        ("file", Effect.DENY),
        ("stdout", Effect.ALLOW),
    ):
        decision = decide(policy, statement("copy_to", reads=("crm.products",), copy=destination))
        assert decision.effect is effect, destination
    copy_in = statement("copy_from", writes=("crm.products",), copy="program")
    assert decide(policy, copy_in).effect is Effect.ALLOW
    decision = decide(deny_on("copy_from: [program]"), copy_in)
    assert decision.effect is Effect.DENY
    assert decision.message.endswith("(COPY FROM program)")


def test_dynamic_code_is_denied_unless_a_rule_allows_it_explicitly() -> None:
    do_block = statement("do", dynamic=True)
    decision = decide(engine(ALLOW_ALL), do_block)
    assert decision.effect is Effect.DENY
    assert decision.deciding_rule is None
    assert decision.rules == ("everything",)
    assert "no rule allows role 'agent' to run dynamic code" in decision.message
    explicit = ALLOW_ALL + "  - id: do\n    match: {risks: {dynamic: true}}\n    effect: allow\n"
    assert decide(engine(explicit), do_block).effect is Effect.ALLOW
    approval = (
        "  - id: do\n    match: {kinds: [do], risks: {dynamic: true}}\n"
        "    effect: require_approval\n    message: a DBA looks at DO blocks first\n"
        "    approval: {group: dba}\n"
    )
    assert decide(engine(approval), do_block).effect is Effect.REQUIRE_APPROVAL
    masked = (
        "  - id: do\n    match: {risks: {dynamic: true}}\n    effect: mask\n"
        "    mask: {categories: [email], method: redact}\n"
    )
    assert decide(engine(masked), do_block).effect is Effect.DENY


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        (datetime(2025, 3, 3, 9, 0, tzinfo=UTC), True),  # Monday 10:00 in Berlin
        (datetime(2025, 3, 3, 6, 59, tzinfo=UTC), False),  # Monday 07:59 in Berlin
        (datetime(2025, 3, 3, 7, 0, tzinfo=UTC), True),  # 08:00 in Berlin: the window opens
        (datetime(2025, 3, 3, 17, 0, tzinfo=UTC), False),  # 18:00 in Berlin: closed
        (datetime(2025, 3, 8, 9, 0, tzinfo=UTC), False),  # Saturday
        (datetime(2025, 7, 7, 6, 30, tzinfo=UTC), True),  # summer time: 08:30 in Berlin
        (datetime(2025, 3, 3, 9, 0), True),  # naive: taken as UTC
    ],
)
def test_time_window(now: datetime, inside: bool) -> None:
    window = (
        'time_window: {days: [mon, tue, wed, thu, fri], from: "08:00", to: "18:00", '
        "timezone: Europe/Berlin, outside: true}"
    )
    decision = decide(deny_on(window), statement(), now=now)
    assert decision.effect is (Effect.ALLOW if inside else Effect.DENY)
    if not inside:
        assert decision.message.endswith("(at this time of day)")


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        (datetime(2025, 3, 7, 23, 0, tzinfo=UTC), True),  # Friday 23:00
        (datetime(2025, 3, 8, 5, 59, tzinfo=UTC), True),  # Saturday 05:59: Friday's window
        (datetime(2025, 3, 8, 6, 0, tzinfo=UTC), False),
        (datetime(2025, 3, 8, 23, 0, tzinfo=UTC), False),  # Saturday night: not a listed day
        (datetime(2025, 3, 9, 23, 0, tzinfo=UTC), True),  # Sunday night
    ],
)
def test_time_window_over_midnight(now: datetime, inside: bool) -> None:
    window = 'time_window: {days: [sun, mon, tue, wed, thu, fri], from: "22:00", to: "06:00"}'
    decision = decide(deny_on(window), statement(), now=now)
    assert decision.effect is (Effect.DENY if inside else Effect.ALLOW)


def test_time_window_to_midnight() -> None:
    policy = deny_on('time_window: {from: "12:00", to: "24:00"}')
    assert (
        decide(policy, statement(), now=datetime(2025, 3, 3, 23, 59, tzinfo=UTC)).effect
        is Effect.DENY
    )
    assert (
        decide(policy, statement(), now=datetime(2025, 3, 3, 0, 1, tzinfo=UTC)).effect
        is Effect.ALLOW
    )


def test_time_window_defaults_to_the_current_time() -> None:
    policy = deny_on('time_window: {from: "00:00", to: "24:00"}')
    assert decide(policy, statement()).effect is Effect.DENY


def test_all_given_risks_must_be_present() -> None:
    policy = deny_on("without_where: true, multiple_statements: true")
    unbounded = statement("update", writes=("crm.orders",), without_where=True)
    assert decide(policy, unbounded).effect is Effect.ALLOW
    assert decide(policy, unbounded, statement()).effect is Effect.DENY


# --- precedence, masks, several statements -----------------------------------------------

PRECEDENCE = """
  - id: allow-all
    effect: allow
  - id: mask-email
    match: {reads: [email]}
    effect: mask
    mask: {categories: [email], method: partial}
  - id: mask-phone
    match: {reads: [phone]}
    effect: mask
    mask: {categories: [phone, iban], method: hash}
  - id: approve-updates
    match: {kinds: [update]}
    effect: require_approval
    message: updates wait for a DPO
    approval: {group: dpo}
  - id: approve-customers
    match: {kinds: [update], relations: [crm.customers]}
    effect: require_approval
    message: customer updates wait for two DPOs
    approval: {group: dpo, approvals: 2}
  - id: deny-iban
    match: {reads: [iban]}
    effect: deny
    message: no IBANs
"""


def customers_read(*columns: str) -> StatementFacts:
    return statement(
        reads=("crm.customers",), columns={"crm.customers": frozenset(columns)}, limit=1
    )


def test_allow_when_only_allow_fires() -> None:
    decision = decide(engine(PRECEDENCE), customers_read("city"))
    assert decision.effect is Effect.ALLOW
    assert decision.rules == ("allow-all",)


def test_mask_beats_allow_and_masks_combine() -> None:
    decision = decide(engine(PRECEDENCE), customers_read("email", "phone"))
    assert decision.effect is Effect.MASK
    assert decision.deciding_rule == "mask-email"
    assert decision.rules == ("allow-all", "mask-email", "mask-phone")
    assert decision.masks == (
        MaskSpec("mask-email", frozenset({"email"}), MaskMethod.PARTIAL),
        MaskSpec("mask-phone", frozenset({"phone", "iban"}), MaskMethod.HASH),
    )
    assert decision.message == (
        "allowed with email, iban, phone masked (rules 'mask-email', 'mask-phone')"
    )


def test_approval_beats_mask_and_keeps_the_masks() -> None:
    update = statement(
        "update",
        reads=("crm.customers",),
        writes=("crm.customers",),
        columns={"crm.customers": frozenset({"email"})},
    )
    decision = decide(engine(PRECEDENCE), update)
    assert decision.effect is Effect.REQUIRE_APPROVAL
    # The first approval rule in document order decides; every one that fired counts.
    assert decision.deciding_rule == "approve-updates"
    assert decision.approval == ApprovalRequirement("approve-updates", "dpo", 2, None)
    assert [mask.rule for mask in decision.masks] == ["mask-email"]


def test_deny_beats_everything() -> None:
    decision = decide(engine(PRECEDENCE), customers_read("email", "phone", "iban"))
    assert decision.effect is Effect.DENY
    assert decision.deciding_rule == "deny-iban"
    assert decision.message == "denied by rule 'deny-iban': no IBANs"
    assert decision.approval is None
    assert len(decision.masks) == 2


def test_one_denied_statement_denies_the_query() -> None:
    policy = engine(ALLOW_CRM)
    decision = decide(policy, statement(reads=("crm.orders",)), statement("ddl", writes=("crm.x",)))
    assert decision.effect is Effect.DENY
    assert decision.message.startswith("denied (statement 2 of 2): no rule allows role 'agent'")
    assert decision.rules == ("agents-read-crm",)


def test_explicit_deny_rule_is_preferred_to_a_default_deny() -> None:
    policy = engine(
        ALLOW_CRM + "  - id: no-ddl\n    match: {kinds: [ddl]}\n    effect: deny\n"
        "    message: propose a migration instead\n"
    )
    decision = decide(policy, statement("delete", writes=("crm.orders",)), statement("ddl"))
    assert decision.deciding_rule == "no-ddl"
    assert decision.message == (
        "denied by rule 'no-ddl' (statement 2 of 2): propose a migration instead"
    )


def test_facts_summarise_without_values() -> None:
    policy = deny_on("wildcard_pattern: true")
    query = statement(
        reads=("crm.customers", "crm.orders"),
        writes=("crm.archive",),
        kinds=("insert",),
        columns={"crm.customers": frozenset({"email", "full_name"})},
        functions=("lower",),
        patterns=(like("email", ParameterRef(1)),),
    )
    decision = decide(policy, query, params=(f"%{SECRET}",))
    facts = decision.facts
    assert facts.statements == 1
    assert facts.kinds == ("insert", "select")
    assert facts.relations_read == ("crm.customers", "crm.orders")
    assert facts.relations_written == ("crm.archive",)
    assert facts.categories_read == ("email", "name")
    assert facts.functions == ("lower",)
    assert facts.risks == (
        "a pattern not anchored to a fixed prefix on crm.customers.email",
        "no LIMIT on a read of crm.customers, crm.orders",
    )
    json.dumps(decision.as_dict())
    assert_free_of(decision, SECRET)


def test_names_from_the_sql_are_escaped_in_messages() -> None:
    decision = decide(engine(ALLOW_CRM), statement("delete", writes=('crm."x\ny"',)))
    assert decision.effect is Effect.DENY
    assert "\n" not in decision.message
    assert 'crm."x\\ny"' in decision.message


def test_decisions_are_stable_across_many_roles() -> None:
    policy = engine(ALLOW_CRM)
    for number in range(1500):
        decide(policy, statement(reads=("crm.orders",)), role=f"role-{number}")
    assert decide(policy, statement(reads=("crm.orders",))).effect is Effect.ALLOW


def test_sets_role() -> None:
    policy = deny_on("sets_role: true")
    set_role = StatementFacts(
        kind=StatementKind.SET,
        kinds=frozenset({StatementKind.SET}),
        sets_role=True,
        statement_type="VariableSetStmt",
    )
    decision = decide(policy, set_role)
    assert decision.effect is Effect.DENY
    assert decision.message == (
        "denied by rule 'risky': too risky (changes the role later statements run as)"
    )
    assert decide(policy, statement("set")).effect is Effect.ALLOW


def test_statement_types_single_out_statements_of_one_kind() -> None:
    policy = engine(
        "  - id: show\n    match: {kinds: [other], statement_types: [VariableShowStmt]}\n"
        "    effect: allow\n"
    )
    show = StatementFacts(
        kind=StatementKind.OTHER,
        kinds=frozenset({StatementKind.OTHER}),
        statement_type="VariableShowStmt",
    )
    checkpoint = StatementFacts(
        kind=StatementKind.OTHER,
        kinds=frozenset({StatementKind.OTHER}),
        statement_type="CheckPointStmt",
    )
    decision = decide(policy, show)
    assert decision.effect is Effect.ALLOW
    assert decide(policy, checkpoint).effect is Effect.DENY
