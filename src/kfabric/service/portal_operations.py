"""What the portal's operator pages read: the live fleet (``node_health.live_view``, as ``GET /v1/fleet/live``),
the audit log filtered and paged (operators all entries, org-admins their organization's, as ``GET /v1/audit``)
with the chain head, and the chain's verification (``audit.verify_chain``, as ``GET /v1/audit/verify``). Every
function opens its own read and returns plain values."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import Conflict, PermissionDenied
from kfabric.model.fleet import Fleet
from kfabric.service import audit
from kfabric.service.actors import Actor, Role
from kfabric.service.live_state import LiveState
from kfabric.service.node_health import live_view
from kfabric.service.portal_records import AuditRecord, Window, of
from kfabric.store import tables as t

W = TypeVar("W", bound=Window)


def fleet_live(
    sessions: sessionmaker[Session], live: LiveState, pool_backend: Mapping[str, str], actor: Actor, now_s: float
) -> dict[str, Any]:
    """The fleet now, as ``kfabric fleet show --live`` prints it (operators; providers their owner's pools)."""
    with sessions() as s:
        return live_view(s, live, pool_backend, actor, now_s)


def _site_power(fleet: Fleet, sites: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    power = []
    for name, use in sorted(sites.items()):
        facts = fleet.site(name)
        cap_kw = facts.power_cap_mw * 1000
        power.append({
            "site": name, "pue": facts.pue, "cap_kw": cap_kw, "full_kw": use["it_kw"] * facts.pue,
            "busy_kw": use["busy_kw"] * facts.pue, "full_pct": 100 * use["it_kw"] * facts.pue / cap_kw,
            "busy_pct": 100 * use["busy_kw"] * facts.pue / cap_kw,
        })  # fmt: skip
    return power


def fleet_summary(
    live: dict[str, Any], fleet: Fleet, now_s: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The live fleet (:func:`fleet_live`) by site × owner × GPU model (GPUs, free, allocated, out, online, nodes),
    and per site its power against the cap: every online pool at full draw, and an estimate of the draw now (the
    pool's node power × the share of its GPUs allocated), both × the site's PUE."""
    pools = {p.name: p for p in fleet.pools}
    groups: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    sites: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    today = datetime.fromtimestamp(now_s, UTC).date().isoformat()
    for p in live["pools"]:
        g = groups[(p["site"], p["owner"], p["gpu_model"])]
        online = p["online"] <= today
        for k in ("gpus", "gpus_free", "gpus_allocated", "gpus_out", "nodes"):
            g[k] += p[k]
        g["gpus_online"] += p["gpus"] if online else 0
        if online:
            use = sites[p["site"]]
            use["it_kw"] += pools[p["name"]].power_kw
            use["busy_kw"] += pools[p["name"]].power_kw * (p["gpus_allocated"] / p["gpus"] if p["gpus"] else 0)
    rows = [{"site": k[0], "owner": k[1], "model": k[2], **v} for k, v in sorted(groups.items())]
    return rows, _site_power(fleet, sites)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which entries to list: each field narrows the list when set ("" / None: any)."""

    actor: str = ""
    action: str = ""
    object_type: str = ""
    object_id: str = ""
    since_s: float | None = None
    until_s: float | None = None  # exclusive


def require_audit_reader(actor: Actor) -> None:
    """Operators read the whole audit log, org-admins their organization's entries; nobody else reads it."""
    if actor.role not in (Role.OPERATOR, Role.ORG_ADMIN):
        raise PermissionDenied("read the audit log", "operators and org-admins read it")


def _scope(actor: Actor) -> Select[Any]:
    require_audit_reader(actor)
    q = select(t.AuditEntry)
    if actor.role is Role.ORG_ADMIN:
        return q.where(t.AuditEntry.organization_id == actor.organization_id)
    return q


def _filtered(q: Select[Any], f: AuditFilter) -> Select[Any]:
    e = t.AuditEntry
    for column, value in ((e.actor, f.actor), (e.action, f.action), (e.object_type, f.object_type),
                          (e.object_id, f.object_id)):  # fmt: skip
        if value:
            q = q.where(column == value)
    if f.since_s is not None:
        q = q.where(e.at_s >= f.since_s)
    if f.until_s is not None:
        q = q.where(e.at_s < f.until_s)
    return q


@dataclass(frozen=True, slots=True)
class AuditPage(Generic[W]):
    rows: list[AuditRecord]
    paging: W
    actions: list[str]  # every action in the log (the filter's choices)
    head: dict[str, Any] | None  # the chain head (entries, hash), for operators


def audit_page(
    sessions: sessionmaker[Session], actor: Actor, f: AuditFilter, window: Callable[[int], W]
) -> AuditPage[W]:
    """One page of the entries ``actor`` may read that ``f`` selects, newest first; ``window(total)`` picks it."""
    q = _filtered(_scope(actor), f)
    with sessions() as s:
        paging = window(int(s.scalar(select(func.count()).select_from(q.subquery())) or 0))
        page = q.order_by(t.AuditEntry.id.desc()).limit(paging.size).offset(paging.offset)
        rows = [of(AuditRecord, e) for e in s.scalars(page).all()]
        actions = list(s.scalars(select(t.AuditEntry.action).distinct().order_by(t.AuditEntry.action)).all())
        head = s.get(t.ChainHead, 1) if actor.is_operator else None
        return AuditPage(rows, paging, actions, {"entries": head.count, "hash": head.hash} if head else None)


def verify(sessions: sessionmaker[Session], actor: Actor) -> dict[str, Any]:
    """Recompute the whole chain with the server's audit keys (operators): ``ok`` with the entries, head hash and
    keys, or ``ok: False`` with the problem; ``seconds`` it took."""
    actor.require_operator("verify the audit log")
    started = time.perf_counter()
    try:
        with sessions() as s:
            v = audit.verify_chain(s)
        verified: dict[str, Any] = {"ok": True, "entries": v.entries, "hash": v.hash, "keys": list(v.keys)}
    except Conflict as exc:
        verified = {"ok": False, "problem": str(exc)}
    verified["seconds"] = time.perf_counter() - started
    return verified
