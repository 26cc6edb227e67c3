"""Hash chains of audit events, one per session, and their verification.

An event's hash is SHA-256 of its canonical form: every field but `hash`, as JSON with
sorted keys, no spaces, and times in UTC. The first event of a session follows GENESIS;
each next one carries the hash of the one before. So a verifier holding a session's
events names every one changed (its hash no longer holds), removed (a gap in `seq`),
inserted or reordered (`seq` or `prev_hash` out of step).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel

from custos.audit.events import AuditEvent

GENESIS = "0" * 64
"""The `prev_hash` of a session's first event."""


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The bytes an event's hash covers: its fields but `hash` (as `model_dump(mode="json")`
    gives them), as canonical JSON."""
    shown = {name: value for name, value in fields.items() if name != "hash"}
    return json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(fields)).hexdigest()


def json_form(value: Any) -> Any:
    """A value as `model_dump(mode="json")` gives it."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | list):
        return [json_form(item) for item in value]
    if isinstance(value, dict):
        return {key: json_form(item) for key, item in value.items()}
    return value


def encoded(value: Any) -> str:
    """A field's value as the canonical form holds it."""
    return json.dumps(json_form(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_CANONICAL_ORDER = tuple(sorted(name for name in AuditEvent.model_fields if name != "hash"))
_DEFAULTS = {
    name: encoded(field.get_default(call_default_factory=True))
    for name, field in AuditEvent.model_fields.items()
    if not field.is_required()
}


class SealedEvent:
    """An event sealed on the gateway's hot path: its stored line, and what a store files
    it by. The line reads back as the AuditEvent it stands for. (A plain class: a frozen
    dataclass's constructor costs several times more, once per event.)"""

    __slots__ = ("hash", "line", "seq", "session_id", "time")

    def __init__(self, session_id: str, seq: int, time: datetime, hash: str, line: bytes) -> None:
        self.session_id = session_id
        self.seq = seq
        self.time = time
        self.hash = hash
        self.line = line  # JSON, newline-terminated


EventRecord = AuditEvent | SealedEvent
"""An event as stores take it: a model, or sealed on the hot path."""


def record_line(record: EventRecord | BaseModel) -> bytes:
    """The line a store writes for a record."""
    if isinstance(record, SealedEvent):
        return record.line
    return record.model_dump_json().encode() + b"\n"


class SessionChain:
    """Seals a session's events in order: each with its sequence number, the previous
    event's hash and its own."""

    __slots__ = ("_previous", "_seq", "session_id")

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._seq = 0
        self._previous = GENESIS

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def head(self) -> str:
        """The hash of the last event sealed (GENESIS before the first)."""
        return self._previous

    def sealed(self, **fields: Any) -> AuditEvent:
        """The next event of the session, with `session_id`, `seq`, `prev_hash` and
        `hash` set; the fields given are the rest."""
        draft = AuditEvent.model_validate(
            {
                **fields,
                "session_id": self.session_id,
                "seq": self._seq,
                "prev_hash": self._previous,
                "hash": GENESIS,  # replaced below: a hash covers every field but itself
            }
        )
        stored = draft.model_dump(mode="json")
        event = draft.model_copy(update={"hash": event_hash(stored)})
        self._seq += 1
        self._previous = event.hash
        return event

    def sealed_fast(self, time: datetime, pieces: Mapping[str, str]) -> SealedEvent:
        """The next event, sealed from its fields already encoded (`encoded`), without
        building a model: the same canonical form, hash and line `sealed` gives, at a
        fraction of the cost. Fields not given take their defaults; the caller answers for
        the values being what the schema takes (tests hold the two ways equal)."""
        seq = self._seq
        fields = {
            **_DEFAULTS,
            **pieces,
            "time": encoded(time),
            "session_id": encoded(self.session_id),
            "seq": str(seq),
            "prev_hash": f'"{self._previous}"',
        }
        body = ",".join(f'"{name}":{fields[name]}' for name in _CANONICAL_ORDER)
        digest = hashlib.sha256(f"{{{body}}}".encode()).hexdigest()
        self._seq = seq + 1
        self._previous = digest
        line = f'{{{body},"hash":"{digest}"}}\n'.encode()
        return SealedEvent(self.session_id, seq, time, digest, line)


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """Something wrong with a session's chain: which event, what, in words."""

    session_id: str
    seq: int
    problem: str  # "changed", "removed", "inserted" or "reordered"
    detail: str


def verify_chain(events: Iterable[AuditEvent]) -> list[ChainProblem]:
    """Every problem with one session's events, in the order they were stored."""
    problems: list[ChainProblem] = []
    expected_seq = 0
    previous = GENESIS
    for event in events:
        stored = event.model_dump(mode="json")
        if event_hash(stored) != event.hash:
            problems.append(
                ChainProblem(event.session_id, event.seq, "changed", "its hash does not hold")
            )
        if event.seq < expected_seq:
            kind = "reordered" if event.prev_hash != previous else "inserted"
            detail = f"sequence {event.seq} comes after {expected_seq - 1}"
            problems.append(ChainProblem(event.session_id, event.seq, kind, detail))
        elif event.seq > expected_seq:
            missing = f"{expected_seq}" + (
                f" to {event.seq - 1}" if event.seq - 1 > expected_seq else ""
            )
            problems.append(
                ChainProblem(event.session_id, expected_seq, "removed", f"events {missing} missing")
            )
        elif event.prev_hash != previous:
            problems.append(
                ChainProblem(
                    event.session_id,
                    event.seq,
                    "inserted",
                    "its prev_hash is not the hash of the event before it",
                )
            )
        expected_seq = max(expected_seq, event.seq + 1)
        previous = event.hash
    return problems
