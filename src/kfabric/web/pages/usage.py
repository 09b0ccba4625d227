"""Usage and credit: usage by project (``accounting.usage_report``, CSV too), the grants the user sees
(``grants.list_grants``) and one grant's credit burn-down with a projected exhaustion date from the recent burn
rate. Another tenant's grant is a 404 page."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from fastapi import APIRouter, Response

from kfabric.service import accounting, portal_usage
from kfabric.service.actors import Role
from kfabric.web import nav, timefmt
from kfabric.web.tables import chart
from kfabric.web.view import PageRoute, View, Viewer

router = APIRouter(route_class=PageRoute, include_in_schema=False)
nav.add("nav.usage", "/usage", frozenset({Role.OPERATOR, Role.ORG_ADMIN, Role.MEMBER}), order=30)


@router.get("/usage")
def usage(view: Viewer) -> Response:
    rows = portal_usage.usage_report(view.rt.sessions, view.actor, "project")
    held = portal_usage.grants_seen(view.rt.sessions, view.actor)
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
    rows = portal_usage.usage_report(view.rt.sessions, view.actor, by)
    headers = {"Content-Disposition": f'attachment; filename="kfabric-usage-by-{by}.csv"'}
    return Response(accounting.usage_csv(rows, by), media_type="text/csv", headers=headers)


def burn_chart(view: View, b: portal_usage.BurnDown, now_s: float) -> Any:
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
    found = portal_usage.grant_burn(view.rt.sessions, view.actor, name, now)
    b = found.burn
    return view.render(
        "grant.html",
        grant=found.view,
        burn=b,
        chart=burn_chart(view, b, now) if b.credit_su_hours > 0 else None,
        ends_at_s=found.end_s,
    )
