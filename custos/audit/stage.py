"""The audit stage: every statement's event is durable before the statement goes upstream.

It plans after policy (whose decision it records) and before masking (so that its
subject collector reads the values masking rewrites). For each statement it seals a
`statement` event (the text without values, what policy found and decided) into the
session's chain and waits for its commit; a commit that fails refuses the statement,
unless the session's target is configured to fail open. When the statement ends, a
`statement_outcome` event follows (status, rows, bytes, time, what was masked), with the
data-subject index's rows: the identifiers it named (named.py) and returned (returned.py),
as keyed pseudonyms. Statements refused before this stage planned them get both events
when they end. No value of a statement or its result enters an event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from custos.audit.chain import SealedEvent, SessionChain, encoded
from custos.audit.events import (
    Access,
    EventType,
    IdentifierType,
    MaskedColumnRecord,
    SubjectAccess,
)
from custos.audit.named import Named, named_identifiers
from custos.audit.pseudonyms import identifier_pseudonym, subject_pseudonym
from custos.audit.returned import SubjectCollector
from custos.audit.statements import literal_values, recorded_name, without_values
from custos.policy.catalog import PersonalDataCatalog
from custos.policy.engine import Decision, DecisionFacts
from custos.protocol import sqlstates
from custos.session.refusal import Refusal
from custos.session.stages import (
    FORWARD,
    Outcome,
    Plan,
    Refuse,
    Rewrite,
    Settled,
    Stage,
    Status,
    WaitFor,
)
from custos.session.statement import Statement

if TYPE_CHECKING:
    from custos.audit.trail import AuditTrail

log = logging.getLogger("custos.audit")

_STATEMENT = encoded(EventType.STATEMENT)
_OUTCOME = encoded(EventType.STATEMENT_OUTCOME)
_DECISIONS_KEPT = 256
_OPAQUE_KINDS = frozenset({"do", "call", "ddl", "other"})
_NOT_RUN = frozenset({Status.REFUSED, Status.WITHDRAWN, Status.SKIPPED})

AUDIT_UNAVAILABLE = Refusal(
    sqlstates.IO_ERROR,
    "the gateway could not record this statement in its audit trail, so it did not run it",
    "try again shortly; tell the operator of this gateway if it persists",
)


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    """Who a session is, as every one of its events says."""

    session_id: str
    role: str
    subject: str
    issuer: str
    groups: tuple[str, ...]
    client_addr: str
    application_name: str | None
    labels: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    purpose: str | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "subject": self.subject,
            "issuer": self.issuer,
            "groups": self.groups,
            "client_addr": self.client_addr,
            "application_name": self.application_name,
            "labels": self.labels,
            "target": self.target,
            "purpose": self.purpose,
        }


@dataclass(slots=True)
class _Recorded:
    """A statement whose event is written: what it named, what collects what it returns."""

    named: list[Named]
    collector: SubjectCollector | None


class AuditStage(Stage):
    hears_outcomes = True

    def __init__(
        self,
        trail: AuditTrail,
        identity: SessionIdentity,
        key: bytes,
        catalog: Callable[[], PersonalDataCatalog],
        *,
        cap: int,
        fail_open: bool,
        keep_literals: bool = False,
    ) -> None:
        self._trail = trail
        self.identity = identity
        self._pieces = {name: encoded(value) for name, value in identity.fields().items()}
        self._decisions: dict[int, tuple[Decision, dict[str, str]]] = {}
        self._key = key
        self._catalog = catalog
        self._cap = cap
        self._fail_open = fail_open
        self._keep_literals = keep_literals
        self._chain = SessionChain(identity.session_id)
        self._recorded: dict[int, _Recorded] = {}
        self._started = datetime.now(UTC)

    # --- the session -----------------------------------------------------------------------

    def started(self) -> asyncio.Future[None]:
        """The session's start event; the session opens once it is durable."""
        return self._trail.commit([self._event(EventType.SESSION_START)])

    def ended(self, reason: str, bytes_sent: int) -> None:
        """The end event seals the chain: nothing of the session follows it."""
        duration = (datetime.now(UTC) - self._started).total_seconds() * 1000
        for number in sorted(self._recorded):
            log.warning("audit: statement %d of the session never finished", number)
        event = self._event(
            EventType.SESSION_END, error=reason, bytes=bytes_sent, duration_ms=duration
        )
        self._trail.record([event])

    def approval(
        self,
        event_type: EventType,
        statement_number: int,
        approval_id: str,
        *,
        decision: str | None = None,
        decided_by: str | None = None,
    ) -> None:
        """An approval asked for one of the session's statements, or its decision (whose
        `subject` is who decided, not who asked)."""
        fields: dict[str, Any] = {"statement_number": statement_number, "approval_id": approval_id}
        if decision is not None:
            fields["decision"] = decision
        if decided_by is not None:
            fields["subject"] = decided_by
        self._trail.record([self._event(event_type, **fields)])

    @property
    def fails_open(self) -> bool:
        return self._fail_open

    # --- statements ------------------------------------------------------------------------

    def plan(self, statement: Statement) -> Plan:
        catalog = self._catalog()
        named = self._named(statement, catalog)
        collector = self._collector(statement, catalog)
        self._recorded[statement.number] = _Recorded(named, collector)
        written = self._trail.commit([self._statement_event(statement)])
        return WaitFor(written, lambda settled: self._durable(settled, collector))

    def _durable(self, settled: Settled, collector: SubjectCollector | None) -> Plan:
        if settled.error is not None:
            log.error(
                "audit: a statement's event could not be written (%s); %s",
                settled.error,
                "running it anyway (fail open)" if self._fail_open else "refusing it",
            )
            if not self._fail_open:
                return Refuse(AUDIT_UNAVAILABLE)
        return FORWARD if collector is None else Rewrite(collector)

    def finished(self, statement: Statement, outcome: Outcome) -> None:
        recorded = self._recorded.pop(statement.number, None)
        events: list[SealedEvent] = []
        if recorded is None:
            # Refused before this stage planned it: its event, now.
            events.append(self._statement_event(statement))
            named = self._named(statement, self._catalog())
            collector = None
        else:
            named, collector = recorded.named, recorded.collector
        event_id = self._next_event_id()
        subjects, capped = self._subjects(statement, event_id, named, collector)
        decision = statement.decision
        refusal = statement.refusal
        error = None
        if refusal is AUDIT_UNAVAILABLE or (refusal is not None and statement.approval_id):
            error = refusal.message  # the gateway's own words (an approval's names no value)
        elif decision is not None and outcome.status is Status.REFUSED and refusal is not None:
            error = decision.message if refusal.message == decision.message else None
        pieces = {
            "event_type": _OUTCOME,
            "event_id": f'"{event_id}"',
            "statement_number": str(statement.number),
            "status": f'"{outcome.status.value}"',
            "rows": str(outcome.rows),
            "bytes": str(outcome.bytes),
            "duration_ms": encoded(max(outcome.duration_seconds, 0.0) * 1000),
        }
        if outcome.sqlstate is not None:
            pieces["sqlstate"] = encoded(outcome.sqlstate)
        if statement.approval_id is not None:
            pieces["approval_id"] = encoded(statement.approval_id)
        if error is not None:
            pieces["error"] = encoded(error)
        if outcome.masked:
            pieces["masked"] = encoded(
                [
                    MaskedColumnRecord(
                        statement_index=column.statement_index,
                        position=column.position,
                        category=column.category,
                        method=column.method,
                        values=column.values,
                        nulled=column.nulled,
                    )
                    for column in outcome.masked
                ]
            )
        if subjects:
            pieces["subjects"] = str(len(subjects))
        if capped:
            pieces["subjects_capped"] = "true"
        # What never ran read nothing; what it named stays, as an attempt.
        ran = outcome.status not in _NOT_RUN
        unidentified = self._unidentified(statement, subjects, collector) if ran else ()
        if unidentified:
            pieces["unidentified"] = encoded(unidentified)
        events.append(self._seal(pieces))
        self._trail.record(events, subjects, waited_for=False)

    # --- events ----------------------------------------------------------------------------

    def _next_event_id(self) -> str:
        # Unique: the session's id is, and the chain numbers its events.
        return f"{self.identity.session_id}-{self._chain.next_seq}"

    def _seal(self, pieces: dict[str, str]) -> SealedEvent:
        """The session's next event, from its own fields already encoded."""
        pieces.setdefault("event_id", f'"{self._next_event_id()}"')
        return self._chain.sealed_fast(datetime.now(UTC), {**self._pieces, **pieces})

    def _event(self, event_type: EventType, **fields: Any) -> SealedEvent:
        return self._seal(
            {"event_type": encoded(event_type)}
            | {name: encoded(value) for name, value in fields.items()}
        )

    def _statement_event(self, statement: Statement) -> SealedEvent:
        own = _own_text(statement)
        texts = statement.analysis.texts if own is None else (own,)
        pieces = {
            "event_type": _STATEMENT,
            "statement_number": str(statement.number),
        }
        if texts:
            pieces["statement"] = encoded("; ".join(without_values(text) for text in texts))
        decision = statement.decision
        if decision is not None:
            pieces.update(self._decided(decision))
            if self._keep_literals and own is not None and not self._personal(decision):
                pieces["literals"] = encoded(literal_values(own))
        return self._seal(pieces)

    def _personal(self, decision: Decision) -> bool:
        """Whether a statement so decided may touch personal data: it names a catalogued
        table or category, or runs code whose statements the analysis does not see (a DO
        block, a procedure, dynamic SQL, a function's body it creates)."""
        facts = decision.facts
        if facts.unparsable or _OPAQUE_KINDS.intersection(facts.kinds):
            return True
        if any(risk.startswith("dynamic") for risk in facts.risks):
            return True
        catalog = self._catalog()
        return any(catalog.has_personal_data(relation) for relation in _touched(facts)) or bool(
            facts.categories_read or facts.categories_written
        )

    def _decided(self, decision: Decision) -> dict[str, str]:
        """A decision's fields, encoded once per decision (the decision point keeps one
        decision per kind of statement and role)."""
        known = self._decisions.get(id(decision))
        if known is not None and known[0] is decision:
            return known[1]
        facts = decision.facts
        pieces = {
            "kinds": encoded(facts.kinds),
            # Names as the client wrote them: a table it names may be a value.
            "relations": encoded(sorted({recorded_name(name) for name in _touched(facts)})),
            "categories": encoded(sorted({*facts.categories_read, *facts.categories_written})),
            "decision": encoded(decision.effect.value),
            "rules": encoded(decision.rules),
            "deciding_rule": encoded(decision.deciding_rule),
            "policy_version": encoded(decision.policy_version),
        }
        if len(self._decisions) >= _DECISIONS_KEPT:
            self._decisions.clear()
        self._decisions[id(decision)] = (decision, pieces)
        return pieces

    # --- the data-subject index --------------------------------------------------------------

    def _named(self, statement: Statement, catalog: PersonalDataCatalog) -> list[Named]:
        decision = statement.decision
        if decision is None:
            return []
        facts = decision.facts
        relations = sorted(_touched(facts))
        if not any(catalog.has_personal_data(relation) for relation in relations):
            return []
        own = _own_text(statement)
        if own is None:
            return []  # its values are not known: its tables count as read unidentified
        return named_identifiers(own, relations, catalog, _bind_texts(statement))

    def _collector(
        self, statement: Statement, catalog: PersonalDataCatalog
    ) -> SubjectCollector | None:
        decision = statement.decision
        if decision is None:
            return None
        facts = decision.facts
        if not any(catalog.has_personal_data(relation) for relation in facts.relations_read):
            return None
        analysis = statement.decided if statement.decided is not None else statement.analysis
        return SubjectCollector(self._key, catalog, analysis, self._cap, decision)

    def _subjects(
        self,
        statement: Statement,
        event_id: str,
        named: list[Named],
        collector: SubjectCollector | None,
    ) -> tuple[list[SubjectAccess], bool]:
        rows: dict[tuple[IdentifierType, str, str, Access], SubjectAccess] = {}
        time = datetime.now(UTC)
        common: dict[str, Any] = {
            "event_id": event_id,
            "session_id": self.identity.session_id,
            "statement_number": statement.number,
            "time": time,
            "role": self.identity.role,
            "principal": self.identity.subject,
        }
        capped = False
        for each in named:
            if each.identifier_type is IdentifierType.SUBJECT:
                pseudonym = subject_pseudonym(self._key, each.value)
            else:
                pseudonym = identifier_pseudonym(self._key, each.identifier_type, each.value)
            key = (each.identifier_type, each.relation, pseudonym, Access.NAMED)
            if key in rows:
                continue
            if len(rows) >= self._cap:
                capped = True
                break
            rows[key] = SubjectAccess(
                **common,
                identifier_type=each.identifier_type,
                pseudonym=pseudonym,
                relation=each.relation,
                access=Access.NAMED,
            )
        if collector is not None:
            capped = capped or collector.capped
            for returned in collector.found.values():
                if len(rows) >= self._cap:
                    capped = True
                    break
                key = (
                    returned.identifier_type,
                    returned.relation,
                    returned.pseudonym,
                    Access.RETURNED,
                )
                rows[key] = SubjectAccess(
                    **common,
                    identifier_type=returned.identifier_type,
                    pseudonym=returned.pseudonym,
                    relation=returned.relation,
                    columns=returned.columns,
                    access=Access.RETURNED,
                    masked=returned.masked,
                )
        return list(rows.values()), capped

    def _unidentified(
        self,
        statement: Statement,
        subjects: list[SubjectAccess],
        collector: SubjectCollector | None,
    ) -> tuple[str, ...]:
        """The personal tables it read or changed without anything saying whom: a table is
        identified by the subjects its rows in the result identify, or, where the result
        shows none of its values, by those the statement names (`WHERE id = 42`, an
        UPDATE's WHERE). Rows shown without an identifier (`lower(email)`, a name beside
        `WHERE id = 42 OR id < 4`) are not said to be about whom a predicate names."""
        decision = statement.decision
        if decision is None:
            return ()
        catalog = self._catalog()
        facts = decision.facts
        touched = _touched(facts)
        returned = {row.relation for row in subjects if row.access is Access.RETURNED}
        named = {row.relation for row in subjects if row.access is Access.NAMED}
        if collector is None:
            identified = returned | named
        elif collector.unread_results:
            identified = set()
        else:
            identified = (returned | (named - collector.shown)) - collector.opaque
        return tuple(
            sorted(
                relation
                for relation in touched
                if catalog.has_personal_data(relation) and relation not in identified
            )
        )


def _touched(facts: DecisionFacts) -> set[str]:
    """The relations a statement reads or writes."""
    return {*facts.relations_read, *facts.relations_written}


def _own_text(statement: Statement) -> str | None:
    """The statement's own text: its analysis may be that of another text of its shape,
    which holds other values. Governed sessions speak UTF8 or SQL_ASCII."""
    text = statement.text
    return None if text is None else text.decode("utf-8", "replace")


def _bind_texts(statement: Statement) -> tuple[str | None, ...]:
    """The Bind values as text, where the portal's types allow (None for the others)."""
    portal = statement.portal
    if portal is None:
        return ()
    bind = portal.bind
    if bind is None:
        return ()
    try:
        return bind.texts(portal.prepared.parameter_types)
    except Exception:  # a value that is not text in its declared type names no one
        return ()
