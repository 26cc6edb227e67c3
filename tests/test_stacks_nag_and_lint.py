"""Every stack passes cdk-nag's AwsSolutions pack and cfn-lint.

cdk-nag findings are fixed or acknowledged next to the construct, with a reason a reviewer
would accept; the acknowledgements of the foundation stacks are pinned here so a new one is
a visible change.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cdk_fixtures import TEST_CONTEXT, CdkSynth

from stacks.app_builder import STACK_NAMES

CFN_LINT = Path(sys.executable).parent / "cfn-lint"

# cfn-lint rules that only flag what the CDK generates, never a choice made in stacks/:
CFN_LINT_IGNORES = {
    # The CDK adds an explicit DependsOn on a role/policy it also references, so that the
    # role's policy exists before the resource is created; the duplicate is harmless.
    "W3005",
    # Subnets name their zone because the zones are pinned in context on purpose (an
    # offline, reproducible synth); the zones are validated against the region.
    "W3010",
}

EXPECTED_ACKNOWLEDGEMENTS = {
    (
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AWSLambdaBasicExecutionRole]",
        "Custos-Policy/PolicyFunction/ServiceRole/Resource",
    ),
    (
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AWSLambdaVPCAccessExecutionRole]",
        "Custos-Policy/PolicyFunction/ServiceRole/Resource",
    ),
    (
        "AwsSolutions-IAM5[Resource::*]",
        "Custos-Policy/PolicyFunction/ServiceRole/DefaultPolicy/Resource",
    ),
    ("AwsSolutions-L1", "Custos-Policy/PolicyFunction/Resource"),
}
FOUNDATION_STACKS = ("Custos-Network", "Custos-AuditStorage", "Custos-Policy")


def test_every_stack_is_synthesized(cdk_synth: CdkSynth) -> None:
    assert sorted(cdk_synth.templates) == sorted(STACK_NAMES)


@pytest.mark.parametrize("stack", STACK_NAMES)
def test_no_unacknowledged_nag_errors_or_warnings(cdk_synth: CdkSynth, stack: str) -> None:
    findings = [
        str(finding) for finding in cdk_synth.violations if finding.path.startswith(f"{stack}/")
    ]
    assert findings == []


def test_synth_passes_validation(cdk_synth: CdkSynth) -> None:
    assert cdk_synth.synth_error is None


def test_every_acknowledgement_has_a_reason(cdk_synth: CdkSynth) -> None:
    assert cdk_synth.acknowledged
    assert all(finding.reason and len(finding.reason) > 30 for finding in cdk_synth.acknowledged)


def test_foundation_acknowledgements_are_the_reviewed_ones(cdk_synth: CdkSynth) -> None:
    acknowledged = {
        (finding.rule, finding.path)
        for finding in cdk_synth.acknowledged
        if finding.plugin == "AwsSolutions"
        and finding.path.startswith(tuple(f"{stack}/" for stack in FOUNDATION_STACKS))
    }
    assert acknowledged == EXPECTED_ACKNOWLEDGEMENTS


@pytest.mark.parametrize("stack", STACK_NAMES)
def test_cfn_lint_is_clean(cdk_synth: CdkSynth, stack: str) -> None:
    template = cdk_synth.template_files[stack]
    result = subprocess.run(
        [
            str(CFN_LINT),
            "--format",
            "json",
            "--regions",
            TEST_CONTEXT["region"],
            "--ignore-checks",
            *sorted(CFN_LINT_IGNORES),
            "--",
            str(template),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [
        f"{match['Rule']['Id']} {match['Message']}" for match in json.loads(result.stdout or "[]")
    ]
    assert problems == [], result.stderr
