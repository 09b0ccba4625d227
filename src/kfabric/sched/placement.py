"""Placement policies: where a job's GPUs go. One signature: ``(capacity, request) -> Placement | None``.

Gangs are all-or-nothing: a policy returns every share of the job or nothing, and never changes capacity.
Every policy tries the request's pools in the order given; ``kfabric`` reorders them first
(heterogeneity-aware). Inside a pool:

* one node (``gpus <= gpus_per_node``): best-fit on whole free GPUs, broken racks before whole ones, so
  large free domains stay whole; fractional work best-fits GPU milli and prefers GPUs already shared;
* several nodes: the smallest topology domain that holds the gang (NVLink domain / rack, then scalable
  unit, then the pool), best-fit among domains of that level so large free domains stay whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kfabric.model.decision import NodeShare, Placement
from kfabric.model.job import MILLI_PER_GPU, Job, MinTopology
from kfabric.sched.capacity import Capacity, PoolInfo
from kfabric.sched.fragmentation import fgd_pick_gpu

#: how many bucket entries a best-fit scan inspects before giving up on CPU/memory-starved nodes
SCAN_LIMIT = 256


@dataclass(frozen=True, slots=True)
class PlaceRequest:
    job: Job
    pools: Sequence[int]
    cpu_milli_per_gpu: int = 0
    memory_mib_per_gpu: int = 0
    #: relative speed of the job per pool model (pool index -> speed), for heterogeneity-aware placement
    speed: dict[int, float] | None = None
    #: the target workload as (gpu_milli, gpus, probability) task types, for fragmentation-aware placement
    task_types: tuple[tuple[int, int, float], ...] = ()


PlacementFn = Callable[[Capacity, PlaceRequest], Placement | None]


def node_counts(job: Job, gpus_per_node: int) -> list[int] | None:
    """GPUs needed on each node, largest first; None if the shape cannot fit this pool's nodes."""
    if gpus_per_node <= 0:
        return None
    if job.nodes is not None and job.gpus_per_node is not None:
        return [job.gpus_per_node] * job.nodes if job.gpus_per_node <= gpus_per_node else None
    if job.gpus <= gpus_per_node:
        return [job.gpus]
    full, rem = divmod(job.gpus, gpus_per_node)
    return [gpus_per_node] * full + ([rem] if rem else [])


def topology_ok(job: Job, pool: PoolInfo) -> bool:
    """Can the job's minimum topology ever be met in this pool (ignoring what is free now)?"""
    counts = node_counts(job, pool.gpus_per_node)
    if counts is None:
        return False
    n = len(counts)
    if job.min_topology == MinTopology.NODE:
        return n == 1
    if job.min_topology == MinTopology.NVLINK:
        return job.gpus <= pool.domain_gpus and (n == 1 or pool.nodes_per_domain >= n)
    if job.min_topology == MinTopology.RACK:
        return n <= pool.nodes_per_rack
    if job.min_topology == MinTopology.UNIT:
        return n <= pool.nodes_per_rack * pool.racks_per_unit
    return n <= pool.nodes


def _cpu_mem(job: Job, req: PlaceRequest, gpus: int) -> tuple[int, int]:
    if job.gpus == 0:
        return job.cpu_milli, job.memory_mib
    n_gpus = max(job.gpus, 1)
    cpu = job.cpu_milli * gpus // n_gpus if job.cpu_milli else req.cpu_milli_per_gpu * gpus
    mem = job.memory_mib * gpus // n_gpus if job.memory_mib else req.memory_mib_per_gpu * gpus
    return cpu, mem


def _fits_host(cap: Capacity, node: int, cpu: int, mem: int) -> bool:
    return bool(cap.cpu_free[node] >= cpu and cap.mem_free[node] >= mem)


# ---- single node, whole GPUs --------------------------------------------------------------------------------
def _whole_best_fit(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, k: int) -> Placement | None:
    cpu, mem = _cpu_mem(job, req, k)
    buckets = cap.buckets[p.index]
    for source in (*(buckets[c] for c in range(k, p.gpus_per_node + 1)), cap.fresh[p.index]):
        for scanned, node in enumerate(source):
            if scanned >= SCAN_LIMIT:
                break
            if _fits_host(cap, node, cpu, mem):
                gpus = tuple(cap.free_gpus_on(node)[:k])
                return Placement(p.name, (NodeShare(node, gpus, MILLI_PER_GPU, cpu, mem),))
    return None


def _whole_first_fit(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, k: int) -> Placement | None:
    cpu, mem = _cpu_mem(job, req, k)
    sl = slice(p.first_node, p.first_node + p.nodes)
    ok = cap.up[sl] & (cap.whole[sl] >= k) & (cap.cpu_free[sl] >= cpu) & (cap.mem_free[sl] >= mem)
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return None
    node = p.first_node + int(hits[0])
    return Placement(p.name, (NodeShare(node, tuple(cap.free_gpus_on(node)[:k]), MILLI_PER_GPU, cpu, mem),))


# ---- single GPU, fractional ---------------------------------------------------------------------------------
def _fraction_candidates(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest) -> tuple[np.ndarray, int, int]:
    cpu, mem = _cpu_mem(job, req, 1)
    sl = slice(p.first_node, p.first_node + p.nodes)
    milli = cap.milli[sl, : p.gpus_per_node]
    host = cap.up[sl] & (cap.cpu_free[sl] >= cpu) & (cap.mem_free[sl] >= mem)
    fits = (milli >= job.gpu_milli) & host[:, None]
    return fits, cpu, mem


def _fraction_pick(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, best: bool) -> Placement | None:
    fits, cpu, mem = _fraction_candidates(cap, p, job, req)
    if not fits.any():
        return None
    sl = slice(p.first_node, p.first_node + p.nodes)
    milli = cap.milli[sl, : p.gpus_per_node]
    if best:
        # leftover milli after placing; shared GPUs (< 1000 free) first, then the node with fewest whole GPUs
        leftover = np.where(fits, milli - job.gpu_milli, 1 << 30)
        whole_rank = np.where(milli == MILLI_PER_GPU, 1 << 20, 0) + cap.whole[sl][:, None]
        score = leftover.astype(np.int64) * (1 << 24) + whole_rank
        flat = int(np.argmin(score))
    else:
        flat = int(np.flatnonzero(fits.ravel())[0])
    node_local, gpu = divmod(flat, p.gpus_per_node)
    node = p.first_node + node_local
    return Placement(p.name, (NodeShare(node, (gpu,), job.gpu_milli, cpu, mem),))


# ---- several nodes (gangs) ----------------------------------------------------------------------------------
def _pick_nodes(cap: Capacity, nodes: range, counts: list[int], cpu: int, mem: int) -> list[int] | None:
    return _pick_from(cap, np.arange(nodes.start, nodes.stop), counts, cpu, mem)


def _gang(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, counts: list[int]) -> Placement | None:
    n = len(counts)
    g = p.gpus_per_node
    cpu, mem = _cpu_mem(job, req, counts[0])
    full_needed = sum(1 for c in counts if c == g)
    # the largest domain the job may span (nodes); levels larger than it are never tried
    limit = {
        MinTopology.NODE: 1,
        MinTopology.NVLINK: max(p.nodes_per_domain, 1),
        MinTopology.RACK: p.nodes_per_rack,
        MinTopology.UNIT: p.nodes_per_rack * p.racks_per_unit,
    }.get(job.min_topology)
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
        # span units: fullest units first, so the gang touches as few units as possible
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
                    np.arange(
                        p.first_node + u * per_unit, min(p.first_node + (u + 1) * per_unit, p.first_node + p.nodes)
                    )
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
    """Best-fit each node count (largest first) among node indices ``idx``; None unless all are found."""
    whole = cap.whole[idx].copy()
    whole[~(cap.up[idx] & (cap.cpu_free[idx] >= cpu) & (cap.mem_free[idx] >= mem))] = -1
    chosen: list[int] = []
    for c in counts:
        slack = np.where(whole >= c, whole - c, 1 << 20)
        i = int(np.argmin(slack))
        if slack[i] >= 1 << 20:
            return None
        chosen.append(int(idx[i]))
        whole[i] = -1
    return chosen


def _gang_placement(
    cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, nodes: list[int], counts: list[int]
) -> Placement:
    shares = []
    for node, c in zip(nodes, counts, strict=True):
        cpu, mem = _cpu_mem(job, req, c)
        shares.append(NodeShare(node, tuple(cap.free_gpus_on(node)[:c]), MILLI_PER_GPU, cpu, mem))
    return Placement(p.name, tuple(shares))


# ---- policies -----------------------------------------------------------------------------------------------
def _place_in_pool(cap: Capacity, p: PoolInfo, req: PlaceRequest, single: str) -> Placement | None:
    job = req.job
    if cap.pool_milli[p.index] < job.gpu_milli_total:
        return None
    if job.gpus == 0:
        return _cpu_only(cap, p, job)
    if job.fractional:
        if single == "fgd":
            return _fgd_fraction(cap, p, job, req)
        return _fraction_pick(cap, p, job, req, best=single != "first")
    counts = node_counts(job, p.gpus_per_node)
    if counts is None:
        return None
    if len(counts) == 1:
        if job.min_topology == MinTopology.NVLINK and p.domain_gpus < p.gpus_per_node:
            return _in_node_domain(cap, p, job, req, counts[0], best=single != "first")
        if single == "first":
            return _whole_first_fit(cap, p, job, req, counts[0])
        if single == "fgd":
            return _fgd_whole(cap, p, job, req, counts[0])
        return _whole_best_fit(cap, p, job, req, counts[0])
    return _gang(cap, p, job, req, counts)


def _in_node_domain(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, k: int, best: bool) -> Placement | None:
    """``k`` whole GPUs inside one NVLink domain of a node (HGX boards split into several domains): the domain
    with the fewest free GPUs that holds them (best fit) or the first one (first fit)."""
    cpu, mem = _cpu_mem(job, req, k)
    sl = slice(p.first_node, p.first_node + p.nodes)
    d = p.domain_gpus
    free = (cap.milli[sl, : p.gpus_per_node] == MILLI_PER_GPU).reshape(p.nodes, p.gpus_per_node // d, d)
    count = free.sum(axis=2)
    host = cap.up[sl] & (cap.cpu_free[sl] >= cpu) & (cap.mem_free[sl] >= mem)
    ok = (count >= k) & host[:, None]
    if not ok.any():
        return None
    flat = int(np.argmin(np.where(ok, count, 1 << 20))) if best else int(np.flatnonzero(ok.ravel())[0])
    node_local, domain = divmod(flat, p.gpus_per_node // d)
    gpus = tuple(domain * d + int(g) for g in np.flatnonzero(free[node_local, domain])[:k])
    return Placement(p.name, (NodeShare(p.first_node + node_local, gpus, MILLI_PER_GPU, cpu, mem),))


def _cpu_only(cap: Capacity, p: PoolInfo, job: Job) -> Placement | None:
    sl = slice(p.first_node, p.first_node + p.nodes)
    ok = cap.up[sl] & (cap.cpu_free[sl] >= job.cpu_milli) & (cap.mem_free[sl] >= job.memory_mib)
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return None
    # best fit on CPU: the node left with the least free CPU
    i = int(hits[np.argmin(cap.cpu_free[sl][hits])])
    return Placement(p.name, (NodeShare(p.first_node + i, (), 0, job.cpu_milli, job.memory_mib),))


def _fgd_fraction(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest) -> Placement | None:
    fits, cpu, mem = _fraction_candidates(cap, p, job, req)
    if not fits.any():
        return None
    sl = slice(p.first_node, p.first_node + p.nodes)
    node_local, gpu = fgd_pick_gpu(cap.milli[sl, : p.gpus_per_node], fits, job.gpu_milli, 1, req.task_types)
    return Placement(p.name, (NodeShare(p.first_node + node_local, (gpu,), job.gpu_milli, cpu, mem),))


def _fgd_whole(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, k: int) -> Placement | None:
    cpu, mem = _cpu_mem(job, req, k)
    sl = slice(p.first_node, p.first_node + p.nodes)
    host = cap.up[sl] & (cap.cpu_free[sl] >= cpu) & (cap.mem_free[sl] >= mem) & (cap.whole[sl] >= k)
    if not host.any():
        return None
    milli = cap.milli[sl, : p.gpus_per_node]
    fits = (milli == MILLI_PER_GPU) & host[:, None]
    node_local, _ = fgd_pick_gpu(milli, fits, MILLI_PER_GPU, k, req.task_types)
    node = p.first_node + node_local
    return Placement(p.name, (NodeShare(node, tuple(cap.free_gpus_on(node)[:k]), MILLI_PER_GPU, cpu, mem),))


def _policy(single: str, reorder: bool) -> PlacementFn:
    def place(cap: Capacity, req: PlaceRequest) -> Placement | None:
        pools = list(req.pools)
        if reorder:
            pools = prefer_pools(cap, req)
        for pi in pools:
            found = _place_in_pool(cap, cap.pools[pi], req, single)
            if found is not None:
                return found
        return None

    return place


def prefer_pools(cap: Capacity, req: PlaceRequest) -> list[int]:
    """Heterogeneity-aware order: most work per service unit first; then the cheaper model (keep premium
    GPUs for jobs that need them); then pools with the least free capacity for the job's size (packing)."""
    speed = req.speed or {}
    if not speed:
        # without per-job speeds the order depends on the pools alone: computed once per pool set
        pools = tuple(req.pools)
        cached = cap.pool_order_cache.get(pools)
        if cached is None:
            cached = cap.pool_order_cache[pools] = sorted(pools, key=lambda pi: (cap.pools[pi].su_weight, pi))
        return list(cached)

    def key(pi: int) -> tuple[float, float, int]:
        p = cap.pools[pi]
        work_per_su = speed.get(pi, p.su_weight) / p.su_weight
        return (-round(work_per_su, 6), p.su_weight, pi)

    return sorted(req.pools, key=key)


first_fit = _policy("first", reorder=False)
best_fit = _policy("best", reorder=False)
fgd = _policy("fgd", reorder=False)
kfabric_place = _policy("best", reorder=True)
