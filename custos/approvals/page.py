"""The approvals pages as HTML: one request, the inbox, sign-in and errors.

The gateway's local page (server.py) and the AWS callback both render with these, so an
approver sees the same page whether they came from the inbox or an email link. Pages are
self-contained (inline CSS, no script, nothing fetched from elsewhere) and every value in
them is escaped: a statement, a reason, an application name or a label is text the
requester chose, and it must never become markup on an approver's screen.

A page only shows; deciding takes the POST of its form, whose hidden ticket (links.py) is
bound to the request and the approver and is accepted once.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from custos.approvals.models import ApprovalRequest

SECURITY_HEADERS: Mapping[str, str] = {
    # No script, no frame, nothing loaded from elsewhere; forms post only to this origin.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Browsers then send the page's own origin with its form posts (the server checks it
    # against cross-site posts) and nothing to any other site.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

MAX_REASON_CHARS = 500
_SHORT_STATEMENT_CHARS = 120

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:.7rem 1.5rem;display:flex;gap:1rem;
align-items:center;justify-content:space-between}
header a,header button{color:#fff}
header form{display:inline;margin:0}
header button{background:none;border:1px solid #fff;border-radius:4px;padding:.2rem .6rem;
cursor:pointer}
main{max-width:60rem;margin:1.5rem auto;padding:0 1.5rem}
section{background:#fff;border:1px solid #d8dbe2;border-radius:6px;padding:1rem 1.25rem;
margin-bottom:1rem}
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:0}
pre{background:#f0f2f5;padding:.75rem;border-radius:4px;white-space:pre-wrap;
word-break:break-word}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem;margin:0}
dt{font-weight:600}dd{margin:0;word-break:break-word}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #e3e5ea;vertical-align:top}
.notice{background:#fff7d6;border-color:#e6c200}
.status{display:inline-block;padding:.1rem .5rem;border-radius:4px;font-weight:600}
.pending{background:#fff0c2}.approved{background:#d3f5dc}.denied{background:#fbd5d5}
.expired,.withdrawn{background:#e3e5ea}
textarea{width:100%;min-height:4rem;box-sizing:border-box}
.buttons{display:flex;gap:1rem;margin-top:.75rem}
.buttons button{font-size:1rem;padding:.5rem 1.5rem;border-radius:4px;border:0;cursor:pointer}
#approve{background:#1f7a3a;color:#fff}#deny{background:#b42318;color:#fff}
.muted{color:#5b6272}.id{white-space:nowrap}
"""


def request_page(
    request: ApprovalRequest,
    *,
    form_action: str | None,
    ticket: str | None,
    notice: str | None = None,
    signed_in_as: str | None = None,
    signin_path: str | None = None,
) -> str:
    """One request, all an approver needs to judge it, and (while it is pending and a
    form is given) the Approve and Deny buttons.

    `signed_in_as` shows who is signed in, with a sign-out button; `signin_path` a link to
    sign in. The AWS callback gives neither.
    """
    requester = request.requester
    labels = ", ".join(f"{key}={value}" for key, value in sorted(requester.labels.items()))
    who = _fields(
        [
            ("Subject", requester.subject),
            ("Issuer", requester.issuer),
            ("Role", requester.role),
            ("Groups", ", ".join(requester.groups) or "none"),
            ("Client address", requester.client_addr or "unknown"),
            ("Application", requester.application_name or "none"),
            ("Labels", labels or "none"),
        ]
    )
    what = [
        _fields(
            [
                ("Target", request.target or "the gateway's database"),
                ("Search path", ", ".join(request.search_path) or "(as the session has it)"),
            ]
        ),
        "<h3>Statement</h3>",
        f'<pre id="statement">{_e(request.statement)}</pre>',
    ]
    if request.parameters:
        what.append("<h3>Parameters</h3><ol>")
        what.extend(
            f"<li><code>{'NULL' if value is None else _e(value)}</code></li>"
            for value in request.parameters
        )
        what.append("</ol>")
    if request.row_estimate is not None:
        rows = "row" if request.row_estimate == 1 else "rows"
        what.append(f"<p>The database estimates {request.row_estimate} {rows}.</p>")
    why = [
        "<ul>",
        *(
            f"<li><code>{_e(rule.rule)}</code>{': ' + _e(rule.message) if rule.message else ''}"
            "</li>"
            for rule in request.rules
        ),
        "</ul>",
    ]
    if request.message and all(rule.message != request.message for rule in request.rules):
        why.append(f"<p>{_e(request.message)}</p>")
    decision = [
        _fields(
            [
                ("Approver group", request.group),
                ("Approvals needed", str(request.approvals_needed)),
                ("Mode", _mode(request)),
                ("Created", _time(request.created_at)),
                ("Expires", _time(request.expires_at)),
            ]
        ),
        _votes(request),
    ]
    body = [
        f"<h1>Approval request <code>{_e(request.id)}</code></h1>",
        f'<p><span class="status {_e(request.status.value)}" id="status">'
        f"{_e(request.status.value)}</span> "
        f'<span id="outcome">{_e(request.outcome_text())}</span></p>',
        _section("Who asked", who),
        _section("What it runs", "".join(what)),
        _section("Why it needs approval", "".join(why)),
        _section("Decision", "".join(decision)),
    ]
    if request.pending and form_action is not None and ticket is not None:
        body.append(_decide_form(form_action, ticket))
    elif request.pending and signin_path is not None:
        body.append(
            _section(
                "Decide", f'<p><a href="{_e(signin_path)}" id="signin">Sign in</a> to decide.</p>'
            )
        )
    return _page(
        f"Approval request {request.id}",
        "".join(body),
        notice=notice,
        signed_in_as=signed_in_as,
    )


def inbox_page(
    requests: Sequence[ApprovalRequest],
    *,
    approver: str | None,
    links: Mapping[str, str],
) -> str:
    """The requests an approver can see: pending first, then those decided."""
    pending = [request for request in requests if request.pending]
    ended = [request for request in requests if not request.pending]
    pending_rows = [
        (
            f'<tr class="request" id="{_e(request.id)}">'
            f'<td class="id"><a href="{_e(links.get(request.id, "#"))}">{_e(request.id)}</a></td>'
            f"<td><code>{_e(_short(request.statement))}</code></td>"
            f"<td>{_e(request.requester.subject)}</td><td>{_e(request.requester.role)}</td>"
            f"<td>{_e(_first_rule(request))}</td><td>{_e(_time(request.expires_at))}</td></tr>"
        )
        for request in pending
    ]
    ended_rows = [
        (
            f'<tr class="request" id="{_e(request.id)}">'
            f'<td class="id"><a href="{_e(links.get(request.id, "#"))}">{_e(request.id)}</a></td>'
            f"<td><code>{_e(_short(request.statement))}</code></td>"
            f"<td>{_e(request.requester.subject)}</td><td>{_e(request.requester.role)}</td>"
            f"<td>{_e(request.outcome_text())}</td></tr>"
        )
        for request in ended
    ]
    waiting = (
        _table(["Request", "Statement", "Requester", "Role", "Rule", "Expires"], pending_rows)
        if pending_rows
        else '<p class="muted">Nothing is waiting for a decision.</p>'
    )
    body = [
        "<h1>Approvals</h1>",
        _section(f"Waiting for a decision ({len(pending)})", waiting, "pending"),
    ]
    if ended_rows:
        body.append(
            _section(
                f"Decided ({len(ended)})",
                _table(["Request", "Statement", "Requester", "Role", "Outcome"], ended_rows),
                "decided",
            )
        )
    return _page("Approvals", "".join(body), signed_in_as=approver)


def signin_page(*, message: str | None = None, next_path: str = "/") -> str:
    """Sign in by pasting an OIDC token from a trusted issuer."""
    form = (
        '<form method="post" action="/signin">'
        f'<input type="hidden" name="next" value="{_e(next_path)}">'
        '<p><label for="token">Paste an OIDC token (an ID token from a trusted issuer, e.g.'
        " <code>custos token --dev-issuer DIR --role approver --sub YOU --groups dpo</code>)"
        "</label></p>"
        '<textarea id="token" name="token" required autocomplete="off" spellcheck="false">'
        "</textarea>"
        '<div class="buttons"><button type="submit" id="signin">Sign in</button></div>'
        "</form>"
    )
    return _page(
        "Sign in",
        "<h1>Sign in to decide approval requests</h1>" + _section("Your identity", form),
        notice=message,
    )


def error_page(message: str, status: int) -> str:
    body = (
        f"<h1>{status}: {_e(_REASONS.get(status, 'Error'))}</h1>"
        + _section("What happened", f'<p id="error">{_e(message)}</p>')
        + '<p><a href="/">Back to the approvals inbox</a></p>'
    )
    return _page(f"{status} {_REASONS.get(status, 'Error')}", body)


_REASONS = {
    400: "Bad request",
    401: "Sign in first",
    403: "Refused",
    404: "Not found",
    405: "Method not allowed",
    409: "Already decided",
    413: "Too large",
    500: "Internal error",
}


def _decide_form(form_action: str, ticket: str) -> str:
    return _section(
        "Decide",
        f'<form method="post" action="{_e(form_action)}" id="decide">'
        f'<input type="hidden" name="ticket" value="{_e(ticket)}">'
        '<p><label for="reason">Reason (optional, kept with the decision)</label></p>'
        f'<textarea id="reason" name="reason" maxlength="{MAX_REASON_CHARS}"></textarea>'
        '<div class="buttons">'
        '<button type="submit" name="decision" value="approve" id="approve">Approve</button>'
        '<button type="submit" name="decision" value="deny" id="deny">Deny</button>'
        "</div></form>",
    )


def _votes(request: ApprovalRequest) -> str:
    if not request.votes:
        return "<p>No votes yet.</p>"
    rows = [
        f"<tr><td>{_e(vote.approver)}</td><td>{_e(vote.decision)}</td>"
        f"<td>{_e(vote.reason or '')}</td><td>{_e(_time(vote.at))}</td></tr>"
        for vote in request.votes
    ]
    return "<h3>Votes</h3>" + _table(["Approver", "Vote", "Reason", "At"], rows)


def _mode(request: ApprovalRequest) -> str:
    if request.mode == "wait":
        return "wait: the statement is held until the decision"
    grant = f" within {request.grant_seconds} s" if request.grant_seconds else ""
    return f"retry: once approved, the requester may run it once{grant}"


def _page(
    title: str, body: str, *, notice: str | None = None, signed_in_as: str | None = None
) -> str:
    account = (
        f'<span>Signed in as <strong id="approver">{_e(signed_in_as)}</strong> '
        '<form method="post" action="/signout"><button type="submit" id="signout">Sign out'
        "</button></form></span>"
        if signed_in_as is not None
        else ""
    )
    shown_notice = (
        f'<section class="notice" id="notice"><p>{_e(notice)}</p></section>' if notice else ""
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} · Custos</title><style>{_STYLE}</style></head><body>"
        f'<header><a href="/"><strong>Custos approvals</strong></a>{account}</header>'
        f"<main>{shown_notice}{body}</main></body></html>"
    )


def _section(title: str, content: str, identifier: str | None = None) -> str:
    attribute = f' id="{_e(identifier)}"' if identifier else ""
    return f"<section{attribute}><h2>{_e(title)}</h2>{content}</section>"


def _fields(pairs: Sequence[tuple[str, str]]) -> str:
    return (
        "<dl>"
        + "".join(f"<dt>{_e(name)}</dt><dd>{_e(value)}</dd>" for name, value in pairs)
        + "</dl>"
    )


def _table(columns: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{_e(column)}</th>" for column in columns)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _short(statement: str) -> str:
    lines = statement.strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > _SHORT_STATEMENT_CHARS or len(lines) > 1:
        return first[:_SHORT_STATEMENT_CHARS].rstrip() + " …"
    return first


def _first_rule(request: ApprovalRequest) -> str:
    return request.rules[0].rule if request.rules else ""


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _e(value: str) -> str:
    return html.escape(value, quote=True)
