"""Running work of one pool as columns, kept up to date by the snapshot as work starts and ends.

A cycle that searches for victims or builds a pool's availability profile reads the pool's columns with
numpy instead of walking thousands of running jobs (``sched.victims.VictimTable`` is its per-cycle view).
Rows are slots: a job that ends frees its slot and the next job to start takes the lowest-numbered free one,
so slot order is fixed by the order of starts and ends (deterministic). Each job's node shares are rows of a
second set of columns.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from kfabric.sched.snapshot import RunningJob


#: node shares from which a run's rows are written with one fancy-indexed write per column (below it, one
#: scalar write per row is cheaper: measured break-even ~40 rows)
FANCY_MIN = 40


class PoolRuns:
    """The columns of one pool: per run whether it may be preempted, its class, borrowing, reservation, start,
    expected end, last checkpoint, checkpoint interval, milli and the service it had before this run; per node
    share its run, node and milli."""

    def __init__(self) -> None:
        self.runs: list[RunningJob | None] = []
        self.slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self.alive = np.zeros(0, dtype=bool)
        self.preemptible = np.zeros(0, dtype=bool)
        self.end_s = np.zeros(0, dtype=np.float64)
        self.priority = np.zeros(0, dtype=np.int64)
        self.borrowed = np.zeros(0, dtype=bool)
        self.guaranteed = np.zeros(0, dtype=bool)
        self.start_s = np.zeros(0, dtype=np.float64)
        self.checkpoint_s = np.zeros(0, dtype=np.float64)
        self.interval_s = np.zeros(0, dtype=np.float64)
        self.milli = np.zeros(0, dtype=np.float64)
        self.attained = np.zeros(0, dtype=np.float64)
        self._shares_of: list[list[int]] = []
        self._free_shares: list[int] = []
        self.share_alive = np.zeros(0, dtype=bool)
        self.share_run = np.zeros(0, dtype=np.int64)
        self.share_node = np.zeros(0, dtype=np.int64)
        self.share_milli = np.zeros(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.slot_of)

    def add(self, run: RunningJob, attained_gpu_s: float) -> None:
        if run.job.id in self.slot_of:
            raise ValueError(f"job {run.job.id} is already indexed")
        if not self._free:
            self._grow()
        slot = heapq.heappop(self._free)
        self.slot_of[run.job.id] = slot
        self.runs[slot] = run
        self.alive[slot] = True
        self.preemptible[slot] = run.job.preemptible
        self.end_s[slot] = run.expected_end_s
        self.priority[slot] = int(run.job.priority)
        self.borrowed[slot] = run.borrowed
        self.guaranteed[slot] = run.guaranteed
        self.start_s[slot] = run.start_s
        self.checkpoint_s[slot] = run.last_checkpoint_s
        self.interval_s[slot] = run.job.checkpoint_interval_s or 0.0
        self.milli[slot] = run.milli
        self.attained[slot] = attained_gpu_s
        shares = run.placement.shares
        while len(self._free_shares) < len(shares):
            self._grow_shares()
        free = self._free_shares
        rows = self._shares_of[slot] = [heapq.heappop(free) for _ in shares]
        if len(rows) < FANCY_MIN:
            for row, sh in zip(rows, shares, strict=True):
                self.share_alive[row] = True
                self.share_run[row] = slot
                self.share_node[row] = sh.node
                self.share_milli[row] = len(sh.gpus) * sh.gpu_milli
        else:  # a large gang: one write per column
            self.share_alive[rows] = True
            self.share_run[rows] = slot
            self.share_node[rows] = [sh.node for sh in shares]
            self.share_milli[rows] = [len(sh.gpus) * sh.gpu_milli for sh in shares]

    def remove(self, job_id: str) -> None:
        slot = self.slot_of.pop(job_id)
        self.runs[slot] = None
        self.alive[slot] = False
        rows = self._shares_of[slot]
        if len(rows) < FANCY_MIN:
            for row in rows:
                self.share_alive[row] = False
        else:
            self.share_alive[rows] = False
        for row in rows:
            heapq.heappush(self._free_shares, row)
        self._shares_of[slot] = []
        heapq.heappush(self._free, slot)

    def checkpointed(self, job_id: str, at_s: float) -> None:
        self.checkpoint_s[self.slot_of[job_id]] = at_s

    def _grow(self) -> None:
        old = len(self.runs)
        new = max(64, 2 * old)
        for name in ("alive", "preemptible", "priority", "borrowed", "guaranteed", "start_s", "end_s", "checkpoint_s"):
            setattr(self, name, _grown(getattr(self, name), new))
        self.interval_s = _grown(self.interval_s, new)
        self.milli = _grown(self.milli, new)
        self.attained = _grown(self.attained, new)
        self.runs.extend([None] * (new - old))
        self._shares_of.extend([] for _ in range(new - old))
        for slot in range(old, new):
            heapq.heappush(self._free, slot)

    def _grow_shares(self) -> None:
        old = self.share_run.size
        new = max(64, 2 * old)
        self.share_alive = _grown(self.share_alive, new)
        self.share_run = _grown(self.share_run, new)
        self.share_node = _grown(self.share_node, new)
        self.share_milli = _grown(self.share_milli, new)
        for row in range(old, new):
            heapq.heappush(self._free_shares, row)


def _grown(a: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    out = np.zeros(size, dtype=a.dtype)
    out[: a.size] = a
    return out
