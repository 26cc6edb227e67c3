"""Signed, expiring, single-use tickets that let one approver decide one request.

An email link (AWS) and each Approve or Deny form of the approvals page (local) carry one.
A ticket names the request, the approver it was made for, what it allows (`view` or
`decide`), when it expires, and a nonce; an HMAC-SHA-256 under the link-signing key seals
it. Verifying checks the seal in constant time and the expiry; that a ticket is used once is
the store's part (it keeps the nonces it accepted).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from custos.approvals.models import ApprovalError

_MAX_TICKET_CHARS = 2048


@dataclass(frozen=True, slots=True)
class Ticket:
    request_id: str
    approver: str
    purpose: str  # "view" (a page) or "decide" (a POST)
    expires_at: datetime
    nonce: str


class LinkSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the link-signing key must be at least 16 bytes")
        self._key = key

    def sign(self, request_id: str, approver: str, purpose: str, expires_at: datetime) -> str:
        claims = {
            "r": request_id,
            "a": approver,
            "p": purpose,
            "e": int(expires_at.timestamp()),
            "n": secrets.token_urlsafe(12),
        }
        body = _encoded(json.dumps(claims, separators=(",", ":")).encode())
        return f"{body}.{_encoded(self._seal(body))}"

    def verify(self, ticket: str, purpose: str, now: datetime) -> Ticket:
        """The ticket's claims; ApprovalError (403) if forged, altered, expired or for
        another purpose."""
        forged = ApprovalError(
            "this link is not valid: it was altered, or was not made by this gateway;"
            " open the request from the approvals page or the original email",
            status=403,
        )
        if len(ticket) > _MAX_TICKET_CHARS or ticket.count(".") != 1:
            raise forged
        body, seal = ticket.split(".")
        try:
            given = _decoded(seal)
        except ValueError:
            raise forged from None
        if not hmac.compare_digest(given, self._seal(body)):
            raise forged
        claims = json.loads(_decoded(body))
        expires_at = datetime.fromtimestamp(int(claims["e"]), UTC)
        if claims["p"] != purpose:
            raise forged
        if now >= expires_at:
            raise ApprovalError(
                "this link has expired; open the request from the approvals page for a new one",
                status=403,
            )
        return Ticket(str(claims["r"]), str(claims["a"]), purpose, expires_at, str(claims["n"]))

    def _seal(self, body: str) -> bytes:
        sealed = b"custos-approval-link\0" + body.encode()
        return hmac.new(self._key, sealed, hashlib.sha256).digest()


def _encoded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decoded(text: str) -> bytes:
    """The bytes of unpadded URL-safe base64 in its one canonical spelling: another spelling
    of the same bytes (unused low bits set in the last character) is refused, so that a
    ticket has exactly one form."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except Exception as error:
        raise ValueError("not base64") from error
    if _encoded(data) != text:
        raise ValueError("not canonical base64")
    return data
