"""/v1/fleet: what the service runs, and what is in use now; /v1/fleet/live: node states (service/node_health.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kfabric.api.deps import Caller
from kfabric.service import fleet_queries
from kfabric.service.node_health import live_view, require_viewer

router = APIRouter(prefix="/v1", tags=["fleet"])


@router.get("/fleet")
def fleet(c: Caller) -> dict[str, Any]:
    """Pools with their GPUs and how many are allocated now (no tenant detail)."""
    f = c.rt.scenario.fleet
    used = fleet_queries.allocated_by_pool(c.rt.sessions)
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
