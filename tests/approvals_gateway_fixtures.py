"""A real gateway with local approvals, and what approvers do to it over its HTTP API.

The policy is the demo's, with rules in front of it that give every approval shape a
statement of its own: the demo's wait-mode rule for the CRM's customers (one approval of
the DPO), retry mode for order updates (for the agent and for a second role, `ops`, that
the same identities may take), two approvals for new orders, and a short expiry for order
deletions, and reads that call pg_sleep (an approval that must not lift masking).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from gateway_fixtures import GatewayProcess, free_port, start_gateway, write_masking_key

from custos.demo.embedded import DEMO_POLICY
from custos.demo.postgres import PostgresServer

EXPIRY_SECONDS = 3
TEST_RULES: list[dict[str, Any]] = [
    {
        "id": "orders-update-retry",
        "match": {"roles": ["agent", "ops"], "kinds": ["update"], "relations": ["crm.orders"]},
        "effect": "require_approval",
        "message": "order changes need the DPO's approval",
        "approval": {"group": "dpo", "mode": "retry", "grant_for": "10m"},
    },
    {
        "id": "orders-insert-two",
        "match": {"roles": ["agent"], "kinds": ["insert"], "relations": ["crm.orders"]},
        "effect": "require_approval",
        "message": "new orders need two approvers",
        "approval": {"group": "dpo", "approvals": 2},
    },
    {
        "id": "orders-delete-short",
        "match": {"roles": ["agent"], "kinds": ["delete"], "relations": ["crm.orders"]},
        "effect": "require_approval",
        "message": "deleting orders needs the DPO's approval, quickly",
        "approval": {"group": "dpo", "expires_after": f"{EXPIRY_SECONDS}s"},
    },
    {
        "id": "customers-sleepy-read",
        "match": {"roles": ["agent"], "kinds": ["select"], "functions": ["pg_sleep"]},
        "effect": "require_approval",
        "message": "reading while sleeping needs the DPO's approval",
        "approval": {"group": "dpo"},
    },
    {
        "id": "ops-read-and-session",
        "match": {"roles": ["ops"], "kinds": ["select", "transaction", "set"]},
        "effect": "allow",
    },
]


def approvals_policy(directory: Path) -> Path:
    document = yaml.safe_load(DEMO_POLICY.read_text())
    document["roles"].append(
        {"name": "ops", "description": "operations", "trust": [{"issuer": "dev"}]}
    )
    for rule in document["rules"]:
        if rule["id"] == "agents-write-crm-needs-approval":
            # Order changes are these rules' alone: every rule that fires counts (the most
            # approvals, wait mode over retry), and the demo's would make them wait.
            rule["match"]["relations"] = ["crm.customers", "crm.support_tickets"]
    document["rules"] = TEST_RULES + document["rules"]
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def start_approvals_gateway(
    directory: Path, pg: PostgresServer, upstream_dsn: str
) -> tuple[GatewayProcess, str]:
    """The gateway, auditing to `directory / "audit"`, and its approvals page's address."""
    directory.mkdir(parents=True, exist_ok=True)
    page = f"127.0.0.1:{free_port()}"
    key_file = write_masking_key(directory / "audit.key")
    gateway = start_gateway(
        directory,
        pg,
        upstream_dsn=upstream_dsn,
        extra_config={
            "roles": [],
            "policy": {"file": str(approvals_policy(directory))},
            "audit": {"dir": str(directory / "audit"), "key": {"key_file": str(key_file)}},
            "approvals": {"listen": page},
        },
    )
    return gateway, f"http://{page}"


def approver_token(
    gateway: GatewayProcess, subject: str, groups: tuple[str, ...] = ("dpo",)
) -> str:
    return gateway.issuer.mint("approver", subject, groups=list(groups))


def api(url: str, token: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    """The approvals API's JSON answer; an HTTP error's JSON body as {"status", "error"}."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - a test URL
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return {"status": error.code, **json.loads(error.read() or b"{}")}


def decide(page: str, token: str, request_id: str, approve: bool, reason: str = "") -> Any:
    verb = "approve" if approve else "deny"
    return api(f"{page}/api/requests/{request_id}/{verb}", token, "POST", {"reason": reason})


def requests_of(page: str, token: str) -> list[dict[str, Any]]:
    answer = api(f"{page}/api/requests", token)
    return list(answer["requests"])


REQUEST_ID = re.compile(r"apr-[0-9a-f]{20}")


def pending_request(page: str, token: str, known: set[str], timeout: float = 10) -> dict[str, Any]:
    """The first pending request not in `known`, once the gateway has made it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for request in requests_of(page, token):
            if request["status"] == "pending" and request["id"] not in known:
                return request
        time.sleep(0.05)
    raise AssertionError("no new pending approval request appeared")
