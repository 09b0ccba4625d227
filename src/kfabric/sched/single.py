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

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import floor

import numpy as np
import numpy.typing as npt

from kfabric.model.job import MILLI_PER_GPU
from kfabric.sched.arith import ARRAYS, NUMBERS, Arith, Vec
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


def remaining(
    a: Arith, cpu_free: Vec, cpu_total: Vec, mem_free: Vec, mem_total: Vec, total: Vec, gpus: Vec, ask: Ask
) -> Vec:
    """Sum of the CPU, memory and GPU (``total`` free milli of ``gpus`` GPUs) a node would have left after the
    ask, each as a share of the node's own (one formula for both forms, ``sched.arith``)."""
    score = (cpu_free - ask.cpu) / a.maximum(cpu_total, 1)
    score = score + (mem_free - ask.mem) / a.maximum(mem_total, 1)
    return score + (total - ask.demand) / a.maximum(gpus * MILLI_PER_GPU, 1)


def remaining_share(cap: Capacity, nodes: I64, free_total: I64, ask: Ask) -> F64:
    """:func:`remaining` of each of ``nodes``."""
    cpu_total, mem_total, gpus = cap.cpu_total[nodes], cap.mem_total[nodes], cap.node_gpus[nodes]
    out: F64 = remaining(ARRAYS, cap.cpu_free[nodes], cpu_total, cap.mem_free[nodes], mem_total, free_total, gpus, ask)
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


def strand_growth(a: Arith, total: Vec, cpu: Vec, mem: Vec, ask: Ask, workload: Workload) -> Vec:
    """Growth of the GPU milli stranded by a node's CPU and memory if the ask is placed there."""
    cpm, mpm = workload.cpu_per_milli, workload.mem_per_milli
    after = stranded(a, total - ask.demand, cpu - ask.cpu, mem - ask.mem, cpm, mpm)
    return after - stranded(a, total, cpu, mem, cpm, mpm)


def kfabric_growth(
    a: Arith,
    cap: Capacity,
    model: Vec,
    cpu: Vec,
    mem: Vec,
    slots: Sequence[Vec],
    total: Vec,
    whole: Vec,
    ask: Ask,
    wl: Workload,
) -> list[Vec]:
    """kfabric's score before ties (see the module doc) of nodes of GPU model ids ``model`` with ``cpu``, ``mem``
    free, ``slots`` free milli (>= 0) slot by slot (``total`` their sum) and ``whole`` free GPUs: one value, or one
    per GPU slot for a share of a GPU (``inf`` where the slot can not hold it). One formula for both forms
    (``sched.arith``)."""
    strand = strand_growth(a, total, cpu, mem, ask, wl)
    if ask.share:
        waste, m = (wl.waste if a.arrays else wl.waste_list), ask.milli
        return [a.where(f >= m, waste[a.where(f >= m, f - m, 0)] - waste[f] + strand, math.inf) for f in slots]
    tables = frag_tables(wl, cap.gpu_models, len(slots))
    growth = tables.growth(a, model, cpu, slots, total, whole, *task_of(ask))
    return [growth[0] / tables.total_weight + strand]


def columns(free: I64) -> list[I64]:
    """The GPU slots of nodes x slots ``free``, slot by slot (the operands of a formula's array form)."""
    return [free[:, g] for g in range(free.shape[1])]


def task_of(ask: Ask) -> tuple[int, int, int]:
    """The ask as a task of the fragmentation formulas: (CPU, milli per GPU, GPUs)."""
    return ask.cpu, ask.milli, ask.gpus


def per_slot(values: list[F64], ask: Ask) -> F64:
    """A formula's array-form result as nodes x slots for a share of a GPU, per node otherwise."""
    out: F64 = np.stack(values, axis=1) if ask.share else np.asarray(values[0], dtype=np.float64)
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
    total = free.sum(axis=1)
    delta = per_slot(tables.growth(ARRAYS, model, cpu, columns(free), total, whole, *task_of(ask)), ask)
    return _choice(cap, nodes, lexmin(nodes, ask, delta), free.shape[1], ask)


def kfabric_score(cap: Capacity, nodes: I64, ask: Ask, workload: Workload, free: I64, total: I64) -> F64:
    """:func:`kfabric_growth` of ``nodes`` (``free``: their :func:`free_milli`, ``total`` its row sums): per node,
    or nodes x slots for a share of a GPU."""
    model, cpu, mem, whole = cap.node_model[nodes], cap.cpu_free[nodes], cap.mem_free[nodes], cap.whole[nodes]
    return per_slot(kfabric_growth(ARRAYS, cap, model, cpu, mem, columns(free), total, whole, ask, workload), ask)


def kfabric_terms(cap: Capacity, node: int, free: list[int], cpu: int, mem: int, ask: Ask, wl: Workload) -> Terms:
    """:func:`kfabric`'s terms of one node with ``free`` milli per GPU slot (>= 0), ``cpu`` and ``mem`` free, in
    plain Python (the :class:`Scorer`'s ``terms`` form): its remaining share and, per GPU slot that takes the
    ask, (slot, score, milli left on it), on the grid; the same formulas as the array form."""
    total = sum(free)  # integers: exact in any order
    share = remaining(
        NUMBERS, cpu, cap.cpu_total.item(node), mem, cap.mem_total.item(node), total, cap.node_gpus.item(node), ask
    )
    model, whole = cap.node_model.item(node), cap.whole.item(node)
    scores = kfabric_growth(NUMBERS, cap, model, cpu, mem, free, total, whole, ask, wl)
    if not ask.share:
        return floor(share * GRID), ((0, floor(scores[0] * GRID), 0.0),)
    m = ask.milli
    slots = [(g, floor(scores[g] * GRID), floor((f - m) * GRID)) for g, f in enumerate(free) if f >= m]
    return floor(share * GRID), tuple(slots)


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
