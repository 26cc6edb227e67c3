"""Lets a coroutine read what an asyncio Protocol receives, during handshakes.

Handshakes are sequential conversations, clearer as coroutines; once a
session relays, bytes go straight from `data_received` to the other side.
"""

from __future__ import annotations

import asyncio


class ConnectionClosed(Exception):
    """The peer closed the connection before the handshake finished."""


class HandshakeReader:
    __slots__ = ("_buffer", "_closed", "_waiter")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: BaseException | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def close(self, reason: BaseException | None = None) -> None:
        self._closed = reason or ConnectionClosed("connection closed during the handshake")
        self._wake()

    def take(self) -> bytes:
        """Everything received and not yet read."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def read(self) -> bytes:
        """The next bytes received; raises ConnectionClosed at end of stream."""
        while not self._buffer:
            if self._closed is not None:
                if isinstance(self._closed, ConnectionClosed):
                    raise self._closed
                raise ConnectionClosed(str(self._closed)) from self._closed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
