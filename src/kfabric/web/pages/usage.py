"""Usage and credit: usage by project (``accounting.usage_report``, CSV too), the grants the user sees
(``grants.list_grants``) and one grant's credit burn-down with a projected exhaustion date from the recent burn
rate. Another tenant's grant is a 404 page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from fastapi import APIRouter, Response
from sqlalchemy import select

from kfabric.model.errors import NotFound
from kfabric.service import accounting, grants
from kfabric.service.actors import Role
from kfabric.store import tables as t
from kfabric.web import nav, timefmt
from kfabric.web.tables import chart
from kfabric.web.view import PageRoute, View, Viewer

router = APIRouter(route_class=PageRoute, include_in_schema=False)
nav.add("nav.usage", "/usage", frozenset({Role.OPERATOR, Role.ORG_ADMIN, Role.MEMBER}), order=30)

#: the burn rate behind a projection is the charge over this window (or since the grant started, if later)
RATE_WINDOW_S = 7 * 86400.0
#: a burn-down chart shows at most this many points (records are thinned evenly beyond it)
MAX_POINTS = 2000


@router.get("/usage")
def usage(view: Viewer) -> Response:
    with view.rt.sessions() as s:
        rows = accounting.usage_report(s, view.actor, "project")
        held = [grants.grant_view(g, program, project) for g, program, project in grants.list_grants(s, view.actor)]
    fig = go.Figure(go.Bar(x=[r["project"] for r in rows], y=[r["gpu_hours"] for r in rows], name="GPU-hours"))
    fig.update_layout(yaxis_title=view.t("usage.gpu_hours"), height=320)
    return view.render(
        "usage.html",
        rows=rows,
        grants=held,
        chart=chart(fig, view.t("usage.chart.label")) if rows else None,
    )


@router.get("/usage.csv")
def usage_csv(view: Viewer, by: str = "project") -> Response:
    """The usage table as CSV (the API's ``GET /v1/usage?format=csv``)."""
    with view.rt.sessions() as s:
        rows = accounting.usage_report(s, view.actor, by)
    headers = {"Content-Disposition": f'attachment; filename="kfabric-usage-by-{by}.csv"'}
    return Response(accounting.usage_csv(rows, by), media_type="text/csv", headers=headers)


@dataclass(frozen=True, slots=True)
class BurnDown:
    """A grant's credit over time: ``points`` are (time, SU-hours left) after each charge."""

    credit_su_hours: float
    left_su_hours: float
    points: list[tuple[float, float]]
    rate_su_hours_per_day: float
    window_s: float
    exhausted_at_s: float | None  # None: no recent use, nothing to project
    ends_first: bool  # the grant ends before its credit runs out


def burn_down(session: Any, grant: t.Grant, now_s: float) -> BurnDown:
    charges = session.execute(
        select(t.UsageRecord.end_s, t.UsageRecord.charged_su)
        .where(t.UsageRecord.grant_id == grant.id)
        .order_by(t.UsageRecord.end_s, t.UsageRecord.id)
    ).all()
    left = max(grant.credit_su_hours - grant.used_su_hours, 0.0)
    points: list[tuple[float, float]] = [(grant.start_s, grant.credit_su_hours)]
    spent = 0.0
    window_start = max(now_s - RATE_WINDOW_S, grant.start_s)
    recent = 0.0
    for end_s, charged in charges:
        spent += charged / 3600.0
        points.append((end_s, grant.credit_su_hours - spent))
        if end_s > window_start:
            recent += charged / 3600.0
    if len(points) > MAX_POINTS:
        step = len(points) / MAX_POINTS
        points = [points[int(i * step)] for i in range(MAX_POINTS)] + [points[-1]]
    window = max(now_s - window_start, 1.0)
    rate_per_s = recent / window
    exhausted = now_s + left / rate_per_s if rate_per_s > 0 and grant.credit_su_hours > 0 else None
    return BurnDown(
        grant.credit_su_hours, left, points, rate_per_s * 86400.0, window, exhausted,
        exhausted is not None and exhausted > grant.end_s,
    )  # fmt: skip


def burn_chart(view: View, b: BurnDown, now_s: float) -> Any:
    xs = [timefmt.iso_local(x, view.tz) for x, _ in b.points]
    fig = go.Figure(go.Scatter(x=xs, y=[y for _, y in b.points], mode="lines", line_shape="hv",
                               name=view.t("usage.left")))  # fmt: skip
    if b.exhausted_at_s is not None:
        until = min(b.exhausted_at_s, now_s + 5 * 365 * 86400.0)
        end_left = max(b.left_su_hours - b.rate_su_hours_per_day * (until - now_s) / 86400.0, 0.0)
        fig.add_trace(go.Scatter(
            x=[timefmt.iso_local(now_s, view.tz), timefmt.iso_local(until, view.tz)], y=[b.left_su_hours, end_left],
            mode="lines", line={"dash": "dash"}, name=view.t("usage.projection"),
        ))  # fmt: skip
    fig.update_layout(yaxis_title=view.t("usage.su_hours_left"), xaxis_title=view.t("usage.time", zone=view.tz_name),
                      height=360, yaxis_rangemode="tozero")  # fmt: skip
    return chart(fig, view.t("usage.burn.label"))


@router.get("/usage/grants/{name}")
def grant_page(view: Viewer, name: str) -> Response:
    now = view.now
    with view.rt.sessions() as s:
        found = next(((g, p, q) for g, p, q in grants.list_grants(s, view.actor) if g.name == name), None)
        if found is None:
            raise NotFound("grant", name)
        grant, program, project = found
        info = grants.grant_view(grant, program, project)
        b = burn_down(s, grant, now)
    return view.render(
        "grant.html",
        grant=info,
        burn=b,
        chart=burn_chart(view, b, now) if b.credit_su_hours > 0 else None,
        ends_at_s=grant.end_s,
    )
