"""What can never change within a cycle: which pools a job shape may use at all, and why not if none.

Checked per equivalence class (shape, models, topology, classification, owner affiliation), once per cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfabric.model.fleet import Sharing
from kfabric.model.job import Job, MinTopology
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.model.sovereignty import clearance_rule
from kfabric.sched.capacity import Capacity
from kfabric.sched.placement import topology_ok


@dataclass(frozen=True, slots=True)
class Eligibility:
    pools: tuple[int, ...]
    reason: PendingReason | None


def eligible_pools(cap: Capacity, job: Job, affiliation: str) -> Eligibility:
    models = set(job.gpu_models)
    pools = [p for p in cap.pools if p.gpus_per_node > 0 or job.gpus == 0]
    if models:
        pools = [p for p in pools if p.model in models]
        if not pools:
            names = ", ".join(sorted(models))
            return Eligibility((), PendingReason(ReasonCode.GPU_MODEL, f"no pool in the fleet has GPU model {names}"))
    cleared = [p for p in pools if cap.sites[p.site].clearance >= job.classification]
    if not cleared:
        return Eligibility(
            (),
            PendingReason(
                ReasonCode.SOVEREIGNTY,
                f"{job.classification.label} data may only run on sites cleared for it, and no site with "
                "acceptable GPUs is; ask for a site with that clearance or lower the data classification",
            ),
        )
    owned = [p for p in cleared if p.sharing != Sharing.DEDICATED or p.owner == affiliation]
    if not owned:
        return Eligibility(
            (),
            PendingReason(
                ReasonCode.GPU_MODEL,
                "the only pools with acceptable GPUs are dedicated to their owners; choose another GPU model",
            ),
        )
    shaped = [p for p in owned if topology_ok(job, p)]
    if not shaped and job.min_topology in (MinTopology.ANY, MinTopology.CLUSTER):
        largest = max(p.gpus for p in owned)
        return Eligibility(
            (),
            PendingReason(
                ReasonCode.TOPOLOGY,
                f"needs {job.gpus} GPUs in one pool (one GPU model, one cluster) and the largest eligible pool "
                f"has {largest}; ask for fewer GPUs",
            ),
        )
    if not shaped:
        return Eligibility(
            (),
            PendingReason(
                ReasonCode.TOPOLOGY,
                f"needs {job.gpus} GPUs within one {job.min_topology.name.lower()} domain, and no eligible pool "
                "has a domain that large; relax --min-topology or ask for fewer GPUs",
            ),
        )
    online = [p for p in shaped if cap.pool_up_milli[p.index] > 0]
    if not online:
        return Eligibility(
            (),
            PendingReason(ReasonCode.NOT_ONLINE, "no pool that can run this job is online yet (phased roll-out)"),
        )
    return Eligibility(tuple(p.index for p in online), None)


def placement_rule(cap: Capacity, pool: int, job: Job) -> str:
    site = cap.sites[cap.pools[pool].site]
    return clearance_rule(site.name, site.certification, site.clearance, job.classification)
