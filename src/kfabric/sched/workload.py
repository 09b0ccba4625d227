"""The target workload that fragmentation-aware placement packs for: task types weighted by popularity.

FGD (Weng et al., USENIX ATC'23) measures fragmentation *against a workload*: free GPU milli is fragmented
when the tasks that are likely to arrive can not use it. A :class:`Workload` is that distribution. The
benchmark builds one from the trace it replays; the scheduling cycle passes the pending queue's
``(gpu_milli, gpus, probability)`` classes (:func:`from_task_types`); without either, a job packs for jobs of
its own shape (:func:`own_shape`).

Everything derived from a workload (expected waste per free milli, CPU and memory per GPU milli, FGD's
lookup tables per fleet) is computed once and kept on the object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from kfabric.model.job import MILLI_PER_GPU


@dataclass(frozen=True, slots=True)
class TaskType:
    """A class of identical single-node requests. ``gpu_milli`` is per GPU: < 1000 for a share of one GPU
    (``gpus == 1``), 1000 for ``gpus`` whole GPUs, 0 for CPU-only work (``gpus == 0``). ``models`` empty
    means any GPU model. ``weight`` is the popularity (a count or a probability)."""

    gpu_milli: int
    gpus: int
    cpu_milli: int = 0
    memory_mib: int = 0
    models: tuple[str, ...] = ()
    weight: float = 1.0

    @property
    def gpu_demand(self) -> int:
        return self.gpu_milli * self.gpus


class Workload:
    """Task types and what placement derives from them. Compared by identity; build one per workload."""

    def __init__(self, types: Sequence[TaskType]) -> None:
        self.types: tuple[TaskType, ...] = tuple(t for t in types if t.weight > 0)
        self.total_weight = float(sum(t.weight for t in self.types))
        gpu = sum(t.weight * t.gpu_demand for t in self.types)
        cpu = sum(t.weight * t.cpu_milli for t in self.types if t.gpus)
        mem = sum(t.weight * t.memory_mib for t in self.types if t.gpus)
        #: CPU milli and memory MiB the workload asks per GPU milli (GPU tasks only); 0 when unknown
        self.cpu_per_milli = cpu / gpu if gpu else 0.0
        self.mem_per_milli = mem / gpu if gpu else 0.0
        self._waste: npt.NDArray[np.float64] | None = None
        self._waste_list: list[float] = []
        #: per-fleet compiled tables (``fragmentation.FragTables``), keyed by the fleet's models and GPU width
        self.tables: dict[tuple[tuple[str, ...], int], object] = {}

    @property
    def waste(self) -> npt.NDArray[np.float64]:
        """``waste[x]``: GPU milli a GPU with ``x`` free milli is expected to end up wasting, computed once.

        FGD counts a GPU's free milli as fragmented when the next task, drawn from the workload, can not use
        it: ``F(x) = x * (1 - P(x))`` with ``P(x)`` the popularity of GPU task types whose per-GPU demand
        ``d <= x``. Here the GPU keeps receiving tasks while they fit, and the milli left when one does not
        is what is wasted ("multi-step FGD")::

            V(x) = (1 - P(x)) * x + sum_{d_m <= x} p_m * V(x - d_m),      V(0) = 0

        so a 190-milli hole that only a rare tiny task fills is worth nearly 190 of waste, while a 530-milli
        hole that common 470- and 320-milli tasks fill is worth far less. Without GPU types ``V(x) = x``.
        """
        if self._waste is None:
            self._waste = _expected_waste(self.types)
            self._waste_list = self._waste.tolist()
        return self._waste

    @property
    def waste_list(self) -> list[float]:
        """:attr:`waste` as a list (plain-Python scoring)."""
        self.waste  # noqa: B018 (computes both)
        return self._waste_list


def _expected_waste(types: Sequence[TaskType]) -> npt.NDArray[np.float64]:
    demand: dict[int, float] = {}
    for t in types:
        if t.gpus:
            demand[t.gpu_milli] = demand.get(t.gpu_milli, 0.0) + t.weight
    value = np.arange(MILLI_PER_GPU + 1, dtype=np.float64)
    total = sum(demand.values())
    if not total:
        return value
    ds = sorted(demand)
    ps = [demand[d] / total for d in ds]
    v = [0.0] * (MILLI_PER_GPU + 1)
    for x in range(1, MILLI_PER_GPU + 1):
        fit = 0.0
        acc = 0.0
        for d, p in zip(ds, ps, strict=True):
            if d > x:
                break
            fit += p
            acc += p * v[x - d]
        v[x] = (1.0 - fit) * x + acc
    value[:] = v
    return value


@lru_cache(maxsize=64)
def from_task_types(task_types: tuple[tuple[int, int, float], ...]) -> Workload:
    """The workload of the cycle's pending classes ``(gpu_milli, gpus, probability)`` (no CPU or models)."""
    return Workload([TaskType(m if g else 0, g, weight=p) for m, g, p in task_types])


@lru_cache(maxsize=256)
def own_shape(gpu_milli: int, gpus: int, cpu_milli: int, memory_mib: int) -> Workload:
    """Without a target workload a job packs for more jobs of its own shape (FGD's single-type case)."""
    milli = 0 if gpus == 0 else min(gpu_milli, MILLI_PER_GPU)
    return Workload([TaskType(milli, gpus, cpu_milli, memory_mib)])
