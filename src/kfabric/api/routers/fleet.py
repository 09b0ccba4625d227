"""/v1/fleet: what the service runs, and what is in use now."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from kfabric.api.deps import Caller
from kfabric.model.job import JobState
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
