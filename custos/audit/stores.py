"""The audit store the configuration names."""

from __future__ import annotations

from custos.audit.commit import AuditStore
from custos.audit.local import LocalStore
from custos.audit.settings import AuditSettings


def audit_store(settings: AuditSettings) -> AuditStore:
    if settings.store == "dynamodb":
        from custos.audit.dynamo import DynamoStore  # boto3 only where it is used

        assert settings.table is not None  # AuditSettings checks it
        return DynamoStore(settings.table, settings.retention_days)
    assert settings.dir is not None  # AuditSettings checks it
    return LocalStore(
        settings.dir, fsync_each=settings.durability == "disk", compress=settings.compress
    )
