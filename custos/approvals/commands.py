"""`custos approvals`: list, approve and deny requests through the gateway's approvals API.

Each call sends the approver's OIDC token (`--token`, or `@FILE` to read it from a file)
to the API at `--url`, which verifies it as the page's sign-in does: the same groups, the
same refusal of one's own request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from custos.audit.output import table

URL_ENV = "CUSTOS_APPROVALS_URL"
TOKEN_ENV = "CUSTOS_APPROVALS_TOKEN"  # noqa: S105 - where the token is, not one
TIMEOUT_SECONDS = 30
_SHOWN_STATEMENT_CHARS = 60


class _Failed(Exception):
    pass


def add_approvals_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Registers `approvals` and its subcommands on the main CLI's subparsers."""
    approvals = subparsers.add_parser(
        "approvals", help="list, approve and deny statements waiting for approval"
    )
    commands = approvals.add_subparsers(required=True, metavar="SUBCOMMAND")

    listing = commands.add_parser(
        "list", help="the requests your groups decide and your own, pending first"
    )
    _connection_arguments(listing)
    listing.add_argument(
        "--json", action="store_true", help='print {"requests": [...]} as the API gives it'
    )
    listing.set_defaults(command=list_command)

    approve = commands.add_parser("approve", help="approve a request")
    approve.add_argument("request_id", metavar="ID", help="the request's id (apr-...)")
    _connection_arguments(approve)
    _reason_argument(approve)
    approve.set_defaults(command=approve_command)

    deny = commands.add_parser("deny", help="deny a request")
    deny.add_argument("request_id", metavar="ID", help="the request's id (apr-...)")
    _connection_arguments(deny)
    _reason_argument(deny)
    deny.set_defaults(command=deny_command)


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV),
        help=f"the approvals page's address, e.g. http://127.0.0.1:6480 (default: ${URL_ENV})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"your OIDC token, or @FILE to read it from FILE (default: ${TOKEN_ENV})",
    )


def _reason_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", metavar="TEXT", help="why, kept with the decision")


def list_command(arguments: argparse.Namespace) -> int:
    try:
        answer = _call(arguments, "GET", "/api/requests")
    except _Failed as error:
        return _fail(str(error))
    requests = answer.get("requests", [])
    if arguments.json:
        print(json.dumps({"requests": requests}, ensure_ascii=False, indent=2))
        return 0
    ordered = sorted(requests, key=lambda item: item.get("status") != "pending")
    rows = [
        [
            item.get("id"),
            item.get("status"),
            item.get("requester", {}).get("subject"),
            item.get("requester", {}).get("role"),
            item.get("group"),
            _shown_time(item.get("expires_at")),
            _first_line(str(item.get("statement", ""))),
        ]
        for item in ordered
    ]
    columns = ["id", "status", "requester", "role", "group", "expires", "statement"]
    print(table(columns, rows))
    print(f"({len(rows)} requests)")
    return 0


def approve_command(arguments: argparse.Namespace) -> int:
    return _vote(arguments, "approve")


def deny_command(arguments: argparse.Namespace) -> int:
    return _vote(arguments, "deny")


def _vote(arguments: argparse.Namespace, verb: str) -> int:
    path = f"/api/requests/{quote(arguments.request_id, safe='')}/{verb}"
    body = {"reason": arguments.reason} if arguments.reason else {}
    try:
        answer = _call(arguments, "POST", path, body)
    except _Failed as error:
        return _fail(str(error))
    if answer.get("status") == "pending":
        approvals = sum(1 for vote in answer.get("votes", []) if vote.get("decision") == "approved")
        print(
            f"{answer.get('id')}: your approval is counted ({approvals} of"
            f" {answer.get('approvals_needed')}); it waits for another approver"
        )
    else:
        print(f"{answer.get('id')}: {answer.get('outcome')}")
    return 0


def _call(
    arguments: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    base = _base_url(arguments.url)
    token = _token(arguments.token)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)  # noqa: S310 - http(s) checked
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:  # noqa: S310
            document = json.loads(answer.read())
    except urllib.error.HTTPError as error:
        raise _Failed(_api_error(error)) from None
    except (urllib.error.URLError, OSError) as error:
        why = error.reason if isinstance(error, urllib.error.URLError) else error
        raise _Failed(
            f"cannot reach the approvals API at {base} ({why}); check that the gateway runs"
            " with --approvals HOST:PORT (or approvals: in its config) and that --url or"
            f" ${URL_ENV} names that address"
        ) from None
    except ValueError:
        raise _Failed(f"{base} did not answer with JSON: is it the approvals page?") from None
    if not isinstance(document, dict):
        raise _Failed(f"{base} did not answer with a JSON object: is it the approvals page?")
    return document


def _api_error(error: urllib.error.HTTPError) -> str:
    try:
        message = json.loads(error.read()).get("error")
    except (ValueError, AttributeError, OSError):
        message = None
    if not isinstance(message, str):
        return f"the approvals API answered HTTP {error.code} {error.reason}"
    return message


def _base_url(url: str | None) -> str:
    if not url:
        raise _Failed(
            f"give the approvals page's address with --url or ${URL_ENV}"
            " (the gateway prints it at start: 'approvals page at ...')"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _Failed(f"--url must be an http:// or https:// address, not {url!r}")
    return url.rstrip("/")


def _token(given: str | None) -> str:
    if not given:
        raise _Failed(
            f"give your OIDC token with --token (or @FILE) or ${TOKEN_ENV}; with the dev"
            " issuer: custos token --dev-issuer DIR --role approver --sub YOU --groups GROUP"
        )
    if given.startswith("@"):
        path = Path(given[1:])
        try:
            given = path.read_text(encoding="utf-8")
        except OSError as error:
            raise _Failed(f"cannot read the token file {path}: {error.strerror}") from None
    token = given.strip()
    if not token:
        raise _Failed("the token is empty; give an OIDC token with --token")
    return token


def _shown_time(value: Any) -> str:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value or "")
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _first_line(statement: str) -> str:
    lines = statement.strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > _SHOWN_STATEMENT_CHARS or len(lines) > 1:
        return first[:_SHOWN_STATEMENT_CHARS].rstrip() + " …"
    return first


def _fail(message: str) -> int:
    print(f"custos approvals: {message}", file=sys.stderr)
    return 1
