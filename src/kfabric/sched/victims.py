"""Choosing preemption victims: cheapest first (borrowed work, then the least work lost since the last
checkpoint), never a job younger than the minimum run time, so there are no preemption loops.

Who may be displaced: work of a lower priority class, borrowed work (quota reclaim), and, under Tiresias-style
service preemption, work of the same or a lower class whose attained-service queue is higher than the
pending job's (it has had more service than the thresholds allow before yielding) — never work running on its
own reservation, which is guaranteed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from kfabric.model.job import MILLI_PER_GPU
from kfabric.sched.snapshot import RunningJob

#: victims considered per preemption attempt (cheapest first) by jobs that fit on one node
VICTIM_CANDIDATES = 256
#: cost added to work that is not borrowed, so borrowed work is always displaced first
NOT_BORROWED_COST = 1e15


@dataclass(frozen=True, slots=True)
class VictimTable:
    """Preemptible running work of one pool, as columns (built at most once per pool per cycle)."""

    runs: list[RunningJob]
    priority: npt.NDArray[np.int64]
    borrowed: npt.NDArray[np.bool_]
    guaranteed: npt.NDArray[np.bool_]
    start_s: npt.NDArray[np.float64]
    lost: npt.NDArray[np.float64]
    #: attained service (GPU-seconds, earlier runs included) as of now
    service: npt.NDArray[np.float64]
    #: run index per job id, and which runs this cycle already chose as victims
    index: dict[str, int] = field(default_factory=dict)
    taken: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: node shares of the runs, flattened: run index, node, GPU milli held
    share_run: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    share_node: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    share_milli: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

    @classmethod
    def build(cls, running: list[RunningJob], now_s: float, attained: Mapping[str, float]) -> VictimTable:
        runs = [r for r in running if r.job.preemptible]
        n = len(runs)
        # one pass over the objects for raw columns; lost work and service computed on the columns, exactly
        # as RunningJob.lost_work_gpu_s does one job
        raw = np.array(
            [
                (
                    int(r.job.priority),
                    r.borrowed,
                    r.guaranteed,
                    r.start_s,
                    r.last_checkpoint_s,
                    r.job.checkpoint_interval_s or 0.0,
                    r.milli,
                    attained.get(r.job.id, 0.0),
                )
                for r in runs
            ],
            dtype=np.float64,
        ).reshape(n, 8)
        start, last, interval = raw[:, 3], raw[:, 4], raw[:, 5]
        gpus = raw[:, 6] / MILLI_PER_GPU
        ran = np.maximum(0.0, now_s - start)
        has = interval > 0
        periodic = np.where(has, start + (ran // np.where(has, interval, 1.0)) * interval, start)
        since = np.maximum(last, periodic)
        share_run: list[int] = []
        share_node: list[int] = []
        share_milli: list[int] = []
        for i, r in enumerate(runs):
            for sh in r.placement.shares:
                share_run.append(i)
                share_node.append(sh.node)
                share_milli.append(len(sh.gpus) * sh.gpu_milli)
        return cls(
            runs=runs,
            priority=raw[:, 0].astype(np.int64),
            borrowed=raw[:, 1] > 0,
            guaranteed=raw[:, 2] > 0,
            start_s=start.copy(),
            lost=np.maximum(0.0, now_s - since) * gpus,
            service=raw[:, 7] + ran * gpus,
            index={r.job.id: i for i, r in enumerate(runs)},
            taken=np.zeros(n, dtype=bool),
            share_run=np.asarray(share_run, dtype=np.int64),
            share_node=np.asarray(share_node, dtype=np.int64),
            share_milli=np.asarray(share_milli, dtype=np.float64),
        )

    def take(self, job_id: str) -> None:
        """The run was chosen as a victim in this cycle: never offered again."""
        i = self.index.get(job_id)
        if i is not None:
            self.taken[i] = True

    def cost(self) -> npt.NDArray[np.float64]:
        """What displacing each run costs: the work it loses, borrowed work always cheaper."""
        return np.where(self.borrowed, 0.0, NOT_BORROWED_COST) + self.lost

    def allowed(
        self,
        below_priority: int | None,
        borrowed_too: bool,
        now_s: float,
        min_run_s: float,
        service_above: tuple[int, int, tuple[float, ...]] | None = None,
    ) -> npt.NDArray[np.bool_]:
        """Which runs may be displaced: lower priority class than ``below_priority`` (when set), or borrowed
        (when ``borrowed_too``), or (``service_above = (priority, level, thresholds)``) of at most that
        priority class in a higher attained-service queue than ``level`` and not on its own reservation; all
        running for at least ``min_run_s`` and not already chosen in this cycle."""
        allowed = np.zeros(len(self.runs), dtype=bool)
        if below_priority is not None:
            allowed |= self.priority < below_priority
        if service_above is not None:
            priority, level, thresholds = service_above
            levels = np.searchsorted(np.asarray(thresholds), self.service, side="right")
            allowed |= (self.priority <= priority) & (levels > level) & ~self.guaranteed
        if borrowed_too:
            allowed |= self.borrowed
        allowed &= (now_s - self.start_s) >= min_run_s
        allowed &= ~self.taken
        return allowed

    def candidates(
        self,
        below_priority: int | None,
        borrowed_too: bool,
        now_s: float,
        min_run_s: float,
        service_above: tuple[int, int, tuple[float, ...]] | None = None,
    ) -> list[tuple[bool, float, str, RunningJob]]:
        """Sort keys and runs of the allowed victims (see :meth:`allowed`), at most ``VICTIM_CANDIDATES`` of
        the cheapest."""
        idx = np.flatnonzero(self.allowed(below_priority, borrowed_too, now_s, min_run_s, service_above))
        if idx.size > VICTIM_CANDIDATES:
            idx = idx[np.argsort(self.cost()[idx], kind="stable")[:VICTIM_CANDIDATES]]
        return [
            (not self.runs[i].borrowed, float(self.lost[i]), self.runs[i].job.id, self.runs[i]) for i in idx.tolist()
        ]
