"""Vectorized node-level placement for GPU-sharing workloads.

The cluster is kept as a struct of arrays (free CPU, free memory, free milli per GPU slot, GPU model per
node), so every arriving task is scored against all nodes at once with numpy.

Resource model (Weng et al., "Beware of Fragmentation", USENIX ATC'23):

* a task asks for ``cpu_milli`` CPU, ``memory_mib`` memory and either nothing from GPUs (``num_gpu == 0``),
  ``gpu_milli < 1000`` of ONE GPU (a fractional, shared GPU), or ``num_gpu = k`` whole GPUs
  (``gpu_milli == 1000``) on one node; ``gpu_spec`` optionally restricts the GPU model;
* CPU, memory and GPUs all constrain a fit.

Fragmentation (FGD, section 4 of the paper).  For a task type ``m`` and a node ``n`` the GPU milli of ``n``
that ``m`` can not use is fragmented:

* if ``m`` can not run on ``n`` at all (too little CPU, wrong GPU model, too few whole GPUs) every free GPU
  milli of ``n`` is fragmented;
* otherwise the free milli of each GPU that holds less than ``m``'s per-GPU demand is fragmented (a
  CPU-only task uses no GPU, so nothing is fragmented for it).

Equivalently ``F_n(m) = T_n - [m fits n] * U_n(m)`` with ``T_n`` the node's free GPU milli and ``U_n(m)``
the free milli on GPUs holding at least ``m``'s per-GPU demand.  The node's fragmentation against a
workload is the popularity-weighted sum ``F_n = sum_m p_m F_n(m)``; FGD places each task where ``F`` grows
least.  The sum over task types is precomputed into lookup tables indexed by (GPU model, which task types
fit the node's free CPU[/memory], free milli of one GPU), so a node's fragmentation costs one gather per
GPU slot and scoring every candidate (node, GPU) for a task is a handful of array operations.

Policies (``POLICIES``, name -> factory): ``first-fit``; ``best-fit`` (the paper's BestFit: least normalized
resources left); ``fgd`` (the above, ties broken at random); ``kfabric`` (:class:`KFabric`: FGD extended to
the expected waste of a GPU over several arrivals, plus GPUs stranded by the node's CPU/memory).

Only numpy and the standard library are imported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

GPU_MILLI = 1000
"""Milli units of one whole GPU."""

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
Mask = NDArray[np.bool_]

# --------------------------------------------------------------------------------------------- model ---


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One machine: capacities and its GPUs (all of one model; ``model`` is "" when ``num_gpu == 0``)."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    model: str = ""

    def __post_init__(self) -> None:
        if self.cpu_milli < 0 or self.memory_mib < 0 or self.num_gpu < 0:
            raise ValueError(
                f"node {self.name!r}: cpu_milli, memory_mib and gpu must be >= 0 "
                f"(got {self.cpu_milli}, {self.memory_mib}, {self.num_gpu})"
            )


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task's request.  ``gpu_milli`` is per GPU: < 1000 (one shared GPU) or 1000 (whole GPUs)."""

    cpu_milli: int
    memory_mib: int
    num_gpu: int = 0
    gpu_milli: int = 0
    gpu_spec: tuple[str, ...] = ()
    """Acceptable GPU models; empty means any."""

    def __post_init__(self) -> None:
        problem = task_spec_problem(self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli)
        if problem:
            raise ValueError(problem)

    @property
    def gpu_demand(self) -> int:
        """Total GPU milli requested."""
        return self.num_gpu * self.gpu_milli

    @property
    def fractional(self) -> bool:
        """True for a task taking part of one GPU."""
        return self.num_gpu == 1 and self.gpu_milli < GPU_MILLI

    @property
    def whole_gpus(self) -> int:
        """Number of whole GPUs requested (0 for CPU-only and fractional tasks)."""
        return self.num_gpu if self.gpu_milli == GPU_MILLI else 0


def task_spec_problem(cpu_milli: int, memory_mib: int, num_gpu: int, gpu_milli: int) -> str:
    """Why a request is not a valid task ("" when it is)."""
    if cpu_milli < 0 or memory_mib < 0 or num_gpu < 0:
        return f"cpu_milli, memory_mib and num_gpu must be >= 0 (got {cpu_milli}, {memory_mib}, {num_gpu})"
    if num_gpu == 0 and gpu_milli != 0:
        return f"gpu_milli must be 0 when num_gpu is 0 (got gpu_milli={gpu_milli})"
    if num_gpu == 1 and not 0 < gpu_milli <= GPU_MILLI:
        return f"gpu_milli must be in 1..{GPU_MILLI} when num_gpu is 1 (got {gpu_milli})"
    if num_gpu > 1 and gpu_milli != GPU_MILLI:
        return f"a task with num_gpu={num_gpu} > 1 must ask for whole GPUs, gpu_milli={GPU_MILLI} (got {gpu_milli})"
    return ""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a task goes: a node index and the GPU slots it uses on that node (empty for CPU-only)."""

    node: int
    gpus: tuple[int, ...] = ()


class Cluster:
    """Static description of the nodes, as arrays."""

    def __init__(self, nodes: Sequence[NodeSpec]) -> None:
        if not nodes:
            raise ValueError("a cluster needs at least one node")
        self.names: tuple[str, ...] = tuple(n.name for n in nodes)
        self.cpu_cap: I64 = np.array([n.cpu_milli for n in nodes], dtype=np.int64)
        self.mem_cap: I64 = np.array([n.memory_mib for n in nodes], dtype=np.int64)
        self.gpu_count: I64 = np.array([n.num_gpu for n in nodes], dtype=np.int64)
        models = sorted({n.model if n.num_gpu else "" for n in nodes})
        self.model_names: tuple[str, ...] = tuple(models)
        index = {m: i for i, m in enumerate(models)}
        self.model_id: I64 = np.array([index[n.model if n.num_gpu else ""] for n in nodes], dtype=np.int64)
        self.max_gpus: int = max(1, int(self.gpu_count.max()))
        self.present: Mask = np.arange(self.max_gpus)[None, :] < self.gpu_count[:, None]
        self.total_gpu_milli: int = int(self.gpu_count.sum()) * GPU_MILLI
        self._spec_masks: dict[tuple[str, ...], Mask] = {}

    @property
    def size(self) -> int:
        return len(self.names)

    def models_allowed(self, spec: tuple[str, ...]) -> Mask:
        """Boolean per model id: may a task with this ``gpu_spec`` use that model?"""
        if not spec:
            return np.ones(len(self.model_names), dtype=np.bool_)
        allowed = set(spec)
        return np.array([m in allowed for m in self.model_names], dtype=np.bool_)

    def spec_mask(self, spec: tuple[str, ...]) -> Mask:
        """Boolean per node: may a task with this ``gpu_spec`` run there?"""
        mask = self._spec_masks.get(spec)
        if mask is None:
            mask = self.models_allowed(spec)[self.model_id]
            self._spec_masks[spec] = mask
        return mask


class PackState:
    """Mutable free resources of a cluster.  Absent GPU slots hold 0 free milli and never fit a task."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cpu_free: I64 = cluster.cpu_cap.copy()
        self.mem_free: I64 = cluster.mem_cap.copy()
        self.gpu_free: I64 = np.where(cluster.present, GPU_MILLI, 0).astype(np.int64)
        self.n_full: I64 = cluster.gpu_count.copy()
        """Number of completely free GPUs per node."""
        self.max_free: I64 = np.where(cluster.gpu_count > 0, GPU_MILLI, 0).astype(np.int64)
        """Largest free milli of any GPU per node."""
        self.gpu_free_total: I64 = cluster.gpu_count * GPU_MILLI
        self.allocated_gpu_milli = 0
        self.changed: list[int] = []
        """The node of every placement applied so far, in order (lets scorers cache per-node values)."""

    def feasible(self, task: TaskSpec) -> Mask:
        """Boolean per node: does the task fit there now?"""
        ok = (self.cpu_free >= task.cpu_milli) & (self.mem_free >= task.memory_mib)
        if task.num_gpu:
            if task.gpu_spec:
                ok &= self.cluster.spec_mask(task.gpu_spec)
            if task.fractional:
                ok &= self.max_free >= task.gpu_milli
            else:
                ok &= self.n_full >= task.num_gpu
        return ok

    def check(self, task: TaskSpec, placement: Placement) -> None:
        """Raise ``ValueError`` unless ``placement`` is a valid placement of ``task`` now."""
        n = placement.node
        if not 0 <= n < self.cluster.size:
            raise ValueError(f"placement node {n} out of range")
        if not self.feasible(task)[n]:
            raise ValueError(f"task {task} does not fit node {n}")
        gpus = placement.gpus
        if len(gpus) != task.num_gpu or len(set(gpus)) != len(gpus):
            raise ValueError(f"task needs {task.num_gpu} distinct GPUs, placement gives {gpus}")
        for g in gpus:
            if not (0 <= g < self.cluster.max_gpus and self.cluster.present[n, g]):
                raise ValueError(f"GPU slot {g} does not exist on node {n}")
            if self.gpu_free[n, g] < task.gpu_milli:
                raise ValueError(f"GPU {g} of node {n} has {self.gpu_free[n, g]} milli free < {task.gpu_milli}")

    def apply(self, task: TaskSpec, placement: Placement) -> None:
        """Commit a placement (assumed valid; see :meth:`check`)."""
        n = placement.node
        self.changed.append(n)
        self.cpu_free[n] -= task.cpu_milli
        self.mem_free[n] -= task.memory_mib
        if placement.gpus:
            row = self.gpu_free[n]
            for g in placement.gpus:
                row[g] -= task.gpu_milli
            self.n_full[n] = int(np.count_nonzero(row == GPU_MILLI))
            self.max_free[n] = int(row.max())
            self.gpu_free_total[n] -= task.gpu_demand
            self.allocated_gpu_milli += task.gpu_demand


# ------------------------------------------------------------------------------------------- policies ---


class Policy(Protocol):
    """Chooses a placement for ``task`` among ``nodes`` (indices of nodes where it fits; never empty)."""

    def choose(self, state: PackState, task: TaskSpec, nodes: I64) -> Placement: ...


PolicyFactory = Callable[[Cluster, Sequence[TaskSpec], np.random.Generator], Policy]
"""Builds a policy from the cluster, the target workload (its task-type distribution) and an RNG."""


def first_gpus(free: I64, task: TaskSpec) -> tuple[int, ...]:
    """The lowest-index GPU slots of one node's ``free`` row that serve ``task``."""
    if task.num_gpu == 0:
        return ()
    if task.fractional:
        return (int(np.argmax(free >= task.gpu_milli)),)
    return tuple(int(g) for g in np.flatnonzero(free == GPU_MILLI)[: task.num_gpu])


def best_fit_gpu(free: I64, task: TaskSpec) -> tuple[int, ...]:
    """GPU slots for ``task`` on one node: for a shared GPU, the one left with the least free milli."""
    if not task.fractional:
        return first_gpus(free, task)
    left = np.where(free >= task.gpu_milli, free - task.gpu_milli, np.iinfo(np.int64).max)
    return (int(np.argmin(left)),)


class FirstFit:
    """The lowest-index node that fits, and its lowest-index GPU(s) that fit."""

    def choose(self, state: PackState, task: TaskSpec, nodes: I64) -> Placement:
        n = int(nodes[0])
        return Placement(n, first_gpus(state.gpu_free[n], task))


def remaining_share(state: PackState, task: TaskSpec, nodes: I64, weights: tuple[float, float, float]) -> F64:
    """Weighted sum of the node's CPU, memory and GPU left free after placing ``task``, each as a
    fraction of that node's capacity (nodes without GPUs contribute 0 for GPU)."""
    c = state.cluster
    wc, wm, wg = weights
    score: F64 = wc * (state.cpu_free[nodes] - task.cpu_milli) / np.maximum(c.cpu_cap[nodes], 1)
    score = score + wm * (state.mem_free[nodes] - task.memory_mib) / np.maximum(c.mem_cap[nodes], 1)
    gcap = c.gpu_count[nodes] * GPU_MILLI
    score = score + wg * (state.gpu_free_total[nodes] - task.gpu_demand) / np.maximum(gcap, 1)
    return score


class BestFit:
    """The paper's BestFit: the node left with the least resources (equal-weight sum of the normalized free
    CPU, memory and GPU after placement); within it, the shared GPU left with the least free milli."""

    def __init__(self, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        self.weights = weights

    def choose(self, state: PackState, task: TaskSpec, nodes: I64) -> Placement:
        score = remaining_share(state, task, nodes, self.weights)
        n = int(nodes[int(np.argmin(score))])
        return Placement(n, best_fit_gpu(state.gpu_free[n], task))


# ---------------------------------------------------------------------------------------- fragmentation ---


@dataclass(frozen=True, slots=True)
class TaskType:
    """A class of identical requests and its integer weight (count, or count x GPU demand, ...)."""

    spec: TaskSpec
    weight: int


def task_types(tasks: Sequence[TaskSpec], weigh: Callable[[TaskSpec], int] | None = None) -> list[TaskType]:
    """Group identical requests; weight = number of tasks (the paper's popularity) unless ``weigh`` gives a
    per-task integer weight (e.g. GPU demand)."""
    weights: dict[TaskSpec, int] = {}
    for t in tasks:
        weights[t] = weights.get(t, 0) + (1 if weigh is None else weigh(t))
    return [TaskType(s, w) for s, w in weights.items() if w > 0]


class FragmentationModel:
    """Expected GPU fragmentation of nodes against a workload's task-type distribution (see module doc).

    Values are exact integers: GPU milli x type weight.  ``use_memory`` also counts a type as unable to run
    on a node when the node's free memory is too small (the paper only uses CPU and GPU).
    """

    def __init__(self, cluster: Cluster, types: Sequence[TaskType], use_memory: bool = False) -> None:
        if not types:
            raise ValueError("the fragmentation model needs at least one task type")
        self.cluster = cluster
        self.total_weight = sum(t.weight for t in types)
        millis = [t.spec.gpu_milli for t in types if t.spec.num_gpu] + [GPU_MILLI]
        self.unit = math.gcd(*millis)
        self.x_size = GPU_MILLI // self.unit + 1
        self.cpu_levels: I64 = np.unique(np.array([t.spec.cpu_milli for t in types], dtype=np.int64))
        mem = [t.spec.memory_mib for t in types] if use_memory else [0]
        self.mem_levels: I64 = np.unique(np.array(mem, dtype=np.int64))
        self.use_memory = use_memory
        n_models = len(cluster.model_names)
        lc, lm = len(self.cpu_levels) + 1, len(self.mem_levels) + 1
        g1 = cluster.max_gpus + 1
        # usable[key, x]: weight of types that fit a node in feasibility class `key` and can use a GPU
        # with x*unit free milli; multi[key, k]: weight of multi-GPU types fitting with k free whole GPUs.
        usable = np.zeros((n_models, lc, lm, self.x_size), dtype=np.int64)
        multi = np.zeros((n_models, lc, lm, g1), dtype=np.int64)
        for t in types:
            s = t.spec
            ci = int(np.searchsorted(self.cpu_levels, s.cpu_milli)) + 1
            mi = int(np.searchsorted(self.mem_levels, s.memory_mib)) + 1 if use_memory else 0
            models = cluster.models_allowed(s.gpu_spec) if s.num_gpu else np.ones(n_models, dtype=np.bool_)
            if s.num_gpu <= 1:
                usable[models, ci:, mi:, s.gpu_milli // self.unit :] += t.weight
            elif s.num_gpu < g1:
                multi[models, ci:, mi:, s.num_gpu :] += t.weight
        self._lc, self._lm, self._g1 = lc, lm, g1
        self._usable = usable.reshape(-1)
        self._multi = multi.reshape(-1)
        self._cache_state: PackState | None = None
        self._cache_seen = 0
        self._cache: I64 = np.zeros(cluster.size, dtype=np.int64)

    def key(self, state: PackState, nodes: I64, cpu_free: I64, mem_free: I64) -> I64:
        """Feasibility class of ``nodes`` given their (hypothetical) free CPU and memory."""
        ci = np.searchsorted(self.cpu_levels, cpu_free, side="right")
        key: I64 = self.cluster.model_id[nodes] * self._lc + ci
        if self.use_memory:
            return key * self._lm + np.searchsorted(self.mem_levels, mem_free, side="right")
        return key * self._lm

    def usable_sum(self, key: I64, free: I64) -> I64:
        """Sum over GPU slots of free milli x weight of types able to use it (rows of ``free`` per key)."""
        w = self._usable[key[:, None] * self.x_size + free // self.unit]
        out: I64 = (free * w).sum(axis=1)
        return out

    def multi_term(self, key: I64, n_full: I64) -> I64:
        """Whole free GPUs usable by multi-GPU types, times their weight."""
        out: I64 = GPU_MILLI * n_full * self._multi[key * self._g1 + n_full]
        return out

    def node_frag(self, state: PackState, nodes: I64) -> I64:
        """Current fragmentation of ``nodes`` (GPU milli x weight)."""
        key = self.key(state, nodes, state.cpu_free[nodes], state.mem_free[nodes])
        free = state.gpu_free[nodes]
        total = state.gpu_free_total[nodes] * self.total_weight
        out: I64 = total - self.usable_sum(key, free) - self.multi_term(key, state.n_full[nodes])
        return out

    def all_frag(self, state: PackState) -> I64:
        """Fragmentation of every node, cached per state: only nodes changed since the last call are
        recomputed."""
        done = len(state.changed)
        if self._cache_state is state and self._cache_seen <= done:
            if self._cache_seen < done:
                nodes = np.unique(np.array(state.changed[self._cache_seen :], dtype=np.int64))
                self._cache[nodes] = self.node_frag(state, nodes)
        else:
            self._cache = self.node_frag(state, np.arange(self.cluster.size, dtype=np.int64))
            self._cache_state = state
        self._cache_seen = done
        return self._cache

    def cluster_frag(self, state: PackState) -> float:
        """Expected fragmented GPU milli of the whole cluster (weights normalized to popularities)."""
        return float(self.all_frag(state).sum()) / self.total_weight

    def delta(self, state: PackState, task: TaskSpec, nodes: I64) -> I64:
        """Fragmentation increase for placing ``task`` on each of ``nodes`` (which must fit it).

        Shape ``(len(nodes),)`` for CPU-only and whole-GPU tasks; ``(len(nodes), max_gpus)`` for shared-GPU
        tasks, one column per GPU slot, with ``INT64_MAX`` where the slot can not hold the task.
        """
        before = self.all_frag(state)[nodes]
        cpu2 = state.cpu_free[nodes] - task.cpu_milli
        mem2 = state.mem_free[nodes] - task.memory_mib
        key2 = self.key(state, nodes, cpu2, mem2)
        free = state.gpu_free[nodes]
        n_full = state.n_full[nodes]
        tw = self.total_weight
        total2 = (state.gpu_free_total[nodes] - task.gpu_demand) * tw
        base = self.usable_sum(key2, free)
        if not task.fractional:
            k = task.whole_gpus
            if k:
                base = base - k * GPU_MILLI * self._usable[key2 * self.x_size + GPU_MILLI // self.unit]
            out: I64 = total2 - base - self.multi_term(key2, n_full - k) - before
            return out
        d = task.gpu_milli
        fits = free >= d
        x2 = np.where(fits, free - d, 0)
        row = key2[:, None] * self.x_size
        adj = x2 * self._usable[row + x2 // self.unit] - free * self._usable[row + free // self.unit]
        n_full2 = n_full[:, None] - (free == GPU_MILLI)
        multi = GPU_MILLI * n_full2 * self._multi[key2[:, None] * self._g1 + n_full2]
        d2: I64 = (total2 - before - base)[:, None] - adj - multi
        return np.where(fits, d2, np.iinfo(np.int64).max)


def choose_min(score: NDArray[np.int64] | F64, rng: np.random.Generator | None) -> int:
    """Flat index of the minimum of ``score``; ties broken uniformly at random when ``rng`` is given."""
    flat = score.reshape(-1)
    if rng is None:
        return int(np.argmin(flat))
    best = np.flatnonzero(flat == flat.min())
    return int(best[0]) if len(best) == 1 else int(best[rng.integers(len(best))])


class FGD:
    """Fragmentation gradient descent: the node and GPU whose placement increases the fragmentation
    (against the workload's task-type popularity) least; ties broken at random."""

    def __init__(self, model: FragmentationModel, rng: np.random.Generator | None) -> None:
        self.model = model
        self.rng = rng

    def choose(self, state: PackState, task: TaskSpec, nodes: I64) -> Placement:
        delta = self.model.delta(state, task, nodes)
        i = choose_min(delta, self.rng)
        if delta.ndim == 2:
            g = state.cluster.max_gpus
            return Placement(int(nodes[i // g]), (i % g,))
        n = int(nodes[i])
        return Placement(n, first_gpus(state.gpu_free[n], task))


class ExpectedWaste:
    """Expected GPU milli a single GPU with ``x`` free milli ends up wasting ("multi-step FGD").

    FGD counts a GPU's free milli as fragmented when the next task, drawn from the workload's task-type
    popularity, can not use it: ``F(x) = x * (1 - P(x))`` with ``P(x)`` the popularity of GPU task types
    whose per-GPU demand ``d <= x``.  Here the GPU keeps receiving tasks while they fit, and the milli left
    when one does not is what is wasted::

        V(x) = (1 - P(x)) * x + sum_{d_m <= x} p_m * V(x - d_m),      V(0) = 0

    so a 190-milli hole that only a rare tiny task can fill is worth nearly 190 of waste, while a 530-milli
    hole that common 470- and 320-milli tasks fill is worth far less than 530.
    """

    def __init__(self, types: Sequence[TaskType]) -> None:
        demand: dict[int, int] = {}
        for t in types:
            if t.spec.num_gpu:
                demand[t.spec.gpu_milli] = demand.get(t.spec.gpu_milli, 0) + t.weight
        total = sum(demand.values())
        value = np.zeros(GPU_MILLI + 1, dtype=np.float64)
        if total:
            ds = np.array(sorted(demand), dtype=np.int64)
            ps = np.array([demand[int(d)] for d in ds], dtype=np.float64) / total
            for x in range(1, GPU_MILLI + 1):
                k = int(np.searchsorted(ds, x, side="right"))
                fit = float(ps[:k].sum())
                value[x] = (1.0 - fit) * x + float((ps[:k] * value[x - ds[:k]]).sum())
        else:
            value[:] = np.arange(GPU_MILLI + 1)
        self.value: F64 = value

    def delta(self, free: I64, milli: int) -> F64:
        """Change of expected waste for taking ``milli`` from GPUs with ``free`` milli (``inf`` where it
        does not fit)."""
        fits = free >= milli
        dv: F64 = self.value[np.where(fits, free - milli, 0)] - self.value[free]
        return np.where(fits, dv, np.inf)


class Stranding:
    """Free GPU milli a node's free CPU or memory can not support, at the workload's average CPU and
    memory per GPU milli (GPUs stranded because the node's CPU/memory runs out)."""

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        gpu = sum(t.gpu_demand for t in tasks)
        if gpu == 0:
            self.cpu_per_milli = self.mem_per_milli = math.inf
        else:
            self.cpu_per_milli = max(sum(t.cpu_milli for t in tasks if t.num_gpu) / gpu, 1e-9)
            self.mem_per_milli = max(sum(t.memory_mib for t in tasks if t.num_gpu) / gpu, 1e-9)

    def stranded(self, gpu_free: I64, cpu_free: I64, mem_free: I64) -> F64:
        short = np.maximum(gpu_free - cpu_free / self.cpu_per_milli, gpu_free - mem_free / self.mem_per_milli)
        out: F64 = np.maximum(short, 0.0)
        return out

    def delta(self, state: PackState, task: TaskSpec, nodes: I64) -> F64:
        """Change in stranded GPU milli on each of ``nodes`` if ``task`` is placed there."""
        t, c, m = state.gpu_free_total[nodes], state.cpu_free[nodes], state.mem_free[nodes]
        after = self.stranded(t - task.gpu_demand, c - task.cpu_milli, m - task.memory_mib)
        out: F64 = after - self.stranded(t, c, m)
        return out


def choose_lexicographic(primary: F64, secondary: Callable[[], F64], tol: float = 1e-9) -> int:
    """Flat index minimizing ``primary`` (within ``tol``), then ``secondary()`` (computed only on a tie,
    broadcast to ``primary``'s shape), then the index."""
    p = primary.reshape(-1)
    best = np.flatnonzero(p <= p.min() + tol)
    if len(best) == 1:
        return int(best[0])
    s = np.broadcast_to(secondary(), primary.shape).reshape(-1)[best]
    return int(best[int(np.argmin(s))])


class KFabric:
    """kfabric's packer.  Score = increase of expected wasted GPU milli, lower is better:

    * shared-GPU tasks: :class:`ExpectedWaste` change of the chosen GPU (multi-step FGD);
    * whole-GPU and CPU-only tasks: FGD's fragmentation change (popularity-weighted, in GPU milli);
    * all tasks: plus the change in GPU milli stranded by the node's CPU/memory (:class:`Stranding`);
    * ties: the node left with the least free resources (best fit), then the lowest index.
    """

    def __init__(self, frag: FragmentationModel, waste: ExpectedWaste, strand: Stranding) -> None:
        self.frag = frag
        self.waste = waste
        self.strand = strand

    def choose(self, state: PackState, task: TaskSpec, nodes: I64) -> Placement:
        ds = self.strand.delta(state, task, nodes)

        def fit() -> F64:
            share = remaining_share(state, task, nodes, (1.0, 1.0, 1.0))
            return share[:, None] if task.fractional else share

        if task.fractional:
            score = self.waste.delta(state.gpu_free[nodes], task.gpu_milli) + ds[:, None]
            i = choose_lexicographic(score, fit)
            g = state.cluster.max_gpus
            return Placement(int(nodes[i // g]), (i % g,))
        score = self.frag.delta(state, task, nodes) / self.frag.total_weight + ds
        n = int(nodes[choose_lexicographic(score, fit)])
        return Placement(n, first_gpus(state.gpu_free[n], task))


# ------------------------------------------------------------------------------------------- registry ---


def _first_fit(cluster: Cluster, workload: Sequence[TaskSpec], rng: np.random.Generator) -> Policy:
    return FirstFit()


def _best_fit(cluster: Cluster, workload: Sequence[TaskSpec], rng: np.random.Generator) -> Policy:
    return BestFit()


def _fgd(cluster: Cluster, workload: Sequence[TaskSpec], rng: np.random.Generator) -> Policy:
    return FGD(FragmentationModel(cluster, task_types(workload)), rng)


def _kfabric(cluster: Cluster, workload: Sequence[TaskSpec], rng: np.random.Generator) -> Policy:
    types = task_types(workload)
    return KFabric(FragmentationModel(cluster, types), ExpectedWaste(types), Stranding(workload))


POLICIES: dict[str, PolicyFactory] = {
    "first-fit": _first_fit,
    "best-fit": _best_fit,
    "fgd": _fgd,
    "kfabric": _kfabric,
}
"""Registered placement policies, by name."""


# --------------------------------------------------------------------------------------------- driver ---


def simulate(state: PackState, tasks: Sequence[TaskSpec], policy: Policy) -> I64:
    """Place ``tasks`` in order (a task that fits nowhere is dropped); return the allocated GPU milli of
    the cluster after each task."""
    out = np.empty(len(tasks), dtype=np.int64)
    for i, task in enumerate(tasks):
        nodes = np.flatnonzero(state.feasible(task))
        if len(nodes):
            state.apply(task, policy.choose(state, task, nodes))
        out[i] = state.allocated_gpu_milli
    return out


def policy_names() -> list[str]:
    return list(POLICIES)


def make_policy(name: str, cluster: Cluster, workload: Sequence[TaskSpec], rng: np.random.Generator, /) -> Policy:
    """Build a registered policy; ``ValueError`` naming the known ones if ``name`` is unknown."""
    factory: Mapping[str, PolicyFactory] = POLICIES
    if name not in factory:
        raise ValueError(f"unknown policy {name!r}; choose from: {', '.join(factory)}")
    return factory[name](cluster, workload, rng)
