"""The policy document: validation errors that say where and why, and stable versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from custos.policy import PolicyDocument, PolicyEngine, PolicyError, load_policy, policy_version
from custos.policy.models import json_schema_text

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "custos" / "policy" / "policy.schema.json"
DEMO_POLICY = ROOT / "custos" / "demo" / "policy.yaml"

GOOD_RULE = "  - id: ok\n    effect: allow\n"


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    return list(caught.value.problems)


def rule_problems(rule: str) -> list[str]:
    return problems("rules:\n" + rule)


# --- what a valid document holds ---------------------------------------------------------


def test_demo_policy_is_valid_and_has_the_demo_roles() -> None:
    from custos.demo.embedded import DEMO_ROLES

    document = load_policy(DEMO_POLICY)
    assert [role.model_dump(exclude_defaults=True) for role in document.roles] == DEMO_ROLES
    assert [target.database for target in document.targets] == ["custos_demo"]
    assert document.catalog["crm.customers"].columns["email"] == "email"


def test_minimal_documents() -> None:
    assert load_policy("rules: []").rules == []
    assert load_policy("rules:\n" + GOOD_RULE).rules[0].id == "ok"


def test_full_rule_is_accepted() -> None:
    document = load_policy(
        """
catalog:
  crm.customers: {subject: id, columns: {email: email, shoe_size: "custom:shoe-size"}}
rules:
  - id: everything-at-once
    description: every condition
    match:
      roles: [agent, "ci-*"]
      kinds: [select, copy_to]
      statement_types: [SelectStmt]
      relations: ["crm.*", "*.customers"]
      reads: [email, "custom:shoe-size"]
      writes: [iban]
      functions: [pg_read_file, "dblink*", "pg_catalog.lo_[ei]*"]
      risks:
        without_where: true
        wildcard_pattern: true
        limit_above: 100
        multiple_statements: true
        copy_to: [file, program]
        copy_from: [program]
        dynamic: true
        sets_role: true
        time_window: {days: [sat, sun], from: "22:00", to: "06:00", timezone: Europe/Berlin}
    effect: require_approval
    message: ask first
    approval: {group: dpo, approvals: 2, grant_for: 15m}
"""
    )
    rule = document.rules[0]
    assert rule.match.risks.time_window is not None
    assert rule.match.risks.time_window.from_ == "22:00"
    assert rule.approval is not None
    assert rule.approval.grant_for == "15m"


# --- errors, each naming its place -----------------------------------------------------------


def test_unknown_statement_kind_names_the_place_and_the_choices() -> None:
    others = "".join(f"  - id: r{n}\n    effect: allow\n" for n in range(3))
    found = rule_problems(
        others + "  - id: agents-read\n    match: {kinds: [selec]}\n    effect: allow\n"
    )
    assert found == [
        "rules[3].match.kinds[0]: 'selec' is not a statement kind; use one of select, insert, "
        "update, delete, merge, copy_to, copy_from, ddl, grant, set, call, do, transaction, "
        "other (in rule 'agents-read')"
    ]


def test_unknown_category() -> None:
    assert problems("catalog:\n  crm.customers: {columns: {email: emial}}\nrules: []") == [
        "catalog[\"crm.customers\"].columns.email: 'emial' is not a personal-data category; "
        "use one of address, birth_date, email, free_text, iban, name, national_id, phone, "
        "or custom:<name> for your own"
    ]
    found = rule_problems("  - id: r\n    match: {reads: [Email]}\n    effect: allow\n")
    assert found[0].startswith("rules[0].match.reads[0]: 'Email' is not a personal-data")
    found = rule_problems(
        "  - id: r\n    effect: mask\n    mask: {categories: ['custom:'], method: redact}\n"
    )
    assert found[0].startswith("rules[0].mask.categories[0]: 'custom:' is not")


@pytest.mark.parametrize("key", ["customers", "crm.customers.email", "crm .customers", '"crm".x'])
def test_catalog_keys_must_be_schema_table(key: str) -> None:
    found = problems(f"catalog:\n  '{key}': {{}}\nrules: []")
    assert len(found) == 1
    assert "must be schema.table, e.g. crm.customers" in found[0]


def test_duplicate_rule_ids() -> None:
    assert rule_problems(GOOD_RULE + GOOD_RULE) == [
        "rule id 'ok' appears more than once; names must be unique"
    ]


def test_duplicate_roles_and_targets() -> None:
    role = "  - {name: agent, trust: [{issuer: dev}]}\n"
    assert problems("roles:\n" + role + role + "rules: []") == [
        "role 'agent' appears more than once; names must be unique"
    ]
    target = "  - {name: crm, database: a}\n"
    assert problems("targets:\n" + target + target) == [
        "target 'crm' appears more than once; names must be unique"
    ]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "  - id: r\n    effect: require_approval\n    message: ask\n",
            "rules[0]: effect require_approval needs approval: {group: ..., approvals: 1} "
            "(in rule 'r')",
        ),
        (
            "  - id: r\n    effect: allow\n    approval: {group: dpo}\n",
            "rules[0]: approval is only for effect require_approval, not allow (in rule 'r')",
        ),
        (
            "  - id: r\n    effect: mask\n",
            "rules[0]: effect mask needs mask: {categories: [...], method: ...} (in rule 'r')",
        ),
        (
            "  - id: r\n    effect: deny\n    message: no way\n"
            "    mask: {categories: [email], method: hash}\n",
            "rules[0]: mask is only for effect mask, not deny (in rule 'r')",
        ),
        (
            "  - id: r\n    effect: deny\n",
            "rules[0]: effect deny needs a message telling the agent why and what to do next "
            "(in rule 'r')",
        ),
        (
            "  - id: r\n    effect: deny\n    message: no\n",
            "rules[0].message: YAML read this text as true/false: put it in quotes (in rule 'r')",
        ),
        (
            "  - id: Agents Read\n    effect: allow\n",
            "rules[0].id: rule id 'Agents Read' must be lower-case letters, digits and hyphens "
            "(at most 63), e.g. agents-read-crm",
        ),
        (
            "  - id: r\n    effect: permit\n",
            "rules[0].effect: Input should be 'deny', 'require_approval', 'mask' or 'allow' "
            "(in rule 'r')",
        ),
        (
            "  - id: r\n    effect: mask\n    mask: {categories: [email], method: scramble}\n",
            "rules[0].mask.method: Input should be 'redact', 'partial', 'pseudonym', 'hash',"
            " 'generalise' or 'null' (in rule 'r')",
        ),
        (
            "  - id: r\n    effect: require_approval\n    message: ask\n"
            "    approval: {group: dpo, grant_for: '60'}\n",
            "rules[0].approval.grant_for: invalid duration '60': write a whole number followed "
            "by s, m, h or d, for example 30s, 15m, 1h or 2d (in rule 'r')",
        ),
        (
            "  - id: r\n    effect: require_approval\n    message: ask\n"
            "    approval: {group: dpo, approvals: 0}\n",
            "rules[0].approval.approvals: Input should be greater than or equal to 1 (in rule 'r')",
        ),
        (
            "  - id: r\n    match: {kinds: []}\n    effect: allow\n",
            "rules[0].match.kinds: an empty list matches nothing: leave the condition out to "
            "match any (in rule 'r')",
        ),
        (
            "  - id: r\n    match: {role: [agent]}\n    effect: allow\n",
            "rules[0].match.role: unknown field; check its spelling against "
            "`custos policy schema` (in rule 'r')",
        ),
        (
            "  - id: r\n    match: {risks: {without_where: false}}\n    effect: allow\n",
            "rules[0].match.risks.without_where: a risk condition requires the risk to be "
            "present: write true, or leave the condition out (in rule 'r')",
        ),
        (
            "  - id: r\n    match: {risks: {limit_above: -1}}\n    effect: allow\n",
            "rules[0].match.risks.limit_above: Input should be greater than or equal to 0 "
            "(in rule 'r')",
        ),
        (
            "  - id: r\n    match: {risks: {copy_to: [stdin]}}\n    effect: allow\n",
            "rules[0].match.risks.copy_to[0]: Input should be 'stdout', 'file' or 'program' "
            "(in rule 'r')",
        ),
        (
            "  - id: r\n    match: {statement_types: [show]}\n    effect: allow\n",
            "rules[0].match.statement_types[0]: 'show' is not a statement type: use "
            "PostgreSQL's parse node name, e.g. VariableShowStmt (see `custos policy explain`) "
            "(in rule 'r')",
        ),
    ],
)
def test_rule_errors(rule: str, message: str) -> None:
    assert rule_problems(rule) == [message]


@pytest.mark.parametrize(
    ("field", "glob", "message"),
    [
        ("relations", "customers", "relation glob 'customers' has no schema"),
        ("relations", "crm.[abc", "'crm.[abc' is not a valid relation glob: '[' is never closed"),
        ("relations", "crm.[a[b]]", "'crm.[a[b]]' is not a valid relation glob: nested '['"),
        ("functions", "pg read file", "'pg read file' is not a valid function glob"),
        ("functions", "", "'' is not a valid function glob"),
        ("roles", "agent;drop", "'agent;drop' is not a valid role glob"),
    ],
)
def test_bad_globs(field: str, glob: str, message: str) -> None:
    found = rule_problems(f"  - id: r\n    match: {{{field}: ['{glob}']}}\n    effect: allow\n")
    assert len(found) == 1
    assert found[0].startswith(f"rules[0].match.{field}[0]: {message}")


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ('{from: "8:00", to: "18:00"}', "from: '8:00' is not a time of day"),
        ('{from: "08:00", to: "25:00"}', "to: '25:00' is not a time of day"),
        ("{from: 08:00, to: 18:00}", "to: YAML read this time as a number: put it in quotes"),
        ('{from: "08:00", to: "08:00"}', "the window from 08:00 to 08:00 is empty"),
        (
            '{from: "08:00", to: "18:00", timezone: Europe/Atlantis}',
            "'Europe/Atlantis' is not a known",
        ),
        ('{from: "08:00", to: "18:00", days: [monday]}', "days[0]: Input should be 'mon'"),
        ('{from: "08:00", to: "18:00", days: [mon, mon]}', "days: a day is listed twice"),
        ('{from: "08:00", to: "18:00", days: []}', "days: List should have at least 1 item"),
        ('{to: "18:00"}', "from: Field required"),
    ],
)
def test_bad_time_windows(window: str, message: str) -> None:
    found = rule_problems(
        f"  - id: r\n    match: {{risks: {{time_window: {window}}}}}\n    effect: allow\n"
    )
    assert len(found) == 1, found
    assert message in found[0]
    assert found[0].startswith("rules[0].match.risks.time_window")


def test_several_errors_are_reported_together() -> None:
    found = rule_problems(
        "  - id: a\n    match: {kinds: [selec], relations: [customers]}\n    effect: allow\n"
        "  - id: b\n    effect: mask\n"
    )
    assert [problem.split(":")[0] for problem in found] == [
        "rules[0].match.kinds[0]",
        "rules[0].match.relations[0]",
        "rules[1]",
    ]


def test_yaml_problems() -> None:
    assert problems("rules: [")[0].startswith("not valid YAML at line 1, column 9:")
    assert problems("rules:\n  - id: a\n    id: b\n    effect: allow\n") == [
        "not valid YAML at line 3, column 5: the key 'id' appears twice; keep one"
    ]
    assert problems("") == ["the document is empty; it needs at least rules: [...]"]
    assert problems("- a\n- b\n") == ["the document must be a mapping (roles:, catalog:, rules:)"]
    assert problems("rules: []\nrule: []\n") == [
        "rule: unknown field; check its spelling against `custos policy schema`"
    ]


def test_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - id: r\n    match: {kinds: [selec]}\n    effect: allow\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.origin == str(path)
    assert str(caught.value).startswith(f"invalid policy {path}: rules[0].match.kinds[0]:")
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "missing.yaml")
    assert caught.value.problems == ("cannot read the file: No such file or directory",)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "binary.yaml")
    assert caught.value.problems == ("the file is not UTF-8 text",)


def test_yaml_tags_that_build_objects_are_refused() -> None:
    found = problems("rules: !!python/object/apply:os.system ['true']\n")
    assert found[0].startswith("not valid YAML")


def test_document_is_frozen() -> None:
    document = load_policy("rules:\n" + GOOD_RULE)
    with pytest.raises(ValueError, match="frozen"):
        document.rules[0].effect = "deny"  # type: ignore[misc]


# --- versions ---------------------------------------------------------------------------------

ONE_WAY = """
# a comment
catalog:
  crm.customers: {subject: id, columns: {email: email}}
rules:
  - id: read
    match: {roles: [agent], kinds: [select]}
    effect: allow
"""

ANOTHER_WAY = """
rules:
- effect: "allow"
  match:
    kinds:
    - select
    roles: ['agent']     # same rule, written differently
  id: read
catalog:
  "crm.customers":
    columns:
      email: email
    subject: id
roles: []
"""


def test_version_ignores_formatting_comments_and_key_order() -> None:
    assert policy_version(load_policy(ONE_WAY)) == policy_version(load_policy(ANOTHER_WAY))


def test_version_changes_with_meaning() -> None:
    changed = ONE_WAY.replace("kinds: [select]", "kinds: [select, copy_to]")
    assert policy_version(load_policy(ONE_WAY)) != policy_version(load_policy(changed))
    reordered = ONE_WAY + "  - id: other\n    effect: allow\n"
    assert policy_version(load_policy(ONE_WAY)) != policy_version(load_policy(reordered))


def test_version_is_sha256_hex_and_engines_carry_it() -> None:
    document = load_policy(ONE_WAY)
    version = policy_version(document)
    assert len(version) == 64
    assert int(version, 16) >= 0
    assert PolicyEngine(document).version == version
    assert policy_version(PolicyDocument()) == policy_version(load_policy("rules: []"))


# --- the JSON Schema ----------------------------------------------------------------------------


def test_committed_schema_is_current() -> None:
    assert SCHEMA_FILE.read_text() == json_schema_text(), (
        "regenerate it: custos policy schema > custos/policy/policy.schema.json"
    )
