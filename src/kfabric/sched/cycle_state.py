"""The workspace of one scheduling cycle: everything the cycle changes as it goes (the results so far, the
availability profiles, the pools' running work as columns, the quota ledger, the backfill state), with the
steps that change several of them at once (admitting a job, recording a preemption, making a reservation).
``sched.cycle`` walks the queue over it; the placer, the preemptor and the quota ledger are its parts. Changes
that may be undone go through a trial (:meth:`Workspace.trial`)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from kfabric.model.decision import Admission, Preemption, Reservation
from kfabric.model.job import Job
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.sched.eligibility import placement_rule
from kfabric.sched.memo import CycleMemo
from kfabric.sched.placer import Fit
from kfabric.sched.policy import Policy
from kfabric.sched.profile import Profile
from kfabric.sched.queue import PendingQueue
from kfabric.sched.quota import PoolChoice, QuotaLedger
from kfabric.sched.rules import GrantRules
from kfabric.sched.run_index import PoolRuns
from kfabric.sched.snapshot import RunningJob, Snapshot
from kfabric.sched.trial import Trial
from kfabric.sched.victims import VictimTable


class Workspace:
    """Per-cycle state (see the module doc). The snapshot is only read; its capacity changes only inside the
    cycle's trials."""

    def __init__(self, snap: Snapshot, q: PendingQueue, policy: Policy, now_s: float, memo: CycleMemo) -> None:
        self.snap, self.q, self.policy, self.now, self.memo = snap, q, policy, now_s, memo
        self.cap = snap.capacity
        #: what the policy's names register (``sched.registry``), looked up once per cycle
        self.modes = policy.modes()
        self.admissions: list[Admission] = []
        self.preemptions: list[Preemption] = []
        self.reservations: list[Reservation] = []
        self.quota = QuotaLedger(snap, policy, now_s)
        self.rules = GrantRules(snap, now_s)
        self.profiles: dict[int, Profile] = {}
        #: per pool without a profile yet: (end, milli) of work admitted in this cycle, for the profile made later
        self.cycle_releases: dict[int, list[tuple[float, float]]] = defaultdict(list)
        #: pools a job ahead could not start on, when backfill is off (later jobs keep off them)
        self.blocked_pools: set[int] = set()
        self.reservations_left = self.modes.backfill.reservation_limit(policy.reservations, policy.bf_max_job_test)
        self.any_reservation = False
        self._victim_tables: dict[int, VictimTable] = {}
        #: pools where this cycle chose victims (capacity there is freed before the cycle ends)
        self.victims_chosen: set[int] = set()
        self.online = tuple(bool(m > 0) for m in self.cap.pool_up_milli.tolist())
        self._rules: dict[tuple[int, object], str] = {}

    def trial(self) -> Trial:
        """A trial over this cycle's capacity and availability profiles (``sched.trial``)."""
        return Trial(self.cap, self.profiles, self.now)

    # ---- changes that touch several parts ------------------------------------------------------------------
    def admit(self, job: Job, fit: Fit, start_s: float) -> None:
        """Start the job where it fits (at ``start_s``: now, or after a preemption's grace period)."""
        placement, choice = fit
        cap = self.cap
        for s in placement.shares:
            cap.take(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
        p = cap.pools[choice.pool]
        if job.project in self.rules.credit_projects:
            self.rules.charge(job, p.model, p.su_weight, choice.guaranteed)  # no later job shares this credit
        self.quota.count(job, choice)
        profile = self.profiles.get(choice.pool)
        if profile is not None:
            profile.take(start_s, job.time_limit_s, job.gpu_milli_total)
        else:
            self.cycle_releases[choice.pool].append((start_s + job.time_limit_s, float(job.gpu_milli_total)))
        self.admissions.append(
            Admission(
                job_id=job.id,
                placement=placement,
                start_at_s=start_s,
                borrowed=choice.borrowed,
                rule=self.rule(choice.pool, job),
                backfilled=self.any_reservation,
                guaranteed=choice.guaranteed,
            )
        )

    def preempt(self, victim: RunningJob, by: Job, reason: str) -> None:
        """Record a victim chosen for ``by`` (its GPUs are already free in the capacity)."""
        pool = self.cap.pool_by_name[victim.placement.pool].index
        self.victims_chosen.add(pool)
        self.victim_table(pool).take(victim.job.id)
        self.quota.uncount(victim)
        self.preemptions.append(
            Preemption(job_id=victim.job.id, by_job=by.id, reason=reason, grace_s=self.policy.grace_s)
        )

    def reserve(self, job: Job, choices: list[PoolChoice]) -> PendingReason | None:
        """Reserve the earliest capacity any of the choices' availability profiles holds for the job (after
        now); the reason it waits, or None when no profile holds it."""
        milli = job.gpu_milli_total
        best: tuple[float, int] | None = None
        for c in choices:
            t = self.profile(c.pool).earliest(self.now, job.time_limit_s, milli, strictly_after=True)
            if t is not None and (best is None or t < best[0]):
                best = (t, c.pool)
        if best is None:
            return None
        start, pool = best
        profile = self.profiles[pool]
        profile.take(start, job.time_limit_s, milli)
        profile.reserved = True
        self.any_reservation = True
        self.reservations_left -= 1
        name = self.cap.pools[pool].name
        self.reservations.append(Reservation(job.id, name, start))
        return PendingReason(
            ReasonCode.RESERVATION,
            f"capacity is reserved for it on pool {name}; expected to start by t={start:.0f}s at the latest "
            "(running jobs' time limits bound it)",
            expected_start_s=start,
        )

    # ---- per-pool state, made on first use -----------------------------------------------------------------
    def profile(self, pool: int) -> Profile:
        """The pool's availability profile (made on first use from its running work and this cycle's)."""
        profile = self.profiles.get(pool)
        if profile is None:
            t = self.victim_table(pool)
            live = t.alive & ~t.taken  # victims chosen in this cycle release now, not at their end
            ends, milli = t.end_s[live], t.milli[live]
            extra = self.cycle_releases.pop(pool, [])
            if extra:
                ends = np.concatenate((ends, [e for e, _ in extra]))
                milli = np.concatenate((milli, [m for _, m in extra]))
            profile = self.profiles[pool] = Profile(self.now, float(self.cap.pool_milli[pool]), ends, milli)
        return profile

    def victim_table(self, pool: int) -> VictimTable:
        """The pool's running work as of this cycle (columns; made once per pool per cycle)."""
        table = self._victim_tables.get(pool)
        if table is None:
            index = self.snap.run_index.get(pool)
            table = self._victim_tables[pool] = VictimTable.of(index if index is not None else PoolRuns(), self.now)
        return table

    def rule(self, pool: int, job: Job) -> str:
        """The sovereignty rule that lets the job on the pool's site (cached per pool and classification)."""
        key = (pool, job.classification)
        rule = self._rules.get(key)
        if rule is None:
            rule = self._rules[key] = placement_rule(self.cap, pool, job)
        return rule
