"""The state one scheduling cycle works on, and the steps every part of it shares: placing a job on the
pools it may use, admitting it, and the quota, profile and rule bookkeeping around that. ``sched.cycle`` walks
the queue; ``sched.preemption`` adds victim search; both build on :class:`CycleState`."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from kfabric.model.decision import Admission, Placement, Preemption, Reservation
from kfabric.model.fleet import Sharing
from kfabric.model.job import MILLI_PER_GPU, Job
from kfabric.sched.eligibility import placement_rule
from kfabric.sched.placement import PlaceRequest
from kfabric.sched.policy import Policy
from kfabric.sched.profile import Profile
from kfabric.sched.queue import PendingQueue
from kfabric.sched.registry import PLACEMENTS
from kfabric.sched.request import node_counts
from kfabric.sched.rules import GrantRules
from kfabric.sched.run_index import PoolRuns
from kfabric.sched.snapshot import RunningJob, Snapshot
from kfabric.sched.victims import VictimTable

#: default host resources a GPU brings along when a job does not ask for CPU/memory explicitly
CPU_MILLI_PER_GPU = 4_000
MEMORY_MIB_PER_GPU = 32_768


@dataclass(frozen=True, slots=True)
class PoolChoice:
    pool: int
    borrowed: bool
    guaranteed: bool


class CycleState:
    def __init__(self, snap: Snapshot, q: PendingQueue, policy: Policy, now_s: float) -> None:
        self.snap, self.q, self.policy, self.now = snap, q, policy, now_s
        self.cap = snap.capacity
        self.place = PLACEMENTS[policy.placement]
        self.admissions: list[Admission] = []
        self.preemptions: list[Preemption] = []
        self.reservations: list[Reservation] = []
        self.own = defaultdict(float, snap.own_gpus)
        self.shared_used = defaultdict(float, snap.shared_used)
        self.borrowed = defaultdict(float, snap.borrowed_gpus)
        self.profiles: dict[int, Profile] = {}
        self.cycle_releases: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.blocked_pools: set[int] = set()
        self.reservations_left = (
            0
            if policy.backfill == "none"
            else policy.reservations
            if policy.backfill == "easy"
            else policy.bf_max_job_test
        )
        self.any_reservation = False
        self._victim_tables: dict[int, VictimTable] = {}
        #: pools where this cycle chose victims (capacity there is freed before the cycle ends)
        self.victims_chosen: set[int] = set()
        self.preemption_tries = policy.max_preemption_attempts
        self.task_types: tuple[tuple[int, int, float], ...] = ()
        self.unreserved = self._unreserved()
        self.site_cap_kw = [site.cap_kw + 1e-9 for site in self.cap.sites]
        self._host_cache: dict[tuple[int, ...], tuple[int, int]] = {}
        #: per pool: its choice as own, borrowed and guaranteed capacity (immutable, made once per cycle)
        self._choice_objs = [
            (PoolChoice(pi, False, False), PoolChoice(pi, True, False), PoolChoice(pi, False, True))
            for pi in range(len(self.cap.pools))
        ]
        self._rules: dict[tuple[int, object], str] = {}
        #: per pool, what choosing it looks at: site, kW per GPU, shared?, GPU model, owner
        self._pool_meta = [
            (p.site, p.kw_per_gpu, p.sharing is Sharing.SHARED, p.model, p.owner) for p in self.cap.pools
        ]
        #: CPU milli and memory MiB per GPU of each pool's nodes
        self.host_per_gpu = [
            (
                int(self.cap.cpu_total[p.first_node]) // max(p.gpus_per_node, 1),
                int(self.cap.mem_total[p.first_node]) // max(p.gpus_per_node, 1),
            )
            for p in self.cap.pools
        ]
        self.borrow_limit = policy.borrow_limit_pct / 100.0 * float(self.cap.pool_up_milli.sum()) / MILLI_PER_GPU
        self._reserved: dict[str, dict[str, int]] = {}
        self.rules = GrantRules(snap, now_s)
        self._online = tuple(bool(m > 0) for m in self.cap.pool_up_milli.tolist())
        # the job being scheduled was held back by something of its own (its time limit against a reservation's
        # profile, its project's borrowing), not by its class: a class-mate may still fit
        self._job_bound = self._profile_bound = self._other_bound = False

    # ---- placing and admitting one job -------------------------------------------------------------------------
    def _try_place(
        self, job: Job, choices: list[PoolChoice], prefilter: bool = False
    ) -> tuple[Placement, PoolChoice] | None:
        """Place on non-borrowed pools first. A pool holding reservations takes the job only if its
        availability profile holds it over the whole time limit (backfill never delays a reservation).
        ``prefilter``: first drop pools that cannot hold the job's shape (:meth:`_may_fit`), for callers that
        retry the same job many times (preemption trials)."""
        usable = choices
        if self.profiles:
            usable = []
            for c in choices:
                profile = self.profiles.get(c.pool)
                if (
                    profile is None
                    or not profile.reserved
                    or profile.fits(self.now, job.time_limit_s, job.gpu_milli_total)
                ):
                    usable.append(c)
                else:
                    self._job_bound = self._profile_bound = True
        for borrowed in (False, True):
            group = [c.pool for c in usable if c.borrowed == borrowed]
            if not group:
                continue
            # a job that names no CPU/memory gets the default per GPU, but never more than its node's share
            cpu, mem = self._host_per_gpu(group)
            # pools without enough free nodes of the right size cannot hold it: not worth a placement search
            fit = [pi for pi in group if self._may_fit(pi, job)] if prefilter else group
            if not fit:
                continue
            req = PlaceRequest(job, fit, cpu, mem, task_types=self.task_types)
            placement = self.place(self.cap, req)
            if placement is not None:
                pi = self.cap.pool_by_name[placement.pool].index
                return placement, next(c for c in usable if c.pool == pi)
        return None

    def _may_fit(self, pool: int, job: Job) -> bool:
        """A necessary condition for the job's GPUs to fit the pool now, from the free-GPU buckets: enough
        GPU milli, and enough up nodes with enough whole free GPUs for each node of its shape."""
        cap = self.cap
        if cap.pool_milli[pool] < job.gpu_milli_total:
            return False
        if job.gpus == 0 or job.fractional:
            return True
        g = cap.pools[pool].gpus_per_node
        counts = node_counts(job, g)
        if counts is None:
            return False
        buckets = cap.buckets[pool]
        full = len(cap.fresh[pool]) + len(buckets[g])
        if full >= len(counts):
            return True
        smallest = counts[-1]
        if smallest == g or full < counts.count(g):
            return False
        return full + sum(len(buckets[w]) for w in range(smallest, g)) >= len(counts)

    def _host_per_gpu(self, group: list[int]) -> tuple[int, int]:
        """CPU milli and memory MiB per GPU for jobs that name none: the default, capped by the smallest
        per-GPU share of the group's nodes (cached per group of pools)."""
        key = tuple(group)
        got = self._host_cache.get(key)
        if got is None:
            got = self._host_cache[key] = (
                min(CPU_MILLI_PER_GPU, *(self.host_per_gpu[pi][0] for pi in group)),
                min(MEMORY_MIB_PER_GPU, *(self.host_per_gpu[pi][1] for pi in group)),
            )
        return got

    def _admit(self, job: Job, placement: Placement, choice: PoolChoice, start_s: float) -> None:
        cap = self.cap
        for s in placement.shares:
            cap.take(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
        p = cap.pools[choice.pool]
        if job.project in self.rules.credit_projects:
            self.rules.charge(job, p.model, p.su_weight, choice.guaranteed)  # no later job shares this credit
        gpus = job.whole_gpus
        if choice.guaranteed:
            self.own[(job.project, p.model)] += gpus
        elif choice.borrowed:
            self.borrowed[job.project] += gpus
        elif p.sharing == Sharing.SHARED:
            self.shared_used[p.model] += gpus
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
                rule=self._rule(choice.pool, job),
                backfilled=self.any_reservation,
                guaranteed=choice.guaranteed,
            )
        )

    # ---- running work and quota bookkeeping ---------------------------------------------------------------------
    def _claims(self, job: Job, pool: int) -> bool:
        """May the job reclaim borrowed capacity in this pool (its reservation, or its owner's pool)?"""
        p = self.cap.pools[pool]
        tenant = self.snap.tenants.get(job.project)
        if p.sharing == Sharing.LENDABLE:
            return tenant is not None and tenant.affiliation == p.owner
        reserved = self._reserved_for(job.project, p.model)
        return reserved > 0 and self.own[(job.project, p.model)] + job.whole_gpus <= reserved

    def _release_early(self, run: RunningJob, released: bool) -> None:
        """A (trial) victim's GPUs come free now instead of at its expected end, in its pool's availability
        profile (so a reservation does not stop a preemption that does not delay it); False undoes it."""
        profile = self.profiles.get(self.cap.pool_by_name[run.placement.pool].index)
        if profile is not None and run.expected_end_s > self.now:
            profile.take(self.now, run.expected_end_s - self.now, -run.milli if released else run.milli)

    def _uncount(self, run: RunningJob) -> None:
        p = self.cap.pool_by_name[run.placement.pool]
        if run.guaranteed:
            self.own[(run.job.project, p.model)] -= run.gpus
        elif run.borrowed:
            self.borrowed[run.job.project] -= run.gpus
        elif p.sharing == Sharing.SHARED:
            self.shared_used[p.model] -= run.gpus

    def _profile(self, pool: int) -> Profile:
        profile = self.profiles.get(pool)
        if profile is None:
            t = self._victim_table(pool)
            live = t.alive & ~t.taken  # victims chosen in this cycle release now, not at their end
            ends, milli = t.end_s[live], t.milli[live]
            extra = self.cycle_releases.pop(pool, [])
            if extra:
                ends = np.concatenate((ends, [e for e, _ in extra]))
                milli = np.concatenate((milli, [m for _, m in extra]))
            profile = self.profiles[pool] = Profile(self.now, float(self.cap.pool_milli[pool]), ends, milli)
        return profile

    def _victim_table(self, pool: int) -> VictimTable:
        """The pool's running work as of this cycle (columns; made once per pool per cycle)."""
        table = self._victim_tables.get(pool)
        if table is None:
            index = self.snap.run_index.get(pool)
            table = self._victim_tables[pool] = VictimTable.of(index if index is not None else PoolRuns(), self.now)
        return table

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _rule(self, pool: int, job: Job) -> str:
        """The sovereignty rule that lets the job on the pool's site (cached per pool and classification)."""
        key = (pool, job.classification)
        rule = self._rules.get(key)
        if rule is None:
            rule = self._rules[key] = placement_rule(self.cap, pool, job)
        return rule

    def _holder_rows(self, rows: np.ndarray) -> np.ndarray:
        """Per ordered row: does the job's project hold an active reservation (so it may reclaim)?"""
        holders = sorted(
            {g.project for g in self.snap.grants.values() if g.reserved_gpus > 0 and g.start_s <= self.now < g.end_s}
        )
        pids = [pid for pid in (self.q.project_id(p) for p in holders) if pid is not None]
        if not pids or not rows.size:
            return np.zeros(len(rows), dtype=bool)
        return np.isin(self.q.arrays()["project"][rows].astype(np.int64), pids)

    def _reserved_for(self, project: str, model: str) -> int:
        return self._reserved_models(project).get(model, 0)

    def _reserved_models(self, project: str) -> dict[str, int]:
        """GPUs per model that the project's grants in force reserve (empty for most projects)."""
        got = self._reserved.get(project)
        if got is None:
            got = {}
            for g in self.snap.grants_by_project.get(project, ()):
                if g.reserved_model and g.reserved_gpus and g.start_s <= self.now < g.end_s:
                    got[g.reserved_model] = got.get(g.reserved_model, 0) + g.reserved_gpus
            self._reserved[project] = got
        return got

    def _unreserved(self) -> dict[str, float]:
        """GPUs per model in shared pools that no active grant reserves (the national pool)."""
        cap = self.cap
        total: dict[str, float] = defaultdict(float)
        for p in cap.pools:
            if p.sharing == Sharing.SHARED:
                total[p.model] += float(cap.pool_up_milli[p.index]) / MILLI_PER_GPU
        for g in self.snap.grants.values():
            if g.reserved_model and g.start_s <= self.now < g.end_s:
                total[g.reserved_model] -= g.reserved_gpus
        return dict(total)

    def _task_types(self, klass_rows: np.ndarray) -> tuple[tuple[int, int, float], ...]:
        counts: Counter[tuple[int, int]] = Counter()
        for k, n in zip(*np.unique(klass_rows, return_counts=True), strict=True):
            key = self.q.class_keys[int(k)]
            counts[(int(key[1]), int(key[0]))] += int(n)  # type: ignore[call-overload]
        total = sum(counts.values()) or 1
        return tuple((m, g, n / total) for (m, g), n in sorted(counts.items()))
