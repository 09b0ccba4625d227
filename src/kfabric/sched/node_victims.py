"""Victims for a gang: which whole nodes to free, vectorized over a pool.

A job that spans several nodes needs whole nodes, usually inside one topology domain (NVLink domain, rack,
unit). Choosing victims one by one, cheapest first, scatters them over the pool: a 512-GPU job might need
500 one-GPU victims on the right 64 nodes and would never get them from a bounded list of the cheapest.
So a gang's victims are chosen by node: a node can be freed when every GPU milli in use on it belongs to
work the job may displace; freeing it costs what those victims cost (borrowed work nearly nothing, other
work the GPU-seconds it loses since its last checkpoint); the job takes the cheapest nodes of the domain
where they cost least in total. Free nodes cost nothing, so a domain that is almost free wins. Whatever
the placement does not use is given back afterwards (``Preemptor._minimize``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from kfabric.model.job import MILLI_PER_GPU
from kfabric.sched.capacity import Capacity
from kfabric.sched.victims import VictimTable


def cheapest_nodes(
    cap: Capacity,
    pool: int,
    table: VictimTable,
    allowed: npt.NDArray[np.bool_],
    count: int,
    span: int | None,
) -> tuple[float, npt.NDArray[np.int64]] | int:
    """The cheapest way to have ``count`` nodes of one domain of ``span`` consecutive nodes (None: the whole
    pool) fully free, as (total cost, indices into ``table.runs`` of the victims); ties go to the lower domain,
    then the lower node. When no domain has enough nodes that could be freed: the most that one domain has (a
    change on one node makes at most one more node freeable, so a search for more fails until enough nodes
    changed)."""
    p = cap.pools[pool]
    lo, n, g = p.first_node, p.nodes, p.gpus_per_node
    if g <= 0:
        return 0
    if count > n:
        return n
    sel = allowed[table.share_run] & table.share_alive
    local = table.share_node[sel] - lo
    freed = np.bincount(local, weights=table.share_milli[sel], minlength=n)
    used = g * MILLI_PER_GPU - cap.node_milli[lo : lo + n]
    cand = np.flatnonzero(cap.up[lo : lo + n] & (freed >= used))
    # candidates per domain, in domain order (cand ascends, so its domains do too)
    sizes = np.bincount(cand // span) if span else np.array([cand.size])
    most = int(sizes.max(initial=0))
    if most < count:
        return most
    starts = np.cumsum(sizes) - sizes
    node_cost = np.bincount(local, weights=table.cost()[table.share_run[sel]], minlength=n)
    # cheapest first within each domain, the lower node on ties (both sorts are stable)
    order = np.lexsort((node_cost[cand], cand // span)) if span else np.argsort(node_cost[cand], kind="stable")
    cand = cand[order]
    starts = starts[sizes >= count]
    csum = np.zeros(cand.size + 1)
    np.cumsum(node_cost[cand], out=csum[1:])
    totals = csum[starts + count] - csum[starts]
    best = int(np.argmin(totals))
    chosen = np.zeros(n, dtype=bool)
    chosen[cand[starts[best] : starts[best] + count]] = True
    hit = np.zeros(len(table.runs), dtype=bool)
    hit[table.share_run[sel][chosen[local]]] = True
    return float(totals[best]), np.flatnonzero(hit)


def next_freeable(
    cap: Capacity, pool: int, table: VictimTable, when: npt.NDArray[np.float64], now_s: float, new_from_s: float
) -> float:
    """The earliest time after ``now_s`` at which a node of the pool that cannot be freed now could be, if
    nothing ends there and no node comes up: when every run on it may be displaced (``when``: per run, from
    ``VictimTable.allowed_from``; work placed in this cycle, not in the table yet, from ``new_from_s``);
    ``inf`` when none ever could. Work that starts later only adds to what a node holds, so until then
    :func:`cheapest_nodes` under the same rules finds no more nodes than now."""
    p = cap.pools[pool]
    lo, n, g = p.first_node, p.nodes, p.gpus_per_node
    alive = table.share_alive
    sel = alive & np.isfinite(when[table.share_run])
    local = table.share_node[sel] - lo
    freed = np.bincount(local, weights=table.share_milli[sel], minlength=n)
    used = g * MILLI_PER_GPU - cap.node_milli[lo : lo + n]
    new = used - np.bincount(table.share_node[alive] - lo, weights=table.share_milli[alive], minlength=n)
    latest = np.full(n, -np.inf)
    np.maximum.at(latest, local, when[table.share_run[sel]])
    latest = np.where(new > 0, np.maximum(latest, new_from_s), latest)
    later = cap.up[lo : lo + n] & (freed + np.maximum(new, 0) >= used) & (latest > now_s)
    return float(latest[later].min()) if later.any() else float("inf")
