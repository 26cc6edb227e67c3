"""What a session machine asks its network adapter to do.

The machine never touches a socket or an event loop: each event it is given returns a
list of these actions, which `proxy_task/` carries out in order.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from enum import Enum
from typing import TypeAlias


# Not frozen: one of these is made for every write, and a frozen dataclass's __init__ is slow.
@dataclass(slots=True)
class SendToServer:
    data: bytes


@dataclass(slots=True)
class SendToClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class StartWait:
    """Await this, then tell the machine how it settled (`SessionMachine.settled`)."""

    awaitable: Awaitable[object]


class Side(Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class PauseReading:
    side: Side


@dataclass(frozen=True, slots=True)
class ResumeReading:
    side: Side


@dataclass(frozen=True, slots=True)
class ForwardCancel:
    """Send the database's own cancel key to the database."""


@dataclass(frozen=True, slots=True)
class CloseSession:
    """Close both connections; anything to tell the client was sent before this."""

    reason: str


Action: TypeAlias = (
    SendToServer
    | SendToClient
    | StartWait
    | PauseReading
    | ResumeReading
    | ForwardCancel
    | CloseSession
)

PAUSE_CLIENT = PauseReading(Side.CLIENT)
RESUME_CLIENT = ResumeReading(Side.CLIENT)
PAUSE_SERVER = PauseReading(Side.SERVER)
RESUME_SERVER = ResumeReading(Side.SERVER)
FORWARD_CANCEL = ForwardCancel()
