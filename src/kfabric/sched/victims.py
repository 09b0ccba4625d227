"""Choosing preemption victims: cheapest first (borrowed work, then the least work lost since the last
checkpoint), never a job younger than the minimum run time, so there are no preemption loops.

Who may be displaced: work of a lower priority class, borrowed work (quota reclaim), and, under Tiresias-style
service preemption, work of the same or a lower class whose attained-service queue is higher than the
pending job's (it has had more service than the thresholds allow before yielding) — never work running on its
own reservation, which is guaranteed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kfabric.model.job import MILLI_PER_GPU
from kfabric.sched.run_index import PoolRuns
from kfabric.sched.snapshot import RunningJob

#: what a job may displace (:meth:`VictimTable.allowed`): (below_priority, borrowed_too, now_s, min_run_s,
#: service_above)
VictimRules = tuple[int | None, bool, float, float, tuple[int, int, tuple[float, ...]] | None]

#: victims considered per preemption attempt (cheapest first) by jobs that fit on one node
VICTIM_CANDIDATES = 256
#: cost added to work that is not borrowed, so borrowed work is always displaced first
NOT_BORROWED_COST = 1e15


@dataclass(frozen=True, slots=True)
class VictimTable:
    """Running work of one pool as of one cycle: the pool's :class:`PoolRuns` columns (slots; ``alive`` marks
    the ones in use, ``preemptible`` those that may ever be victims) plus the time-dependent ones, computed
    with numpy once per pool per cycle."""

    runs: list[RunningJob | None]
    alive: npt.NDArray[np.bool_]
    preemptible: npt.NDArray[np.bool_]
    end_s: npt.NDArray[np.float64]
    milli: npt.NDArray[np.float64]
    priority: npt.NDArray[np.int64]
    borrowed: npt.NDArray[np.bool_]
    guaranteed: npt.NDArray[np.bool_]
    start_s: npt.NDArray[np.float64]
    lost: npt.NDArray[np.float64]
    #: attained service (GPU-seconds, earlier runs included) as of now
    service: npt.NDArray[np.float64]
    #: slot per job id, and which runs this cycle already chose as victims
    index: Mapping[str, int]
    taken: npt.NDArray[np.bool_]
    #: node shares of the runs: in use, run slot, node, GPU milli held
    share_alive: npt.NDArray[np.bool_]
    share_run: npt.NDArray[np.int64]
    share_node: npt.NDArray[np.int64]
    share_milli: npt.NDArray[np.float64]
    #: per-cycle results that do not depend on the job asking (computed on first use)
    memo: dict[object, npt.NDArray[Any]]

    @classmethod
    def of(cls, pool: PoolRuns, now_s: float) -> VictimTable:
        """The pool's columns as of ``now_s``: lost work exactly as ``RunningJob.lost_work_gpu_s`` computes it
        for one job, and attained service including the current run."""
        start, last, interval = pool.start_s, pool.checkpoint_s, pool.interval_s
        gpus = pool.milli / MILLI_PER_GPU
        ran = np.maximum(0.0, now_s - start)
        has = interval > 0
        periodic = np.where(has, start + (ran // np.where(has, interval, 1.0)) * interval, start)
        since = np.maximum(last, periodic)
        return cls(
            runs=pool.runs,
            alive=pool.alive,
            preemptible=pool.preemptible,
            end_s=pool.end_s,
            milli=pool.milli,
            priority=pool.priority,
            borrowed=pool.borrowed,
            guaranteed=pool.guaranteed,
            start_s=start,
            lost=np.maximum(0.0, now_s - since) * gpus,
            service=pool.attained + ran * gpus,
            index=pool.slot_of,
            taken=np.zeros(len(pool.runs), dtype=bool),
            share_alive=pool.share_alive,
            share_run=pool.share_run,
            share_node=pool.share_node,
            share_milli=pool.share_milli,
            memo={},
        )

    def take(self, job_id: str) -> None:
        """The run was chosen as a victim in this cycle: never offered again."""
        i = self.index.get(job_id)
        if i is not None:
            self.taken[i] = True

    def cost(self) -> npt.NDArray[np.float64]:
        """What displacing each run costs: the work it loses, borrowed work always cheaper."""
        got = self.memo.get("cost")
        if got is None:
            got = self.memo["cost"] = np.where(self.borrowed, 0.0, NOT_BORROWED_COST) + self.lost
        return got

    def allowed(self, rules: VictimRules) -> npt.NDArray[np.bool_]:
        """Which runs may be displaced under ``rules = (below_priority, borrowed_too, now_s, min_run_s,
        service_above)``: lower priority class than ``below_priority`` (when set), or borrowed (when
        ``borrowed_too``), or (``service_above = (priority, level, thresholds)``) of at most that priority class
        in a higher attained-service queue than ``level`` and not on its own reservation; all running for at
        least ``min_run_s`` and not already chosen in this cycle."""
        below_priority, borrowed_too, now_s, min_run_s, service_above = rules
        by_rule, service_at = self._rule_masks(below_priority, borrowed_too, service_above)
        allowed = by_rule.copy()
        if service_at is not None:
            allowed |= service_at[0] & (self._levels(service_at[2]) > service_at[1])
        allowed &= (now_s - self.start_s) >= min_run_s
        allowed &= self.alive & self.preemptible & ~self.taken
        return allowed

    def allowed_from(self, rules: VictimRules) -> npt.NDArray[np.float64]:
        """When each run may be displaced under the ``rules`` of :meth:`allowed` if it keeps running: ``-inf``
        when it may be now, ``inf`` when it never may be (chosen in this cycle counts as may be); else the
        time it reaches the minimum run time or, under ``service_above``, the higher attained-service queue
        (its service grows by its GPUs per second)."""
        _, _, now_s, min_run_s, service_above = rules
        by_rule, service_at = self._rule_masks(rules[0], rules[1], service_above)
        when = np.where(by_rule, -np.inf, np.inf)
        if service_at is not None:
            mask, level, thresholds = service_at
            if level < len(thresholds):
                gpus = self.milli / MILLI_PER_GPU
                reached = self._levels(thresholds) > level
                with np.errstate(divide="ignore", invalid="ignore"):
                    later = np.where(gpus > 0, now_s + (thresholds[level] - self.service) / gpus, np.inf)
                when = np.minimum(when, np.where(mask, np.where(reached, -np.inf, later), np.inf))
        young = (now_s - self.start_s) < min_run_s
        when = np.where(young, np.maximum(when, self.start_s + min_run_s), when)
        return np.where(self.alive & self.preemptible, when, np.inf)

    def _rule_masks(
        self,
        below_priority: int | None,
        borrowed_too: bool,
        service_above: tuple[int, int, tuple[float, ...]] | None,
    ) -> tuple[npt.NDArray[np.bool_], tuple[npt.NDArray[np.bool_], int, tuple[float, ...]] | None]:
        """Runs the rules allow regardless of age and service, and (mask, level, thresholds) of those the
        service rule allows once their attained service passes the job's queue."""
        by_rule = np.zeros(self.alive.size, dtype=bool)
        if below_priority is not None:
            by_rule |= self.priority < below_priority
        if borrowed_too:
            by_rule |= self.borrowed
        if service_above is None:
            return by_rule, None
        priority, level, thresholds = service_above
        return by_rule, ((self.priority <= priority) & ~self.guaranteed, level, thresholds)

    def _levels(self, thresholds: tuple[float, ...]) -> npt.NDArray[np.int64]:
        """Each run's attained-service queue under ``thresholds`` (once per cycle)."""
        levels = self.memo.get(thresholds)
        if levels is None:
            levels = self.memo[thresholds] = np.searchsorted(np.asarray(thresholds), self.service, side="right")
        return levels

    def candidates(self, allowed: npt.NDArray[np.bool_]) -> list[tuple[bool, float, str, RunningJob]]:
        """Sort keys and runs of the ``allowed`` victims (a mask from :meth:`allowed`), at most
        ``VICTIM_CANDIDATES`` of the cheapest."""
        idx = np.flatnonzero(allowed)
        if idx.size > VICTIM_CANDIDATES:
            idx = idx[np.argsort(self.cost()[idx], kind="stable")[:VICTIM_CANDIDATES]]
        runs = [self.runs[i] for i in idx.tolist()]
        return [
            (not r.borrowed, float(self.lost[i]), r.job.id, r)
            for i, r in zip(idx.tolist(), runs, strict=True)
            if r is not None
        ]
