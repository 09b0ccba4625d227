"""/v1/audit: the keyed, hash-chained audit log (operators see all entries, org-admins their organization's).

``GET /v1/audit/head`` exports the chain head to keep outside the store; ``GET /v1/audit/verify`` recomputes the
chain, and with ``against_entries``/``against_hash`` (an exported head) also detects truncation or rewriting
after that export."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from kfabric.api.deps import Caller
from kfabric.model.errors import ValidationError
from kfabric.service import audit, audit_queries

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
    return audit_queries.entries(c.rt.sessions, c.actor, after_id, limit, object_type, object_id, action, job)


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
