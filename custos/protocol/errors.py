"""Errors raised by the codec when the peer breaks the protocol."""

from custos.protocol import sqlstates


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid PostgreSQL protocol message.

    The message is safe to show the client: it describes the framing fault,
    never the bytes themselves (they may hold a token or personal data).
    """

    sqlstate = sqlstates.PROTOCOL_VIOLATION

    def __init__(self, message: str, sqlstate: str = sqlstates.PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
