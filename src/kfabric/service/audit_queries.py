"""What ``GET /v1/audit`` reads: the audit log's entries after an id, as the API's JSON objects; operators see
every entry, org-admins their organization's, nobody else any."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import PermissionDenied, ValidationError
from kfabric.service.actors import Actor, Role
from kfabric.service.jobs import visible_job
from kfabric.store import tables as t


def entries(
    sessions: sessionmaker[Session], actor: Actor, after_id: int = 0, limit: int = 1000,
    object_type: str | None = None, object_id: str | None = None, action: str | None = None,
    job: int | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Entries by id after ``after_id`` (at most ``limit``), filtered on the object, the action, or every entry
    about ``job`` (a job the caller may see: 404 otherwise)."""
    q = select(t.AuditEntry).where(t.AuditEntry.id > after_id)
    if actor.role is Role.ORG_ADMIN:
        q = q.where(t.AuditEntry.organization_id == actor.organization_id)
    elif actor.role is not Role.OPERATOR:
        raise PermissionDenied("read the audit log", "operators and org-admins read it")
    if job is not None:
        if object_type not in (None, "job") or object_id not in (None, str(job)):
            raise ValidationError("job", "cannot be combined with another object", "drop object_type/object_id")
        with sessions() as s:
            visible_job(s, actor, job)  # 404 for a job the caller may not see
        object_type, object_id = "job", str(job)
    if object_type is not None:
        q = q.where(t.AuditEntry.object_type == object_type)
    if object_id is not None:
        q = q.where(t.AuditEntry.object_id == object_id)
    if action is not None:
        q = q.where(t.AuditEntry.action == action)
    with sessions() as s:
        return [
            {
                "id": e.id,
                "at_s": e.at_s,
                "actor": e.actor,
                "action": e.action,
                "object_type": e.object_type,
                "object_id": e.object_id,
                "organization_id": e.organization_id,
                "detail": e.detail,
                "prev_hash": e.prev_hash,
                "hash": e.hash,
                "key_id": e.key_id,
            }
            for e in s.scalars(q.order_by(t.AuditEntry.id).limit(limit)).all()
        ]
