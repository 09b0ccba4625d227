"""The operator's pages: the fleet (sites × owners × GPU models, power against each site's cap, nodes out and
why; ``node_health.live_view`` as ``GET /v1/fleet/live``: operators and providers), the queue by pending reason
(operators, who see every job), usage reports (``accounting.usage_report`` as ``GET /v1/usage``: operators and
providers here; tenants have their own usage page) and the audit log with filters and its verification
(``audit.verify_chain`` as ``GET /v1/audit/verify``: operators; org-admins read their organization's entries, as
``GET /v1/audit`` lets them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import plotly.graph_objects as go
from fastapi import APIRouter, Response

from kfabric.model.errors import PermissionDenied, ValidationError
from kfabric.service import accounting, portal_jobs, portal_operations, portal_usage
from kfabric.service.actors import Actor, Role
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
    ctl = view.rt.controller
    live = portal_operations.fleet_live(view.rt.sessions, ctl.live, ctl.pool_backend, view.actor, view.now)
    rows, power = portal_operations.fleet_summary(live, ctl.live.fleet, view.now)
    return view.render("fleet.html", live=live, rows=rows, power=power)


# ---- the queue by reason -----------------------------------------------------------------------------------------


@router.get("/queue")
def queue_by_reason(view: Viewer, reason: str = "", page: str = "") -> Response:
    reason = reason[:32]
    counts = portal_jobs.pending_reasons(view.rt.sessions, view.actor)
    total = sum(n for _c, n in counts)
    jobs: list[Any] = []
    paging = Paging.of("1", 0)
    if reason:
        paging = Paging.of(page[:10], next((n for c, n in counts if c == reason), 0))
        jobs = portal_jobs.pending_with(view.rt.sessions, view.actor, reason, paging)
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
    return portal_usage.usage_report(view.rt.sessions, view.actor, by, lo, hi), by


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


def _audit_page(view: View, filters: dict[str, str], verified: dict[str, Any] | None, status: int = 200) -> Response:
    portal_operations.require_audit_reader(view.actor)  # before the dates: a refused reader learns nothing more
    wanted = portal_operations.AuditFilter(
        filters["actor"], filters["action"], filters["object_type"], filters["object_id"],
        _day_bound(view, filters["since"], "since", False), _day_bound(view, filters["until"], "until", True),
    )  # fmt: skip
    found = portal_operations.audit_page(view.rt.sessions, view.actor, wanted, lambda n: Paging.of(filters["page"], n))
    shown = {k: v for k, v in filters.items() if k != "page"}
    return view.render(
        "audit.html",
        status=status,
        rows=found.rows,
        paging=found.paging,
        filters=shown,
        query=query,
        actions=found.actions,
        head=found.head,
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
    verified = portal_operations.verify(view.rt.sessions, view.actor)
    verified["at"] = view.now
    f = {k: form.get(k) for k in ("actor", "action", "object_type", "object_id", "since", "until")}
    filters = _filters(f["actor"], f["action"], f["object_type"], f["object_id"], f["since"], f["until"], "")
    return _audit_page(view, filters, verified)
