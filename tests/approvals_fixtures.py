"""A real approvals page on 127.0.0.1 over LocalApprovals, and plain HTTP to reach it.

The server runs in an event loop of its own thread, as in the gateway; tests submit
requests to its LocalApprovals through that loop, mint approvers' tokens with a real dev
issuer the page trusts, and talk to it over real sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import threading
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from custos.approvals.binding import statement_binding
from custos.approvals.links import LinkSigner
from custos.approvals.local import LocalApprovals
from custos.approvals.models import ApprovalRequest, FiredRule, Requester, utc_now
from custos.approvals.server import ApprovalsServer, start_approvals_server
from custos.identity.authenticator import Authenticator
from custos.identity.dev_issuer import DevIssuer

T = TypeVar("T")

LINK_KEY = b"approvals-test-key-0123456789abcdef"
CUSTOMER_UPDATE = "UPDATE crm.customers SET city = 'Berlin' WHERE id = 42"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ApprovalsPage:
    """The page's server, its backend and signer, and the issuer its approvers sign in with."""

    issuer: DevIssuer
    approvals: LocalApprovals
    signer: LinkSigner
    loop: asyncio.AbstractEventLoop
    server: ApprovalsServer
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def submit(self, **details: Any) -> ApprovalRequest:
        request = approval_request(self.issuer, **details)
        self.run(self.approvals.submit(request))
        return request

    def waiter(self, request_id: str) -> concurrent.futures.Future[ApprovalRequest]:
        """What a waiting statement would hear: resolves once the request is decided."""
        return asyncio.run_coroutine_threadsafe(self.approvals.decided(request_id), self.loop)

    def status(self, request_id: str) -> str:
        return self.run(_status(self.approvals, request_id))

    def token(self, subject: str, groups: tuple[str, ...] = ("dpo",), **claims: Any) -> str:
        return self.issuer.mint("approver", subject, groups=list(groups), extra_claims=claims)

    # --- plain HTTP -----------------------------------------------------------------------

    def http(
        self,
        method: str,
        path: str,
        *,
        form: Mapping[str, str] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        cookie: str | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if form is not None:
            body = urlencode(form).encode()
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if cookie is not None:
            sent["Cookie"] = f"custos_approvals_session={cookie}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read().decode())
        finally:
            connection.close()

    def api(self, method: str, path: str, token: str | None, document: Any = None) -> Answer:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        body = None
        if document is not None:
            body = json.dumps(document).encode()
            headers["Content-Type"] = "application/json"
        return self.http(method, path, body=body, headers=headers)

    def sign_in(self, token: str) -> str:
        """The session cookie the page gives for `token`."""
        answer = self.http("POST", "/signin", form={"token": token, "next": "/"})
        assert answer.status == 303, answer.body
        return session_cookie(answer)


def session_cookie(answer: Answer) -> str:
    for header in answer.headers.get_all("Set-Cookie") or []:
        name, _, rest = header.partition("=")
        if name == "custos_approvals_session":
            return rest.split(";", 1)[0]
    raise AssertionError(f"no session cookie in {answer.headers}")


async def _status(approvals: LocalApprovals, request_id: str) -> str:
    return approvals.get(request_id).status.value


def approval_request(
    issuer: DevIssuer,
    *,
    subject: str = "agent-7",
    group: str = "dpo",
    approvals_needed: int = 1,
    statement: str = CUSTOMER_UPDATE,
    parameters: tuple[str | None, ...] = (),
    application_name: str | None = "psql",
    labels: Mapping[str, str] | None = None,
    expires_in: float = 600,
    message: str = "changes to customers need the DPO's approval",
) -> ApprovalRequest:
    """A request as the gateway makes it for an agent's statement."""
    now = utc_now()
    return ApprovalRequest(
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in),
        requester=Requester(
            subject=subject,
            issuer=issuer.issuer,
            role="agent",
            groups=("agents",),
            client_addr="127.0.0.1",
            application_name=application_name,
            labels=dict(labels or {"ticket": "CRM-12"}),
            session_id="session-1",
        ),
        target="crm",
        statement=statement,
        parameters=parameters,
        rules=(FiredRule(rule="customers-write", message=message),),
        message=message,
        policy_version="policy-v1",
        row_estimate=1,
        group=group,
        approvals_needed=approvals_needed,
        binding=statement_binding(
            LINK_KEY,
            issuer=issuer.issuer,
            subject=subject,
            role="agent",
            target="crm",
            text=statement,
            parameters=parameters,
        ),
    )


@contextmanager
def approvals_page(directory: Path) -> Iterator[ApprovalsPage]:
    """The page on a free port of 127.0.0.1, trusting a dev issuer kept in `directory`."""
    issuer = DevIssuer.open_or_create(directory / "issuer")
    authenticator = Authenticator([], [])
    authenticator.add_static_issuer(issuer.issuer_config(), issuer.jwks())
    signer = LinkSigner(LINK_KEY)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def started() -> tuple[LocalApprovals, ApprovalsServer]:
        approvals = LocalApprovals("http://127.0.0.1:0")
        server = await start_approvals_server(
            approvals, authenticator.identify, signer, "127.0.0.1", 0
        )
        approvals.base_url = f"http://127.0.0.1:{server.port}"
        return approvals, server

    approvals, server = asyncio.run_coroutine_threadsafe(started(), loop).result(10)
    try:
        yield ApprovalsPage(issuer, approvals, signer, loop, server)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
