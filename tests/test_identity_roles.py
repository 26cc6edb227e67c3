"""Assuming roles by their trust statements, and the configuration models behind them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from custos.identity import (
    AuthenticationError,
    Authenticator,
    IssuerConfig,
    RoleConfig,
    RoleResolver,
    TrustStatement,
)
from tests.oidc_fixtures import AUDIENCE, OidcServer, SigningKey, claims_for, mint, rsa_key

ISSUER = "https://token.actions.githubusercontent.com"
OTHER_ISSUER = "https://login.example.com"


def role(name: str, *statements: TrustStatement) -> RoleConfig:
    return RoleConfig(name=name, trust=list(statements))


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISSUER, "aud": "custos", "sub": "agent-7", "exp": 2_000_000_000}
    return {**base, **overrides}


def refused(resolver: RoleResolver, role_name: str, token_claims: dict[str, Any]) -> str:
    with pytest.raises(AuthenticationError) as caught:
        resolver.assume(role_name, token_claims)
    assert caught.value.sqlstate == "28000"
    assert caught.value.hint
    return caught.value.message


# --- which role, and whether it exists ---------------------------------------------------


def test_role_that_does_not_exist_is_refused() -> None:
    resolver = RoleResolver([role("reader", TrustStatement(issuer=ISSUER))])
    assert refused(resolver, "dba", claims()) == "role 'dba' does not exist"
    with pytest.raises(AuthenticationError) as caught:
        resolver.assume("dba", claims())
    assert "ask your administrator for the role name" in (caught.value.hint or "")
    assert "reader" not in (caught.value.hint or "")


def test_statement_with_only_an_issuer_trusts_every_token_of_that_issuer() -> None:
    reader = role("reader", TrustStatement(issuer=ISSUER))
    assert RoleResolver([reader]).assume("reader", claims()) is reader


def test_statement_for_another_issuer_does_not_match() -> None:
    resolver = RoleResolver([role("reader", TrustStatement(issuer=OTHER_ISSUER))])
    message = refused(resolver, "reader", claims())
    assert message == (
        f"role 'reader' cannot be assumed by subject 'agent-7' from issuer {ISSUER}: "
        f"no trust statement matched (issuer: trusts only {OTHER_ISSUER})"
    )


def test_any_matching_statement_suffices() -> None:
    ci = role(
        "ci",
        TrustStatement(issuer=OTHER_ISSUER),
        TrustStatement(issuer=ISSUER, subjects=["nobody"]),
        TrustStatement(issuer=ISSUER, subjects=["agent-*"]),
    )
    assert RoleResolver([ci]).assume("ci", claims()) is ci


def test_duplicate_role_names_are_a_configuration_error() -> None:
    statement = TrustStatement(issuer=ISSUER)
    with pytest.raises(ValueError, match="configured more than once"):
        RoleResolver([role("reader", statement), role("reader", statement)])


# --- conditions --------------------------------------------------------------------------


def test_subject_globs_are_case_sensitive_and_any_may_match() -> None:
    deployer = role(
        "deployer",
        TrustStatement(issuer=ISSUER, subjects=["repo:acme/*:ref:refs/heads/main", "bot-?"]),
    )
    resolver = RoleResolver([deployer])
    assert resolver.assume("deployer", claims(sub="repo:acme/api:ref:refs/heads/main"))
    assert resolver.assume("deployer", claims(sub="bot-1"))
    for sub in ("repo:ACME/api:ref:refs/heads/main", "repo:evil/api:ref:refs/heads/main", "bot-12"):
        message = refused(resolver, "deployer", claims(sub=sub))
        assert message.endswith(
            "(subject: must match one of ['repo:acme/*:ref:refs/heads/main', 'bot-?'])"
        )


def test_groups_need_any_one_of_the_listed_groups() -> None:
    resolver = RoleResolver([role("dba", TrustStatement(issuer=ISSUER, groups=["dba", "sre"]))])
    assert resolver.assume("dba", claims(groups=["eng", "sre"]))
    assert resolver.assume("dba", claims(groups="dba"))
    for groups in (["eng"], [], "eng", None, [{"name": "dba"}], 7):
        refused(resolver, "dba", claims(groups=groups))


def test_group_refusal_reads_as_the_documented_example() -> None:
    resolver = RoleResolver([role("dba", TrustStatement(issuer=ISSUER, groups=["dba"]))])
    message = refused(resolver, "dba", claims(groups=["eng"]))
    assert message == (
        f"role 'dba' cannot be assumed by subject 'agent-7' from issuer {ISSUER}: "
        "no trust statement matched (groups: need one of ['dba'])"
    )


def test_claim_strings_are_globs() -> None:
    statement = TrustStatement(issuer=ISSUER, claims={"repository": "acme/*"})
    resolver = RoleResolver([role("ci", statement)])
    assert resolver.assume("ci", claims(repository="acme/api"))
    message = refused(resolver, "ci", claims(repository="private-value-of-someone"))
    assert message.endswith("(claim 'repository': must match 'acme/*')")
    assert "private-value-of-someone" not in message
    refused(resolver, "ci", claims())
    refused(resolver, "ci", claims(repository=["acme/api"]))


def test_claim_lists_mean_any_of() -> None:
    statement = TrustStatement(issuer=ISSUER, claims={"environment": ["staging", "prod-*"]})
    resolver = RoleResolver([role("ci", statement)])
    assert resolver.assume("ci", claims(environment="staging"))
    assert resolver.assume("ci", claims(environment="prod-eu"))
    message = refused(resolver, "ci", claims(environment="dev"))
    assert message.endswith("(claim 'environment': must match one of ['staging', 'prod-*'])")


def test_claim_booleans_and_integers_need_the_same_type() -> None:
    statement = TrustStatement(issuer=ISSUER, claims={"email_verified": True, "run_attempt": 1})
    resolver = RoleResolver([role("ci", statement)])
    assert resolver.assume("ci", claims(email_verified=True, run_attempt=1))
    for wrong in (
        {"email_verified": "true", "run_attempt": 1},
        {"email_verified": 1, "run_attempt": 1},
        {"email_verified": True, "run_attempt": True},
        {"email_verified": True, "run_attempt": "1"},
        {"email_verified": True, "run_attempt": 2},
        {"run_attempt": 1},
    ):
        refused(resolver, "ci", claims(**wrong))


def test_every_failed_condition_is_listed() -> None:
    statement = TrustStatement(
        issuer=ISSUER, subjects=["bot-*"], groups=["dba"], claims={"ref": "refs/heads/main"}
    )
    message = refused(RoleResolver([role("ci", statement)]), "ci", claims())
    assert message.endswith(
        "(subject: must match one of ['bot-*']; groups: need one of ['dba']; "
        "claim 'ref': must match 'refs/heads/main')"
    )


def test_audiences_restrict_the_statement() -> None:
    statement = TrustStatement(issuer=ISSUER, audiences=["custos-prod"])
    resolver = RoleResolver([role("prod", statement)])
    assert resolver.assume("prod", claims(aud=["custos", "custos-prod"]))
    assert resolver.assume("prod", claims(aud="custos-prod"))
    message = refused(resolver, "prod", claims(aud="custos"))
    assert message.endswith("(audiences: need one of ['custos-prod'])")


def test_refusal_reports_the_closest_statement_of_the_tokens_issuer() -> None:
    resolver = RoleResolver(
        [
            role(
                "dba",
                TrustStatement(issuer=OTHER_ISSUER),
                TrustStatement(issuer=ISSUER, subjects=["x"], groups=["dba"]),
                TrustStatement(issuer=ISSUER, groups=["dba"]),
            )
        ]
    )
    assert refused(resolver, "dba", claims()).endswith("(groups: need one of ['dba'])")


# --- tokens minted for one role ----------------------------------------------------------


def test_token_issued_for_another_role_is_refused() -> None:
    resolver = RoleResolver(
        [role("reader", TrustStatement(issuer=ISSUER)), role("dba", TrustStatement(issuer=ISSUER))]
    )
    message = refused(resolver, "dba", claims(custos_role="reader"))
    assert message == "token was issued for role 'reader', not 'dba'"
    assert resolver.assume("reader", claims(custos_role="reader")).name == "reader"
    refused(resolver, "reader", claims(custos_role=["reader"]))


# --- the whole way, from a signed token ---------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> SigningKey:
    return rsa_key("rsa-roles")


@pytest.fixture
def server(signer: SigningKey) -> Iterator[OidcServer]:
    with OidcServer([signer]) as running:
        yield running


def authenticator_for(server: OidcServer) -> Authenticator:
    issuer = IssuerConfig(issuer=server.issuer, audiences=[AUDIENCE])
    roles = [
        role("dba", TrustStatement(issuer=server.issuer, groups=["dba"])),
        role("reader", TrustStatement(issuer=server.issuer, subjects=["agent-*"])),
    ]
    return Authenticator([issuer], roles)


def test_authenticator_assumes_the_role_the_token_is_trusted_for(
    server: OidcServer, signer: SigningKey
) -> None:
    token = mint(signer, claims_for(server.issuer, groups=["dba"]))
    principal = asyncio.run(authenticator_for(server).authenticate(token, "dba", "[::1]:5", None))
    assert (principal.role, principal.groups) == ("dba", ("dba",))


@pytest.mark.parametrize(
    ("role_name", "extra", "expected"),
    [
        ("dba", {}, "no trust statement matched (groups: need one of ['dba'])"),
        ("admin", {}, "role 'admin' does not exist"),
        ("reader", {"custos_role": "dba"}, "token was issued for role 'dba', not 'reader'"),
    ],
)
def test_authenticator_refuses_roles_with_28000(
    server: OidcServer, signer: SigningKey, role_name: str, extra: dict[str, Any], expected: str
) -> None:
    token = mint(signer, claims_for(server.issuer, **extra))
    with pytest.raises(AuthenticationError) as caught:
        asyncio.run(authenticator_for(server).authenticate(token, role_name, "1.2.3.4:5", None))
    assert caught.value.sqlstate == "28000"
    assert expected in caught.value.message
    assert token not in str(caught.value)
    assert token not in (caught.value.hint or "")


# --- configuration models ----------------------------------------------------------------

CONFIG_YAML = """
issuers:
  - issuer: https://token.actions.githubusercontent.com
    audiences: [custos]
roles:
  - name: ci-deployer
    description: Deploys from main
    trust:
      - issuer: https://token.actions.githubusercontent.com
        subjects: ["repo:acme/*:ref:refs/heads/main"]
        claims:
          repository_owner: acme
          runner_environment: [github-hosted]
          run_attempt: 1
          ref_protected: true
"""


def test_models_load_from_yaml_with_claim_types_intact() -> None:
    document = yaml.safe_load(CONFIG_YAML)
    (issuer,) = [IssuerConfig.model_validate(item) for item in document["issuers"]]
    (deployer,) = [RoleConfig.model_validate(item) for item in document["roles"]]
    assert issuer.algorithms == ["RS256", "ES256"]
    assert issuer.leeway_seconds == 30
    conditions = deployer.trust[0].claims
    assert conditions == {
        "repository_owner": "acme",
        "runner_environment": ["github-hosted"],
        "run_attempt": 1,
        "ref_protected": True,
    }
    assert type(conditions["ref_protected"]) is bool
    assert type(conditions["run_attempt"]) is int


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "Reader", "trust": [{"issuer": ISSUER}]},
        {"name": "1reader", "trust": [{"issuer": ISSUER}]},
        {"name": "a" * 64, "trust": [{"issuer": ISSUER}]},
        {"name": "read er", "trust": [{"issuer": ISSUER}]},
        {"name": "reader\n", "trust": [{"issuer": ISSUER}]},
        {"name": "reader", "trust": []},
        {"name": "reader"},
        {"name": "reader", "trust": [{"issuer": ISSUER, "subject": ["typo"]}]},
        {"name": "reader", "trust": [{"issuer": ISSUER, "groups": []}]},
        {"name": "reader", "trust": [{"issuer": ISSUER, "claims": {"x": 1.5}}]},
        {"name": "reader", "trust": [{"issuer": ISSUER}], "descripton": "typo"},
    ],
)
def test_invalid_role_configuration_is_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RoleConfig.model_validate(fields)


def test_valid_role_names() -> None:
    for name in ("reader", "_internal", "ci-deployer_2", "a" * 63):
        assert RoleConfig(name=name, trust=[TrustStatement(issuer=ISSUER)]).name == name


@pytest.mark.parametrize(
    "fields",
    [
        {"issuer": ISSUER, "audiences": []},
        {"issuer": ISSUER},
        {"issuer": ISSUER, "audiences": ["custos"], "algorithms": ["HS256"]},
        {"issuer": ISSUER, "audiences": ["custos"], "algorithms": ["none"]},
        {"issuer": ISSUER, "audiences": ["custos"], "algorithms": []},
        {"issuer": ISSUER, "audiences": ["custos"], "leeway_seconds": -1},
        {"issuer": ISSUER, "audiences": ["custos"], "jwks_uri": "file:///etc/passwd"},
        {"issuer": "not-a-url", "audiences": ["custos"]},
        {"issuer": ISSUER, "audiences": ["custos"], "audience": "typo"},
    ],
)
def test_invalid_issuer_configuration_is_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        IssuerConfig.model_validate(fields)


def test_issuer_that_is_not_a_url_needs_a_jwks_uri() -> None:
    config = IssuerConfig(
        issuer="internal-idp", audiences=["custos"], jwks_uri="https://idp.internal/keys"
    )
    assert config.jwks_uri == "https://idp.internal/keys"
