"""Who a session acts as, once its token is verified and its role assumed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    role: str
    subject: str
    issuer: str
    groups: tuple[str, ...]
    claims: Mapping[str, Any]  # the verified claims, as a read-only MappingProxyType
    client_address: str  # "ip:port"
    application_name: str | None
    token_expires_at: int  # epoch seconds
