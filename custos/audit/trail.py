"""The gateway's audit trail: one group committer for every session, and what is recorded
outside a session (authentication failures, policy versions loaded).

Each session gets an `AuditStage` (stage.py) from `session_stage`. Records outside a
session each form a chain of their own (a session id per record), so that a verifier
can check them as it checks sessions.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from custos.audit.chain import EventRecord, SessionChain
from custos.audit.commit import AuditStore, GroupCommitter
from custos.audit.digest_schedule import DigestSchedule
from custos.audit.events import EventType, SubjectAccess
from custos.audit.settings import AuditSettings
from custos.audit.stage import AuditStage, SessionIdentity
from custos.audit.statements import recorded_name, recorded_text
from custos.identity.principal import Principal
from custos.policy.catalog import PersonalDataCatalog

log = logging.getLogger("custos.audit")

_LABEL_CHARS = 200  # a label is a claim's value (a repository, a run id), never a document


class AuditTrail:
    def __init__(
        self,
        store: AuditStore,
        key: bytes,
        settings: AuditSettings,
        catalog: Callable[[], PersonalDataCatalog],
        digests: DigestSchedule | None = None,
    ) -> None:
        self.committer = GroupCommitter(store)
        self.digests = digests  # the local store's hourly digests, run by the gateway
        self._store = store
        self._key = key
        self._settings = settings
        self._catalog = catalog

    def commit(
        self,
        events: Sequence[EventRecord],
        subjects: Sequence[SubjectAccess] = (),
        *,
        waited_for: bool = True,
    ) -> asyncio.Future[None]:
        return self.committer.add(events, subjects, waited_for=waited_for)

    def record(
        self,
        events: Sequence[EventRecord],
        subjects: Sequence[SubjectAccess] = (),
        *,
        waited_for: bool = True,
    ) -> None:
        """Commits records nobody waits on; a failure to write them is logged."""
        self.commit(events, subjects, waited_for=waited_for).add_done_callback(_log_failure)

    def session_stage(self, principal: Principal, target: str, purpose: str | None) -> AuditStage:
        identity = SessionIdentity(
            session_id=uuid.uuid4().hex,
            role=principal.role,
            subject=principal.subject,
            issuer=principal.issuer,
            groups=principal.groups,
            client_addr=principal.client_address,
            application_name=(
                None
                if principal.application_name is None
                else recorded_text(principal.application_name)
            ),
            labels=self.labels(principal.claims),
            target=target,
            purpose=purpose,
        )
        return AuditStage(
            self,
            identity,
            self._key,
            self._catalog,
            cap=self._settings.subjects_per_statement,
            keep_literals=self._settings.keep_literals,
            fail_open=target in self._settings.fail_open_targets,
        )

    def labels(self, claims: Mapping[str, Any]) -> dict[str, str]:
        """The claims the config names as labels (`audit.labels`: label -> claim)."""
        labels: dict[str, str] = {}
        for label, claim in self._settings.labels.items():
            value = claims.get(claim)
            if isinstance(value, str | int | float | bool):
                labels[label] = recorded_text(str(value)[:_LABEL_CHARS])
        return labels

    def authentication_failed(
        self,
        role: str,
        client_addr: str,
        application_name: str | None,
        sqlstate: str,
        reason: str,
    ) -> None:
        """Records a refused login: the role asked for, from where, and why (the gateway's
        own message, which never quotes the token)."""
        self._alone(
            event_type=EventType.AUTHENTICATION_FAILURE,
            # The role is the client's to name here (no role of the policy took it), and
            # the reason may quote it.
            role=recorded_name(role),
            client_addr=client_addr,
            application_name=None if application_name is None else recorded_text(application_name),
            sqlstate=sqlstate,
            error=recorded_name(reason),
            status="refused",
        )

    def approval_decided(
        self, approval_id: str, decision: str, decided_by: str | None, role: str
    ) -> None:
        """A decision no waiting session records in its own chain (a retry-mode request's,
        decided while the statement was not waiting)."""
        self._alone(
            event_type=EventType.APPROVAL_DECIDED,
            approval_id=approval_id,
            decision=decision,
            subject=decided_by,
            role=role,
        )

    def policy_loaded(self, version: str) -> None:
        self._alone(event_type=EventType.POLICY_LOADED, policy_version=version)

    def _alone(self, **fields: Any) -> None:
        chain = SessionChain(uuid.uuid4().hex)
        event = chain.sealed(event_id=uuid.uuid4().hex, time=datetime.now(UTC), **fields)
        self.record([event])

    async def close(self) -> None:
        """Waits for what was handed over to be durable, then closes the store."""
        await self.committer.flush()
        self.committer.close()
        self._store.close()
        committer = self.committer
        log.info(
            "audit trail closed: %d records in %d commits",
            committer.committed_events,
            committer.commits,
        )


def _log_failure(written: asyncio.Future[None]) -> None:
    error = written.exception()
    if error is not None:
        log.error("an audit record could not be written: %s", error)
