"""The one error the identity layer raises, and how it quotes untrusted values."""

from __future__ import annotations

from custos.protocol import sqlstates

# PostgreSQL's condition names for these SQLSTATEs.
INVALID_PASSWORD = sqlstates.INVALID_PASSWORD
INVALID_AUTHORIZATION = sqlstates.INVALID_AUTHORIZATION_SPECIFICATION

_MAX_SHOWN = 200


class AuthenticationError(Exception):
    """A connection may not proceed: the token failed a check, or the role refused it.

    The gateway sends ``message`` and ``hint`` to the client in an ErrorResponse,
    so they say which check failed and what to do next. They never contain the
    token: only the subject, issuer, audiences and groups, which identify the
    principal, and values from our own configuration.
    """

    def __init__(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint


class TokenRejected(AuthenticationError):
    """The token is malformed, expired, untrusted or its signature does not verify."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(INVALID_PASSWORD, message, hint)


class RoleRefused(AuthenticationError):
    """The token is valid, but it may not assume the requested role."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(INVALID_AUTHORIZATION, message, hint)


def shown(value: object) -> str:
    """Render a value taken from an unverified token for an error message.

    An attacker chooses these values, so control characters are escaped (no
    forged lines in a log) and the length is capped (no megabyte messages).
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
