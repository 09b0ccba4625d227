"""One scheduling cycle: ``cycle(snapshot, pending, policy, now) -> Decision``. Pure: the snapshot is left
exactly as found (every trial change is rolled back; with ``keep=True`` the capacity is left as the decision
leaves it, for an owner that applies the decision next), and the same inputs give the same decision.

Steps:
 1. fair-share factors and ordering keys for the whole queue (vectorized), one stable sort;
 2. walk the queue in order; per equivalence class, the pools it may ever use (models, sovereignty,
    ownership, topology, online); per job, grant and program rules;
 3. place the job (non-borrowed pools first), honouring power caps, borrow limits and, with backfill, every
    reservation made so far (availability profiles);
 4. if it does not fit: try preemption (priority class, quota reclaim) as an undoable trial;
 5. otherwise give it a reservation (while the policy allows more) or a reason, and mark its class as
    failed so the rest of that class is skipped in O(1);
 6. stop early once every class in the queue has failed; everything left gets its class's reason.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from kfabric.model.decision import Admission, Decision, Placement, Preemption, Reservation
from kfabric.model.fleet import Sharing
from kfabric.model.job import MILLI_PER_GPU, Job, MinTopology, PriorityClass
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.sched import fairshare
from kfabric.sched.eligibility import Eligibility, eligible_pools, placement_rule
from kfabric.sched.ordering import OrderContext, order
from kfabric.sched.placement import PlaceRequest
from kfabric.sched.policy import Policy
from kfabric.sched.profile import Profile
from kfabric.sched.queue import PendingQueue
from kfabric.sched.reasons import PendingReasons
from kfabric.sched.registry import ORDERINGS, PLACEMENTS
from kfabric.sched.request import node_counts
from kfabric.sched.rules import GrantRules
from kfabric.sched.snapshot import RunningJob, Snapshot
from kfabric.sched.victims import VICTIM_CANDIDATES, VictimTable

#: default host resources a GPU brings along when a job does not ask for CPU/memory explicitly
CPU_MILLI_PER_GPU = 4_000
MEMORY_MIB_PER_GPU = 32_768
#: queue positions scanned per vectorized step of the main loop
_CHUNK = 2048


def cycle(snapshot: Snapshot, pending: PendingQueue, policy: Policy, now_s: float, keep: bool = False) -> Decision:
    """The decision for this state. The snapshot's capacity is left as found, unless ``keep``: then it is
    left as the decision leaves it (preempted work off its GPUs, admitted work on them), and the caller
    must record the decision with ``Snapshot.finish(..., give=False)`` and ``Snapshot.start(..., take=False)``
    (the simulator does, to skip undoing and redoing every placement). The decision is the same either way."""
    cap = snapshot.capacity
    was_logging = cap.logging
    if keep and was_logging:
        raise ValueError("cycle(keep=True) needs a capacity with no trial in progress")
    cap.logging = True
    mark = cap.mark()
    done = False
    try:
        decision = _Cycle(snapshot, pending, policy, now_s).run()
        done = True
        return decision
    finally:
        if keep and done:
            cap.forget()
        else:
            cap.rollback(mark)
        cap.logging = was_logging


@dataclass(frozen=True, slots=True)
class _PoolChoice:
    pool: int
    borrowed: bool
    guaranteed: bool


class _Cycle:
    def __init__(self, snap: Snapshot, q: PendingQueue, policy: Policy, now_s: float) -> None:
        self.snap, self.q, self.policy, self.now = snap, q, policy, now_s
        self.cap = snap.capacity
        self.place = PLACEMENTS[policy.placement]
        self.admissions: list[Admission] = []
        self.preemptions: list[Preemption] = []
        self.reservations: list[Reservation] = []
        self.victims: set[str] = set()
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
        self.preemption_tries = policy.max_preemption_attempts
        self.task_types: tuple[tuple[int, int, float], ...] = ()
        self.unreserved = self._unreserved()
        self.site_cap_kw = [site.cap_kw + 1e-9 for site in self.cap.sites]
        self._host_cache: dict[tuple[int, ...], tuple[int, int]] = {}
        #: per pool: its choice as own, borrowed and guaranteed capacity (immutable, made once per cycle)
        self._choice_objs = [
            (_PoolChoice(pi, False, False), _PoolChoice(pi, True, False), _PoolChoice(pi, False, True))
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

    # ---- 1. order ------------------------------------------------------------------------------------------
    def _keys(self) -> np.ndarray:
        w = self.policy.weights
        total_milli = float(self.cap.pool_up_milli.sum())
        ctx = OrderContext(
            now_s=self.now,
            fairshare=(
                fairshare.factors(self.snap.tenants, self.snap.usage_su, self.snap.fair_shares())
                if self.snap.tenants
                else {}
            ),
            estimator=self.snap.estimator,
            attained_gpu_s=self.snap.attained_gpu_s,
            weights_priority_class=w.priority_class,
            weights_fairshare=w.fairshare,
            weights_age=w.age,
            weights_size=w.size,
            max_age_s=w.max_age_s,
            favor_small=w.favor_small,
            total_milli=total_milli,
            las_thresholds_gpu_s=self.policy.las_thresholds_gpu_s,
            starvation_age_s=self.policy.starvation_age_s,
            fairshare_strength=self.policy.fairshare_strength,
            service_levels=self.policy.preempt_by_service,
        )
        return ORDERINGS[self.policy.ordering](self.q, ctx)

    def run(self) -> Decision:
        q = self.q
        rows = order(q, self._keys())
        jobs = q.rows()
        klass = q.arrays()["klass"].astype(np.int64)[rows]
        if self.policy.placement == "fgd":
            self.task_types = self._task_types(klass)
        n_classes = len(q.class_keys)
        live_classes = int(np.count_nonzero(np.bincount(klass, minlength=n_classes))) if rows.size else 0
        failed = np.zeros(n_classes, dtype=bool)
        class_reason = np.full(n_classes, -1, dtype=np.int64)
        # per position: -2 not examined, -1 admitted, >= 0 index into reasons
        outcome_of = np.full(len(rows), -2, dtype=np.int64)
        reasons: list[PendingReason] = []
        reason_ids: dict[PendingReason, int] = {}
        eligibility: dict[int, Eligibility] = {}
        rows_list: list[int] = rows.tolist()
        n_failed = examined = 0
        bound = self.policy.bf_max_job_test
        # a job whose project holds a reservation may reclaim what its class-mates may not: never skipped
        holder = self._holder_rows(rows)
        holders_left = int(holder.sum())

        def index_of(reason: PendingReason) -> int:
            idx = reason_ids.get(reason)
            if idx is None:
                idx = reason_ids[reason] = len(reasons)
                reasons.append(reason)
            return idx

        def fail_class(k: int, reason: PendingReason) -> None:
            nonlocal n_failed
            if failed[k]:
                return
            failed[k] = True
            class_reason[k] = index_of(self._class_reason(reason))
            n_failed += 1

        # per class: the shortest time limit that failed only because it would delay a reservation
        longest_fit: dict[int, tuple[float, int]] = {}
        cut = np.full(n_classes, np.inf)
        cut_reason = np.full(n_classes, -1, dtype=np.int64)
        limits = q.arrays()["time_limit_s"][rows]
        # walk the queue in chunks, looking only at positions whose class has not failed yet
        for chunk_start in range(0, len(rows), _CHUNK):
            if (n_failed >= live_classes and not holders_left) or examined >= bound:
                break
            chunk = slice(chunk_start, chunk_start + _CHUNK)
            todo = np.flatnonzero((~failed[klass[chunk]] & (limits[chunk] < cut[klass[chunk]])) | holder[chunk])
            todo += chunk_start
            for pos in todo.tolist():
                k = int(klass[pos])
                mine = bool(holder[pos])
                if failed[k] and not mine:
                    continue
                if (n_failed >= live_classes and not holders_left) or examined >= bound:
                    break
                holders_left -= mine
                job = jobs[rows_list[pos]]
                assert job is not None
                too_long = longest_fit.get(k)
                if too_long is not None and not mine and job.time_limit_s >= too_long[0]:
                    # a class-mate with a shorter time limit could not start without delaying a reservation
                    outcome_of[pos] = too_long[1]
                    continue
                examined += 1
                elig = eligibility.get(k)
                if elig is None:
                    affiliation = str(q.class_keys[k][-1])
                    elig = eligibility[k] = self._eligibility(q.class_keys[k], job, affiliation)
                if elig.reason is not None:
                    outcome_of[pos] = index_of(elig.reason)
                    fail_class(k, elig.reason)
                    continue
                outcome = self._schedule(job, elig.pools)
                if outcome is None:
                    outcome_of[pos] = -1
                    continue
                reason, class_failed = outcome
                outcome_of[pos] = index_of(reason)
                if class_failed:
                    fail_class(k, reason)
                elif self._profile_bound and not self._other_bound and not mine:
                    previous = longest_fit.get(k)
                    if previous is None or job.time_limit_s < previous[0]:
                        longest_fit[k] = (job.time_limit_s, int(outcome_of[pos]))
                        cut[k] = job.time_limit_s
                        cut_reason[k] = outcome_of[pos]
        # everything not examined: its class's reason, or the per-cycle bound
        limit = index_of(
            PendingReason(
                ReasonCode.CYCLE_LIMIT,
                "not examined in this cycle (the scheduler's per-cycle bound); retried next cycle",
            )
        )
        unexamined = outcome_of == -2
        ks = klass[unexamined]
        too_long_here = limits[unexamined] >= cut[ks]
        outcome_of[unexamined] = np.where(failed[ks], class_reason[ks], np.where(too_long_here, cut_reason[ks], limit))
        waiting = np.flatnonzero(outcome_of >= 0)
        return Decision(
            admissions=tuple(self.admissions),
            preemptions=tuple(self.preemptions),
            reservations=tuple(self.reservations),
            pending=PendingReasons(q.ids, rows[waiting], outcome_of[waiting], reasons),
        )

    def _eligibility(self, key: object, job: Job, affiliation: str) -> Eligibility:
        """Per class, cached across cycles for as long as the same pools are online."""
        online = self._online
        cache = self.snap.eligibility_cache
        cached = cache.get((key, online))
        if isinstance(cached, Eligibility):
            return cached
        if len(cache) > 100_000:
            cache.clear()
        elig = cache[(key, online)] = eligible_pools(self.cap, job, affiliation)
        return elig

    @staticmethod
    def _class_reason(reason: PendingReason) -> PendingReason:
        """Jobs of a failed class behind a reservation wait for it; the reason they get says so."""
        if reason.code == ReasonCode.RESERVATION:
            return PendingReason(
                ReasonCode.PRIORITY,
                "waiting behind higher-priority jobs of the same shape that hold reservations on the capacity",
            )
        return reason

    # ---- 2-5. one job ----------------------------------------------------------------------------------------
    def _schedule(self, job: Job, pools: tuple[int, ...]) -> tuple[PendingReason, bool] | None:
        """Admit the job (None) or say why not and whether its whole class is blocked for this cycle."""
        self._job_bound = self._profile_bound = self._other_bound = False
        rule_block = self.rules.check(job)
        if rule_block is not None:
            return rule_block, False
        scavenger = self.rules.scavenger(job)
        if scavenger and job.priority != PriorityClass.SCAVENGER:
            self._job_bound = self._other_bound = True  # demoted by its project's grant, not by its class
        choices, quota_reason, power_reason = self._choices(job, pools, scavenger)
        if not choices:
            if quota_reason is not None:
                # only borrowed capacity for a job that may not borrow: so for its class-mates too
                return quota_reason, not self._job_bound
            reason = power_reason
            if reason is None:  # every pool is blocked behind a job ahead of it (backfill is off)
                reason = PendingReason(
                    ReasonCode.PRIORITY,
                    "waiting behind jobs ahead of it that cannot start yet on the same pools (backfill is off)",
                )
            return reason, False
        placed = self._try_place(job, choices)
        if placed is not None:
            self._admit(job, placed[0], placed[1], self.now)
            return None
        if self._try_preempt(job, choices):
            return None
        class_wide = not self._job_bound
        milli = job.gpu_milli_total
        if self.policy.backfill == "none":
            self.blocked_pools.update(c.pool for c in choices)
        if self.reservations_left > 0 and self.now - job.submit_s >= self.policy.reserve_after_s:
            reservation = self._reserve(job, choices, milli)
            if reservation is not None:
                return reservation, class_wide
        if self.any_reservation:
            return (
                PendingReason(
                    ReasonCode.PRIORITY,
                    "waiting behind higher-priority jobs that hold reservations on the capacity it needs",
                ),
                class_wide,
            )
        models = ", ".join(sorted({self.cap.pools[c.pool].model for c in choices}))
        free = sum(int(self.cap.pool_milli[c.pool]) for c in choices) / MILLI_PER_GPU
        topology = job.min_topology.name.lower()
        if free >= job.whole_gpus:
            message = (
                f"waiting for {job.whole_gpus:g} GPU(s) of {models}: {free:g} are free, but not in a shape that "
                f"fits (min topology: {topology}) with the CPU and memory the job needs beside them"
            )
        else:
            message = (
                f"waiting for {job.whole_gpus:g} free GPU(s) of {models} (min topology: {topology}); {free:g} free now"
            )
        return PendingReason(ReasonCode.RESOURCES, message), class_wide

    def _choices(
        self, job: Job, pools: tuple[int, ...], scavenger: bool
    ) -> tuple[list[_PoolChoice], PendingReason | None, PendingReason | None]:
        """Pools the job may use now, non-borrowed first, with why the others are excluded."""
        project = job.project
        tenant = self.snap.tenants.get(project)
        affiliation = tenant.affiliation if tenant else ""
        gpus = job.whole_gpus
        own_first: list[_PoolChoice] = []
        borrow: list[_PoolChoice] = []
        quota_reason = power_reason = None
        site_kw, site_cap, blocked, meta = (
            self.cap.site_kw.tolist(),
            self.site_cap_kw,
            self.blocked_pools,
            self._pool_meta,
        )
        made = self._choice_objs
        reserved_models = self._reserved_models(project)
        shared_used, unreserved = self.shared_used, self.unreserved
        for pi in pools:
            site, kw_per_gpu, shared, model, owner = meta[pi]
            if blocked and pi in blocked and not self._claims(job, pi):  # a reservation holder is never blocked
                continue
            if site_kw[site] + gpus * kw_per_gpu > site_cap[site]:
                info = self.cap.sites[site]
                power_reason = PendingReason(
                    ReasonCode.POWER_CAP,
                    f"site {info.name} is at its power cap ({info.cap_kw / 1000:g} MW); waiting for power headroom",
                )
                continue
            guaranteed = False
            if shared and not scavenger:
                reserved = reserved_models.get(model, 0) if reserved_models else 0
                if reserved and self.own[(project, model)] + gpus <= reserved:
                    guaranteed = True
                    borrowed = False
                else:
                    borrowed = shared_used[model] + gpus > unreserved.get(model, 0.0)
            else:
                borrowed = scavenger or owner != affiliation
            if borrowed:
                if not job.preemptible:
                    quota_reason = PendingReason(
                        ReasonCode.QUOTA,
                        "only borrowed capacity is free and non-preemptible jobs cannot borrow; "
                        "mark the job preemptible or wait for entitled capacity",
                    )
                    continue
                limit = self.borrow_limit
                if self.borrowed[project] + gpus > limit:
                    self._job_bound = self._other_bound = True
                    quota_reason = PendingReason(
                        ReasonCode.QUOTA,
                        f"project {project} already borrows {self.borrowed[project]:g} GPUs "
                        f"(limit {limit:g}); waiting for its own work to finish",
                    )
                    continue
                borrow.append(made[pi][1])
            else:
                own_first.append(made[pi][2 if guaranteed else 0])
        own_first.extend(borrow)
        return own_first, quota_reason, power_reason

    def _try_place(
        self, job: Job, choices: list[_PoolChoice], prefilter: bool = False
    ) -> tuple[Placement, _PoolChoice] | None:
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

    def _admit(self, job: Job, placement: Placement, choice: _PoolChoice, start_s: float) -> None:
        cap = self.cap
        for s in placement.shares:
            cap.take(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
        p = cap.pools[choice.pool]
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

    # ---- 4. preemption ---------------------------------------------------------------------------------------
    def _running_on(self, pool: int) -> list[RunningJob]:
        return list(self.snap.running_by_pool.get(pool, {}).values())

    def _claims(self, job: Job, pool: int) -> bool:
        """May the job reclaim borrowed capacity in this pool (its reservation, or its owner's pool)?"""
        p = self.cap.pools[pool]
        tenant = self.snap.tenants.get(job.project)
        if p.sharing == Sharing.LENDABLE:
            return tenant is not None and tenant.affiliation == p.owner
        reserved = self._reserved_for(job.project, p.model)
        return reserved > 0 and self.own[(job.project, p.model)] + job.whole_gpus <= reserved

    def _victim_table(self, pool: int) -> VictimTable:
        table = self._victim_tables.get(pool)
        if table is None:
            table = self._victim_tables[pool] = VictimTable.build(
                self._running_on(pool), self.now, self.snap.attained_gpu_s
            )
        return table

    def _victims(self, job: Job, choices: list[_PoolChoice]) -> list[RunningJob]:
        """Preemptible running work the job may displace, cheapest first: borrowed work, then the least work
        lost since the last checkpoint. Jobs younger than the minimum run time are never chosen."""
        pol = self.policy
        picked: list[tuple[bool, float, str, RunningJob]] = []
        need = job.gpu_milli_total
        service = None
        if pol.preempt_by_service:
            thresholds = pol.las_thresholds_gpu_s
            level = int(np.searchsorted(np.asarray(thresholds), self.snap.attained_gpu_s.get(job.id, 0.0), "right"))
            service = (int(job.priority), level, thresholds)
        for c in choices:
            claims = pol.reclaim and self._claims(job, c.pool)
            if not claims and not pol.preempt_by_priority and not pol.preempt_by_service:
                continue
            # cheap bound first: free capacity plus every eligible victim must be able to hold the job
            bound = int(self.cap.pool_milli[c.pool])
            classes = int(job.priority) + 1 if pol.preempt_by_service else int(job.priority)
            if pol.preempt_by_priority or pol.preempt_by_service:
                bound += sum(self.snap.preemptible_milli.get((c.pool, k), 0) for k in range(classes))
            if claims:
                bound += self.snap.borrowed_milli.get(c.pool, 0)
            if bound < need:
                continue
            t = self._victim_table(c.pool)
            below = int(job.priority) if pol.preempt_by_priority else None
            for key in t.candidates(below, claims, self.now, pol.min_run_s, service):
                if key[3].job.id not in self.victims:
                    picked.append(key)
        picked.sort(key=lambda x: x[:3])
        return [x[3] for x in picked[:VICTIM_CANDIDATES]]

    def _try_preempt(self, job: Job, choices: list[_PoolChoice]) -> bool:
        """Reclaim (a reservation's owner taking back borrowed capacity) is always tried: the guarantee
        depends on it. Preemption by priority class is bounded to ``max_preemption_attempts`` victim searches
        per cycle."""
        if job.priority == PriorityClass.SCAVENGER:
            return False
        pol = self.policy
        if not pol.preempt_by_priority and not pol.reclaim and not pol.preempt_by_service:
            return False
        claims = pol.reclaim and any(self._claims(job, c.pool) for c in choices)
        if not claims:
            if self.preemption_tries <= 0 or not (pol.preempt_by_priority or pol.preempt_by_service):
                return False
            self.preemption_tries -= 1
        cap = self.cap
        need = job.gpu_milli_total
        victims = self._victims(job, choices)
        # only pools where free capacity plus every candidate victim could hold the job are worth a trial
        releasable: dict[int, float] = defaultdict(float)
        for run in victims:
            releasable[cap.pool_by_name[run.placement.pool].index] += run.milli
        hopeful = {pi for pi, milli in releasable.items() if cap.pool_milli[pi] + milli >= need}
        # and only pools where the job fits once every candidate victim there is gone: freeing less never
        # makes it fit better, so one trial per pool spares the per-victim retries of a search that must fail
        for pi in sorted(hopeful):
            mine = [r for r in victims if cap.pool_by_name[r.placement.pool].index == pi]
            if not self._may_fit_without(job, pi, mine) or not self._fits_without(
                job, [c for c in choices if c.pool == pi], mine
            ):
                hopeful.discard(pi)
        victims = [r for r in victims if cap.pool_by_name[r.placement.pool].index in hopeful]
        if not victims:
            return False
        mark = cap.mark()
        freed: list[RunningJob] = []
        for run in victims:
            for s in run.placement.shares:
                cap.give(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
            self._release_early(run, True)
            freed.append(run)
            pool = cap.pool_by_name[run.placement.pool].index
            if cap.pool_milli[pool] < need:
                continue
            placed = self._try_place(job, [c for c in choices if c.pool == pool], prefilter=True)
            if placed is None:
                continue
            kept = self._minimize(freed, placed[0])
            for run_v in kept:
                self.victims.add(run_v.job.id)
                self._uncount(run_v)
                self.preemptions.append(
                    Preemption(
                        job_id=run_v.job.id,
                        by_job=job.id,
                        reason=self._preemption_reason(job, run_v),
                        grace_s=pol.grace_s,
                    )
                )
            self._admit(job, placed[0], placed[1], self.now + pol.grace_s)
            return True
        cap.rollback(mark)
        for run in freed:
            self._release_early(run, False)
        return False

    def _may_fit_without(self, job: Job, pool: int, runs: list[RunningJob]) -> bool:
        """A necessary condition (counts only, nothing changed) for the job's GPUs to fit the pool with
        ``runs`` gone: each node's whole free GPUs grow by at most the GPUs the runs hold there; a gang
        limited to one rack or unit needs one with enough fully free nodes."""
        if job.gpus == 0 or job.fractional:
            return True
        cap = self.cap
        p = cap.pools[pool]
        g = p.gpus_per_node
        counts = node_counts(job, g)
        if counts is None:
            return False
        freed: dict[int, int] = defaultdict(int)
        for run in runs:
            for sh in run.placement.shares:
                freed[sh.node] += len(sh.gpus)
        whole, up = cap._whole, cap._up
        buckets = cap.buckets[pool]
        full = len(cap.fresh[pool]) + len(buckets[g])
        smallest = counts[-1]
        enough = full + sum(len(buckets[w]) for w in range(smallest, g))
        rack_gain: dict[int, int] = defaultdict(int)
        unit_gain: dict[int, int] = defaultdict(int)
        for node, n in freed.items():
            if not up[node]:
                continue
            before = whole[node]
            after = min(g, before + n)
            if before < g <= after:
                full += 1
                rack_gain[cap._rack_of[node]] += 1
                unit_gain[cap._unit_of[node]] += 1
            if before < smallest <= after:
                enough += 1
        if full < counts.count(g) or enough < len(counts):
            return False
        need_full = counts.count(g)
        if len(counts) == 1 or need_full == 0:
            return True
        if job.min_topology == MinTopology.RACK:
            counters, first, gain = cap.rack_full[p.first_rack : p.first_rack + p.racks], p.first_rack, rack_gain
        elif job.min_topology == MinTopology.UNIT:
            counters, first, gain = cap.unit_full[p.first_unit : p.first_unit + p.units], p.first_unit, unit_gain
        else:
            return True
        best = int(counters.max()) if counters.size else 0
        for domain, n in gain.items():
            best = max(best, int(counters[domain - first]) + n)
        return best >= need_full

    def _fits_without(self, job: Job, choices: list[_PoolChoice], runs: list[RunningJob]) -> bool:
        """Would the job fit ``choices`` with ``runs`` off their GPUs? (A trial, undone before returning; the
        bound flags are left as they were.)"""
        cap = self.cap
        mark = cap.mark()
        for run in runs:
            for s in run.placement.shares:
                cap.give(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
            self._release_early(run, True)
        bound = self._job_bound, self._profile_bound, self._other_bound
        try:
            return self._try_place(job, choices, prefilter=True) is not None
        finally:
            self._job_bound, self._profile_bound, self._other_bound = bound
            cap.rollback(mark)
            for run in runs:
                self._release_early(run, False)

    def _preemption_reason(self, job: Job, victim: RunningJob) -> str:
        if victim.borrowed:
            return "quota reclaim"
        if victim.job.priority < job.priority:
            return "higher priority class"
        return "less attained service (least-attained-service queues)"

    def _release_early(self, run: RunningJob, released: bool) -> None:
        """A (trial) victim's GPUs come free now instead of at its expected end, in its pool's availability
        profile (so a reservation does not stop a preemption that does not delay it); False undoes it."""
        profile = self.profiles.get(self.cap.pool_by_name[run.placement.pool].index)
        if profile is not None and run.expected_end_s > self.now:
            profile.take(self.now, run.expected_end_s - self.now, -run.milli if released else run.milli)

    def _minimize(self, freed: list[RunningJob], placement: Placement) -> list[RunningJob]:
        """Give back victims whose GPUs the new placement does not use (most recently chosen first)."""
        used = {(s.node, g) for s in placement.shares for g in s.gpus}
        # the new job's host share is not taken yet: a victim given back must leave room for it
        cpu_new: dict[int, int] = defaultdict(int)
        mem_new: dict[int, int] = defaultdict(int)
        for s in placement.shares:
            cpu_new[s.node] += s.cpu_milli
            mem_new[s.node] += s.memory_mib
        cap = self.cap
        kept: list[RunningJob] = []
        for run in reversed(freed):
            overlap = any((s.node, g) in used for s in run.placement.shares for g in s.gpus)
            host_ok = all(
                cap.cpu_free[s.node] - cpu_new[s.node] >= s.cpu_milli
                and cap.mem_free[s.node] - mem_new[s.node] >= s.memory_mib
                for s in run.placement.shares
            )
            if overlap or not host_ok:
                kept.append(run)
                continue
            for s in run.placement.shares:
                cap.take(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
            self._release_early(run, False)
        return list(reversed(kept))

    def _uncount(self, run: RunningJob) -> None:
        p = self.cap.pool_by_name[run.placement.pool]
        if run.guaranteed:
            self.own[(run.job.project, p.model)] -= run.gpus
        elif run.borrowed:
            self.borrowed[run.job.project] -= run.gpus
        elif p.sharing == Sharing.SHARED:
            self.shared_used[p.model] -= run.gpus

    # ---- 5. reservations -------------------------------------------------------------------------------------
    def _profile(self, pool: int) -> Profile:
        profile = self.profiles.get(pool)
        if profile is None:
            runs = [run for run in self._running_on(pool) if run.job.id not in self.victims]
            extra = self.cycle_releases.pop(pool, [])
            ends = np.fromiter((r.expected_end_s for r in runs), dtype=np.float64, count=len(runs))
            milli = np.fromiter((r.milli for r in runs), dtype=np.float64, count=len(runs))
            if extra:
                ends = np.concatenate((ends, [e for e, _ in extra]))
                milli = np.concatenate((milli, [m for _, m in extra]))
            profile = self.profiles[pool] = Profile(self.now, float(self.cap.pool_milli[pool]), ends, milli)
        return profile

    def _reserve(self, job: Job, choices: list[_PoolChoice], milli: int) -> PendingReason | None:
        best: tuple[float, int] | None = None
        for c in choices:
            t = self._profile(c.pool).earliest(self.now, job.time_limit_s, milli, strictly_after=True)
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
