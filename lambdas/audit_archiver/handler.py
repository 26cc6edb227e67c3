"""Placeholder for the archiver Lambda, written in parallel; only here so the CDK app synths.

It fails every batch, so the stream keeps (and retries) every record until the real handler
is deployed: nothing is skipped.
"""

from __future__ import annotations

from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise NotImplementedError(
        "the audit archiver is not implemented in this build; deploy the build with "
        "lambdas/audit_archiver/handler.py"
    )
