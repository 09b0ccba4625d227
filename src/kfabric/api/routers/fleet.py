"""/v1/fleet: what the service runs, and what is in use now; /v1/fleet/live: node states (service/node_health.py)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from kfabric.api.deps import Caller
from kfabric.model.job import JobState
from kfabric.service.node_health import live_view, require_viewer
from kfabric.store import tables as t

router = APIRouter(prefix="/v1", tags=["fleet"])


@router.get("/fleet")
def fleet(c: Caller) -> dict[str, Any]:
    """Pools with their GPUs and how many are allocated now (no tenant detail)."""
    f = c.rt.scenario.fleet
    used: dict[str, float] = defaultdict(float)
    with c.rt.sessions() as s:
        for placement in s.scalars(
            select(t.Job.placement).where(t.Job.state.in_((JobState.ADMITTED.value, JobState.RUNNING.value)))
        ):
            if placement:
                used[placement["pool"]] += sum(len(g) * m for _n, g, m, _c, _mem in placement["shares"]) / 1000
    pools = []
    for p in f.pools:
        cluster = f.cluster(p.cluster)
        pools.append(
            {
                "name": p.name,
                "site": cluster.site,
                "cluster": p.cluster,
                "backend": cluster.backend,
                "owner": p.owner,
                "sharing": p.sharing.value,
                "gpu_model": p.gpu_model,
                "nodes": p.nodes,
                "gpus": p.gpus,
                "gpus_allocated": round(used.get(p.name, 0.0), 3),
                "online": p.online.isoformat(),
            }
        )
    return {"name": c.rt.scenario.name, "gpus": f.gpus, "pools": pools}


@router.get("/fleet/live")
def fleet_live(c: Caller) -> dict[str, Any]:
    """The sinfo of the fabric: per pool, nodes by state (idle, mixed, allocated, drain, down, future) and GPUs
    free, allocated and out of service; the nodes out with why and since when. Operators see every pool,
    providers their owner's pools; others get 403."""
    require_viewer(c.actor)
    ctl = c.rt.controller
    with c.rt.sessions() as s:
        return live_view(s, ctl.live, ctl.pool_backend, c.actor, c.now)
