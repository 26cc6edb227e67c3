"""The local approvals page and its API, over a real socket: who may decide, and how.

Approvers' tokens come from a real dev issuer the page trusts; requests are submitted to
the page's LocalApprovals as the gateway submits them; every answer is read off the wire.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from approvals_fixtures import ApprovalsPage, approval_request, approvals_page, session_cookie

from custos.approvals.links import LinkSigner
from custos.approvals.models import ApprovalRequest, Approver, utc_now
from custos.approvals.page import (
    SECURITY_HEADERS,
    error_page,
    inbox_page,
    request_page,
    signin_page,
)
from custos.identity.dev_issuer import DevIssuer


@pytest.fixture
def page(tmp_path: Path) -> Iterator[ApprovalsPage]:
    with approvals_page(tmp_path) as running:
        yield running


def ticket_in(html: str) -> str:
    found = re.search(r'name="ticket" value="([^"]+)"', html)
    assert found, "the page has no decide form"
    return found.group(1)


def decide_form(page: ApprovalsPage, cookie: str, request_id: str) -> str:
    """The ticket of the decide form the signed-in approver's page shows."""
    answer = page.http("GET", f"/requests/{request_id}", cookie=cookie)
    assert answer.status == 200
    return ticket_in(answer.body)


def post_decision(
    page: ApprovalsPage,
    request_id: str,
    ticket: str,
    cookie: str | None,
    decision: str = "approve",
    reason: str = "",
    headers: dict[str, str] | None = None,
):
    return page.http(
        "POST",
        f"/requests/{request_id}/decision",
        form={"ticket": ticket, "decision": decision, "reason": reason},
        cookie=cookie,
        headers=headers,
    )


def undecided(page: ApprovalsPage, request: ApprovalRequest) -> bool:
    held = page.approvals.get(request.id)
    return held.pending and held.votes == ()


# --- the API ----------------------------------------------------------------------------------


def test_the_api_lists_what_the_approvers_groups_decide_and_the_callers_own(page):
    customers = page.submit()
    ddl = page.submit(group="dba", statement="DROP TABLE crm.orders")
    own = page.submit(subject="dpo-1", group="security")

    listed = page.api("GET", "/api/requests", page.token("dpo-1")).json()["requests"]

    assert {item["id"] for item in listed} == {customers.id, own.id}
    shown = next(item for item in listed if item["id"] == customers.id)
    assert shown["status"] == "pending"
    assert shown["requester"]["subject"] == "agent-7"
    assert shown["requester"]["issuer"] == page.issuer.issuer
    assert shown["requester"]["role"] == "agent"
    assert shown["role"] == "agent"
    assert shown["group"] == "dpo"
    assert shown["statement"] == customers.statement
    assert shown["rules"] == [
        {"rule": "customers-write", "message": "changes to customers need the DPO's approval"}
    ]
    assert shown["outcome"] == "waiting for a decision"
    assert shown["votes"] == []
    assert shown["link"] == f"{page.url}/requests/{customers.id}"
    assert "binding" not in shown
    assert {"created_at", "expires_at", "parameters"} <= set(shown)
    dba = page.api("GET", "/api/requests", page.token("dba-1", ("dba",))).json()["requests"]
    assert [item["id"] for item in dba] == [ddl.id]


def test_approving_over_the_api_decides_and_wakes_the_waiting_statement(page):
    request = page.submit()
    waiting = page.waiter(request.id)

    answer = page.api("POST", f"/api/requests/{request.id}/approve", page.token("dpo-1"))

    assert answer.status == 200
    assert answer.json()["status"] == "approved"
    assert answer.json()["outcome"].startswith("approved by dpo-1 at ")
    decided = waiting.result(timeout=5)
    assert decided.status.value == "approved"
    assert [vote.approver for vote in decided.votes] == ["dpo-1"]
    one = page.api("GET", f"/api/requests/{request.id}", page.token("dpo-2")).json()
    assert one["status"] == "approved"


def test_denying_keeps_the_reason(page):
    request = page.submit()
    waiting = page.waiter(request.id)

    answer = page.api(
        "POST", f"/api/requests/{request.id}/deny", page.token("dpo-1"), {"reason": "no ticket"}
    )

    assert answer.status == 200
    assert answer.json()["status"] == "denied"
    assert answer.json()["votes"][0]["reason"] == "no ticket"
    assert answer.json()["outcome"].endswith("(no ticket)")
    assert waiting.result(timeout=5).status.value == "denied"


def test_two_approvals_need_two_different_approvers(page):
    request = page.submit(approvals_needed=2)
    waiting = page.waiter(request.id)
    first = page.token("dpo-1")

    assert page.api("POST", f"/api/requests/{request.id}/approve", first).json()["status"] == (
        "pending"
    )
    again = page.api("POST", f"/api/requests/{request.id}/approve", first)
    assert again.status == 409
    assert "2 different approvers" in again.json()["error"]
    assert not waiting.done()

    second = page.api("POST", f"/api/requests/{request.id}/approve", page.token("dpo-2"))

    assert second.json()["status"] == "approved"
    assert [vote.approver for vote in waiting.result(timeout=5).votes] == ["dpo-1", "dpo-2"]


def test_nobody_approves_their_own_request(page):
    request = page.submit(subject="agent-7")
    own = page.token("agent-7", ("dpo", "agents"))

    answer = page.api("POST", f"/api/requests/{request.id}/approve", own)

    assert answer.status == 403
    assert "agent-7 asked for request" in answer.json()["error"]
    assert undecided(page, request)


def test_an_approver_outside_the_group_is_refused(page):
    request = page.submit(group="dpo")

    answer = page.api("POST", f"/api/requests/{request.id}/approve", page.token("eve", ("dba",)))

    assert answer.status == 403
    assert "not in the approver group dpo" in answer.json()["error"]
    assert undecided(page, request)


def test_a_vote_after_the_decision_is_told_who_decided_and_when(page):
    request = page.submit()
    page.api("POST", f"/api/requests/{request.id}/approve", page.token("dpo-1"))

    late = page.api("POST", f"/api/requests/{request.id}/deny", page.token("dpo-2"))

    assert late.status == 409
    assert re.search(
        r"already approved by dpo-1 at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", late.json()["error"]
    )
    assert page.approvals.get(request.id).status.value == "approved"


def test_an_expired_request_cannot_be_decided(page):
    request = page.submit(expires_in=0.2)
    time.sleep(0.4)

    answer = page.api("POST", f"/api/requests/{request.id}/approve", page.token("dpo-1"))

    assert answer.status == 409
    assert "expired" in answer.json()["error"]
    assert page.approvals.get(request.id).status.value == "expired"
    assert page.approvals.get(request.id).votes == ()


def test_an_unknown_request_is_404(page):
    token = page.token("dpo-1")
    for method, path in [
        ("GET", "/api/requests/apr-00000000000000000000"),
        ("POST", "/api/requests/apr-00000000000000000000/approve"),
        ("POST", "/api/requests/nonsense/deny"),
    ]:
        answer = page.api(method, path, token)
        assert answer.status == 404, path
        assert "no approval request" in answer.json()["error"]


def bad_tokens(page: ApprovalsPage, tmp_path: Path) -> dict[str, str | None]:
    good = page.token("dpo-1")
    header, payload, signature = good.split(".")
    other = DevIssuer.open_or_create(tmp_path / "another-issuer")
    past = int(time.time()) - 3600
    return {
        "missing": None,
        "empty": "",
        "not a JWT": "not-a-token",
        "altered signature": f"{header}.{payload}.{signature[:-6]}AAAAAA",
        "another payload": f"{header}.{page.token('dpo-2').split('.')[1]}.{signature}",
        "untrusted issuer": other.mint("approver", "dpo-1", groups=["dpo"]),
        "expired": page.token("dpo-1", iat=past - 60, nbf=past - 60, exp=past),
    }


def test_missing_forged_and_expired_tokens_are_401_and_decide_nothing(page, tmp_path):
    request = page.submit()
    for name, token in bad_tokens(page, tmp_path).items():
        for method, path in [
            ("GET", "/api/requests"),
            ("GET", f"/api/requests/{request.id}"),
            ("POST", f"/api/requests/{request.id}/approve"),
            ("POST", f"/api/requests/{request.id}/deny"),
        ]:
            answer = page.api(method, path, token)
            assert answer.status == 401, (name, path)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert answer.json()["error"], name
    assert undecided(page, request)


def test_a_basic_authorization_is_not_a_token(page):
    answer = page.http("GET", "/api/requests", headers={"Authorization": "Basic ZHBvOnB3"})

    assert answer.status == 401
    assert "Authorization: Bearer TOKEN" in answer.json()["error"]


def test_an_expired_token_says_so(page):
    past = int(time.time()) - 3600
    token = page.token("dpo-1", iat=past - 60, nbf=past - 60, exp=past)

    answer = page.api("GET", "/api/requests", token)

    assert answer.status == 401
    assert "token expired" in answer.json()["error"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "must be JSON"),
        (b'["reason"]', 'only hold {"reason"'),
        (b'{"reason": "x", "decision": "approve"}', 'only hold {"reason"'),
        (b'{"reason": 7}', "must be a string"),
        (b'{"reason": "' + b"x" * 501 + b'"}', "keep it to 500"),
        (b"\xff\xfe", "must be JSON"),
    ],
)
def test_a_malformed_vote_body_is_400_and_decides_nothing(page, body, expected):
    request = page.submit()

    answer = page.http(
        "POST",
        f"/api/requests/{request.id}/approve",
        body=body,
        headers={
            "Authorization": f"Bearer {page.token('dpo-1')}",
            "Content-Type": "application/json",
        },
    )

    assert answer.status == 400
    assert expected in answer.json()["error"]
    assert undecided(page, request)


def test_a_body_over_64_kib_is_refused(page):
    request = page.submit()
    huge = b'{"reason": "' + b"x" * (70 * 1024) + b'"}'

    api = page.http(
        "POST",
        f"/api/requests/{request.id}/approve",
        body=huge,
        headers={"Authorization": f"Bearer {page.token('dpo-1')}"},
    )
    form = page.http("POST", "/signin", form={"token": "x" * (70 * 1024)})

    assert api.status == 413
    assert "64 KiB" in api.json()["error"]
    assert form.status == 413
    assert "64 KiB" in form.body
    assert undecided(page, request)


def test_other_methods_are_405(page):
    request = page.submit()
    token = page.token("dpo-1")

    assert page.api("PUT", "/api/requests", token).status == 405
    assert page.api("DELETE", f"/api/requests/{request.id}", token).status == 405
    assert page.api("GET", f"/api/requests/{request.id}/approve", token).status == 405
    refused = page.http("DELETE", f"/requests/{request.id}")
    assert refused.status == 405
    assert "DELETE is not allowed" in refused.body
    assert page.http("GET", "/nowhere").status == 404
    assert undecided(page, request)


# --- signing in -------------------------------------------------------------------------------


def test_the_inbox_sends_whoever_is_not_signed_in_to_sign_in(page):
    for cookie in (
        None,
        "forged.cookie",
        page.signer.sign("-", "dpo-1", "session", utc_now() + timedelta(hours=1)),
    ):
        answer = page.http("GET", "/", cookie=cookie)
        assert answer.status == 303
        assert answer.headers["Location"] == "/signin?next=/"


def test_signing_in_sets_a_strict_http_only_session_that_signing_out_ends(page):
    request = page.submit()

    answer = page.http("POST", "/signin", form={"token": page.token("dpo-1"), "next": "/"})

    assert answer.status == 303
    assert answer.headers["Location"] == "/"
    set_cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie
    assert "SameSite=Strict" in set_cookie
    assert "Path=/" in set_cookie
    assert "Secure" not in set_cookie  # the page is served over http here
    max_age = int(re.search(r"Max-Age=(\d+)", set_cookie).group(1))
    assert 0 < max_age <= 900  # no longer than the token
    cookie = session_cookie(answer)
    inbox = page.http("GET", "/", cookie=cookie)
    assert inbox.status == 200
    assert request.id in inbox.body
    assert "dpo-1" in inbox.body

    out = page.http("POST", "/signout", cookie=cookie)

    assert out.status == 303
    assert "custos_approvals_session=" in out.headers["Set-Cookie"]
    assert page.http("GET", "/", cookie=cookie).status == 303  # the copied cookie is dead too


def test_the_cookie_is_secure_when_the_page_is_reached_over_https(page):
    page.approvals.base_url = "https://approvals.example"

    answer = page.http("POST", "/signin", form={"token": page.token("dpo-1")})

    assert "Secure" in answer.headers["Set-Cookie"]


def test_the_oldest_session_gives_way_when_too_many_are_open(page, monkeypatch):
    monkeypatch.setattr("custos.approvals.server.MAX_SESSIONS", 3)
    cookies = [page.sign_in(page.token(f"dpo-{number}")) for number in range(4)]

    assert page.http("GET", "/", cookie=cookies[0]).status == 303
    for cookie in cookies[1:]:
        assert page.http("GET", "/", cookie=cookie).status == 200


def test_a_session_ends_with_its_token(page):
    token = page.issuer.mint("approver", "dpo-1", groups=["dpo"], ttl_seconds=3)
    cookie = page.sign_in(token)
    assert page.http("GET", "/", cookie=cookie).status == 200

    time.sleep(3.2)

    assert page.http("GET", "/", cookie=cookie).status == 303


def test_a_bad_token_shows_the_sign_in_page_with_why(page, tmp_path):
    for name, token in bad_tokens(page, tmp_path).items():
        answer = page.http("POST", "/signin", form={"token": token or ""})
        assert answer.status in (400, 401), name
        assert 'name="token"' in answer.body
        assert 'id="notice"' in answer.body, name
        assert "Set-Cookie" not in answer.headers, name


def test_signing_in_never_leads_to_another_site(page):
    token = page.token("dpo-1")
    for next_path in ("//evil.example/", "https://evil.example/", "/\\evil.example", "/x\r\nX: y"):
        answer = page.http("POST", "/signin", form={"token": token, "next": next_path})
        assert answer.status == 303
        assert answer.headers["Location"] == "/", next_path
    kept = page.http("POST", "/signin", form={"token": token, "next": "/requests/apr-1?x=1"})
    assert kept.headers["Location"] == "/requests/apr-1?x=1"


def test_a_post_from_another_site_is_refused(page):
    request = page.submit()
    cookie = page.sign_in(page.token("dpo-1"))
    ticket = decide_form(page, cookie, request.id)

    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Origin": f"http://127.0.0.1:{page.port + 1}"},
    ):
        answer = post_decision(page, request.id, ticket, cookie, headers=headers)
        assert answer.status == 403, headers
        assert "another site" in answer.body
        signin = page.http("POST", "/signin", form={"token": page.token("dpo-1")}, headers=headers)
        assert signin.status == 403
    assert undecided(page, request)
    same_site = post_decision(page, request.id, ticket, cookie, headers={"Origin": page.url})
    assert same_site.status == 303


# --- the page ---------------------------------------------------------------------------------


def test_a_get_never_decides(page):
    request = page.submit()
    cookie = page.sign_in(page.token("dpo-1"))
    for _ in range(5):
        for cookie_sent in (None, cookie):
            shown = 303 if cookie_sent is None else 200  # the signed-out are sent to sign in
            assert page.http("GET", f"/requests/{request.id}", cookie=cookie_sent).status == shown
            assert page.http("HEAD", f"/requests/{request.id}", cookie=cookie_sent).status == shown
            decision = page.http("GET", f"/requests/{request.id}/decision", cookie=cookie_sent)
            assert decision.status == 405
            assert page.http("GET", "/", cookie=cookie_sent).status in (200, 303)
            query = f"/requests/{request.id}/decision?decision=approve&ticket=x"
            assert page.http("GET", query, cookie=cookie_sent).status == 405
    assert undecided(page, request)


def test_the_page_shows_everything_an_approver_judges_by(page):
    request = page.submit(parameters=("42", None), labels={"ticket": "CRM-12", "team": "crm"})
    cookie = page.sign_in(page.token("dpo-1"))

    body = page.http("GET", f"/requests/{request.id}", cookie=cookie).body

    for shown in (
        request.id,
        "pending",
        "waiting for a decision",
        "agent-7",
        page.issuer.issuer,
        "agents",
        "127.0.0.1",
        "psql",
        "team=crm, ticket=CRM-12",
        "crm",
        "UPDATE crm.customers SET city = &#x27;Berlin&#x27; WHERE id = 42",
        "<code>42</code>",
        "<code>NULL</code>",
        "customers-write",
        "changes to customers need the DPO&#x27;s approval",
        "estimates 1 row.",
        "Approver group</dt><dd>dpo",
        "Approvals needed</dt><dd>1",
        "No votes yet",
        "Created",
        "Expires",
        'id="approve"',
        'id="deny"',
    ):
        assert shown in body, shown


def test_without_a_session_the_page_sends_to_sign_in_and_shows_nothing(page):
    request = page.submit()

    answer = page.http("GET", f"/requests/{request.id}")

    assert answer.status == 303
    assert answer.headers["Location"] == f"/signin?next=/requests/{request.id}"
    assert request.statement.replace("'", "&#x27;") not in answer.body
    assert request.requester.subject not in answer.body


def test_deciding_on_the_page_approves_and_wakes_the_waiting_statement(page):
    request = page.submit()
    waiting = page.waiter(request.id)
    cookie = page.sign_in(page.token("dpo-1"))
    ticket = decide_form(page, cookie, request.id)

    answer = post_decision(page, request.id, ticket, cookie, reason="ticket CRM-12")

    assert answer.status == 303
    assert answer.headers["Location"] == f"/requests/{request.id}"
    decided = waiting.result(timeout=5)
    assert decided.status.value == "approved"
    assert decided.votes[0].reason == "ticket CRM-12"
    shown = page.http("GET", f"/requests/{request.id}", cookie=cookie).body
    assert "approved by dpo-1 at" in shown
    assert "you approved this request at" in shown
    assert 'name="ticket"' not in shown
    other = page.http("GET", f"/requests/{request.id}", cookie=page.sign_in(page.token("dpo-2")))
    assert "approved by dpo-1 at" in other.body
    assert 'name="ticket"' not in other.body


def test_denying_on_the_page(page):
    request = page.submit()
    cookie = page.sign_in(page.token("dpo-1"))

    answer = post_decision(
        page, request.id, decide_form(page, cookie, request.id), cookie, "deny", "too broad"
    )

    assert answer.status == 303
    assert page.approvals.get(request.id).outcome_text().startswith("denied by dpo-1 at ")
    assert "(too broad)" in page.http("GET", f"/requests/{request.id}", cookie=cookie).body


def test_forged_altered_and_expired_tickets_are_refused(page):
    request = page.submit()
    cookie = page.sign_in(page.token("dpo-1"))
    good = decide_form(page, cookie, request.id)
    body, seal = good.split(".")
    middle = len(body) // 2
    altered = body[:middle] + ("A" if body[middle] != "A" else "B") + body[middle + 1 :]
    later = utc_now() + timedelta(minutes=5)
    forger = LinkSigner(b"someone-elses-key-0123456789abcdef")

    for name, ticket in {
        "forged": forger.sign(request.id, "dpo-1", "decide", later),
        "altered": f"{altered}.{seal}",
        "seal altered": f"{body}.{seal[:10]}{'A' if seal[10] != 'A' else 'B'}{seal[11:]}",
        "expired": page.signer.sign(
            request.id, "dpo-1", "decide", utc_now() - timedelta(seconds=5)
        ),
        "for viewing": page.signer.sign(request.id, "dpo-1", "view", later),
        "the session cookie": cookie,
        "empty": "",
        "garbage": "not.a-ticket",
        "too long": "a" * 3000 + "." + "b",
    }.items():
        answer = post_decision(page, request.id, ticket, cookie)
        assert answer.status == 403, name
        assert 'id="error"' in answer.body
        assert "link" in answer.body, name  # "this link is not valid" / "has expired"
    assert undecided(page, request)
    assert (
        "has expired"
        in post_decision(
            page, request.id, page.signer.sign(request.id, "dpo-1", "decide", utc_now()), cookie
        ).body
    )


def test_a_ticket_works_once(page):
    twice = page.submit(approvals_needed=2)
    once = page.submit()
    cookie = page.sign_in(page.token("dpo-1"))

    for request in (twice, once):
        ticket = decide_form(page, cookie, request.id)
        assert post_decision(page, request.id, ticket, cookie).status == 303
        replay = post_decision(page, request.id, ticket, cookie, decision="deny")
        assert replay.status == 403
        assert "used already" in replay.body

    assert page.approvals.get(twice.id).status.value == "pending"
    assert [vote.decision for vote in page.approvals.get(twice.id).votes] == ["approved"]
    assert page.approvals.get(once.id).status.value == "approved"


def test_a_ticket_for_another_request_or_approver_is_refused(page):
    first = page.submit()
    second = page.submit()
    mine = page.sign_in(page.token("dpo-1"))
    theirs = page.sign_in(page.token("dpo-2"))

    other_request = post_decision(page, first.id, decide_form(page, mine, second.id), mine)
    other_approver = post_decision(page, first.id, decide_form(page, theirs, first.id), mine)

    assert other_request.status == 403
    assert "another request" in other_request.body
    assert other_approver.status == 403
    assert "another approver" in other_approver.body
    assert undecided(page, first)
    assert undecided(page, second)


def test_a_decision_needs_a_session(page):
    request = page.submit()
    cookie = page.sign_in(page.token("dpo-1"))
    ticket = decide_form(page, cookie, request.id)
    page.http("POST", "/signout", cookie=cookie)

    for sent in (None, cookie, "forged.cookie"):
        answer = post_decision(page, request.id, ticket, sent)
        assert answer.status == 401
        assert "sign in first" in answer.body
    assert undecided(page, request)


def test_a_malformed_decision_form_is_400(page):
    request = page.submit()
    cookie = page.sign_in(page.token("dpo-1"))
    ticket = decide_form(page, cookie, request.id)

    for form in (
        {"ticket": ticket, "decision": "maybe"},
        {"ticket": ticket},
        {"ticket": ticket, "decision": "approve", "reason": "x" * 501},
    ):
        answer = page.http("POST", f"/requests/{request.id}/decision", form=form, cookie=cookie)
        assert answer.status == 400, form
    as_json = page.http(
        "POST",
        f"/requests/{request.id}/decision",
        body=b'{"ticket": "x", "decision": "approve"}',
        headers={"Content-Type": "application/json"},
        cookie=cookie,
    )
    assert as_json.status == 400
    assert undecided(page, request)


def test_the_requester_and_outsiders_see_no_form_and_why(page):
    request = page.submit(subject="agent-7")

    own = page.http("GET", f"/requests/{request.id}", cookie=page.sign_in(page.token("agent-7")))
    outsider = page.http(
        "GET", f"/requests/{request.id}", cookie=page.sign_in(page.token("eve", ("dba",)))
    )

    assert 'name="ticket"' not in own.body
    assert "agent-7 asked for request" in own.body
    # An outsider is not shown whose request it is, nor what it asks.
    assert outsider.status == 404
    assert request.statement.replace("'", "&#x27;") not in outsider.body
    assert "agent-7" not in outsider.body


def test_a_second_approvers_page_after_the_first_vote(page):
    request = page.submit(approvals_needed=2)
    first = page.sign_in(page.token("dpo-1"))
    post_decision(page, request.id, decide_form(page, first, request.id), first)

    again = page.http("GET", f"/requests/{request.id}", cookie=first).body
    second = page.http("GET", f"/requests/{request.id}", cookie=page.sign_in(page.token("dpo-2")))

    assert "you approved this request" in again
    assert 'name="ticket"' not in again
    assert 'name="ticket"' in second.body
    assert "<td>dpo-1</td><td>approved</td>" in second.body


def test_a_vote_that_arrives_after_the_decision_shows_the_outcome(page):
    request = page.submit()
    first = page.sign_in(page.token("dpo-1"))
    second = page.sign_in(page.token("dpo-2"))
    late_ticket = decide_form(page, second, request.id)
    post_decision(page, request.id, decide_form(page, first, request.id), first)

    late = post_decision(page, request.id, late_ticket, second, decision="deny")

    assert late.status == 409
    assert "already approved by dpo-1" in late.body
    assert page.approvals.get(request.id).status.value == "approved"


def test_hostile_values_are_shown_as_text(page):
    hostile = '<script>alert("x")</script>\'"><img src=x onerror=alert(1)>'
    request = page.submit(
        statement=f"SELECT '{hostile}' -- {hostile}",
        parameters=(hostile,),
        application_name=hostile,
        labels={"team": hostile, hostile: "value"},
        message=hostile,
    )
    cookie = page.sign_in(page.token("dpo-1"))
    post_decision(page, request.id, decide_form(page, cookie, request.id), cookie, "deny", hostile)

    for path in (f"/requests/{request.id}", "/"):
        body = page.http("GET", path, cookie=cookie).body
        assert "<script" not in body, path
        assert "<img" not in body, path
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in body, path
    api = page.api("GET", f"/api/requests/{request.id}", page.token("dpo-2")).json()
    assert api["votes"][0]["reason"] == hostile.strip()


def test_every_page_sends_the_security_headers(page):
    request = page.submit()
    cookie = page.sign_in(page.token("dpo-1"))
    for answer in (
        page.http("GET", "/signin"),
        page.http("GET", "/", cookie=cookie),
        page.http("GET", f"/requests/{request.id}", cookie=cookie),
        page.http("GET", "/requests/apr-00000000000000000000", cookie=cookie),
        page.http("POST", f"/requests/{request.id}/decision", form={"ticket": "x"}, cookie=cookie),
    ):
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value
        assert answer.headers["Content-Type"].startswith("text/html")
    unknown = page.http("GET", "/requests/apr-00000000000000000000", cookie=cookie)
    assert unknown.status == 404
    assert "no approval request" in unknown.body


def test_neither_tokens_nor_statements_reach_the_log(page, caplog):
    caplog.set_level(logging.DEBUG)
    request = page.submit(statement="UPDATE crm.customers SET city = 'Secretville' WHERE id = 1")
    token = page.token("dpo-1")
    cookie = page.sign_in(token)
    ticket = decide_form(page, cookie, request.id)
    post_decision(page, request.id, ticket, cookie, reason="a private reason")
    post_decision(page, request.id, ticket, cookie)  # refused: logged as a refusal, if at all
    page.api("GET", "/api/requests", token)
    page.http("POST", "/signin", form={"token": token[:-3] + "abc"})
    page.http("GET", f"/signin?next=/requests/{request.id}", headers={"Referer": f"/x?t={token}"})

    logged = "\n".join(record.getMessage() for record in caplog.records)

    assert "aiohttp.access" in {record.name for record in caplog.records}
    for secret in (token, token[:40], cookie, ticket, "Secretville", "a private reason"):
        assert secret not in logged


# --- the pages as HTML (also what the AWS callback renders) ----------------------------------


def test_a_request_page_for_an_email_link(tmp_path):
    issuer = DevIssuer.open_or_create(tmp_path / "issuer")
    request = approval_request(issuer)

    shown = request_page(
        request,
        form_action="https://approvals.example/prod/requests/x/decision?t=1&u=2",
        ticket="body.seal",
        notice="open for 10 minutes",
    )

    assert (
        '<form method="post" action="https://approvals.example/prod/requests/x/decision?t=1&amp;u=2"'
        in shown
    )
    assert '<input type="hidden" name="ticket" value="body.seal">' in shown
    assert '<textarea id="reason" name="reason"' in shown
    assert 'name="decision" value="approve" id="approve"' in shown
    assert 'name="decision" value="deny" id="deny"' in shown
    assert "open for 10 minutes" in shown
    assert "<script" not in shown
    assert "Signed in as" not in shown


def test_a_decided_request_shows_no_form_even_with_a_ticket(tmp_path):
    issuer = DevIssuer.open_or_create(tmp_path / "issuer")
    dpo = Approver(subject="dpo-1", issuer=issuer.issuer, groups=("dpo",))
    request = approval_request(issuer).voted(dpo, False, "no", utc_now())

    shown = request_page(request, form_action="/decide", ticket="body.seal")

    assert "<form" not in shown
    assert "denied by dpo-1 at" in shown


def test_the_inbox_puts_what_waits_first(tmp_path):
    issuer = DevIssuer.open_or_create(tmp_path / "issuer")
    dpo = Approver(subject="dpo-1", issuer=issuer.issuer, groups=("dpo",))
    decided = approval_request(issuer, statement="DELETE FROM crm.orders").voted(
        dpo, True, None, utc_now()
    )
    waiting = approval_request(issuer, statement="UPDATE crm.customers\nSET city = 'x'")
    links = {decided.id: "/requests/a", waiting.id: "/requests/b"}

    shown = inbox_page([decided, waiting], approver="Dana <dpo>", links=links)

    assert shown.index(waiting.id) < shown.index(decided.id)
    assert "UPDATE crm.customers …" in shown
    assert "approved by dpo-1 at" in shown
    assert 'href="/requests/b"' in shown
    assert "Dana &lt;dpo&gt;" in shown
    assert "Nothing is waiting" in inbox_page([decided], approver=None, links=links)


def test_the_sign_in_and_error_pages_escape_what_they_show():
    signin = signin_page(message="<b>bad</b>", next_path='/x"><script>')
    error = error_page("<script>x</script>", 403)

    assert '<textarea id="token" name="token"' in signin
    assert "&lt;b&gt;bad&lt;/b&gt;" in signin
    assert "<script" not in signin
    assert "&lt;script&gt;x&lt;/script&gt;" in error
    assert "403" in error


def test_a_token_that_expired_within_the_clock_leeway_signs_nobody_in(page):
    now = int(time.time())
    token = page.token("dpo-1", iat=now - 60, nbf=now - 60, exp=now - 5)

    answer = page.http("POST", "/signin", form={"token": token})

    assert answer.status == 401
    assert "expired or is about to" in answer.body
    assert "Set-Cookie" not in answer.headers
