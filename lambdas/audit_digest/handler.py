"""Placeholder for the digest Lambda, written in parallel; only here so the CDK app synths."""

from __future__ import annotations

from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise NotImplementedError(
        "the audit digest is not implemented in this build; deploy the build with "
        "lambdas/audit_digest/handler.py"
    )
