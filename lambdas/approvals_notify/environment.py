"""What the approvals Lambdas read from their environment, each built once per container.

- APPROVALS_TABLE: the approvals table's name.
- APPROVALS_TOPIC: the ARN of the topic every approver's email subscription hangs on.
- APPROVERS: the approvers by group, JSON {group: [{"id", "email"}]} (cdk.json's context).
- LINK_KEY_SECRET: the Secrets Manager secret (name or ARN) of the link-signing key, the
  same key the gateway's approvals.key.key_secret names.
- API_URL (notify): the approvals API's address, the base of every link.
- DECIDE_MINUTES (callback): how long a page's Approve and Deny buttons stay valid.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from custos.approvals.aws import ApprovalsTable, EmailApprover, read_approvers
from custos.approvals.links import LinkSigner
from custos.approvals.settings import ApprovalKeySettings
from custos.masking.keys import secret_key

TABLE_ENV = "APPROVALS_TABLE"
TOPIC_ENV = "APPROVALS_TOPIC"
APPROVERS_ENV = "APPROVERS"
LINK_KEY_ENV = "LINK_KEY_SECRET"
API_URL_ENV = "API_URL"
DECIDE_MINUTES_ENV = "DECIDE_MINUTES"


class MissingSetting(RuntimeError):
    """The function's environment lacks a variable the approvals stack sets."""


def setting(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise MissingSetting(
            f"set {name} in this function's environment (the Custos-Approvals stack sets it)"
        )
    return value


@functools.cache
def approvals_table() -> ApprovalsTable:
    return ApprovalsTable(setting(TABLE_ENV))


@functools.cache
def approvers() -> dict[str, tuple[EmailApprover, ...]]:
    return read_approvers(setting(APPROVERS_ENV))


def group_approvers(group: str) -> tuple[EmailApprover, ...]:
    return approvers().get(group, ())


@functools.cache
def link_signer() -> LinkSigner:
    """The link-signing key, read from Secrets Manager once per container."""
    key = secret_key(ApprovalKeySettings(key_secret=setting(LINK_KEY_ENV)), "approvals link")
    assert key is not None  # a key_secret is given: a key or KeyLoadError
    return LinkSigner(key)


@functools.cache
def sns_client() -> Any:
    import boto3

    return boto3.client("sns")


@functools.cache
def stepfunctions_client() -> Any:
    import boto3

    return boto3.client("stepfunctions")


def topic_arn() -> str:
    return setting(TOPIC_ENV)


def api_url() -> str:
    return setting(API_URL_ENV).rstrip("/")


def decide_minutes() -> int:
    return int(os.environ.get(DECIDE_MINUTES_ENV) or "10")
