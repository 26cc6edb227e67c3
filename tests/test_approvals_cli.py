"""`custos approvals list|approve|deny`, run as the real command against a real page."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from approvals_fixtures import ApprovalsPage, approvals_page

CUSTOS = [str(Path(sys.executable).parent / "custos")]


@pytest.fixture
def page(tmp_path: Path) -> Iterator[ApprovalsPage]:
    with approvals_page(tmp_path) as running:
        yield running


def custos(*arguments: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {
        name: value for name, value in os.environ.items() if not name.startswith("CUSTOS_APPROVALS")
    }
    env.update(environment)
    return subprocess.run(
        [*CUSTOS, "approvals", *arguments],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_list_json_gives_each_request_as_the_api_does(page):
    request = page.submit(parameters=("42",))
    page.submit(group="dba")

    done = custos("list", "--json", "--url", page.url, "--token", page.token("dpo-1"))

    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)["requests"]
    assert [item["id"] for item in listed] == [request.id]
    assert listed[0]["status"] == "pending"
    assert listed[0]["requester"]["subject"] == "agent-7"
    assert listed[0]["role"] == "agent"
    assert listed[0]["statement"] == request.statement
    assert listed[0]["parameters"] == ["42"]


def test_list_prints_a_table_pending_first(page):
    decided = page.submit(statement="DELETE FROM crm.orders WHERE id = 3")
    page.api("POST", f"/api/requests/{decided.id}/deny", page.token("dpo-2"))
    waiting = page.submit(statement="INSERT INTO crm.orders (customer_id, total)\nVALUES (7, 99.5)")

    done = custos(
        "list", CUSTOS_APPROVALS_URL=page.url + "/", CUSTOS_APPROVALS_TOKEN=page.token("dpo-1")
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "id",
        "status",
        "requester",
        "role",
        "group",
        "expires",
        "statement",
    ]
    assert lines[2].startswith(waiting.id)
    assert "pending  agent-7    agent  dpo" in lines[2]
    assert lines[2].endswith("INSERT INTO crm.orders (customer_id, total) …")
    assert lines[3].startswith(decided.id)
    assert "denied" in lines[3]
    assert lines[-1] == "(2 requests)"


def test_approve_decides_and_the_waiting_statement_hears_it(page):
    request = page.submit()
    waiting = page.waiter(request.id)

    done = custos("approve", request.id, "--url", page.url, "--token", page.token("dpo-1"))

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{request.id}: approved by dpo-1 at ")
    assert waiting.result(timeout=5).status.value == "approved"


def test_the_first_of_two_approvals_says_it_waits_for_another(page):
    request = page.submit(approvals_needed=2)

    done = custos("approve", request.id, "--url", page.url, "--token", page.token("dpo-1"))

    assert done.returncode == 0, done.stderr
    assert "your approval is counted (1 of 2)" in done.stdout
    assert page.approvals.get(request.id).pending


def test_deny_keeps_the_reason(page, tmp_path):
    request = page.submit()
    waiting = page.waiter(request.id)
    token_file = tmp_path / "token"
    token_file.write_text(page.token("dpo-1") + "\n")

    done = custos(
        "deny",
        request.id,
        "--reason",
        "no ticket for this",
        "--url",
        page.url,
        "--token",
        f"@{token_file}",
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("(no ticket for this)")
    decided = waiting.result(timeout=5)
    assert decided.status.value == "denied"
    assert decided.votes[0].reason == "no ticket for this"


def test_the_apis_refusal_is_printed_and_exits_1(page):
    request = page.submit(subject="agent-7")

    own = custos("approve", request.id, "--url", page.url, "--token", page.token("agent-7"))
    outsider = custos(
        "deny", request.id, "--url", page.url, "--token", page.token("eve", ("analysts",))
    )
    unknown = custos(
        "approve", "apr-00000000000000000000", "--url", page.url, "--token", page.token("dpo-1")
    )
    forged = custos("list", "--url", page.url, "--token", "not-a-token")

    assert own.returncode == 1
    assert "agent-7 asked for request" in own.stderr
    assert outsider.returncode == 1
    assert "not in the approver group dpo" in outsider.stderr
    assert unknown.returncode == 1
    assert "no approval request" in unknown.stderr
    assert forged.returncode == 1
    assert "token is not a JWT" in forged.stderr
    assert page.approvals.get(request.id).votes == ()


def test_a_vote_after_the_decision_says_who_decided(page):
    request = page.submit()
    custos("approve", request.id, "--url", page.url, "--token", page.token("dpo-1"))

    late = custos("deny", request.id, "--url", page.url, "--token", page.token("dpo-2"))

    assert late.returncode == 1
    assert "already approved by dpo-1 at" in late.stderr


def test_an_unreachable_page_says_what_to_check(page):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    done = custos("list", "--url", url, "--token", page.token("dpo-1"))

    assert done.returncode == 1
    assert f"cannot reach the approvals API at {url}" in done.stderr
    assert "--approvals HOST:PORT" in done.stderr


def test_an_address_that_is_not_the_api_says_so(page):
    done = custos("list", "--url", f"{page.url}/signin", "--token", page.token("dpo-1"))

    assert done.returncode == 1
    assert "the approvals API answered HTTP 404" in done.stderr


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["list", "--token", "t"], "give the approvals page's address with --url"),
        (["list", "--url", "http://127.0.0.1:1"], "give your OIDC token with --token"),
        (["list", "--url", "file:///etc/passwd", "--token", "t"], "must be an http:// or https://"),
        (["list", "--url", "http://127.0.0.1:1", "--token", "@/nonexistent/token"], "cannot read"),
        (["list", "--url", "http://127.0.0.1:1", "--token", "  "], "the token is empty"),
    ],
)
def test_missing_or_bad_arguments_say_what_to_give(arguments, expected):
    done = custos(*arguments)

    assert done.returncode == 1
    assert expected in done.stderr


def test_usage_errors_are_argparses():
    assert custos().returncode == 2
    assert custos("approve").returncode == 2
    assert custos("list", "--reason", "x").returncode == 2
