"""Audit events and their hash chains: the schema auditors' queries rely on, and a
verifier that names every event changed, removed, reordered or inserted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from custos.audit.chain import GENESIS, SessionChain, encoded, event_hash, verify_chain
from custos.audit.events import AuditEvent, EventType, MaskedColumnRecord

# The fields the issue names, which auditors' queries use by these names.
NAMED_FIELDS = {
    "event_id", "event_type", "time", "session_id", "seq", "role", "subject", "issuer",
    "groups", "client_addr", "application_name", "labels", "target", "statement", "kinds",
    "relations", "categories", "decision", "rules", "deciding_rule", "policy_version",
    "masked", "approval_id", "sqlstate", "rows", "bytes", "duration_ms", "prev_hash", "hash",
}  # fmt: skip
START = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def session(events: int, session_id: str = "s-1") -> list[AuditEvent]:
    chain = SessionChain(session_id)
    sealed = [chain.sealed(event_id="e-0", event_type=EventType.SESSION_START, time=START)]
    for number in range(1, events):
        sealed.append(
            chain.sealed(
                event_id=f"e-{number}",
                event_type=EventType.STATEMENT,
                time=START + timedelta(seconds=number),
                role="agent",
                statement="SELECT email FROM crm.customers WHERE id = $1",
                decision="mask",
                rows=number,
            )
        )
    return sealed


def test_the_schema_has_every_field_auditors_query_by_name() -> None:
    # The names, and the ones this schema adds to join an outcome to its statement
    # and to index the data subjects.
    added = {"purpose", "statement_number", "status", "error", "subjects", "subjects_capped"}
    added |= {"unidentified", "literals", "schema_version"}
    assert set(AuditEvent.model_fields) == NAMED_FIELDS | added


def test_a_sealed_session_verifies_and_links_each_event_to_the_one_before() -> None:
    events = session(5)
    assert verify_chain(events) == []
    assert events[0].prev_hash == GENESIS
    assert [event.prev_hash for event in events[1:]] == [event.hash for event in events[:-1]]
    assert [event.seq for event in events] == list(range(5))


def test_a_changed_field_is_named() -> None:
    events = session(4)
    events[2] = events[2].model_copy(update={"decision": "allow"})
    assert [(p.seq, p.problem) for p in verify_chain(events)] == [(2, "changed")]


def test_a_removed_event_is_named() -> None:
    events = session(5)
    del events[1:3]
    problems = verify_chain(events)
    assert [(p.seq, p.problem) for p in problems] == [(1, "removed")]
    assert problems[0].detail == "events 1 to 2 missing"


def test_reordered_events_are_named() -> None:
    events = session(4)
    events[1], events[2] = events[2], events[1]
    assert "reordered" in {p.problem for p in verify_chain(events)}


def test_an_inserted_event_with_a_valid_hash_of_its_own_is_named() -> None:
    events = session(3)
    forger = SessionChain("s-1")
    forged = forger.sealed(event_id="x", event_type=EventType.STATEMENT, time=START)
    forged = forged.model_copy(update={"seq": 1})
    forged = forged.model_copy(update={"hash": event_hash(forged.model_dump(mode="json"))})
    tampered = [events[0], forged, *events[1:]]
    problems = {(p.seq, p.problem) for p in verify_chain(tampered)}
    assert (1, "inserted") in problems


@given(
    st.integers(min_value=2, max_value=12),
    st.sampled_from(["change", "remove", "swap"]),
    st.data(),
)
def test_any_single_tampering_is_found(length: int, tampering: str, data: st.DataObject) -> None:
    events = session(length)
    at = data.draw(st.integers(min_value=0, max_value=length - 2))
    if tampering == "change":
        events[at] = events[at].model_copy(update={"rows": 10_000})
    elif tampering == "remove":
        del events[at]
    else:
        events[at], events[at + 1] = events[at + 1], events[at]
    assert verify_chain(events)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"time": datetime(2026, 12, 6, 9, 0)}, "time zone"),  # naive: refused
        ({"schema_version": 2}, "schema version 2"),
        ({"password": "x"}, "Extra inputs are not permitted"),
        ({"rows": -1}, "greater than or equal to 0"),
    ],
)
def test_an_event_the_schema_does_not_describe_is_refused(
    change: dict[str, object], message: str
) -> None:
    fields = session(1)[0].model_dump()
    with pytest.raises(ValidationError, match=message):
        AuditEvent.model_validate({**fields, **change})


_TEXT = st.text(max_size=12)
_NAMES = st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple)
_FIELDS = st.fixed_dictionaries(
    {"event_id": st.text(min_size=1, max_size=10), "event_type": st.sampled_from(EventType)},
    optional={
        "role": _TEXT,
        "groups": _NAMES,
        "labels": st.dictionaries(st.text(max_size=5), _TEXT, max_size=3),
        "statement": _TEXT,
        "statement_number": st.integers(1, 10**6),
        "kinds": _NAMES,
        "rows": st.integers(0, 10**9),
        "duration_ms": st.floats(0, 1e6, allow_nan=False),
        "subjects_capped": st.booleans(),
        "masked": st.lists(
            st.builds(
                MaskedColumnRecord,
                statement_index=st.integers(0, 3),
                position=st.integers(-1, 9),
                category=_TEXT,
                method=_TEXT,
                values=st.integers(0, 99),
                nulled=st.integers(0, 9),
            ),
            max_size=2,
        ).map(tuple),
    },
)


@given(
    events=st.lists(_FIELDS, min_size=1, max_size=4),
    moment=st.datetimes(timezones=st.just(UTC)),
)
def test_the_hot_path_seals_exactly_as_the_model_does(
    events: list[dict[str, object]], moment: datetime
) -> None:
    by_model, fast = SessionChain("s"), SessionChain("s")
    for fields in events:
        expected = by_model.sealed(time=moment, **fields)
        sealed = fast.sealed_fast(moment, {name: encoded(v) for name, v in fields.items()})
        assert sealed.hash == expected.hash
        assert AuditEvent.model_validate_json(sealed.line) == expected
    assert fast.head == by_model.head
