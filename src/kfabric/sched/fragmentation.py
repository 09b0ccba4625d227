"""Fragmentation of GPU capacity against a target workload (Weng et al., USENIX ATC'23, "FGD").

A node's free GPU milli is a *fragment* for a task type when that task cannot use it: all of it when the task
does not fit on the node at all, otherwise the free milli of the GPUs the task cannot use (a shared GPU with
too little left for a fractional task; any partly used GPU for a whole-GPU task). A node's expected
fragmentation weights each task type by its share of the workload. Fragmentation gradient descent places a
task where the cluster's expected fragmentation grows least.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from kfabric.model.job import MILLI_PER_GPU

Milli = npt.NDArray[np.int64]
TaskTypes = tuple[tuple[int, int, float], ...]


def node_fragmentation(milli: Milli, task_types: TaskTypes) -> npt.NDArray[np.float64]:
    """Expected fragmented milli per node. ``milli`` is nodes x GPUs of free milli (-1 marks no GPU)."""
    free = np.where(milli > 0, milli, 0)
    total = free.sum(axis=1).astype(np.float64)
    out = np.zeros(milli.shape[0], dtype=np.float64)
    for m, k, prob in task_types:
        if m < MILLI_PER_GPU:
            usable = free >= m
            fits = usable.any(axis=1)
            frag = np.where(usable, 0, free).sum(axis=1)
        else:
            whole = free == MILLI_PER_GPU
            fits = whole.sum(axis=1) >= k
            frag = np.where(whole, 0, free).sum(axis=1)
        out += prob * np.where(fits, frag, total)
    return out


def fgd_pick_gpu(milli: Milli, fits: npt.NDArray[np.bool_], m: int, k: int, task_types: TaskTypes) -> tuple[int, int]:
    """Choose the (node, first GPU) whose placement grows expected fragmentation least; ties to lowest index.

    ``fits`` marks (node, GPU) candidates. Whole-GPU tasks (``m == 1000``) take the node's first ``k`` free
    GPUs; a fractional task takes ``m`` milli of the chosen GPU.
    """
    types = task_types or ((m, k, 1.0),)
    rows = np.flatnonzero(fits.any(axis=1))
    sub = milli[rows]
    before = node_fragmentation(sub, types)
    best = np.full(sub.shape, np.inf)
    if m < MILLI_PER_GPU:
        for g in range(sub.shape[1]):
            ok = fits[rows, g]
            if not ok.any():
                continue
            after = sub.copy()
            after[:, g] -= m
            best[:, g] = np.where(ok, node_fragmentation(after, types) - before, np.inf)
    else:
        after = sub.copy()
        whole = np.cumsum(after == MILLI_PER_GPU, axis=1)
        take = (after == MILLI_PER_GPU) & (whole <= k)
        after[take] = 0
        best[:, 0] = node_fragmentation(after, types) - before
    flat = int(np.argmin(best))
    r, g = divmod(flat, sub.shape[1])
    return int(rows[r]), g
