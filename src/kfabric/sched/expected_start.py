"""Expected start times for pending jobs, like ``squeue --start``: a plan over the availability profiles the
backfill uses (``sched.profile``), made after a cycle's decision and never feeding back into it.

Per pool, the profile starts from the capacity free before the decision and the ends of running work (time
limits bound them); the decision's preemptions release their victims' GPUs after the grace period, its
admissions take theirs from their start, its reservations hold theirs. Then the pending jobs are walked in the
cycle's priority order: a job with a reservation starts at it; any other gets the earliest time one of its
eligible pools holds it for its whole time limit, and holds that in the plan (conservative backfill), so a job
never starts before one ahead of it could. With no new work arriving and jobs running to their limits, this is
when each job starts.

No start can be bounded, and the estimate says why, for jobs held back by something the plan does not model
(quota, credit, grants, power, jobs no eligible pool can ever hold) and for jobs past ``horizon`` positions in the
queue: each planned job costs a profile search, so the plan is bounded (default 500 jobs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from kfabric.model.decision import Decision
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.sched.capacity import Capacity
from kfabric.sched.eligibility import eligible_pools
from kfabric.sched.profile import Profile
from kfabric.sched.queue import PendingQueue
from kfabric.sched.snapshot import Snapshot

#: pending jobs planned per cycle, in priority order (the rest are "beyond the planning horizon")
DEFAULT_HORIZON = 500

#: reasons the plan can reason about: the job waits only for capacity (or was not looked at this cycle)
_CAPACITY_BOUND = frozenset({ReasonCode.PRIORITY, ReasonCode.RESOURCES, ReasonCode.RESERVATION, ReasonCode.CYCLE_LIMIT})


@dataclass(frozen=True, slots=True)
class Estimate:
    """When a pending job is expected to start (epoch seconds), or why no start can be bounded."""

    start_s: float | None
    why: str = ""


def expected_starts(
    snapshot: Snapshot,
    pending: PendingQueue,
    decision: Decision,
    now_s: float,
    horizon: int = DEFAULT_HORIZON,
    order: Iterable[str] | None = None,
) -> dict[str, Estimate]:
    """An estimate for every job of ``decision.pending`` (in ``order``, default the decision's, which is the
    cycle's priority order). Pure: reads the snapshot (its capacity as the cycle left it, before the decision is
    applied) and changes nothing."""
    plan = _Plan(snapshot, pending, decision, now_s)
    reasons: Mapping[str, PendingReason] = decision.pending
    reserved = {r.job_id: r.start_s for r in decision.reservations}
    out: dict[str, Estimate] = {}
    planned = 0
    beyond = Estimate(
        None,
        f"beyond the planning horizon: only the first {horizon} pending jobs in priority order are planned each cycle",
    )
    for job_id in order if order is not None else reasons:
        reason = reasons.get(job_id)
        if reason is None or job_id not in pending:
            continue
        start = reserved.get(job_id, reason.expected_start_s)
        if start is not None:
            out[job_id] = Estimate(start)
            continue
        if reason.code not in _CAPACITY_BOUND:
            out[job_id] = Estimate(None, f"waits for {reason.code.value}, not only for capacity: {reason.message}")
            continue
        if planned >= horizon:
            out[job_id] = beyond
            continue
        planned += 1
        out[job_id] = plan.place(pending, job_id)
    return out


class _Plan:
    """The profiles being planned on, one per pool, made on first use."""

    def __init__(self, snapshot: Snapshot, pending: PendingQueue, decision: Decision, now_s: float) -> None:
        self.snap, self.now = snapshot, now_s
        self.cap: Capacity = snapshot.capacity
        self.profiles: dict[int, Profile] = {}
        #: per pool, how many jobs the plan placed there; earliest-start answers by (pool, duration, milli)
        self.version: dict[int, int] = {}
        self.memo: dict[tuple[int, float, float], tuple[int, float | None]] = {}
        self.eligible: dict[object, tuple[int, ...] | str] = {}
        # what the decision does to each pool, folded in when the pool's profile is made: releases (time, milli;
        # negative milli for a release that no longer happens), GPUs taken from now, and later uses
        self.releases: dict[int, list[tuple[float, float]]] = {}
        self.taken_now: dict[int, float] = {}
        self.later: dict[int, list[tuple[float, float, float]]] = {}
        for pre in decision.preemptions:
            run = snapshot.running.get(pre.job_id)
            at = now_s + pre.grace_s
            if run is not None and run.expected_end_s > at:  # the victim's GPUs come back at the end of its grace
                self._release(run.placement.pool, at, float(run.milli))
                self._release(run.placement.pool, run.expected_end_s, -float(run.milli))
        for adm in decision.admissions:
            if adm.job_id in pending:
                self._use(adm.placement.pool, adm.start_at_s, pending.get(adm.job_id).time_limit_s,
                          float(adm.placement.gpu_milli_total))  # fmt: skip
        for res in decision.reservations:
            if res.job_id in pending:
                job = pending.get(res.job_id)
                self._use(res.pool, res.start_s, job.time_limit_s, float(job.gpu_milli_total))

    def _index(self, pool: str) -> int | None:
        info = self.cap.pool_by_name.get(pool)
        return info.index if info is not None else None

    def _release(self, pool: str, at_s: float, milli: float) -> None:
        pi = self._index(pool)
        if pi is not None:
            self.releases.setdefault(pi, []).append((at_s, milli))

    def _use(self, pool: str, start_s: float, duration_s: float, milli: float) -> None:
        pi = self._index(pool)
        if pi is None or duration_s <= 0:
            return
        if start_s <= self.now:
            self.taken_now[pi] = self.taken_now.get(pi, 0.0) + milli
            self.releases.setdefault(pi, []).append((self.now + duration_s, milli))
        else:
            self.later.setdefault(pi, []).append((start_s, duration_s, milli))

    def profile(self, pool: int) -> Profile:
        profile = self.profiles.get(pool)
        if profile is None:
            runs = self.snap.run_index.get(pool)
            if runs is not None and len(runs):
                live = runs.alive
                ends, milli = runs.end_s[live], runs.milli[live]
            else:
                ends = milli = np.zeros(0)
            extra = self.releases.pop(pool, [])
            if extra:
                ends = np.concatenate((ends, [e for e, _ in extra]))
                milli = np.concatenate((milli, [m for _, m in extra]))
            free = float(self.cap.pool_milli[pool]) - self.taken_now.pop(pool, 0.0)
            profile = self.profiles[pool] = Profile(self.now, free, ends, milli)
            for start, duration, need in self.later.pop(pool, ()):
                profile.take(start, duration, need)
        return profile

    def place(self, pending: PendingQueue, job_id: str) -> Estimate:
        job = pending.get(job_id)
        tenant = self.snap.tenants.get(job.project)
        affiliation = tenant.affiliation if tenant is not None else ""
        key = (job.gpus, job.gpu_milli, job.nodes, job.gpus_per_node, job.gpu_models, int(job.min_topology),
               int(job.classification), affiliation)  # fmt: skip
        pools = self.eligible.get(key)
        if pools is None:
            elig = eligible_pools(self.cap, job, affiliation)
            pools = self.eligible[key] = elig.pools if elig.reason is None else elig.reason.message
        if isinstance(pools, str):
            return Estimate(None, pools)
        milli = float(job.gpu_milli_total)
        best: tuple[float, int] | None = None
        for pool in pools:
            t = self._earliest(pool, job.time_limit_s, milli)
            if t is not None and (best is None or t < best[0]):
                best = (t, pool)
        if best is None:
            return Estimate(
                None,
                f"needs {milli / 1000:g} GPUs for {job.time_limit_s:g} s at once, more than any of its pools "
                "holds free at any time",
            )
        self.profiles[best[1]].take(best[0], job.time_limit_s, milli)
        self.version[best[1]] = self.version.get(best[1], 0) + 1
        return Estimate(best[0])

    def _earliest(self, pool: int, duration_s: float, milli: float) -> float | None:
        """The profile's earliest start for this need, remembered until the pool's plan changes: a job changes
        one pool's plan, and jobs of one shape and time limit ask every eligible pool the same question."""
        key = (pool, duration_s, milli)
        version = self.version.get(pool, 0)
        hit = self.memo.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        t = self.profile(pool).earliest(self.now, duration_s, milli, strictly_after=False)
        self.memo[key] = (version, t)
        return t
