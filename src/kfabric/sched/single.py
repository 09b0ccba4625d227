"""Single-node placement scores: which node (and GPUs on it) takes a job that fits on one node.

Each scorer looks at an array of candidate nodes at once (numpy), all of which hold the ask, and returns the
chosen ``(node, gpus)``:

* :func:`best_fit`: the paper's BestFit (Weng et al., ATC'23): the node left with the least resources (the
  equal-weight sum of its free CPU, memory and GPU after placement, each as a share of the node's own); a
  share of a GPU takes the GPU left with the least free milli;
* :func:`fgd`: fragmentation gradient descent (:mod:`kfabric.sched.fragmentation`): the node and GPU whose
  placement grows the expected fragmentation against the workload least;
* :func:`kfabric`: for a share of a GPU, the growth of the GPU's expected waste (:attr:`Workload.waste`); for
  whole GPUs and CPU-only work, FGD's fragmentation growth; both plus the growth of the GPU milli the node's
  CPU and memory strand (:func:`~kfabric.sched.fragmentation.stranded`).

Ties: :func:`kfabric` and :func:`best_fit` prefer the earlier pool of the request, then nodes that do not
break a fully free rack (:func:`kfabric` then the tightest GPU, then best fit); every scorer breaks the last
ties in a pseudo-random order of nodes seeded by the job id (FGD breaks ties between nodes at random), then
to the lowest GPU slot, so the same inputs give the same placement.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kfabric.model.job import MILLI_PER_GPU
from kfabric.sched.capacity import Capacity
from kfabric.sched.fragmentation import frag_tables, stranded
from kfabric.sched.memo import PlacementMemo, Terms
from kfabric.sched.workload import Workload

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Choice = tuple[int, tuple[int, ...]]

#: scores are compared on a grid this fine (GPU milli): float noise below it is not a preference
TOLERANCE = 1e-6
GRID = 1.0 / TOLERANCE
PRIME = (1 << 31) - 1


@dataclass(frozen=True, slots=True)
class Ask:
    """What a job needs on one node: ``gpus`` x ``milli`` (0 GPUs: CPU-only; ``milli`` < 1000: a share of
    one GPU), host CPU milli and memory MiB; ``order``: the request's pools in preference order; ``tie``:
    the job id, which seeds the order of the last ties."""

    gpus: int
    milli: int
    cpu: int
    mem: int
    order: tuple[int, ...] = ()
    tie: str = ""

    @property
    def share(self) -> bool:
        return self.gpus == 1 and self.milli < MILLI_PER_GPU

    @property
    def demand(self) -> int:
        return self.gpus * self.milli

    @property
    def salt(self) -> int:
        """The tie-break seed, in ``1 .. 2**31 - 2``."""
        return zlib.crc32(self.tie.encode()) % (PRIME - 1) + 1


ScoreFn = Callable[[Capacity, I64, Ask, Workload], Choice]
#: a scorer's terms of one node: (capacity, node, free milli per GPU slot (>= 0), free CPU, free memory, ask, workload)
TermsFn = Callable[[Capacity, int, list[int], int, int, Ask, Workload], Terms]


@dataclass(frozen=True, slots=True)
class Scorer:
    """A single-node score, registered under a placement name (``sched.registry``). ``over`` scores an array of
    candidate nodes. ``terms``, where the scorer has it, gives one node's terms on the score grid in plain Python
    (for a score whose terms depend only on a node's pool and free resources): a placement over the handful of
    representatives a large fleet offers remembers them per node and compares them in ``over``'s order of ties
    (:func:`kfabric.sched.bounded.choose`); tests hold its choices equal to ``over``'s."""

    name: str
    over: ScoreFn
    terms: TermsFn | None = None


def span(cap: Capacity, pools: Sequence[int], memo: PlacementMemo) -> I64:
    """Every node of ``pools``, pool by pool in the given order (remembered per pool list)."""
    key = tuple(pools)
    found = memo.spans.get(key)
    if found is None:
        ranges = [np.arange(cap.pools[pi].first_node, cap.pools[pi].first_node + cap.pools[pi].nodes) for pi in key]
        found = memo.spans[key] = np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.int64)
    return found


def fitting(cap: Capacity, nodes: I64, ask: Ask) -> I64:
    """The ``nodes`` that are up and hold ``ask`` now."""
    ok = cap.up[nodes] & (cap.cpu_free[nodes] >= ask.cpu) & (cap.mem_free[nodes] >= ask.mem)
    if ask.share:
        ok &= (cap.milli[nodes] >= ask.milli).any(axis=1)
    elif ask.gpus:
        ok &= cap.whole[nodes] >= ask.gpus
    out: I64 = nodes[ok]
    return out


# ---- terms ------------------------------------------------------------------------------------------------
def grid(values: F64) -> F64:
    """Values on a grid of :data:`TOLERANCE`: scores that differ by float noise compare equal."""
    out: F64 = np.floor(values * GRID)
    return out


def lexmin(nodes: I64, ask: Ask, primary: F64, *tiebreaks: Callable[[], F64]) -> int:
    """Flat index minimizing ``primary`` (on the :func:`grid`), then each tie-break in turn (computed only on
    a tie, broadcast to ``primary``'s shape), then the ask's pseudo-random order of nodes, then the lowest GPU
    slot."""
    flat = grid(primary.reshape(-1))
    best = np.flatnonzero(flat == flat.min())
    for tiebreak in tiebreaks:
        if len(best) == 1:
            return int(best[0])
        values = grid(np.broadcast_to(tiebreak(), primary.shape).reshape(-1)[best])
        best = best[values == values.min()]
    if len(best) == 1:
        return int(best[0])
    width = flat.size // max(nodes.size, 1)
    order = (nodes[best // width] + 1) * ask.salt % PRIME
    return int(best[order == order.min()][0])


def free_milli(cap: Capacity, nodes: I64) -> I64:
    """Free milli per GPU slot of ``nodes`` (0 for slots a node does not have)."""
    out: I64 = np.maximum(cap.milli[nodes], 0)
    return out


def remaining_share(cap: Capacity, nodes: I64, free_total: I64, ask: Ask) -> F64:
    """Sum of the CPU, memory and GPU each node would have left, each as a share of the node's own."""
    score: F64 = (cap.cpu_free[nodes] - ask.cpu) / np.maximum(cap.cpu_total[nodes], 1)
    score = score + (cap.mem_free[nodes] - ask.mem) / np.maximum(cap.mem_total[nodes], 1)
    out: F64 = score + (free_total - ask.demand) / np.maximum(cap.node_gpus[nodes] * MILLI_PER_GPU, 1)
    return out


def breaks_rack(cap: Capacity, nodes: I64) -> F64:
    """1.0 for fully free nodes of a fully free rack (taking them breaks a domain a gang could use)."""
    rack = cap.node_rack[nodes]
    whole = (cap.whole[nodes] == cap.node_gpus[nodes]) & (cap.rack_full[rack] == cap.rack_size[rack])
    out: F64 = whole.astype(np.float64)
    return out


def pool_rank(cap: Capacity, nodes: I64, ask: Ask) -> F64:
    """Position of each node's pool in the ask's pool order."""
    rank = np.full(len(cap.pools), float(len(ask.order)))
    rank[list(ask.order)] = np.arange(len(ask.order), dtype=np.float64)
    out: F64 = rank[cap.node_pool[nodes]]
    return out


def gpus_on(cap: Capacity, node: int, ask: Ask, gpu: int) -> tuple[int, ...]:
    """The GPU slots the ask takes on ``node``: ``gpu`` for a share, the first free ones for whole GPUs."""
    if ask.gpus == 0:
        return ()
    if ask.share:
        return (gpu,)
    return tuple(cap.free_gpus_on(node)[: ask.gpus])


def _choice(cap: Capacity, nodes: I64, flat: int, width: int, ask: Ask) -> Choice:
    i, g = divmod(flat, width) if ask.share else (flat, 0)
    node = int(nodes[i])
    return node, gpus_on(cap, node, ask, g)


def strand_growth(total: I64, cpu: I64, mem: I64, ask: Ask, workload: Workload) -> F64:
    """Growth of the GPU milli stranded by each node's CPU and memory if the ask is placed there."""
    cpm, mpm = workload.cpu_per_milli, workload.mem_per_milli
    after = stranded(total - ask.demand, cpu - ask.cpu, mem - ask.mem, cpm, mpm)
    out: F64 = after - stranded(total, cpu, mem, cpm, mpm)
    return out


# ---- scorers ----------------------------------------------------------------------------------------------
def best_fit(cap: Capacity, nodes: I64, ask: Ask, workload: Workload) -> Choice:
    """The paper's BestFit over ``nodes`` (non-empty, all holding the ask); ``workload`` is not used."""
    free = free_milli(cap, nodes)
    score = remaining_share(cap, nodes, free.sum(axis=1), ask)
    i = lexmin(nodes, ask, score, lambda: pool_rank(cap, nodes, ask), lambda: breaks_rack(cap, nodes))
    node = int(nodes[i])
    if not ask.share:
        return node, gpus_on(cap, node, ask, 0)
    left = np.where(free[i] >= ask.milli, free[i] - ask.milli, 1 << 30)
    return node, (int(np.argmin(left)),)


def fgd(cap: Capacity, nodes: I64, ask: Ask, workload: Workload) -> Choice:
    """Fragmentation gradient descent over ``nodes`` (non-empty, all holding the ask)."""
    free = free_milli(cap, nodes)
    tables = frag_tables(workload, cap.gpu_models, free.shape[1])
    model, cpu, whole = cap.node_model[nodes], cap.cpu_free[nodes], cap.whole[nodes]
    delta = tables.delta(model, cpu, free, whole, ask.cpu, ask.milli, ask.gpus)
    return _choice(cap, nodes, lexmin(nodes, ask, delta), free.shape[1], ask)


def kfabric_score(cap: Capacity, nodes: I64, ask: Ask, workload: Workload, free: I64, total: I64) -> F64:
    """kfabric's score before ties (see the module doc): per node, or per (node, GPU slot) for a share of a GPU
    (``inf`` where the slot can not hold it); ``free``: :func:`free_milli` of ``nodes``, ``total`` its row sums.
    (:func:`kfabric.sched.bounded.kfabric_terms` is the same score of one node in plain Python.)"""
    strand = strand_growth(total, cap.cpu_free[nodes], cap.mem_free[nodes], ask, workload)
    if ask.share:
        fits = free >= ask.milli
        waste = workload.waste
        growth = np.where(fits, waste[np.where(fits, free - ask.milli, 0)] - waste[free], np.inf)
        shared: F64 = growth + strand[:, None]
        return shared
    tables = frag_tables(workload, cap.gpu_models, free.shape[1])
    cpu, whole = cap.cpu_free[nodes], cap.whole[nodes]
    frag = tables.delta(cap.node_model[nodes], cpu, free, whole, ask.cpu, ask.milli, ask.gpus)
    out: F64 = frag / tables.total_weight + strand
    return out


def left_on_gpu(free: I64, ask: Ask) -> F64:
    """Milli each GPU slot would have left after the share (a whole GPU's worth where it can not hold it)."""
    out: F64 = np.where(free >= ask.milli, free - ask.milli, MILLI_PER_GPU).astype(np.float64)
    return out


def kfabric(cap: Capacity, nodes: I64, ask: Ask, workload: Workload) -> Choice:
    """kfabric's packing score over ``nodes`` (non-empty, all holding the ask); see the module doc. Ties: the
    earlier pool, not breaking a fully free rack, (a share:) the tightest GPU, the least remaining share."""
    free = free_milli(cap, nodes)
    total = free.sum(axis=1)
    score = kfabric_score(cap, nodes, ask, workload, free, total)
    if ask.share:
        flat = lexmin(
            nodes,
            ask,
            score,
            lambda: pool_rank(cap, nodes, ask)[:, None],
            lambda: breaks_rack(cap, nodes)[:, None],
            lambda: left_on_gpu(free, ask),
            lambda: remaining_share(cap, nodes, total, ask)[:, None],
        )
    else:
        flat = lexmin(
            nodes,
            ask,
            score,
            lambda: pool_rank(cap, nodes, ask),
            lambda: breaks_rack(cap, nodes),
            lambda: remaining_share(cap, nodes, total, ask),
        )
    return _choice(cap, nodes, flat, free.shape[1], ask)
