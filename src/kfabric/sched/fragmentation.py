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
every candidate (node, GPU) is a handful of array operations. Values are GPU milli x type weight. The formulas
are written once, for numpy columns over candidate nodes and for one node's Python numbers (``sched.arith``),
and give the same bits in both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from kfabric.model.job import MILLI_PER_GPU
from kfabric.sched.arith import Arith, Vec
from kfabric.sched.workload import Workload

I64 = npt.NDArray[np.int64]


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
        # the same tables as lists, for the plain-Python form (``sched.arith``)
        self._levels_list: list[int] = self.cpu_levels.tolist()
        self._usable_list: list[float] = self._usable.tolist()
        self._multi_list: list[float] = self._multi.tolist()

    def _form(self, a: Arith) -> tuple[Any, Any, Any]:
        """The CPU levels and the usable and multi-GPU tables in ``a``'s form (arrays, or lists)."""
        if a.arrays:
            return self.cpu_levels, self._usable, self._multi
        return self._levels_list, self._usable_list, self._multi_list

    def _used(self, usable: Any, row: Vec, slots: Sequence[Vec]) -> Vec:
        """Sum over GPU slots, slot by slot, of free milli x weight of the types able to use it."""
        unit = self.unit
        used: Vec = 0.0  # typed so that the compiled build takes an array too
        for f in slots:
            used = used + f * usable[row + f // unit]
        return used

    def frag(self, a: Arith, model: Vec, cpu_free: Vec, slots: Sequence[Vec], total: Vec, n_full: Vec) -> Vec:
        """Fragmentation of nodes of GPU model ids ``model`` (GPU milli x weight); ``slots``: free milli (>= 0)
        per GPU slot, slot by slot (one operand each); ``total``: their sum (integers: exact in any order);
        ``n_full``: whole free GPUs."""
        levels, usable, multi = self._form(a)
        key = model * self._lc + a.count_le(levels, cpu_free)
        used = self._used(usable, key * self.x_size, slots)
        return total * self.total_weight - used - MILLI_PER_GPU * n_full * multi[key * self._g1 + n_full]

    def growth(
        self,
        a: Arith,
        model: Vec,
        cpu_free: Vec,
        slots: Sequence[Vec],
        total: Vec,
        n_full: Vec,
        cpu: int,
        milli: int,
        gpus: int,
    ) -> list[Vec]:
        """Fragmentation growth for placing a task (``cpu`` CPU; ``gpus`` x ``milli``) on nodes that hold it
        (operands as in :meth:`frag`): one value for CPU-only and whole-GPU tasks, one per GPU slot for a share
        of one GPU (``inf`` where the slot can not hold it)."""
        levels, usable, multi = self._form(a)
        before = self.frag(a, model, cpu_free, slots, total, n_full)
        key2 = model * self._lc + a.count_le(levels, cpu_free - cpu)
        row2, unit = key2 * self.x_size, self.unit
        total2 = (total - milli * gpus) * self.total_weight
        used2 = self._used(usable, row2, slots)
        if gpus == 0 or milli >= MILLI_PER_GPU:
            if gpus:
                used2 = used2 - gpus * MILLI_PER_GPU * usable[row2 + self._whole_x]
            n2 = n_full - gpus
            return [total2 - used2 - MILLI_PER_GPU * n2 * multi[key2 * self._g1 + n2] - before]
        common = total2 - before - used2
        out: list[Vec] = []
        for f in slots:
            fits = f >= milli
            f2 = a.where(fits, f - milli, 0)
            adj = f2 * usable[row2 + f2 // unit] - f * usable[row2 + f // unit]
            n2 = n_full - (f == MILLI_PER_GPU)
            out.append(a.where(fits, common - adj - MILLI_PER_GPU * n2 * multi[key2 * self._g1 + n2], math.inf))
        return out


def frag_tables(workload: Workload, model_names: tuple[str, ...], width: int) -> FragTables:
    """The workload's tables for a fleet, built on first use and kept on the workload."""
    key = (model_names, width)
    found = workload.tables.get(key)
    if isinstance(found, FragTables):
        return found
    tables = FragTables(workload, model_names, width)
    workload.tables[key] = tables
    return tables


def stranded(a: Arith, gpu_free: Vec, cpu_free: Vec, mem_free: Vec, cpu_per_milli: float, mem_per_milli: float) -> Vec:
    """Free GPU milli a node's free CPU or memory can not feed at the workload's CPU and memory per GPU milli
    (GPUs stranded because the host runs out first). A ratio of 0 (unknown) strands nothing."""
    short: Vec = 0.0
    if cpu_per_milli > 0:
        short = a.maximum(short, gpu_free - cpu_free / cpu_per_milli)
    if mem_per_milli > 0:
        short = a.maximum(short, gpu_free - mem_free / mem_per_milli)
    return short
