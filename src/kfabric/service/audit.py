"""The append-only audit log. Entries are hash-chained: each stores the previous entry's hash and its own,
``sha256(prev_hash + canonical JSON of the entry)``, so removing or editing any entry breaks every later hash.
Writers lock the single chain-head row, which serializes appends on PostgreSQL (SQLite serializes writers)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kfabric.model.errors import Conflict
from kfabric.store import tables as t

GENESIS = "0" * 64


def entry_digest(prev: str, at_s: float, actor: str, action: str, obj_type: str, obj_id: str, detail: Any) -> str:
    """The hash of one audit entry, chained to the previous entry's hash (also used by the batched submit path)."""
    body = json.dumps([at_s, actor, action, obj_type, obj_id, detail], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


def record(
    session: Session,
    actor: str,
    action: str,
    object_type: str,
    object_id: object,
    now_s: float,
    organization_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> t.AuditEntry:
    """Append one entry in the caller's transaction (it commits or rolls back with the change it records)."""
    head = session.execute(select(t.ChainHead).where(t.ChainHead.id == 1).with_for_update()).scalar_one_or_none()
    if head is None:
        head = t.ChainHead(id=1, hash=GENESIS, count=0)
        session.add(head)
    detail = detail or {}
    digest = entry_digest(head.hash, now_s, actor, action, object_type, str(object_id), detail)
    entry = t.AuditEntry(
        at_s=now_s,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        organization_id=organization_id,
        detail=detail,
        prev_hash=head.hash,
        hash=digest,
    )
    session.add(entry)
    head.hash = digest
    head.count += 1
    return entry


def verify_chain(session: Session) -> int:
    """Check every entry's hash and link; return the number of entries or raise :class:`Conflict` at the first
    broken one."""
    prev = GENESIS
    n = 0
    for e in session.scalars(select(t.AuditEntry).order_by(t.AuditEntry.id)).yield_per(1000):
        if e.prev_hash != prev:
            raise Conflict(f"audit entry {e.id}", "does not link to the entry before it (an entry was removed)")
        if entry_digest(prev, e.at_s, e.actor, e.action, e.object_type, e.object_id, e.detail) != e.hash:
            raise Conflict(f"audit entry {e.id}", "its hash does not match its content (it was edited)")
        prev = e.hash
        n += 1
    head = session.get(t.ChainHead, 1)
    if head is not None and (head.hash != prev or head.count != n):
        raise Conflict("audit log", "the newest entries were removed (the chain head does not match)")
    return n
