"""Fragmentation of GPU capacity against a target workload (Weng et al., USENIX ATC'23, "FGD", section 4).

For a task type ``m`` and a node ``n`` the free GPU milli of ``n`` that ``m`` can not use is fragmented:

* if ``m`` can not run on ``n`` at all (too little free CPU, a GPU model ``m`` does not accept, too few
  whole free GPUs) every free GPU milli of ``n`` is fragmented;
* otherwise the free milli of each GPU holding less than ``m``'s per-GPU demand is fragmented (a CPU-only
  task uses no GPU, so nothing is fragmented for it).

Equivalently ``F_n(m) = T_n - [m fits n] * U_n(m)``, ``T_n`` the node's free GPU milli and ``U_n(m)`` the free
milli on GPUs holding at least ``m``'s per-GPU demand. Against a workload ``F_n = sum_m p_m F_n(m)``;
fragmentation gradient descent places each task where ``F`` grows least.

The sum over task types is precomputed into lookup tables indexed by (GPU model, which task types fit the
node's free CPU, free milli of one GPU), so a node's fragmentation is one gather per GPU slot and scoring
every candidate (node, GPU) is a handful of array operations. Values are GPU milli x type weight.
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np
import numpy.typing as npt

from kfabric.model.job import MILLI_PER_GPU
from kfabric.sched.workload import Workload

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


class FragTables:
    """FGD's lookup tables for one workload on one fleet (its GPU model names and GPU slots per node)."""

    def __init__(self, workload: Workload, model_names: tuple[str, ...], width: int) -> None:
        types = workload.types
        self.total_weight = workload.total_weight or 1.0
        millis = [t.gpu_milli for t in types if t.gpus] + [MILLI_PER_GPU]
        self.unit = math.gcd(*millis)
        self.x_size = MILLI_PER_GPU // self.unit + 1
        self.cpu_levels: I64 = np.unique(np.array([t.cpu_milli for t in types] or [0], dtype=np.int64))
        n_models = len(model_names)
        lc = len(self.cpu_levels) + 1
        g1 = width + 1
        # usable[model, cpu class, x]: weight of types that run on such a node and can use a GPU with
        # x*unit free milli; multi[model, cpu class, k]: weight of multi-GPU types that run with k whole GPUs
        usable = np.zeros((n_models, lc, self.x_size), dtype=np.float64)
        multi = np.zeros((n_models, lc, g1), dtype=np.float64)
        for t in types:
            ci = int(np.searchsorted(self.cpu_levels, t.cpu_milli)) + 1
            allowed = np.array([not t.models or m in t.models for m in model_names], dtype=np.bool_)
            if not t.gpus:
                allowed[:] = True
            if t.gpus <= 1:
                usable[allowed, ci:, t.gpu_milli // self.unit :] += t.weight
            elif t.gpus < g1:
                multi[allowed, ci:, t.gpus :] += t.weight
        self._lc, self._g1 = lc, g1
        self._usable = usable.reshape(-1)
        self._multi = multi.reshape(-1)
        self._whole_x = MILLI_PER_GPU // self.unit
        # the same tables as lists, for :meth:`delta_one`
        self._levels_list: list[int] = self.cpu_levels.tolist()
        self._usable_list: list[float] = self._usable.tolist()
        self._multi_list: list[float] = self._multi.tolist()

    def key(self, model: I64, cpu_free: I64) -> I64:
        """Feasibility class of nodes of GPU model ids ``model`` with ``cpu_free`` CPU milli free."""
        out: I64 = model * self._lc + np.searchsorted(self.cpu_levels, cpu_free, side="right")
        return out

    def _usable_sum(self, key: I64, free: I64) -> F64:
        """Sum over GPU slots of free milli x weight of the types able to use it (one row per node)."""
        w = self._usable[key[:, None] * self.x_size + free // self.unit]
        out: F64 = (free * w).sum(axis=1)
        return out

    def _multi_term(self, key: I64, n_full: I64) -> F64:
        out: F64 = MILLI_PER_GPU * n_full * self._multi[key * self._g1 + n_full]
        return out

    def frag(self, model: I64, cpu_free: I64, free: I64, n_full: I64) -> F64:
        """Fragmentation of nodes (GPU milli x weight); ``free`` is nodes x GPU slots of free milli >= 0."""
        key = self.key(model, cpu_free)
        total = free.sum(axis=1) * self.total_weight
        out: F64 = total - self._usable_sum(key, free) - self._multi_term(key, n_full)
        return out

    def delta(self, model: I64, cpu_free: I64, free: I64, n_full: I64, cpu: int, milli: int, gpus: int) -> F64:
        """Fragmentation growth for placing a task (``cpu`` CPU; ``gpus`` x ``milli``) on each node (which
        must hold it): shape ``(nodes,)`` for CPU-only and whole-GPU tasks, ``(nodes, slots)`` for a share of
        one GPU (``inf`` where that GPU can not hold it)."""
        before = self.frag(model, cpu_free, free, n_full)
        key2 = self.key(model, cpu_free - cpu)
        total2 = (free.sum(axis=1) - milli * gpus) * self.total_weight
        base = self._usable_sum(key2, free)
        if gpus == 0 or milli >= MILLI_PER_GPU:
            if gpus:
                base = base - gpus * MILLI_PER_GPU * self._usable[key2 * self.x_size + self._whole_x]
            out: F64 = total2 - base - self._multi_term(key2, n_full - gpus) - before
            return out
        fits = free >= milli
        x2 = np.where(fits, free - milli, 0)
        row = key2[:, None] * self.x_size
        adj = x2 * self._usable[row + x2 // self.unit] - free * self._usable[row + free // self.unit]
        n_full2 = n_full[:, None] - (free == MILLI_PER_GPU)
        multi = MILLI_PER_GPU * n_full2 * self._multi[key2[:, None] * self._g1 + n_full2]
        d2: F64 = (total2 - before - base)[:, None] - adj - multi
        return np.where(fits, d2, np.inf)

    def delta_one(self, model: int, cpu_free: int, free: list[int], n_full: int, cpu: int, gpus: int) -> float:
        """:meth:`delta` of one node for a CPU-only or whole-GPU task, in plain Python (cheaper than numpy
        for a handful of nodes); ``free`` is the node's free milli per GPU slot (>= 0)."""
        usable, multi, x_size, unit = self._usable_list, self._multi_list, self.x_size, self.unit
        key_before = model * self._lc + bisect_right(self._levels_list, cpu_free)
        key_after = model * self._lc + bisect_right(self._levels_list, cpu_free - cpu)
        row_before, row_after = key_before * x_size, key_after * x_size
        sum_before = sum_after = 0.0
        for f in free:
            if f > 0:
                x = f // unit
                sum_before += f * usable[row_before + x]
                sum_after += f * usable[row_after + x]
        if gpus:
            sum_after -= gpus * MILLI_PER_GPU * usable[row_after + self._whole_x]
        multi_before = MILLI_PER_GPU * n_full * multi[key_before * self._g1 + n_full]
        multi_after = MILLI_PER_GPU * (n_full - gpus) * multi[key_after * self._g1 + n_full - gpus]
        return -MILLI_PER_GPU * gpus * self.total_weight - sum_after - multi_after + sum_before + multi_before


def frag_tables(workload: Workload, model_names: tuple[str, ...], width: int) -> FragTables:
    """The workload's tables for a fleet, built on first use and kept on the workload."""
    key = (model_names, width)
    found = workload.tables.get(key)
    if isinstance(found, FragTables):
        return found
    tables = FragTables(workload, model_names, width)
    workload.tables[key] = tables
    return tables


def stranded(gpu_free: I64, cpu_free: I64, mem_free: I64, cpu_per_milli: float, mem_per_milli: float) -> F64:
    """Free GPU milli a node's free CPU or memory can not feed at the workload's CPU and memory per GPU milli
    (GPUs stranded because the host runs out first). A ratio of 0 (unknown) strands nothing."""
    short = np.zeros(gpu_free.shape, dtype=np.float64)
    if cpu_per_milli > 0:
        short = np.maximum(short, gpu_free - cpu_free / cpu_per_milli)
    if mem_per_milli > 0:
        short = np.maximum(short, gpu_free - mem_free / mem_per_milli)
    return short
