"""/v1/usage: usage and charges grouped by program, organization, project, site, provider or GPU model."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from kfabric.api.deps import Caller
from kfabric.service import accounting

router = APIRouter(prefix="/v1", tags=["accounting"])


@router.get("/usage", response_model=None)
def usage(
    c: Caller,
    by: Annotated[str, Query(max_length=32)] = "project",
    since_s: Annotated[float | None, Query(ge=0, le=10**11)] = None,
    until_s: Annotated[float | None, Query(ge=0, le=10**11)] = None,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> list[dict[str, Any]] | Response:
    """GPU-hours, service units and charged SU (after the program's discount) per group; ``format=csv`` for
    a spreadsheet."""
    with c.rt.sessions() as s:
        rows = accounting.usage_report(s, c.actor, by, since_s, until_s)
    if format == "csv":
        return Response(accounting.usage_csv(rows, by), media_type="text/csv")
    return rows
