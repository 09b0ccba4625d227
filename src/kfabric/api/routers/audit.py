"""/v1/audit: the hash-chained audit log (operators see all entries, tenants their organization's)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from kfabric.api.deps import Caller
from kfabric.model.errors import PermissionDenied
from kfabric.service import audit
from kfabric.service.actors import Role
from kfabric.store import tables as t

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("")
def entries(
    c: Caller,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    q = select(t.AuditEntry).where(t.AuditEntry.id > after_id)
    if c.actor.role is Role.ORG_ADMIN:
        q = q.where(t.AuditEntry.organization_id == c.actor.organization_id)
    elif c.actor.role is not Role.OPERATOR:
        raise PermissionDenied("read the audit log", "operators and org-admins read it")
    with c.rt.sessions() as s:
        return [
            {
                "id": e.id,
                "at_s": e.at_s,
                "actor": e.actor,
                "action": e.action,
                "object_type": e.object_type,
                "object_id": e.object_id,
                "detail": e.detail,
                "prev_hash": e.prev_hash,
                "hash": e.hash,
            }
            for e in s.scalars(q.order_by(t.AuditEntry.id).limit(limit)).all()
        ]


@router.get("/verify")
def verify(c: Caller) -> dict[str, Any]:
    """Recompute the whole chain; 409 names the first broken entry."""
    c.actor.require_operator("verify the audit log")
    with c.rt.sessions() as s:
        return {"entries": audit.verify_chain(s), "ok": True}
