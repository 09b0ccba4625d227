"""The operator's pages: the fleet (sites × owners × GPU models, power against each site's cap, nodes out and
why; ``node_health.live_view`` as ``GET /v1/fleet/live``: operators and providers), the queue by pending reason
(operators, who see every job), usage reports (``accounting.usage_report`` as ``GET /v1/usage``: operators and
providers here; tenants have their own usage page) and the audit log with filters and its verification
(``audit.verify_chain`` as ``GET /v1/audit/verify``: operators; org-admins read their organization's entries, as
``GET /v1/audit`` lets them)."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import plotly.graph_objects as go
from fastapi import APIRouter, Response
from sqlalchemy import func, select

from kfabric.model.errors import Conflict, PermissionDenied, ValidationError
from kfabric.service import accounting, audit
from kfabric.service.actors import Actor, Role
from kfabric.service.node_health import live_view, require_viewer
from kfabric.store import tables as t
from kfabric.web import nav
from kfabric.web.tables import Paging, chart, query
from kfabric.web.view import PageRoute, Posted, View, Viewer

router = APIRouter(route_class=PageRoute, include_in_schema=False)
OPERATORS = frozenset({Role.OPERATOR})
nav.add("nav.fleet", "/fleet", frozenset({Role.OPERATOR, Role.PROVIDER}), order=70)
nav.add("nav.queue", "/queue", OPERATORS, order=71)
nav.add("nav.reports", "/reports", frozenset({Role.OPERATOR, Role.PROVIDER}), order=72)
nav.add("nav.audit", "/audit", frozenset({Role.OPERATOR, Role.ORG_ADMIN}), order=73)

#: usage report groupings offered here (tenants' project view is /usage)
REPORT_GROUPS = ("organization", "program", "site", "provider", "gpu_model", "project")


# ---- the fleet ---------------------------------------------------------------------------------------------------


@router.get("/fleet")
def fleet(view: Viewer) -> Response:
    require_viewer(view.actor)
    ctl = view.rt.controller
    with view.rt.sessions() as s:
        live = live_view(s, ctl.live, ctl.pool_backend, view.actor, view.now)
    f = ctl.live.fleet
    pools = {p.name: p for p in f.pools}
    groups: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    sites: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    today = datetime.fromtimestamp(view.now, UTC).date().isoformat()
    for p in live["pools"]:
        g = groups[(p["site"], p["owner"], p["gpu_model"])]
        online = p["online"] <= today
        for k in ("gpus", "gpus_free", "gpus_allocated", "gpus_out"):
            g[k] += p[k]
        g["nodes"] += p["nodes"]
        g["gpus_online"] += p["gpus"] if online else 0
        pool = pools[p["name"]]
        use = sites[p["site"]]
        if online:
            use["it_kw"] += pool.power_kw
            # an estimate: the pool's node power x the share of its GPUs allocated now
            use["busy_kw"] += pool.power_kw * (p["gpus_allocated"] / p["gpus"] if p["gpus"] else 0)
    power = []
    for name, use in sorted(sites.items()):
        facts = f.site(name)
        cap_kw = facts.power_cap_mw * 1000
        power.append({
            "site": name, "pue": facts.pue, "cap_kw": cap_kw, "full_kw": use["it_kw"] * facts.pue,
            "busy_kw": use["busy_kw"] * facts.pue, "full_pct": 100 * use["it_kw"] * facts.pue / cap_kw,
            "busy_pct": 100 * use["busy_kw"] * facts.pue / cap_kw,
        })  # fmt: skip
    rows = [{"site": k[0], "owner": k[1], "model": k[2], **v} for k, v in sorted(groups.items())]
    return view.render("fleet.html", live=live, rows=rows, power=power)


# ---- the queue by reason -----------------------------------------------------------------------------------------


@router.get("/queue")
def queue_by_reason(view: Viewer, reason: str = "", page: str = "") -> Response:
    view.actor.require_operator("see every tenant's queue")
    reason = reason[:32]
    with view.rt.sessions() as s:
        counts = s.execute(
            select(t.Job.reason_code, func.count())
            .where(t.Job.state == "pending")
            .group_by(t.Job.reason_code)
            .order_by(func.count().desc(), t.Job.reason_code)
        ).all()
        total = sum(n for _c, n in counts)
        jobs: list[Any] = []
        paging = Paging.of("1", 0)
        if reason:
            n = next((n for c, n in counts if c == reason), 0)
            paging = Paging.of(page[:10], n)
            jobs = list(
                s.execute(
                    select(t.Job, t.Project.name, t.User.name)
                    .join(t.Project, t.Project.id == t.Job.project_id)
                    .join(t.User, t.User.id == t.Job.user_id)
                    .where(t.Job.state == "pending", t.Job.reason_code == reason)
                    .order_by(t.Job.id)
                    .limit(paging.size)
                    .offset(paging.offset)
                ).all()
            )
            s.expunge_all()
    fig = go.Figure(go.Bar(x=[n for _c, n in counts], y=[c or "—" for c, _n in counts], orientation="h"))
    fig.update_layout(
        height=120 + 28 * len(counts), xaxis_title=view.t("queue.pending_jobs"), yaxis_autorange="reversed"
    )
    return view.render(
        "queue_reasons.html",
        counts=[(c, n) for c, n in counts],
        total=total,
        reason=reason,
        jobs=jobs,
        paging=paging,
        query=query,
        chart=chart(fig, view.t("queue.chart.label")) if counts else None,
    )


# ---- usage reports -----------------------------------------------------------------------------------------------


def _report_viewer(actor: Actor) -> None:
    if actor.role not in (Role.OPERATOR, Role.PROVIDER):
        raise PermissionDenied(
            "see usage reports across organizations",
            f"operators and providers see them; you are {actor.role.value}",
            "your own usage is on the Usage page (/usage)" if actor.is_tenant else "ask an operator",
        )


def _day_bound(view: View, text: str, where: str, end: bool) -> float | None:
    """A ``YYYY-MM-DD`` date in the user's zone as epoch seconds (its start; the next day's start for ``end``)."""
    if not text:
        return None
    try:
        day = datetime.strptime(text[:10], "%Y-%m-%d")
    except ValueError:
        raise ValidationError(where, f"{text!r} is not a date", "write it as YYYY-MM-DD") from None
    start = day.replace(tzinfo=view.tz).timestamp()
    return start + 86400 if end else start


def _report(view: View, by: str, since: str, until: str) -> tuple[list[dict[str, Any]], str]:
    _report_viewer(view.actor)
    by = by if by in REPORT_GROUPS else "organization"
    lo, hi = _day_bound(view, since, "since", False), _day_bound(view, until, "until", True)
    with view.rt.sessions() as s:
        return accounting.usage_report(s, view.actor, by, lo, hi), by


@router.get("/reports")
def reports(view: Viewer, by: str = "organization", since: str = "", until: str = "") -> Response:
    rows, by = _report(view, by, since, until)
    fig = go.Figure(go.Bar(x=[str(r[by]) for r in rows], y=[r["gpu_hours"] for r in rows]))
    fig.update_layout(yaxis_title=view.t("usage.gpu_hours"), height=320)
    return view.render(
        "reports.html",
        rows=rows,
        by=by,
        groups=REPORT_GROUPS,
        since=since[:10],
        until=until[:10],
        query=query,
        chart=chart(fig, view.t("reports.chart.label", by=view.t("reports.by." + by))) if rows else None,
    )


@router.get("/reports.csv")
def reports_csv(view: Viewer, by: str = "organization", since: str = "", until: str = "") -> Response:
    rows, by = _report(view, by, since, until)
    headers = {"Content-Disposition": f'attachment; filename="kfabric-usage-by-{by}.csv"'}
    return Response(accounting.usage_csv(rows, by), media_type="text/csv", headers=headers)


# ---- the audit log -----------------------------------------------------------------------------------------------


def _audit_scope(actor: Actor) -> Any:
    q = select(t.AuditEntry)
    if actor.role is Role.ORG_ADMIN:
        return q.where(t.AuditEntry.organization_id == actor.organization_id)
    if actor.role is not Role.OPERATOR:
        raise PermissionDenied("read the audit log", "operators and org-admins read it")
    return q


def _audit_page(view: View, filters: dict[str, str], verified: dict[str, Any] | None, status: int = 200) -> Response:
    q = _audit_scope(view.actor)
    if filters["actor"]:
        q = q.where(t.AuditEntry.actor == filters["actor"])
    if filters["action"]:
        q = q.where(t.AuditEntry.action == filters["action"])
    if filters["object_type"]:
        q = q.where(t.AuditEntry.object_type == filters["object_type"])
    if filters["object_id"]:
        q = q.where(t.AuditEntry.object_id == filters["object_id"])
    lo = _day_bound(view, filters["since"], "since", False)
    hi = _day_bound(view, filters["until"], "until", True)
    if lo is not None:
        q = q.where(t.AuditEntry.at_s >= lo)
    if hi is not None:
        q = q.where(t.AuditEntry.at_s < hi)
    with view.rt.sessions() as s:
        total = int(s.scalar(select(func.count()).select_from(q.subquery())) or 0)
        paging = Paging.of(filters["page"], total)
        rows = list(s.scalars(q.order_by(t.AuditEntry.id.desc()).limit(paging.size).offset(paging.offset)).all())
        actions = list(s.scalars(select(t.AuditEntry.action).distinct().order_by(t.AuditEntry.action)).all())
        head = s.get(t.ChainHead, 1) if view.actor.is_operator else None
        head_view = {"entries": head.count, "hash": head.hash} if head is not None else None
        s.expunge_all()
    shown = {k: v for k, v in filters.items() if k != "page"}
    return view.render(
        "audit.html",
        status=status,
        rows=rows,
        paging=paging,
        filters=shown,
        query=query,
        actions=actions,
        head=head_view,
        verified=verified,
        may_verify=view.actor.is_operator,
    )


def _filters(
    actor: str, action: str, object_type: str, object_id: str, since: str, until: str, page: str
) -> dict[str, str]:
    return {"actor": actor[:200], "action": action[:64], "object_type": object_type[:32], "object_id": object_id[:64],
            "since": since[:10], "until": until[:10], "page": page[:10]}  # fmt: skip


@router.get("/audit")
def audit_log(
    view: Viewer, actor: str = "", action: str = "", object_type: str = "", object_id: str = "", since: str = "",
    until: str = "", page: str = "",
) -> Response:  # fmt: skip
    return _audit_page(view, _filters(actor, action, object_type, object_id, since, until, page), None)


@router.post("/audit/verify")
def audit_verify(view: Viewer, form: Posted) -> Response:
    """Recompute the whole chain with the server's audit keys (on demand: it reads every entry)."""
    view.actor.require_operator("verify the audit log")
    started = time.perf_counter()
    try:
        with view.rt.sessions() as s:
            v = audit.verify_chain(s)
        verified: dict[str, Any] = {"ok": True, "entries": v.entries, "hash": v.hash, "keys": list(v.keys)}
    except Conflict as exc:
        verified = {"ok": False, "problem": str(exc)}
    verified["seconds"] = time.perf_counter() - started
    verified["at"] = view.now
    f = {k: form.get(k) for k in ("actor", "action", "object_type", "object_id", "since", "until")}
    filters = _filters(f["actor"], f["action"], f["object_type"], f["object_id"], f["since"], f["until"], "")
    return _audit_page(view, filters, verified)
