"""/v1/acct: per-job accounting over a window, like ``sacct`` (``service/acct.py``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from kfabric.api.deps import Caller
from kfabric.api.schemas import ShortText
from kfabric.service import acct

router = APIRouter(prefix="/v1", tags=["accounting"])


@router.get("/acct", response_model=None)
def job_accounting(
    c: Caller,
    start_s: Annotated[float | None, Query(ge=0, le=10**11)] = None,
    end_s: Annotated[float | None, Query(ge=0, le=10**11)] = None,
    user: Annotated[list[ShortText] | None, Query(max_length=100)] = None,
    project: Annotated[ShortText | None, Query(max_length=200)] = None,
    state: Annotated[list[ShortText] | None, Query(max_length=10)] = None,
    limit: Annotated[int, Query(ge=1, le=acct.MAX_ROWS)] = acct.MAX_ROWS,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> list[dict[str, Any]] | Response:
    """One row per job the caller may see that was eligible or running in ``[start_s, end_s)``, oldest first
    (page with ``after_id``): state, times, elapsed, GPUs, GPU-hours, SU-hours, charged SU-hours, exit code,
    nodes. ``format=csv`` for a spreadsheet."""
    with c.rt.sessions() as s:
        rows = acct.job_accounting(
            s, c.actor, c.now, start_s, end_s, user or (), project, state or (), c.rt.controller.node_names,
            limit, after_id,
        )  # fmt: skip
    if format == "csv":
        return Response(acct.acct_csv(rows), media_type="text/csv")
    return rows
