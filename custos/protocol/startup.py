"""The startup phase: packets without a type byte, before authentication.

A client opens with one of SSLRequest, GSSENCRequest, CancelRequest or a
StartupMessage, each an Int32 length followed by an Int32 code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from custos.protocol import codes, sqlstates
from custos.protocol.errors import ProtocolViolation

_UINT32 = struct.Struct("!I")
_INT32 = struct.Struct("!i")


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSEncRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: int


@dataclass(frozen=True, slots=True)
class StartupMessage:
    major: int
    minor: int
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def protocol_options(self) -> list[str]:
        """Protocol extension options (`_pq_.*`) the client asked for."""
        return [name for name in self.parameters if name.startswith("_pq_.")]


StartupPacket = SSLRequest | GSSEncRequest | CancelRequest | StartupMessage


class StartupDecoder:
    """Reads one startup packet at a time from a byte stream."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> bytes:
        """Bytes received after the last packet, not yet decoded."""
        return bytes(self._buffer)

    def take_buffered(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= 4:
            _check_length(_UINT32.unpack_from(self._buffer)[0])

    def next_packet(self) -> StartupPacket | None:
        """The next whole packet, or None when more bytes are needed."""
        if len(self._buffer) < 4:
            return None
        length = _UINT32.unpack_from(self._buffer)[0]
        _check_length(length)
        if len(self._buffer) < length:
            return None
        packet = bytes(self._buffer[:length])
        del self._buffer[:length]
        return decode_startup_packet(packet)


def _check_length(length: int) -> None:
    if length < 8 or length > codes.MAX_STARTUP_PACKET_BYTES:
        raise ProtocolViolation(
            f"invalid startup packet length {length}; is this a PostgreSQL client?"
        )


def decode_startup_packet(packet: bytes) -> StartupPacket:
    """Decodes a whole startup packet, length word included."""
    code = _INT32.unpack_from(packet, 4)[0]
    if code == codes.SSL_REQUEST_CODE:
        _expect_length(packet, 8, "SSLRequest")
        return SSLRequest()
    if code == codes.GSSENC_REQUEST_CODE:
        _expect_length(packet, 8, "GSSENCRequest")
        return GSSEncRequest()
    if code == codes.CANCEL_REQUEST_CODE:
        _expect_length(packet, 16, "CancelRequest")
        process_id, secret_key = struct.unpack_from("!ii", packet, 8)
        return CancelRequest(process_id, secret_key)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {major}.{minor}: the gateway speaks protocol 3",
            sqlstate=sqlstates.FEATURE_NOT_SUPPORTED,
        )
    return StartupMessage(major, minor, _decode_parameters(packet[8:]))


def _expect_length(packet: bytes, expected: int, name: str) -> None:
    if len(packet) != expected:
        raise ProtocolViolation(f"{name} must be {expected} bytes, got {len(packet)}")


def _decode_parameters(body: bytes) -> dict[str, str]:
    # Each name and value ends with NUL, and one more NUL ends the list.
    if not body.endswith(b"\x00"):
        raise ProtocolViolation("startup packet parameters must end with a NUL byte")
    strings = body[:-1]
    if not strings:
        return {}
    if not strings.endswith(b"\x00"):
        raise ProtocolViolation("startup packet parameters must end with a NUL byte")
    parts = strings[:-1].split(b"\x00")
    if len(parts) % 2:
        raise ProtocolViolation("startup packet has a parameter name without a value")
    try:
        texts = [part.decode() for part in parts]
    except UnicodeDecodeError:
        raise ProtocolViolation("startup packet parameters must be valid UTF-8") from None
    parameters: dict[str, str] = {}
    for name, value in zip(texts[::2], texts[1::2], strict=True):
        if not name:
            raise ProtocolViolation("startup packet has an empty parameter name")
        parameters[name] = value
    return parameters
