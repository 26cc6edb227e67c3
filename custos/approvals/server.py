"""The local approvals page and its API, served by the gateway over its LocalApprovals.

People sign in by pasting an OIDC token from a trusted issuer; the gateway verifies it
once and keeps the approver (subject, issuer, groups) in a session of its own, named by a
signed cookie, so signing out ends it for good. Tools (`custos approvals`) send the token
with every API call instead.

A GET only ever shows. Deciding on the page takes a POST of the request's form, which
carries a ticket (links.py) signed for that request and that approver, expiring in minutes
and accepted once; the session's cookie is SameSite=Strict and a post from another site's
page is refused by its Origin, so a page elsewhere cannot decide through an approver's
browser. Neither tokens nor statements are logged.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from custos.approvals.links import LinkSigner
from custos.approvals.local import LocalApprovals
from custos.approvals.models import ApprovalError, ApprovalRequest, Approver, utc_now
from custos.approvals.page import (
    MAX_REASON_CHARS,
    SECURITY_HEADERS,
    error_page,
    inbox_page,
    request_page,
    signin_page,
)
from custos.identity.errors import AuthenticationError
from custos.identity.roles import claim_groups

log = logging.getLogger("custos.approvals.page")

Identify = Callable[[str], Awaitable[Mapping[str, Any]]]

SESSION_COOKIE = "custos_approvals_session"
SESSION_LIFETIME = timedelta(hours=8)
DECIDE_TICKET_LIFETIME = timedelta(minutes=10)
MAX_BODY_BYTES = 64 * 1024
MAX_SESSIONS = 10_000
_SHORTEST_SESSION = timedelta(seconds=1)
# No request line: a path or a query may carry what a client typed (an email, a token).
_ACCESS_LOG_FORMAT = "%a %s %b %Tfs"
# A path of this server and its query, in the characters a URL's path and query use.
_LOCAL_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*")


class ApprovalsServer:
    """The running page: the port it listens on, and how to stop it."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    async def close(self) -> None:
        await self._runner.cleanup()


async def start_approvals_server(
    approvals: LocalApprovals,
    identify: Identify,
    signer: LinkSigner,
    host: str,
    port: int,
) -> ApprovalsServer:
    """Serves the page and API on host:port (port 0 picks a free one) in this event loop."""
    runner = web.AppRunner(
        approvals_app(approvals, identify, signer),
        handle_signals=False,
        access_log_format=_ACCESS_LOG_FORMAT,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return ApprovalsServer(runner, int(bound))


def approvals_app(
    approvals: LocalApprovals, identify: Identify, signer: LinkSigner
) -> web.Application:
    handlers = _Approvals(approvals, identify, signer)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_answers])
    app.router.add_get("/", handlers.inbox)
    app.router.add_get("/signin", handlers.signin_form)
    app.router.add_post("/signin", handlers.signin)
    app.router.add_post("/signout", handlers.signout)
    app.router.add_get("/requests/{id}", handlers.show_request)
    app.router.add_post("/requests/{id}/decision", handlers.decision)
    app.router.add_get("/api/requests", handlers.api_list)
    app.router.add_get("/api/requests/{id}", handlers.api_request)
    app.router.add_post("/api/requests/{id}/approve", handlers.api_approve)
    app.router.add_post("/api/requests/{id}/deny", handlers.api_deny)
    return app


def approver_of(claims: Mapping[str, Any]) -> Approver:
    """The approver a verified token names."""
    name = claims.get("name") or claims.get("email")
    return Approver(
        subject=str(claims["sub"]),
        issuer=str(claims["iss"]),
        groups=claim_groups(claims),
        name=name if isinstance(name, str) else None,
    )


def request_document(request: ApprovalRequest, link: str) -> dict[str, Any]:
    """A request as the API gives it: everything approvers see, how it ended, its page."""
    document = request.model_dump(mode="json", exclude={"binding"})
    document["role"] = request.requester.role
    document["outcome"] = request.outcome_text()
    document["link"] = link
    return document


class _Sessions:
    """Signed-in approvers by their cookie: a LinkSigner ticket (purpose "session") whose
    nonce names the approver held here. Held in memory, like the requests themselves, so a
    signed-out cookie is dead even if it was copied, and a session ends with the gateway."""

    def __init__(self, signer: LinkSigner) -> None:
        self._signer = signer
        self._open: dict[str, tuple[Approver, datetime]] = {}

    def open(self, approver: Approver, expires_at: datetime, now: datetime) -> str:
        self._forget(now)
        cookie = self._signer.sign("-", approver.subject, "session", expires_at)
        nonce = self._signer.verify(cookie, "session", now).nonce
        self._open[nonce] = (approver, expires_at)
        return cookie

    def find(self, cookie: str | None, now: datetime) -> Approver | None:
        nonce = self._nonce(cookie, now)  # the ticket's own expiry ends the session
        return None if nonce is None else self._open[nonce][0]

    def close(self, cookie: str | None, now: datetime) -> None:
        nonce = self._nonce(cookie, now)
        if nonce is not None:
            self._open.pop(nonce, None)

    def _nonce(self, cookie: str | None, now: datetime) -> str | None:
        if not cookie:
            return None
        try:
            ticket = self._signer.verify(cookie, "session", now)
        except ApprovalError:
            return None
        held = self._open.get(ticket.nonce)
        if held is None or held[0].subject != ticket.approver:
            return None
        return ticket.nonce

    def _forget(self, now: datetime) -> None:
        for nonce, (_, expires_at) in list(self._open.items()):
            if expires_at <= now:
                del self._open[nonce]
        while len(self._open) >= MAX_SESSIONS:  # the oldest sign-in goes first
            del self._open[next(iter(self._open))]


class _Approvals:
    def __init__(self, approvals: LocalApprovals, identify: Identify, signer: LinkSigner) -> None:
        self._approvals = approvals
        self._identify = identify
        self._signer = signer
        self._sessions = _Sessions(signer)

    # --- the page ----------------------------------------------------------------------------

    async def inbox(self, request: web.Request) -> web.StreamResponse:
        approver = self._signed_in(request)
        if approver is None:
            return _redirect("/signin?next=/")
        shown = _visible(self._approvals.requests(), approver)
        links = {item.id: _request_path(item.id) for item in shown}
        return _html(inbox_page(shown, approver=approver.shown, links=links))

    async def signin_form(self, request: web.Request) -> web.StreamResponse:
        return _html(signin_page(next_path=_local_path(request.query.get("next"))))

    async def signin(self, request: web.Request) -> web.StreamResponse:
        _refuse_foreign_post(request)
        form = await _form(request)
        next_path = _local_path(form.get("next"))
        token = (form.get("token") or "").strip()
        if not token:
            message = "paste your OIDC token into the box, then sign in"
            return _html(signin_page(message=message, next_path=next_path), status=400)
        try:
            approver, token_expires_at = await self._verified(token)
        except ApprovalError as error:
            page = signin_page(message=error.message, next_path=next_path)
            return _html(page, status=error.status)
        now = utc_now()
        expires_at = min(token_expires_at, now + SESSION_LIFETIME)
        if expires_at - now < _SHORTEST_SESSION:  # accepted only by the issuer's clock leeway
            message = "this token has expired or is about to; sign in with a fresh one"
            return _html(signin_page(message=message, next_path=next_path), status=401)
        cookie = self._sessions.open(approver, expires_at, now)
        log.info("approvals page: %s signed in", approver.subject)
        response = _redirect(next_path)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=max(1, int((expires_at - now).total_seconds())),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._approvals.base_url.startswith("https://"),
        )
        return response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        _refuse_foreign_post(request)
        self._sessions.close(request.cookies.get(SESSION_COOKIE), utc_now())
        response = _redirect("/signin")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def show_request(self, request: web.Request) -> web.StreamResponse:
        """One request's page; with a decide form when the signed-in approver may vote."""
        request_id = request.match_info["id"]
        approver = self._signed_in(request)
        if approver is None:
            # Who asked for what is for its approvers and its requester: sign in first.
            signin = "/signin?next=" + quote(_request_path(request_id), safe="/")
            return _redirect(signin)
        held = _shown_to(self._approvals.get(request_id), approver)
        now = utc_now()
        ticket = None
        notice = _own_vote(held, approver)
        try:
            held.may_vote(approver, now)
        except ApprovalError as why:
            notice = notice or (why.message if held.pending else None)
        else:
            ticket = self._signer.sign(
                request_id, approver.subject, "decide", now + DECIDE_TICKET_LIFETIME
            )
        page = request_page(
            held,
            form_action=f"{_request_path(request_id)}/decision" if ticket else None,
            ticket=ticket,
            notice=notice,
            signed_in_as=approver.shown,
        )
        return _html(page)

    async def decision(self, request: web.Request) -> web.StreamResponse:
        _refuse_foreign_post(request)
        request_id = request.match_info["id"]
        approver = self._signed_in(request)
        if approver is None:
            raise ApprovalError(
                "sign in first: your session is missing or has ended; sign in at /signin,"
                " then open the request again",
                status=401,
            )
        form = await _form(request)
        decision = form.get("decision")
        if decision not in ("approve", "deny"):
            raise ApprovalError("the form's decision must be approve or deny", status=400)
        reason = _reason(form.get("reason"))
        now = utc_now()
        ticket = self._signer.verify(form.get("ticket") or "", "decide", now)
        if ticket.request_id != request_id:
            raise ApprovalError(
                f"this form was made for another request, not {request_id}; open the"
                " request again from the approvals inbox",
                status=403,
            )
        if ticket.approver != approver.subject:
            raise ApprovalError(
                f"this form was made for another approver, not {approver.subject}; open the"
                " request again signed in as yourself",
                status=403,
            )
        self._approvals.use_ticket(ticket)
        try:
            await self._approvals.vote(request_id, approver, decision == "approve", reason)
        except ApprovalError as error:
            if error.status == 404:
                raise
            held = self._approvals.get(request_id)
            page = request_page(
                held,
                form_action=None,
                ticket=None,
                notice=error.message,
                signed_in_as=approver.shown,
            )
            return _html(page, status=error.status)
        return _redirect(_request_path(request_id))

    # --- the API -----------------------------------------------------------------------------

    async def api_list(self, request: web.Request) -> web.StreamResponse:
        approver = await self._bearer(request)
        shown = _visible(self._approvals.requests(), approver)
        documents = [request_document(item, self._approvals.link(item.id)) for item in shown]
        return web.json_response({"requests": documents})

    async def api_request(self, request: web.Request) -> web.StreamResponse:
        approver = await self._bearer(request)
        held = _shown_to(self._approvals.get(request.match_info["id"]), approver)
        return web.json_response(request_document(held, self._approvals.link(held.id)))

    async def api_approve(self, request: web.Request) -> web.StreamResponse:
        return await self._api_vote(request, approve=True)

    async def api_deny(self, request: web.Request) -> web.StreamResponse:
        return await self._api_vote(request, approve=False)

    async def _api_vote(self, request: web.Request, *, approve: bool) -> web.StreamResponse:
        approver = await self._bearer(request)
        reason = _reason(await _json_reason(request))
        request_id = request.match_info["id"]
        decided = await self._approvals.vote(request_id, approver, approve, reason)
        return web.json_response(request_document(decided, self._approvals.link(decided.id)))

    # --- who is asking -----------------------------------------------------------------------

    def _signed_in(self, request: web.Request) -> Approver | None:
        return self._sessions.find(request.cookies.get(SESSION_COOKIE), utc_now())

    async def _bearer(self, request: web.Request) -> Approver:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApprovalError(
                "the approvals API needs the approver's OIDC token: send the header"
                " 'Authorization: Bearer TOKEN' (custos approvals --token)",
                status=401,
            )
        approver, _ = await self._verified(token)
        return approver

    async def _verified(self, token: str) -> tuple[Approver, datetime]:
        try:
            claims = await self._identify(token)
        except AuthenticationError as error:
            hint = f" ({error.hint})" if error.hint else ""
            raise ApprovalError(f"{error.message}{hint}", status=401) from None
        return approver_of(claims), datetime.fromtimestamp(int(claims["exp"]), UTC)


# --- answers ---------------------------------------------------------------------------------


@web.middleware
async def _answers(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Errors as the caller reads them (JSON for the API, a page for people), and the
    security headers on every page."""
    try:
        response = await handler(request)
    except ApprovalError as error:
        response = _error(request, error.message, error.status)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = _error(request, _http_message(request, error), error.status)
    except Exception:
        # Only the route: the request's body and headers may hold a token or a statement.
        log.exception("approvals page: %s %s failed", request.method, request.path)
        message = "the approvals page failed to answer; the gateway's log says why"
        response = _error(request, message, 500)
    if response.content_type == "text/html":
        response.headers.update(SECURITY_HEADERS)
    return response


def _error(request: web.Request, message: str, status: int) -> web.Response:
    if request.path.startswith("/api/"):
        response = web.json_response({"error": message}, status=status)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="custos-approvals"'
        return response
    return _html(error_page(message, status), status=status)


def _http_message(request: web.Request, error: web.HTTPException) -> str:
    if isinstance(error, web.HTTPNotFound):
        return f"there is no page at {request.path}; the approvals inbox is at /"
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        return f"{request.method} is not allowed on {request.path}; use {allowed}"
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return f"the request is larger than the {MAX_BODY_BYTES // 1024} KiB this page accepts"
    return error.reason


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _refuse_foreign_post(request: web.Request) -> None:
    """Another site's page may not post to this one: SameSite=Strict keeps the session
    cookie from such a post already, and the Origin (or Referer) says where it came from."""
    origin = request.headers.get("Origin")
    source = origin if origin is not None else request.headers.get("Referer")
    if source is None:
        return  # not a browser (curl, a test client): the ticket and the session decide
    if source == "null" or urlsplit(source).netloc.lower() != request.host.lower():
        raise ApprovalError(
            "this form was posted from another site's page, which may not decide here;"
            " open the approvals page itself and use its buttons",
            status=403,
        )


async def _form(request: web.Request) -> dict[str, str]:
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise ApprovalError("send the page's form (application/x-www-form-urlencoded)", 400)
    posted = await request.post()
    form: dict[str, str] = {}
    for name, value in posted.items():
        if not isinstance(value, str):
            raise ApprovalError(f"the form field {name!r} must be text, not a file", 400)
        form.setdefault(name, value)
    return form


async def _json_reason(request: web.Request) -> str | None:
    """The reason in an API vote's optional body: {"reason": "..."}."""
    body = await request.read()
    if not body.strip():
        return None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApprovalError('the body must be JSON: {"reason": "..."}, or empty', 400) from None
    if not isinstance(document, dict) or not set(document) <= {"reason"}:
        raise ApprovalError('the body may only hold {"reason": "..."}', 400)
    reason = document.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ApprovalError("the reason must be a string", 400)
    return reason


def _reason(text: str | None) -> str | None:
    if text is None:
        return None
    if len(text) > MAX_REASON_CHARS:
        raise ApprovalError(
            f"the reason is {len(text)} characters long; keep it to {MAX_REASON_CHARS}", 400
        )
    return text.strip() or None


def _shown_to(held: ApprovalRequest, approver: Approver) -> ApprovalRequest:
    """The request, if the identity may see it (as _visible); else as if unknown (404)."""
    if not _visible([held], approver):
        raise ApprovalError(
            f"no approval request {held.id!r} that you decide or asked for is held by this"
            " gateway; sign in as a member of its approver group",
            status=404,
        )
    return held


def _visible(requests: list[ApprovalRequest], approver: Approver) -> list[ApprovalRequest]:
    """What an identity may list: the requests its groups decide, and its own."""
    return [
        item
        for item in requests
        if item.group in approver.groups
        or (item.requester.issuer, item.requester.subject) == (approver.issuer, approver.subject)
    ]


def _own_vote(request: ApprovalRequest, approver: Approver) -> str | None:
    for vote in request.votes:
        if (vote.issuer, vote.approver) == (approver.issuer, approver.subject):
            verb = "approved" if vote.decision == "approved" else "denied"
            at = vote.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            return f"you {verb} this request at {at}"
    return None


def _request_path(request_id: str) -> str:
    return f"/requests/{quote(request_id, safe='')}"


def _local_path(path: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site."""
    if not path or not _LOCAL_PATH.fullmatch(path) or path.startswith("//"):
        return "/"
    return path
