"""What the client's and the database's connections have in common.

Each is an asyncio Protocol that, during its handshake, hands what it receives to a
coroutine (through a HandshakeReader) and, once a session relays, straight to the session.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from proxy_task.reader import HandshakeReader

if TYPE_CHECKING:
    from proxy_task.session import Session


class PeerConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = HandshakeReader()
        self.session: Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self._session_lost(self.session, exc)
        else:
            self.reader.close(exc)
            self._handshake_lost()

    def pause_writing(self) -> None:
        if self.session is not None:
            self._write_paused(self.session, True)

    def resume_writing(self) -> None:
        if self.session is not None:
            self._write_paused(self.session, False)

    def _session_lost(self, session: Session, exc: Exception | None) -> None:
        raise NotImplementedError

    def _write_paused(self, session: Session, paused: bool) -> None:
        raise NotImplementedError

    def _handshake_lost(self) -> None:
        return None
