"""Encoders and decoders for the messages the gateway itself reads or writes.

Everything else passes through as bytes; these are the messages of the
startup phase and the gateway's own errors and notices.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from custos.protocol import codes, sqlstates
from custos.protocol.errors import ProtocolViolation

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_TWO_INT32 = struct.Struct("!ii")


def _message(message_type: bytes, body: bytes) -> bytes:
    return message_type + _UINT32.pack(len(body) + 4) + body


def _cstring(text: str) -> bytes:
    encoded = text.encode()
    if b"\x00" in encoded:
        raise ValueError("protocol strings cannot contain NUL")
    return encoded + b"\x00"


# Field codes of ErrorResponse and NoticeResponse.
SEVERITY = "S"
SEVERITY_NONLOCALIZED = "V"
SQLSTATE = "C"
MESSAGE = "M"
DETAIL = "D"
HINT = "H"
WHERE = "W"


POSITION = "P"


def _notice_fields(
    severity: str,
    sqlstate: str,
    message: str,
    detail: str | None,
    hint: str | None,
    position: int | None = None,
) -> bytes:
    fields = [
        (SEVERITY, severity),
        (SEVERITY_NONLOCALIZED, severity),
        (SQLSTATE, sqlstate),
        (MESSAGE, message),
    ]
    if detail:
        fields.append((DETAIL, detail))
    if hint:
        fields.append((HINT, hint))
    if position is not None:
        fields.append((POSITION, str(position)))
    return b"".join(code.encode() + _cstring(value) for code, value in fields) + b"\x00"


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    position: int | None = None,
) -> bytes:
    return _message(b"E", _notice_fields(severity, sqlstate, message, detail, hint, position))


def notice_response(message: str, *, detail: str | None = None, hint: str | None = None) -> bytes:
    """A NoticeResponse of severity NOTICE from the gateway."""
    return _message(
        b"N", _notice_fields("NOTICE", sqlstates.SUCCESSFUL_COMPLETION, message, detail, hint)
    )


def error_response_with_fields(fields: Mapping[str, str]) -> bytes:
    """An ErrorResponse carrying exactly `fields` (code letter to value), in order."""
    body = b"".join(code.encode() + _cstring(value) for code, value in fields.items())
    return _message(b"E", body + b"\x00")


def authentication_ok() -> bytes:
    return _message(b"R", _INT32.pack(codes.AUTH_OK))


def authentication_cleartext_password() -> bytes:
    return _message(b"R", _INT32.pack(codes.AUTH_CLEARTEXT_PASSWORD))


def backend_key_data(process_id: int, secret_key: int) -> bytes:
    return _message(b"K", _TWO_INT32.pack(process_id, secret_key))


def ready_for_query(status: bytes = b"I") -> bytes:
    return _message(b"Z", status)


def negotiate_protocol_version(newest_minor: int, unsupported_options: Iterable[str]) -> bytes:
    options = list(unsupported_options)
    body = _TWO_INT32.pack(codes.PROTOCOL_3_0 | newest_minor, len(options)) + b"".join(
        map(_cstring, options)
    )
    return _message(b"v", body)


def startup_message(parameters: Mapping[str, str]) -> bytes:
    body = _INT32.pack(codes.PROTOCOL_3_0)
    body += b"".join(_cstring(key) + _cstring(value) for key, value in parameters.items())
    body += b"\x00"
    return _UINT32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _TWO_INT32.pack(8, codes.SSL_REQUEST_CODE)


def cancel_request(process_id: int, secret_key: int) -> bytes:
    return (
        _UINT32.pack(16)
        + _INT32.pack(codes.CANCEL_REQUEST_CODE)
        + _TWO_INT32.pack(process_id, secret_key)
    )


def terminate() -> bytes:
    return b"X\x00\x00\x00\x04"


def password_message_text(body: bytes) -> str:
    """The password in a PasswordMessage body: one NUL-terminated string."""
    if not body.endswith(b"\x00") or body.count(b"\x00") != 1:
        raise ProtocolViolation("malformed password message: expected one NUL-terminated string")
    try:
        return body[:-1].decode()
    except UnicodeDecodeError:
        raise ProtocolViolation("password message is not valid UTF-8") from None


def backend_key_data_values(body: bytes) -> tuple[int, int]:
    """(process id, secret key) from a BackendKeyData body."""
    if len(body) != 8:
        raise ProtocolViolation(
            "server sent a BackendKeyData of an unsupported size; the gateway speaks"
            " protocol 3.0 only"
        )
    process_id, secret_key = _TWO_INT32.unpack(body)
    return process_id, secret_key


def data_row_values(body: bytes) -> tuple[str | None, ...]:
    """The columns of a DataRow body in text format; None for NULL."""
    if len(body) < 2:
        raise ProtocolViolation("the database sent a truncated DataRow")
    count = _INT16.unpack_from(body)[0]
    if count < 0:
        raise ProtocolViolation("the database sent a malformed DataRow")
    values: list[str | None] = []
    offset = 2
    for _ in range(count):
        if offset + 4 > len(body):
            raise ProtocolViolation("the database sent a truncated DataRow")
        length = _INT32.unpack_from(body, offset)[0]
        offset += 4
        if length < 0:
            values.append(None)
            continue
        if offset + length > len(body):
            raise ProtocolViolation("the database sent a truncated DataRow")
        values.append(body[offset : offset + length].decode())
        offset += length
    if offset != len(body):
        raise ProtocolViolation("the database sent a malformed DataRow")
    return tuple(values)


@dataclass(frozen=True, slots=True)
class ServerNotice:
    """The fields of an ErrorResponse or NoticeResponse."""

    fields: Mapping[str, str]

    @property
    def sqlstate(self) -> str:
        return self.fields.get(SQLSTATE, sqlstates.INTERNAL_ERROR)

    @property
    def message(self) -> str:
        return self.fields.get(MESSAGE, "")

    @property
    def severity(self) -> str:
        return self.fields.get(SEVERITY_NONLOCALIZED) or self.fields.get(SEVERITY, "ERROR")


def parse_notice(body: bytes) -> ServerNotice:
    """Decodes an ErrorResponse or NoticeResponse body."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(body) and body[position] != 0:
        end = body.find(b"\x00", position + 1)
        if end < 0:
            raise ProtocolViolation("malformed error or notice message: unterminated field")
        code = chr(body[position])
        fields[code] = body[position + 1 : end].decode(errors="replace")
        position = end + 1
    return ServerNotice(fields)
