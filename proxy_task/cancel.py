"""Cancel keys: the client gets the gateway's own secret, never the database's.

A CancelRequest arrives on a fresh connection carrying (process id, secret).
The client sees the database's real process id, as `pg_backend_pid()` and
notifications report it, with a secret the gateway drew. The gateway looks
the pair up and, if it names a live session, tells that session: a statement
the gateway still holds is withdrawn there, otherwise the session sends the
database's own key to the database. A guessed pair finds nothing and cancels
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from custos.protocol.messages import cancel_request

log = logging.getLogger("custos.cancel")


@dataclass(frozen=True, slots=True)
class UpstreamCancelKey:
    host: str
    port: int
    process_id: int
    secret_key: int


class Cancellable(Protocol):
    def cancel_requested(self) -> Awaitable[object] | None: ...


class CancelRegistry:
    def __init__(self) -> None:
        self._sessions: dict[tuple[int, int], Cancellable] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def register(self, process_id: int, session: Cancellable) -> tuple[int, int]:
        """The client's (process id, secret key) for `session`, whose database pid it keeps."""
        while True:
            key = (process_id, secrets.randbits(32) - 2**31)
            if key not in self._sessions:
                self._sessions[key] = session
                return key

    def unregister(self, key: tuple[int, int]) -> None:
        self._sessions.pop(key, None)

    def lookup(self, process_id: int, secret_key: int) -> Cancellable | None:
        return self._sessions.get((process_id, secret_key))


async def send_cancel(upstream: UpstreamCancelKey, timeout_seconds: float = 5.0) -> None:
    """Delivers a CancelRequest to the database, as libpq does: plain, one packet."""
    try:
        async with asyncio.timeout(timeout_seconds):
            if upstream.host.startswith("/"):
                path = f"{upstream.host}/.s.PGSQL.{upstream.port}"
                reader, writer = await asyncio.open_unix_connection(path)
            else:
                reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
            writer.write(cancel_request(upstream.process_id, upstream.secret_key))
            await writer.drain()
            await reader.read()
            writer.close()
    except (OSError, TimeoutError) as error:
        log.warning("could not deliver a cancel request to the database: %s", error)
