"""The approvals table, state machine and requests the AWS approvals tests share: a
request made from a statement holding an email and a phone, as the gateway makes it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Literal

from custos.approvals.aws import BINDING_INDEX
from custos.approvals.binding import statement_binding
from custos.approvals.models import (
    ApprovalRequest,
    Approver,
    FiredRule,
    Requester,
    utc_now,
)
from custos.approvals.shown import shown_statement
from custos.policy.source import FilePolicySource

TABLE = "custos-approvals"
API_URL = "https://abc123.execute-api.eu-west-1.amazonaws.com/prod"
ISSUER = "https://issuer.example"
BINDING_KEY = b"approvals-binding-key-0123456789abcdef"
ROLE_ARN = "arn:aws:iam::123456789012:role/custos-approvals-workflow"

# The raw personal values of the statement asked for: never in the table or an email.
RAW_EMAIL = "jane.doe@example.com"
RAW_PHONE = "+49 170 9876543"
RAW_PARAMETER_EMAIL = "max.mustermann@example.org"
ORIGINAL_STATEMENT = (
    f"UPDATE crm.customers SET phone = '{RAW_PHONE}' WHERE email = '{RAW_EMAIL}' OR email = $1"
)
ORIGINAL_PARAMETERS = (RAW_PARAMETER_EMAIL,)
RAW_VALUES = (RAW_EMAIL, RAW_PHONE, RAW_PARAMETER_EMAIL, "9876543", "jane.doe", "max.mustermann")
CATALOG = FilePolicySource("custos/demo/policy.yaml").current().catalog


def create_approvals_table(client: Any) -> None:
    """The approvals table of stacks/approvals.py: id, the by_binding index, TTL."""
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": "S"}
            for name in ("id", "binding", "created_at")
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": BINDING_INDEX,
                "KeySchema": [
                    {"AttributeName": "binding", "KeyType": "HASH"},
                    {"AttributeName": "created_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=TABLE,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "delete_after"},
    )


def create_state_machine(client: Any, name: str = "custos-approvals") -> str:
    definition = {"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}}
    answer = client.create_state_machine(
        name=name, definition=json.dumps(definition), roleArn=ROLE_ARN
    )
    return str(answer["stateMachineArn"])


def approval_request(
    *,
    subject: str = "agent-7",
    group: str = "dpo",
    mode: Literal["wait", "retry"] = "wait",
    approvals_needed: int = 1,
    expires_in: float = 600,
    created_at: datetime | None = None,
    grant_seconds: int | None = None,
    statement: str = ORIGINAL_STATEMENT,
) -> ApprovalRequest:
    """A request as the gateway makes it: the statement shown to approvers with its
    personal values masked by the demo catalog, and bound to the original by a keyed hash."""
    shown, parameters = shown_statement(statement, ["crm.customers"], CATALOG, ORIGINAL_PARAMETERS)
    now = created_at or utc_now()
    message = "changes to customers need the DPO's approval"
    return ApprovalRequest(
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in),
        requester=Requester(
            subject=subject,
            issuer=ISSUER,
            role="agent",
            groups=("agents",),
            client_addr="10.0.0.7",
            application_name="psql",
            labels={"ticket": "CRM-12"},
        ),
        target="crm",
        statement=shown,
        parameters=parameters,
        rules=(FiredRule(rule="customers-write", message=message),),
        message=message,
        policy_version="policy-v1",
        row_estimate=3,
        group=group,
        approvals_needed=approvals_needed,
        mode=mode,
        grant_seconds=grant_seconds,
        binding=statement_binding(
            BINDING_KEY,
            issuer=ISSUER,
            subject=subject,
            role="agent",
            target="crm",
            text=statement,
            parameters=ORIGINAL_PARAMETERS,
        ),
    )


def approved(request: ApprovalRequest, approver: str = "dpo-1") -> ApprovalRequest:
    voter = Approver(subject=approver, issuer="email-link", groups=(request.group,))
    return request.voted(voter, True, None, utc_now())


def scanned(client: Any) -> list[dict[str, Any]]:
    return list(client.scan(TableName=TABLE, ConsistentRead=True)["Items"])
