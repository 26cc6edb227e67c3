"""Errors raised by the codec when the peer breaks the protocol."""


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid PostgreSQL protocol message.

    The message is safe to show the client: it describes the framing fault,
    never the bytes themselves (they may hold a token or personal data).
    """

    sqlstate = "08P01"

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
