"""Gangs: jobs that span several nodes, placed all-or-nothing.

A gang goes to the smallest topology domain that holds it (an NVLink domain smaller than a rack, a rack, a
scalable unit, then the pool), best-fit among domains of that level so large free domains stay whole; inside
the domain each node count (largest first) best-fits the node's whole free GPUs. A job that may span units
takes the fullest units first, so it touches as few as possible.
"""

from __future__ import annotations

import numpy as np

from kfabric.model.decision import Placement
from kfabric.model.job import MILLI_PER_GPU, Job, MinTopology
from kfabric.sched.capacity import Capacity, PoolInfo
from kfabric.sched.request import PlaceRequest, host_share, share


def _pick_nodes(cap: Capacity, nodes: range, counts: list[int], cpu: int, mem: int) -> list[int] | None:
    return _pick_from(cap, np.arange(nodes.start, nodes.stop), counts, cpu, mem)


def domain_nodes(p: PoolInfo, level: MinTopology) -> int | None:
    """Nodes in the largest domain of the pool that a job of this minimum topology may span (None: any)."""
    return {
        MinTopology.NODE: 1,
        MinTopology.NVLINK: max(p.nodes_per_domain, 1),
        MinTopology.RACK: p.nodes_per_rack,
        MinTopology.UNIT: p.nodes_per_rack * p.racks_per_unit,
    }.get(level)


def gang(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, counts: list[int]) -> Placement | None:
    """The gang on whole nodes of the smallest topology domain that holds it (see the module doc)."""
    n = len(counts)
    g = p.gpus_per_node
    cpu, mem = host_share(job, req, counts[0])
    full_needed = counts.count(g)
    # the largest domain the job may span (nodes); levels larger than it are never tried
    limit = domain_nodes(p, job.min_topology)
    if n > (p.nodes if limit is None else limit):
        return None
    levels: list[tuple[np.ndarray, np.ndarray, int]] = []  # (free full nodes, free gpus, nodes per domain)
    if 1 < p.nodes_per_domain < p.nodes_per_rack:  # NVLink domains smaller than a rack (e.g. NVL36x2)
        levels.append((*_domain_free(cap, p), p.nodes_per_domain))
    levels.append(
        (
            cap.rack_full[p.first_rack : p.first_rack + p.racks],
            cap.rack_gpus[p.first_rack : p.first_rack + p.racks],
            p.nodes_per_rack,
        )
    )
    levels.append(
        (
            cap.unit_full[p.first_unit : p.first_unit + p.units],
            cap.unit_gpus[p.first_unit : p.first_unit + p.units],
            p.nodes_per_rack * p.racks_per_unit,
        )
    )
    for full, gpus, size in levels:
        if n > size or (limit is not None and size > limit):
            continue
        ok = (full >= full_needed) & (gpus >= job.gpus)
        candidates = np.flatnonzero(ok)
        # best fit: the domain with the fewest free GPUs that holds the gang; lowest index on ties
        for d in candidates[np.argsort(gpus[candidates], kind="stable")][:8]:
            start = p.first_node + int(d) * size
            rng = range(start, min(start + size, p.first_node + p.nodes))
            chosen = _pick_nodes(cap, rng, counts, cpu, mem)
            if chosen is not None:
                return _gang_placement(cap, p, job, req, chosen, counts)
    if job.min_topology in (MinTopology.ANY, MinTopology.CLUSTER):
        return _across_units(cap, p, job, req, counts)
    return None


def _across_units(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, counts: list[int]) -> Placement | None:
    """A gang that may span units: fullest units first, so it touches as few units as possible."""
    cpu, mem = host_share(job, req, counts[0])
    full_needed = counts.count(p.gpus_per_node)
    ufull = cap.unit_full[p.first_unit : p.first_unit + p.units]
    if int(ufull.sum()) < full_needed:
        return None
    order = np.argsort(-ufull, kind="stable")
    enough = int(np.searchsorted(np.cumsum(ufull[order]), full_needed)) + 1
    per_unit = p.nodes_per_rack * p.racks_per_unit
    for extra in (0, 2):  # a partial remainder node may need one more unit
        units = np.sort(order[: enough + extra])
        idx = np.concatenate(
            [
                np.arange(p.first_node + u * per_unit, min(p.first_node + (u + 1) * per_unit, p.first_node + p.nodes))
                for u in units.tolist()
            ]
        )
        chosen = _pick_from(cap, idx, counts, cpu, mem)
        if chosen is not None:
            return _gang_placement(cap, p, job, req, chosen, counts)
    return None


def _domain_free(cap: Capacity, p: PoolInfo) -> tuple[np.ndarray, np.ndarray]:
    """Fully free nodes and whole free GPUs per NVLink domain of a pool (domains tile its racks)."""
    sl = slice(p.first_node, p.first_node + p.nodes)
    up = cap.up[sl]
    full = (up & (cap.whole[sl] == p.gpus_per_node)).astype(np.int64)
    gpus = np.where(up, cap.whole[sl], 0)
    pad = -p.nodes % p.nodes_per_domain
    full = np.concatenate([full, np.zeros(pad, dtype=np.int64)]).reshape(-1, p.nodes_per_domain).sum(axis=1)
    gpus = np.concatenate([gpus, np.zeros(pad, dtype=np.int64)]).reshape(-1, p.nodes_per_domain).sum(axis=1)
    return full, gpus


def _pick_from(cap: Capacity, idx: np.ndarray, counts: list[int], cpu: int, mem: int) -> list[int] | None:
    """Best-fit each node count (largest first) among node indices ``idx``; None unless all are found.

    Picking one count at a time takes the node with the least slack (the lowest position on ties) and
    removes it; for ``k`` equal counts in a row that is the first ``k`` nodes in (slack, position) order,
    so each run of equal counts is one stable sort."""
    whole = cap.whole[idx].copy()
    whole[~(cap.up[idx] & (cap.cpu_free[idx] >= cpu) & (cap.mem_free[idx] >= mem))] = -1
    chosen: list[int] = []
    i = 0
    while i < len(counts):
        c = counts[i]
        k = 1
        while i + k < len(counts) and counts[i + k] == c:
            k += 1
        slack = np.where(whole >= c, whole - c, 1 << 20)
        if k == 1:
            picked = np.array([int(np.argmin(slack))])
        elif c == int(whole.max(initial=-1)):
            picked = np.flatnonzero(slack == 0)[:k]  # none has less slack: the first k that fit exactly
        else:
            picked = np.argsort(slack, kind="stable")[:k]
        if picked.size < k or slack[picked[-1]] >= 1 << 20:
            return None
        chosen.extend(idx[picked].tolist())
        whole[picked] = -1
        i += k
    return chosen


def _gang_placement(
    cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, nodes: list[int], counts: list[int]
) -> Placement:
    g = p.gpus_per_node
    full = counts.count(g)  # counts are largest first: whole nodes (fully free when picked), then the rest
    cpu, mem = host_share(job, req, g)
    every = tuple(range(g))
    shares = [share(node, every, MILLI_PER_GPU, cpu, mem) for node in nodes[:full]]
    for node, c in zip(nodes[full:], counts[full:], strict=True):
        cpu, mem = host_share(job, req, c)
        gpus = tuple(range(c)) if cap.node_whole(node) == g else tuple(cap.free_gpus_on(node)[:c])  # fully free: 0..c-1
        shares.append(share(node, gpus, MILLI_PER_GPU, cpu, mem))
    return Placement(p.name, tuple(shares))
