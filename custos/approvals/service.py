"""The gateway's approvals, built from its configuration: the backend and the keys."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from custos.approvals.backend import ApprovalBackend
from custos.approvals.links import LinkSigner
from custos.approvals.local import LocalApprovals
from custos.approvals.models import ApprovalRequest
from custos.approvals.settings import ApprovalSettings
from custos.masking.keys import KeyLoadError, secret_key


class ApprovalsConfigError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ApprovalService:
    settings: ApprovalSettings
    backend: ApprovalBackend
    key: bytes  # binds retry grants to their statements; signs approvers' links
    local: LocalApprovals | None  # the local backend, whose page the gateway serves

    @property
    def signer(self) -> LinkSigner:
        return LinkSigner(self.key)


def approval_service(
    settings: ApprovalSettings,
    on_decided: Callable[[ApprovalRequest], None] | None = None,
) -> ApprovalService:
    """`on_decided` hears each request that ends (the audit trail records it)."""
    try:
        key = secret_key(settings.key, "approvals")
    except KeyLoadError as error:
        raise ApprovalsConfigError(str(error)) from None
    if settings.backend == "aws":
        if key is None:
            raise ApprovalsConfigError(
                "aws approvals need the key the approvals stack generated: set"
                " approvals.key.key_secret to its secret"
            )
        from custos.approvals.aws import AwsApprovals

        return ApprovalService(settings, AwsApprovals(settings), key, None)
    # A key of this run: links and retry grants end with the gateway, as its requests do.
    key = key or secrets.token_hex(32).encode()
    local = LocalApprovals(settings.page_url, on_decided=on_decided)
    return ApprovalService(settings, local, key, local)
