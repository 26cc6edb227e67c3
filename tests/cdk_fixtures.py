"""The CDK app, synthesized once per test session, with its templates and cdk-nag findings.

cdk-nag 3 runs as a CDK validation plugin: unacknowledged findings make ``app.synth()`` raise
and land in ``validation-report.json``. The fixture keeps going in that case, so template
tests still run and the nag test reports every finding at once.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from aws_cdk import assertions

TEST_CONTEXT: dict[str, Any] = {
    "account": "111122223333",
    "region": "eu-central-1",
    "availability_zones": ["eu-central-1a", "eu-central-1b"],
    "targets": [
        {"name": "crm", "host": "crm.internal.example", "dbname": "crm"},
        {
            "name": "billing",
            "host": "billing.internal.example",
            "port": 6432,
            "dbname": "billing",
            "secret_name": "custos/billing",
        },
    ],
    "oidc_issuers": [{"issuer": "https://issuer.example", "audiences": ["custos"]}],
    "audit_retention_days": 400,
    "events_ttl_days": 45,
    "alarm_email": "oncall@example.com",
}

# A bucket's PublicAccessBlockConfiguration when every kind of public access is blocked.
BLOCK_ALL = {
    "BlockPublicAcls": True,
    "BlockPublicPolicy": True,
    "IgnorePublicAcls": True,
    "RestrictPublicBuckets": True,
}


def template_resources(template: dict[str, Any], resource_type: str) -> dict[str, Any]:
    """A synthesized template's resources of one type, by logical id."""
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    }


def only_resource(
    template: dict[str, Any], resource_type: str, fragment: str = ""
) -> tuple[str, Any]:
    """The one resource of the type whose logical id holds `fragment`: its id and properties."""
    found = [
        (name, resource["Properties"])
        for name, resource in template_resources(template, resource_type).items()
        if fragment in name
    ]
    assert len(found) == 1, [name for name, _ in found]
    return found[0]


@dataclasses.dataclass(frozen=True)
class NagFinding:
    plugin: str
    rule: str
    severity: str
    path: str
    reason: str | None = None

    def __str__(self) -> str:
        return f"{self.plugin}: {self.severity} {self.rule} at {self.path}"


@dataclasses.dataclass(frozen=True)
class CdkSynth:
    outdir: Path
    templates: dict[str, assertions.Template]
    template_files: dict[str, Path]
    violations: list[NagFinding]  # unacknowledged, error or warning
    acknowledged: list[NagFinding]
    synth_error: str | None


def context_with(**changes: Any) -> dict[str, Any]:
    """A deep copy of the test context with top-level ``changes`` applied."""
    context = copy.deepcopy(TEST_CONTEXT)
    context.update(changes)
    return context


def _findings(report: dict[str, Any], key: str) -> list[NagFinding]:
    return [
        NagFinding(
            plugin=plugin["pluginName"],
            rule=violation["ruleName"],
            severity=violation["severity"],
            path=construct["constructPath"],
            reason=violation.get("reason"),
        )
        for plugin in report.get("pluginReports", [])
        for violation in plugin.get(key, [])
        for construct in violation["violatingConstructs"]
    ]


@pytest.fixture(scope="session")
def cdk_synth(tmp_path_factory: pytest.TempPathFactory) -> CdkSynth:
    # Imported here: loading aws-cdk-lib takes seconds, which non-CDK test runs should not pay.
    import jsii.errors
    from aws_cdk import assertions

    from stacks.app_builder import build_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    app = build_app({"custos": context_with(), "custos:skip_bundling": True}, outdir=str(outdir))
    synth_error = None
    try:
        app.synth()
    except jsii.errors.JSIIError as exc:
        synth_error = str(exc)
    report_file = outdir / "validation-report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    template_files = {
        path.name.removesuffix(".template.json"): path
        for path in sorted(outdir.glob("*.template.json"))
    }
    return CdkSynth(
        outdir=outdir,
        templates={
            name: assertions.Template.from_json(json.loads(path.read_text()))
            for name, path in template_files.items()
        },
        template_files=template_files,
        violations=_findings(report, "violations"),
        acknowledged=_findings(report, "suppressedViolations"),
        synth_error=synth_error,
    )


@pytest.fixture(scope="session")
def cdk_templates(cdk_synth: CdkSynth) -> dict[str, assertions.Template]:
    """Synthesized templates by stack name (``Custos-Network``, ...)."""
    return cdk_synth.templates
