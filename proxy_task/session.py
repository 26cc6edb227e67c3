"""One authenticated session: carries out what its machine asks, on two asyncio transports.

The machine (custos/session/: `SessionMachine` with policy, `RelayMachine` bare) holds all
the protocol logic. This adapter feeds it bytes and events and does what it answers: write
to either side, pause and resume reading, await what a stage waits on, forward a cancel,
close. A session knows its transports, its keys and a callback for when it ends; not the
gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from custos.identity.principal import Principal
from custos.protocol.messages import terminate
from custos.session.actions import (
    Action,
    CloseSession,
    ForwardCancel,
    PauseReading,
    ResumeReading,
    SendToClient,
    SendToServer,
    Side,
    StartWait,
)
from custos.session.stages import Settled
from proxy_task.cancel import UpstreamCancelKey, send_cancel

log = logging.getLogger("custos.session")

# A close that waits for the server's stream to reach a message boundary waits this long at
# most: a client that stopped reading must not hold the gateway's shutdown.
_CLOSE_GRACE_SECONDS = 5.0


class Machine(Protocol):
    """What the adapter drives: custos.session's SessionMachine or RelayMachine."""

    @property
    def idle(self) -> bool: ...

    def client_data(self, data: bytes) -> list[Action]: ...
    def server_data(self, data: bytes) -> list[Action]: ...
    def settled(self, awaitable: Awaitable[object], outcome: Settled) -> list[Action]: ...
    def cancel_requested(self) -> list[Action]: ...
    def client_lost(self) -> list[Action]: ...
    def server_lost(self) -> list[Action]: ...
    def close(self, sqlstate: str, message: str) -> list[Action]: ...
    def drain(self) -> list[Action]: ...
    def client_write_paused(self, paused: bool) -> list[Action]: ...
    def server_write_paused(self, paused: bool) -> list[Action]: ...


class Session:
    __slots__ = (
        "_client",
        "_closed",
        "_force_close",
        "_machine",
        "_on_closed",
        "_opened_at",
        "_tasks",
        "_upstream",
        "_upstream_key",
        "bytes_from_client",
        "bytes_from_upstream",
        "cancel_key",
        "close_reason",
        "principal",
    )

    def __init__(
        self,
        machine: Machine,
        principal: Principal,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        upstream_key: UpstreamCancelKey,
        on_closed: Callable[[Session], None],
    ) -> None:
        self._machine = machine
        self.principal = principal
        self._client = client
        self._upstream = upstream
        self._upstream_key = upstream_key
        self._on_closed = on_closed
        self.cancel_key: tuple[int, int] = (0, 0)
        self._tasks: set[asyncio.Future[object]] = set()
        self._closed = False
        self._force_close: asyncio.TimerHandle | None = None
        self._opened_at = time.monotonic()
        self.bytes_from_client = 0
        self.bytes_from_upstream = 0
        self.close_reason = ""

    @property
    def idle(self) -> bool:
        return self._machine.idle

    # --- events from the transports ------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        self.bytes_from_client += len(data)
        self._run(self._machine.client_data(data))

    def from_upstream(self, data: bytes) -> None:
        self.bytes_from_upstream += len(data)
        self._run(self._machine.server_data(data))

    def client_lost(self, error: Exception | None) -> None:
        if not self._closed:
            self._run(self._machine.client_lost())

    def upstream_lost(self, error: Exception | None) -> None:
        if not self._closed:
            self._run(self._machine.server_lost())

    def client_write_paused(self, paused: bool) -> None:
        if not self._closed:
            self._run(self._machine.client_write_paused(paused))

    def upstream_write_paused(self, paused: bool) -> None:
        if not self._closed:
            self._run(self._machine.server_write_paused(paused))

    # --- events from the gateway ---------------------------------------------------------

    def cancel_requested(self) -> Awaitable[object] | None:
        """A CancelRequest for this session: what delivers it to the database, if it must go.

        The caller waits for it before closing the client's cancel connection: clients take
        that close to mean the cancel was processed, and PostgreSQL signals the backend more
        than once, so an early close lets a late signal cancel the client's next statement.
        """
        if self._closed:
            return None
        return self._run(self._machine.cancel_requested())

    def drain(self) -> None:
        """Closes the session at its next idle moment, for a graceful shutdown."""
        if not self._closed:
            self._run(self._machine.drain())

    def close(self, sqlstate: str, message: str) -> None:
        """Ends the session, telling the client why as soon as the stream allows."""
        if self._closed:
            return
        self._run(self._machine.close(sqlstate, message))
        if not self._closed and self._force_close is None:
            loop = asyncio.get_running_loop()
            self._force_close = loop.call_later(_CLOSE_GRACE_SECONDS, self._abort, message)

    # --- carrying out actions ------------------------------------------------------------

    def _run(self, actions: list[Action]) -> asyncio.Future[object] | None:
        """Carries out the actions; the cancel's delivery to the database, if one started."""
        delivery: asyncio.Future[object] | None = None
        for action in actions:
            kind = type(action)
            if kind is SendToServer:
                self._upstream.write(action.data)  # type: ignore[union-attr]
            elif kind is SendToClient:
                self._client.write(action.data)  # type: ignore[union-attr]
            elif kind is PauseReading:
                self._transport(action.side).pause_reading()  # type: ignore[union-attr]
            elif kind is ResumeReading:
                if not self._closed:
                    self._transport(action.side).resume_reading()  # type: ignore[union-attr]
            elif kind is StartWait:
                self._start_wait(action.awaitable)  # type: ignore[union-attr]
            elif kind is ForwardCancel:
                delivery = self._start_task(send_cancel(self._upstream_key))
            elif kind is CloseSession:
                self._finish(action.reason)  # type: ignore[union-attr]
        return delivery

    def _transport(self, side: Side) -> asyncio.Transport:
        return self._client if side is Side.CLIENT else self._upstream

    def _start_wait(self, awaitable: Awaitable[object]) -> None:
        task = self._start_task(awaitable)
        task.add_done_callback(lambda done: self._settled(awaitable, done))

    def _start_task(self, awaitable: Awaitable[object]) -> asyncio.Future[object]:
        # Tasks, not bare coroutines: a session that closes first cancels them cleanly.
        task: asyncio.Future[object] = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _settled(self, awaitable: Awaitable[object], task: asyncio.Future[object]) -> None:
        if task.cancelled() or self._closed:
            return
        error = task.exception()
        outcome = Settled(error=error) if error is not None else Settled(value=task.result())
        self._run(self._machine.settled(awaitable, outcome))

    def _abort(self, reason: str) -> None:
        if not self._closed:
            self._client.abort()
            self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        if self._force_close is not None:
            self._force_close.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._client.close()
        if not self._upstream.is_closing():
            self._upstream.write(terminate())
            self._upstream.close()
        self._on_closed(self)
        log.info(
            "session closed role=%s subject=%s client=%s seconds=%.3f bytes_in=%d bytes_out=%d"
            " reason=%s",
            self.principal.role,
            self.principal.subject,
            self.principal.client_address,
            time.monotonic() - self._opened_at,
            self.bytes_from_client,
            self.bytes_from_upstream,
            reason,
        )
