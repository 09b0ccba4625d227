"""Ordering policies: one signature, ``(queue, context) -> keys``; lower keys go first, ties by arrival.

All work on the queue's column arrays (vectorized); per-job Python work is limited to what has no column
(history estimates, attained service), and those are looked up once per job row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kfabric.model.job import MILLI_PER_GPU, PriorityClass
from kfabric.sched.estimator import RuntimeEstimator
from kfabric.sched.queue import PendingQueue

Keys = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class OrderContext:
    now_s: float
    fairshare: Mapping[str, float]
    estimator: RuntimeEstimator
    attained_gpu_s: Mapping[str, float]
    weights_priority_class: float
    weights_fairshare: float
    weights_age: float
    weights_size: float
    max_age_s: float
    favor_small: bool
    total_milli: float
    las_thresholds_gpu_s: tuple[float, ...]
    starvation_age_s: float
    fairshare_strength: float = 1.0
    #: rank jobs by attained-service queue right after the priority class (with service preemption, so the
    #: order agrees with who may preempt whom)
    service_levels: bool = False


OrderingFn = Callable[[PendingQueue, OrderContext], Keys]


def fifo(q: PendingQueue, ctx: OrderContext) -> Keys:
    return q.arrays()["submit_s"].copy()


def sjf(q: PendingQueue, ctx: OrderContext) -> Keys:
    """Shortest job first on the job's declared estimate (the simulator's oracle sets it to the truth)."""
    return np.fromiter(
        (
            0.0 if j is None else (j.runtime_estimate_s if j.runtime_estimate_s is not None else j.time_limit_s)
            for j in q.rows()
        ),
        dtype=np.float64,
        count=len(q.rows()),
    )


def qssf(q: PendingQueue, ctx: OrderContext) -> Keys:
    """Shortest predicted service (GPU-seconds) first, predictions from history, never the true run time."""
    predicted = q.predicted_runtimes(ctx.estimator) * q.arrays()["milli"] / MILLI_PER_GPU
    return _with_starvation_guard(predicted, q, ctx)


def service_level(q: PendingQueue, ctx: OrderContext) -> Keys:
    """Each job's attained-service queue (0 = least served), by the LAS thresholds."""
    attained = ctx.attained_gpu_s
    rows = q.rows()
    if not attained:
        return np.zeros(len(rows), dtype=np.float64)
    service = np.fromiter((0.0 if j is None else attained.get(j.id, 0.0) for j in rows), np.float64, len(rows))
    return np.searchsorted(np.asarray(ctx.las_thresholds_gpu_s), service, side="right").astype(np.float64)


def las(q: PendingQueue, ctx: OrderContext) -> Keys:
    """Tiresias' discretized 2D-LAS: queues by attained GPU-seconds, FIFO inside a queue."""
    return service_level(q, ctx) * 1e12 + q.arrays()["submit_s"]


def multifactor(q: PendingQueue, ctx: OrderContext) -> Keys:
    """Slurm's multifactor priority: weighted class, fair share, age and size, each factor in [0, 1]."""
    a = q.arrays()
    fs = _fairshare(q, ctx)
    age = np.clip((ctx.now_s - a["submit_s"]) / ctx.max_age_s, 0.0, 1.0)
    size = a["milli"] / max(ctx.total_milli, MILLI_PER_GPU)
    size = np.clip(size, 0.0, 1.0)
    if ctx.favor_small:
        size = 1.0 - size
    cls = a["priority"] / float(max(PriorityClass))
    priority = (
        ctx.weights_priority_class * cls + ctx.weights_fairshare * fs + ctx.weights_age * age + ctx.weights_size * size
    )
    return -priority


def kfabric_order(q: PendingQueue, ctx: OrderContext) -> Keys:
    """Our default: priority class first, then shortest predicted service scaled by fair share, with an age
    guard against starvation. Uses only what a real scheduler sees (time limits, history, project)."""
    a = q.arrays()
    predicted = q.predicted_runtimes(ctx.estimator) * a["milli"] / MILLI_PER_GPU
    fs = _fairshare(q, ctx)
    # fs in (0, 1]: a project under its share (fs near 1) moves ahead, one over it falls back
    lam = ctx.fairshare_strength
    service = predicted / ((1.0 - lam) + lam * (0.5 + fs))
    cls = float(max(PriorityClass)) - a["priority"]
    if ctx.service_levels:
        keys = cls * 1e15 + service_level(q, ctx) * 1e13 + np.minimum(service, 9e12)
    else:
        keys = cls * 1e15 + np.minimum(service, 9e14)
    return _with_starvation_guard(keys, q, ctx)


def _fairshare(q: PendingQueue, ctx: OrderContext) -> Keys:
    """Each job row's fair-share factor (1.0 for a project the context does not know)."""
    by_project = np.asarray([ctx.fairshare.get(p, 1.0) for p in q.projects] or [1.0], dtype=np.float64)
    out: Keys = by_project[q.arrays()["project"].astype(np.int64)]
    return out


def _with_starvation_guard(keys: Keys, q: PendingQueue, ctx: OrderContext) -> Keys:
    if ctx.starvation_age_s <= 0:
        return keys
    submit = q.arrays()["submit_s"]
    starving = (ctx.now_s - submit) > ctx.starvation_age_s
    return np.where(starving, -1e17 + submit, keys)


def order(q: PendingQueue, keys: Keys) -> npt.NDArray[np.int64]:
    """Rows of live jobs, sorted by key then arrival row (deterministic)."""
    alive = q.arrays()["alive"] > 0
    rows = np.flatnonzero(alive)
    sorted_idx = np.lexsort((rows, keys[rows]))
    return rows[sorted_idx].astype(np.int64)
