"""/v1/audit: the keyed, hash-chained audit log (operators see all entries, org-admins their organization's).

``GET /v1/audit/head`` exports the chain head to keep outside the store; ``GET /v1/audit/verify`` recomputes the
chain, and with ``against_entries``/``against_hash`` (an exported head) also detects truncation or rewriting
after that export."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from kfabric.api.deps import Caller
from kfabric.model.errors import PermissionDenied, ValidationError
from kfabric.service import audit
from kfabric.service.actors import Role
from kfabric.service.jobs import visible_job
from kfabric.store import tables as t

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("")
def entries(
    c: Caller,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    object_type: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z_.-]+$")] = None,
    object_id: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_.-]+$")] = None,
    job: Annotated[int | None, Query(ge=1, le=2**62, description="every entry about this job")] = None,
) -> list[dict[str, Any]]:
    q = select(t.AuditEntry).where(t.AuditEntry.id > after_id)
    if c.actor.role is Role.ORG_ADMIN:
        q = q.where(t.AuditEntry.organization_id == c.actor.organization_id)
    elif c.actor.role is not Role.OPERATOR:
        raise PermissionDenied("read the audit log", "operators and org-admins read it")
    if job is not None:
        if object_type not in (None, "job") or object_id not in (None, str(job)):
            raise ValidationError("job", "cannot be combined with another object", "drop object_type/object_id")
        with c.rt.sessions() as s:
            visible_job(s, c.actor, job)  # 404 for a job the caller may not see
        object_type, object_id = "job", str(job)
    if object_type is not None:
        q = q.where(t.AuditEntry.object_type == object_type)
    if object_id is not None:
        q = q.where(t.AuditEntry.object_id == object_id)
    if action is not None:
        q = q.where(t.AuditEntry.action == action)
    with c.rt.sessions() as s:
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


@router.get("/head")
def head(c: Caller) -> dict[str, Any]:
    """The chain head (entries, newest hash): keep it outside the store to check the log against later."""
    c.actor.require_operator("export the audit head")
    with c.rt.sessions() as s:
        return audit.head(s, c.now)


@router.get("/verify")
def verify(
    c: Caller,
    against_entries: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    against_hash: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
) -> dict[str, Any]:
    """Recompute the whole chain with the audit keys; 409 names the first broken entry."""
    c.actor.require_operator("verify the audit log")
    if (against_entries is None) != (against_hash is None):
        raise ValidationError("against_entries/against_hash", "give both or neither", "pass the exported head's two")
    against = (against_entries, against_hash) if against_entries is not None and against_hash else None
    with c.rt.sessions() as s:
        v = audit.verify_chain(s, against)
    return {
        "ok": True,
        "entries": v.entries,
        "hash": v.hash,
        "last_id": v.last_id,
        "keys": list(v.keys),
        "anchored": against is not None,
    }
