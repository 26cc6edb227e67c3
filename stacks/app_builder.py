"""Builds the Custos CDK app: the stacks, their wiring, and the cdk-nag checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks

from stacks.approvals import ApprovalsStack
from stacks.audit import AuditStack
from stacks.audit_storage import AuditStorageStack
from stacks.config import load_context
from stacks.gateway import GatewayStack
from stacks.network import NetworkStack
from stacks.policy import PolicyStack

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"
STACK_NAMES = (
    "Custos-Network",
    "Custos-AuditStorage",
    "Custos-Audit",
    "Custos-Policy",
    "Custos-Gateway",
)
# With `approvals` in the context only: without it, statements a rule holds are refused.
APPROVALS_STACK = "Custos-Approvals"


def _cdk_json_context() -> dict[str, Any]:
    # The cdk CLI hands cdk.json's context over itself; reading it here too lets
    # `python3 app.py` synth without the CLI. The CLI's values take precedence.
    if not CDK_JSON.exists():
        return {}
    context: dict[str, Any] = json.loads(CDK_JSON.read_text()).get("context", {})
    return context


def availability_zones_key(account: str, region: str) -> str:
    """The context key under which the CDK looks up a region's zones."""
    return f"availability-zones:account={account}:region={region}"


def build_app(context_overrides: dict[str, Any] | None = None, *, outdir: str | None = None) -> App:
    """The app with every stack added; ``context_overrides`` win over cdk.json and the CLI."""
    app = App(
        context=_cdk_json_context(),
        post_cli_context=context_overrides or {},
        outdir=outdir,
    )
    context = load_context(app)
    zones_key = availability_zones_key(context.account, context.region)
    if app.node.try_get_context(zones_key) is None:
        # The configured zones are the truth; pinning them keeps synth free of AWS calls.
        app.node.set_context(zones_key, list(context.availability_zones))
    env = Environment(account=context.account, region=context.region)

    network = NetworkStack(app, "Custos-Network", context=context, env=env)
    audit = AuditStorageStack(app, "Custos-AuditStorage", context=context, env=env)
    AuditStack(app, "Custos-Audit", context=context, storage=audit, env=env)
    policy = PolicyStack(app, "Custos-Policy", context=context, vpc=network.vpc, env=env)
    approvals = None
    if context.approvals is not None:
        approvals = ApprovalsStack(
            app,
            APPROVALS_STACK,
            context=context,
            approvals=context.approvals,
            audit=audit,
            env=env,
        )
    GatewayStack(
        app,
        "Custos-Gateway",
        context=context,
        vpc=network.vpc,
        audit=audit,
        policy=policy,
        approvals=approvals,
        env=env,
    )

    Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    return app
