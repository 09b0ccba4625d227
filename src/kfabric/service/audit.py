"""The append-only audit log: a keyed hash chain.

Each entry stores the previous entry's hash and its own, ``HMAC-SHA256(key, prev_hash + canonical JSON of every
other column)`` — time, actor, action, object, organization, detail and the id of the key that signed it
(:mod:`kfabric.service.audit_keys`). Editing any column or removing an entry breaks every later hash, and without
the key nobody can recompute the chain after changing it. The row id is the chain's order: verification walks
ids upwards and every link must match. Removing the newest entries and moving the head back is caught against an
exported head (:func:`head`, ``kfabric audit head``; ``kfabric audit --verify --against FILE``).

Writers lock the single chain-head row, which serializes appends on PostgreSQL (SQLite serializes writers).
A store written before the chain was keyed (key id ``""``: plain SHA-256, organization not covered) is checked
with the old rule and signed once, at the first start with a key (:func:`sign_legacy`); from then on an unsigned
entry fails verification.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from kfabric.model.errors import Conflict
from kfabric.service import audit_keys
from kfabric.service.audit_keys import Keyring
from kfabric.store import tables as t

GENESIS = "0" * 64
_CHAIN = "kfabric.audit.chain"


def _body(
    at_s: float, actor: str, action: str, obj_type: str, obj_id: str, org: int | None, detail: Any, kid: str
) -> bytes:
    return json.dumps(
        [at_s, actor, action, obj_type, obj_id, org, detail, kid], sort_keys=True, separators=(",", ":")
    ).encode()


def entry_digest(
    ring: Keyring,
    prev: str,
    at_s: float,
    actor: str,
    action: str,
    obj_type: str,
    obj_id: str,
    organization_id: int | None,
    detail: Any,
    key_id: str | None = None,
) -> tuple[str, str]:
    """``(key id, hash)`` of one entry chained to ``prev`` (also used by the batched submit path)."""
    kid = ring.current if key_id is None else key_id
    body = _body(at_s, actor, action, obj_type, obj_id, organization_id, detail, kid)
    return kid, ring.mac(kid, prev.encode() + body)


def _legacy_digest(prev: str, at_s: float, actor: str, action: str, obj_type: str, obj_id: str, detail: Any) -> str:
    body = json.dumps([at_s, actor, action, obj_type, obj_id, detail], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


class Chain:
    """Appends entries in one transaction: the head row is locked once, whatever the number of entries."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.ring = audit_keys.for_engine(_engine_of(session))
        head = session.execute(select(t.ChainHead).where(t.ChainHead.id == 1).with_for_update()).scalar_one_or_none()
        if head is None:
            head = t.ChainHead(id=1, hash=GENESIS, count=0)
            session.add(head)
        self.head = head

    @classmethod
    def of(cls, session: Session) -> Chain:
        """The chain appender of ``session``'s transaction (made on first use; dropped at commit or rollback)."""
        chain = session.info.get(_CHAIN)
        if not isinstance(chain, Chain):
            chain = session.info[_CHAIN] = cls(session)
        return chain

    def append(
        self,
        actor: str,
        action: str,
        object_type: str,
        object_id: object,
        now_s: float,
        organization_id: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> t.AuditEntry:
        detail = detail or {}
        prev = self.head.hash
        kid, digest = entry_digest(
            self.ring, prev, now_s, actor, action, object_type, str(object_id), organization_id, detail
        )
        entry = t.AuditEntry(
            at_s=now_s,
            actor=actor,
            action=action,
            object_type=object_type,
            object_id=str(object_id),
            organization_id=organization_id,
            detail=detail,
            prev_hash=prev,
            hash=digest,
            key_id=kid,
        )
        self.session.add(entry)
        self.head.hash = digest
        self.head.count += 1
        return entry


def _engine_of(session: Session) -> Any:
    bind = session.get_bind()
    return getattr(bind, "engine", bind)


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _drop_chain(session: Session) -> None:
    session.info.pop(_CHAIN, None)


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
    return Chain.of(session).append(actor, action, object_type, object_id, now_s, organization_id, detail)


@dataclass(frozen=True)
class Verified:
    entries: int
    hash: str
    last_id: int
    keys: tuple[str, ...]


_COLUMNS = (
    t.AuditEntry.id,
    t.AuditEntry.at_s,
    t.AuditEntry.actor,
    t.AuditEntry.action,
    t.AuditEntry.object_type,
    t.AuditEntry.object_id,
    t.AuditEntry.organization_id,
    t.AuditEntry.detail,
    t.AuditEntry.prev_hash,
    t.AuditEntry.hash,
    t.AuditEntry.key_id,
)


def verify_chain(session: Session, against: tuple[int, str] | None = None) -> Verified:
    """Check every entry's keyed hash and link, and the head; with ``against`` (an exported head: entries and
    hash) also that the log still holds that entry unchanged. Raises :class:`Conflict` at the first problem."""
    ring = audit_keys.for_engine(_engine_of(session))
    prev, n, last_id = GENESIS, 0, 0
    keys: set[str] = set()
    anchored = against is None
    rows = session.execute(select(*_COLUMNS).order_by(t.AuditEntry.id).execution_options(yield_per=5000))
    for eid, at_s, actor, action, otype, oid, org, detail, prev_hash, digest, kid in rows:
        where = f"audit entry {eid}"
        if prev_hash != prev:
            raise Conflict(where, "does not link to the entry before it (an entry was removed or reordered)")
        if kid == "":
            raise Conflict(where, "is not signed with an audit key (it was forged, or written around kfabric)")
        else:
            key = ring.key(kid)
            if key is None:
                raise Conflict(where, f"was signed with audit key {kid!r}, which the key file lacks",
                               "restore the audit key file that holds it")  # fmt: skip
            expected = ring.mac(kid, prev.encode() + _body(at_s, actor, action, otype, oid, org, detail, kid))
            keys.add(kid)
        if expected != digest:
            raise Conflict(where, "its hash does not match its content (it was edited, or re-hashed without the key)")
        prev, last_id = digest, eid
        n += 1
        if against is not None and n == against[0]:
            if digest != against[1]:
                raise Conflict(where, "differs from the exported head: the log was rewritten after the export")
            anchored = True
    head = session.get(t.ChainHead, 1)
    if head is not None and (head.hash != prev or head.count != n):
        raise Conflict("audit log", "the chain head does not match the newest entry (entries were removed)")
    if not anchored:
        assert against is not None
        raise Conflict(
            "audit log", f"holds {n} entries, fewer than the {against[0]} of the exported head: entries were removed"
        )
    return Verified(n, prev, last_id, tuple(sorted(keys)))


def head(session: Session, now_s: float) -> dict[str, Any]:
    """The chain head to keep outside the store (``kfabric audit head > head.json``)."""
    row = session.get(t.ChainHead, 1)
    last = session.scalar(select(t.AuditEntry.id).order_by(t.AuditEntry.id.desc()).limit(1))
    return {
        "format": "kfabric-audit-head/1",
        "entries": row.count if row else 0,
        "hash": row.hash if row else GENESIS,
        "last_id": last or 0,
        "exported_at_s": now_s,
    }


def check_keys(session: Session) -> None:
    """Refuse to run with a key file that lacks a key the store's entries were signed with."""
    ring = audit_keys.for_engine(_engine_of(session))
    used = set(session.scalars(select(t.AuditEntry.key_id).distinct()).all()) - {""}
    missing = sorted(k for k in used if ring.key(k) is None)
    where = str(ring.path) if ring.path else "audit key file"
    newest = session.execute(select(*_COLUMNS).order_by(t.AuditEntry.id.desc()).limit(1)).first()
    if not missing and newest is not None and newest.key_id:
        _id, at_s, actor, action, otype, oid, org, detail, prev_hash, digest, kid = newest
        body = _body(at_s, actor, action, otype, oid, org, detail, kid)
        if ring.mac(kid, prev_hash.encode() + body) != digest:
            missing = [f"{kid} (the file holds another secret under that id)"]
    if missing:
        raise Conflict(
            where,
            f"lacks audit key(s) {', '.join(missing)} that signed entries in this store",
            "start with the key file that made them (--audit-key-file PATH or KFABRIC_AUDIT_KEY_FILE)",
        )


def sign_legacy(session: Session, now_s: float) -> int:
    """Sign the entries of a store written before the chain was keyed (once, in the caller's transaction): the
    old chain is verified first with its own rule (a broken one is refused, not laundered), then every entry is
    re-hashed with the current key and an ``audit.sign`` entry records it. Returns how many were signed."""
    legacy = session.scalar(select(t.AuditEntry.id).where(t.AuditEntry.key_id == "").limit(1))
    if legacy is None:
        return 0
    ring = audit_keys.for_engine(_engine_of(session))
    prev = GENESIS
    rows = session.scalars(select(t.AuditEntry).order_by(t.AuditEntry.id)).all()
    for e in rows:
        if e.key_id != "" or e.prev_hash != prev:
            raise Conflict(f"audit entry {e.id}", "the unkeyed log does not verify; it cannot be signed",
                           "restore the store from a backup taken before the change")  # fmt: skip
        if _legacy_digest(prev, e.at_s, e.actor, e.action, e.object_type, e.object_id, e.detail) != e.hash:
            raise Conflict(f"audit entry {e.id}", "its hash does not match its content; it cannot be signed",
                           "restore the store from a backup taken before the change")  # fmt: skip
        prev = e.hash
    prev = GENESIS
    for e in rows:  # two passes: the unique index on hash must never see a half-rewritten chain collide
        e.hash = "~" + e.hash[1:]
    session.flush()
    for e in rows:
        e.prev_hash = prev
        e.key_id, e.hash = entry_digest(
            ring, prev, e.at_s, e.actor, e.action, e.object_type, e.object_id, e.organization_id, e.detail
        )
        prev = e.hash
    head = session.get(t.ChainHead, 1)
    if head is None:
        head = t.ChainHead(id=1, hash=prev, count=len(rows))
        session.add(head)
    head.hash, head.count = prev, len(rows)
    session.flush()
    record(session, "kfabric", "audit.sign", "audit", "log", now_s, detail={"entries": len(rows)})
    return len(rows)
