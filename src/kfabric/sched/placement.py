"""Placement policies: where a job's GPUs go. One signature: ``(capacity, request) -> Placement | None``.

A policy returns every share of the job or nothing (gangs are all-or-nothing) and never changes capacity.
Registered (``sched.registry``): ``first-fit``, ``best-fit``, ``fgd`` and ``kfabric`` (the default).

* Work that fits on one node is scored by :mod:`kfabric.sched.single`: over every fitting node of the
  request's pools together (``best-fit``: the paper's BestFit; ``fgd``: fragmentation gradient descent;
  ``kfabric``: expected waste for a share of a GPU, FGD's fragmentation growth for whole GPUs, plus GPUs
  stranded by CPU/memory), or, in a fleet larger than :data:`EXACT_SCAN_NODES` nodes, pool by pool over
  representatives read from the capacity index (:mod:`kfabric.sched.bounded`). ``first-fit`` takes the
  first node that fits, pool by pool in the request's order.
* ``kfabric`` is heterogeneity-aware: pools are tried in tiers of equal work per service unit (the model's
  training speed over its SU weight, :func:`work_per_su`; speeds from the GPU catalog, docs/gpu-speeds.md), the
  cheaper model winning ties (:func:`prefer_pools`); the others keep the request's order.
* Several nodes (gangs; :mod:`kfabric.sched.gangs`) and jobs that must stay inside one in-node NVLink
  domain use the topology-aware paths, pool by pool, for every policy.

The target workload that fragmentation is measured against is ``PlaceRequest.workload``, else the cycle's
``task_types``, else the job's own shape (:mod:`kfabric.sched.workload`).
"""

from __future__ import annotations

import numpy as np

from kfabric.model.decision import Placement
from kfabric.model.job import MILLI_PER_GPU, Job, MinTopology
from kfabric.sched import bounded, single
from kfabric.sched.capacity import Capacity, PoolInfo
from kfabric.sched.gangs import gang
from kfabric.sched.memo import PlacementMemo
from kfabric.sched.request import PlacementFn, PlaceRequest, host_share, node_counts, share
from kfabric.sched.single import Ask, Scorer
from kfabric.sched.workload import Workload, from_task_types, own_shape

__all__ = [
    "EXACT_SCAN_NODES",
    "PlaceRequest",
    "PlacementFn",
    "best_fit",
    "fgd",
    "first_fit",
    "kfabric_place",
    "node_counts",
    "prefer_pools",
    "topology_ok",
    "work_per_su",
]

#: in a fleet of at most this many nodes, single-node work is scored over every fitting node of the request's
#: pools; in a larger one, pool by pool over representatives read from the capacity index
EXACT_SCAN_NODES = 2048
#: representatives: per count of whole free GPUs (or amount of free milli on a shared GPU) in a pool, how
#: many nodes, found among how many read
PER_BUCKET = 1
SCAN_LIMIT = 256


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


# ---- first fit, in-node NVLink domains ---------------------------------------------------------------------
def _whole_first_fit(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, k: int) -> Placement | None:
    cpu, mem = host_share(job, req, k)
    sl = slice(p.first_node, p.first_node + p.nodes)
    ok = cap.up[sl] & (cap.whole[sl] >= k) & (cap.cpu_free[sl] >= cpu) & (cap.mem_free[sl] >= mem)
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return None
    node = p.first_node + int(hits[0])
    return Placement(p.name, (share(node, tuple(cap.free_gpus_on(node)[:k]), MILLI_PER_GPU, cpu, mem),))


def _fraction_first(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest) -> Placement | None:
    cpu, mem = host_share(job, req, 1)
    sl = slice(p.first_node, p.first_node + p.nodes)
    host = cap.up[sl] & (cap.cpu_free[sl] >= cpu) & (cap.mem_free[sl] >= mem)
    fits = (cap.milli[sl, : p.gpus_per_node] >= job.gpu_milli) & host[:, None]
    hits = np.flatnonzero(fits.ravel())
    if hits.size == 0:
        return None
    node_local, gpu = divmod(int(hits[0]), p.gpus_per_node)
    return Placement(p.name, (share(p.first_node + node_local, (gpu,), job.gpu_milli, cpu, mem),))


def _cpu_only(cap: Capacity, p: PoolInfo, job: Job) -> Placement | None:
    sl = slice(p.first_node, p.first_node + p.nodes)
    ok = cap.up[sl] & (cap.cpu_free[sl] >= job.cpu_milli) & (cap.mem_free[sl] >= job.memory_mib)
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return None
    # best fit on CPU: the node left with the least free CPU
    i = int(hits[np.argmin(cap.cpu_free[sl][hits])])
    return Placement(p.name, (share(p.first_node + i, (), 0, job.cpu_milli, job.memory_mib),))


def _in_node_domain(cap: Capacity, p: PoolInfo, job: Job, req: PlaceRequest, k: int, best: bool) -> Placement | None:
    """``k`` whole GPUs inside one NVLink domain of a node (HGX boards split into several domains): the domain
    with the fewest free GPUs that holds them (best fit) or the first one (first fit)."""
    cpu, mem = host_share(job, req, k)
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
    return Placement(p.name, (share(p.first_node + node_local, gpus, MILLI_PER_GPU, cpu, mem),))


# ---- policies -----------------------------------------------------------------------------------------------
def _in_pool(cap: Capacity, p: PoolInfo, req: PlaceRequest, first: bool) -> Placement | None:
    """Everything for first fit; for the other policies gangs and jobs inside an in-node NVLink domain."""
    job = req.job
    if job.gpus == 0:
        return _cpu_only(cap, p, job)
    if job.fractional:
        return _fraction_first(cap, p, job, req)
    counts = node_counts(job, p.gpus_per_node)
    if counts is None:
        return None
    if len(counts) == 1:
        if _in_node_nvlink(job, p):
            return _in_node_domain(cap, p, job, req, counts[0], best=not first)
        return _whole_first_fit(cap, p, job, req, counts[0])
    return gang(cap, p, job, req, counts)


def _in_node_nvlink(job: Job, p: PoolInfo) -> bool:
    return job.min_topology == MinTopology.NVLINK and p.domain_gpus < p.gpus_per_node


def _single_node(p: PoolInfo, job: Job) -> bool:
    """Does the job go on one node of this pool, chosen by a single-node scorer?"""
    if job.gpus == 0:
        return True
    counts = node_counts(job, p.gpus_per_node)
    return counts is not None and len(counts) == 1 and not _in_node_nvlink(job, p)


def _workload(req: PlaceRequest, ask: Ask) -> Workload:
    if req.workload is not None:
        return req.workload
    if req.task_types:
        return from_task_types(req.task_types)
    return own_shape(ask.milli, ask.gpus, ask.cpu, ask.mem)


def _score(cap: Capacity, pools: list[int], req: PlaceRequest, scorer: Scorer, memo: PlacementMemo) -> Placement | None:
    """Score the fitting nodes of ``pools`` together (a small fleet), or representatives of the one pool
    ``pools`` holds in a large fleet."""
    job = req.job
    gpus = 0 if job.gpus == 0 else 1 if job.fractional else job.gpus
    cpu, mem = host_share(job, req, job.gpus)
    ask = Ask(gpus, job.gpu_milli if gpus else 0, cpu, mem, tuple(pools), job.id)
    if len(pools) > 1 or cap.n_nodes <= EXACT_SCAN_NODES or gpus == 0:
        nodes = single.fitting(cap, single.span(cap, pools, memo), ask)
        return _one(cap, *scorer.over(cap, nodes, ask, _workload(req, ask)), ask) if nodes.size else None
    pool = pools[0]
    if ask.share:
        few = bounded.share_nodes(cap, pool, ask, PER_BUCKET, SCAN_LIMIT)
    elif cap.fresh[pool] or any(cap.buckets[pool][gpus:]):
        few = bounded.bucket_nodes(cap, pool, ask, PER_BUCKET, SCAN_LIMIT)
    else:
        return None
    if not few:
        return None
    return _one(cap, *bounded.choose(scorer, cap, few, ask, _workload(req, ask), memo), ask)


def _one(cap: Capacity, node: int, gpus: tuple[int, ...], ask: Ask) -> Placement:
    one = share(node, gpus, ask.milli if ask.gpus else 0, ask.cpu, ask.mem)
    return Placement(cap.pools[int(cap.node_pool[node])].name, (one,))


def _policy(scorer: Scorer | None, reorder: bool) -> PlacementFn:
    def place(cap: Capacity, req: PlaceRequest) -> Placement | None:
        job = req.job
        need = job.gpu_milli_total
        together = scorer is not None and cap.n_nodes <= EXACT_SCAN_NODES
        memo = req.memo if req.memo is not None else PlacementMemo()
        memo.bind(cap)
        for tier in _tiers(cap, req, memo) if reorder else [list(req.pools)]:
            run: list[int] = []  # consecutive single-node pools, scored together
            for pi in tier:
                p = cap.pools[pi]
                if cap.pool_milli[pi] < need:
                    continue
                found = None
                if scorer is not None and _single_node(p, job):
                    if together:
                        run.append(pi)
                        continue
                    found = _score(cap, [pi], req, scorer, memo)
                else:
                    if run and scorer is not None:
                        found = _score(cap, run, req, scorer, memo)
                        run = []
                    found = found or _in_pool(cap, p, req, first=scorer is None)
                if found is not None:
                    return found
            if run and scorer is not None:
                found = _score(cap, run, req, scorer, memo)
                if found is not None:
                    return found
        return None

    return place


def work_per_su(cap: Capacity, req: PlaceRequest, pi: int) -> float:
    """Training work one service unit buys on pool ``pi`` for this job: its speed there (the request's per-job
    speed if given, else the pool model's catalog speed) over the model's SU weight, rounded to 6 digits so that
    models of equal value tie exactly."""
    p = cap.pools[pi]
    speed = req.speed.get(pi, p.speed) if req.speed else p.speed
    return round(speed / p.su_weight, 6)


def prefer_pools(cap: Capacity, req: PlaceRequest) -> list[int]:
    """Heterogeneity-aware order: most work per service unit first (:func:`work_per_su`); then the cheaper model
    (keep premium GPUs for jobs that need them); then the pool index (the fleet's order)."""
    return [pi for tier in _tiers(cap, req, PlacementMemo()) for pi in tier]


def _tiers(cap: Capacity, req: PlaceRequest, memo: PlacementMemo) -> list[list[int]]:
    """:func:`prefer_pools` cut into tiers of equal work per SU: a tier's pools are scored together (the
    earlier pool, i.e. the cheaper model, wins ties); the next tier is tried only when nothing in one fits.
    Without per-job speeds the tiers depend on the pools alone: computed once per set of pools."""
    if not req.speed:
        pools = tuple(req.pools)
        cached = memo.tiers.get(pools)
        if cached is None:
            cached = memo.tiers[pools] = _cut(cap, req)
        return cached
    return _cut(cap, req)


def _cut(cap: Capacity, req: PlaceRequest) -> list[list[int]]:
    keyed = sorted((-work_per_su(cap, req, pi), cap.pools[pi].su_weight, pi) for pi in req.pools)
    tiers: list[list[int]] = []
    last: float | None = None
    for neg_work, _, pi in keyed:
        if neg_work != last:
            tiers.append([])
            last = neg_work
        tiers[-1].append(pi)
    return tiers


BEST_FIT: Scorer = Scorer("best-fit", single.best_fit)
FGD: Scorer = Scorer("fgd", single.fgd)
KFABRIC: Scorer = Scorer("kfabric", single.kfabric, terms=single.kfabric_terms)

first_fit: PlacementFn = _policy(None, reorder=False)
best_fit: PlacementFn = _policy(BEST_FIT, reorder=False)
fgd: PlacementFn = _policy(FGD, reorder=False)
kfabric_place: PlacementFn = _policy(KFABRIC, reorder=True)
