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

import numpy as np

from kfabric.model.decision import Decision, Reservation
from kfabric.model.job import MILLI_PER_GPU, Job, PriorityClass
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.model.tenancy import OnExhausted
from kfabric.sched import fairshare
from kfabric.sched.cycle_state import CPU_MILLI_PER_GPU, MEMORY_MIB_PER_GPU, PoolChoice
from kfabric.sched.eligibility import Eligibility, eligible_pools
from kfabric.sched.ordering import OrderContext, order
from kfabric.sched.policy import Policy
from kfabric.sched.preemption import PreemptionSteps
from kfabric.sched.queue import PendingQueue
from kfabric.sched.reasons import PendingReasons
from kfabric.sched.registry import ORDERINGS
from kfabric.sched.snapshot import Snapshot

__all__ = ["CPU_MILLI_PER_GPU", "MEMORY_MIB_PER_GPU", "cycle"]

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


class _Outcomes:
    """One cycle's pending reasons, numbered in first-seen order, and the job classes that failed (with the
    reason their members get). A plain object, not closures over ``_Cycle.run``'s locals: compiled (mypyc),
    such closures and their environment would form a reference cycle that keeps every cycle's objects alive
    until the garbage collector runs."""

    def __init__(self, n_classes: int) -> None:
        self.reasons: list[PendingReason] = []
        self.ids: dict[PendingReason, int] = {}
        self.failed = np.zeros(n_classes, dtype=bool)
        self.class_reason = np.full(n_classes, -1, dtype=np.int64)
        self.n_failed = 0

    def index_of(self, reason: PendingReason) -> int:
        idx = self.ids.get(reason)
        if idx is None:
            idx = self.ids[reason] = len(self.reasons)
            self.reasons.append(reason)
        return idx

    def fail_class(self, k: int, reason: PendingReason) -> None:
        if self.failed[k]:
            return
        self.failed[k] = True
        self.class_reason[k] = self.index_of(_class_reason(reason))
        self.n_failed += 1


def _class_reason(reason: PendingReason) -> PendingReason:
    """Jobs of a failed class behind a reservation wait for it; the reason they get says so."""
    if reason.code == ReasonCode.RESERVATION:
        return PendingReason(
            ReasonCode.PRIORITY,
            "waiting behind higher-priority jobs of the same shape that hold reservations on the capacity",
        )
    return reason


class _Cycle(PreemptionSteps):
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
        out = _Outcomes(n_classes)
        failed = out.failed
        # per position: -2 not examined, -1 admitted, >= 0 index into reasons
        outcome_of = np.full(len(rows), -2, dtype=np.int64)
        eligibility: dict[int, Eligibility] = {}
        rows_list: list[int] = rows.tolist()
        examined = 0
        bound = self.policy.bf_max_job_test
        # a job whose project holds a reservation may reclaim what its class-mates may not: never skipped
        holder = self._holder_rows(rows)
        holders_left = int(holder.sum())

        # per class: the shortest time limit that failed only because it would delay a reservation
        longest_fit: dict[int, tuple[float, int]] = {}
        cut = np.full(n_classes, np.inf)
        cut_reason = np.full(n_classes, -1, dtype=np.int64)
        limits = q.arrays()["time_limit_s"][rows]
        # walk the queue in chunks, looking only at positions whose class has not failed yet
        for chunk_start in range(0, len(rows), _CHUNK):
            if (out.n_failed >= live_classes and not holders_left) or examined >= bound:
                break
            chunk = slice(chunk_start, chunk_start + _CHUNK)
            todo = np.flatnonzero((~failed[klass[chunk]] & (limits[chunk] < cut[klass[chunk]])) | holder[chunk])
            todo += chunk_start
            for pos in todo.tolist():
                k = int(klass[pos])
                mine = bool(holder[pos])
                if failed[k] and not mine:
                    continue
                if (out.n_failed >= live_classes and not holders_left) or examined >= bound:
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
                    outcome_of[pos] = out.index_of(elig.reason)
                    out.fail_class(k, elig.reason)
                    continue
                outcome = self._schedule(job, elig.pools)
                if outcome is None:
                    outcome_of[pos] = -1
                    continue
                reason, class_failed = outcome
                outcome_of[pos] = out.index_of(reason)
                if class_failed:
                    out.fail_class(k, reason)
                elif self._profile_bound and not self._other_bound and not mine:
                    previous = longest_fit.get(k)
                    if previous is None or job.time_limit_s < previous[0]:
                        longest_fit[k] = (job.time_limit_s, int(outcome_of[pos]))
                        cut[k] = job.time_limit_s
                        cut_reason[k] = outcome_of[pos]
        # everything not examined: its class's reason, or the per-cycle bound
        limit = out.index_of(
            PendingReason(
                ReasonCode.CYCLE_LIMIT,
                "not examined in this cycle (the scheduler's per-cycle bound); retried next cycle",
            )
        )
        unexamined = outcome_of == -2
        ks = klass[unexamined]
        too_long_here = limits[unexamined] >= cut[ks]
        of_class = out.class_reason[ks]
        outcome_of[unexamined] = np.where(failed[ks], of_class, np.where(too_long_here, cut_reason[ks], limit))
        waiting = np.flatnonzero(outcome_of >= 0)
        return Decision(
            admissions=tuple(self.admissions),
            preemptions=tuple(self.preemptions),
            reservations=tuple(self.reservations),
            pending=PendingReasons(q.ids, rows[waiting], outcome_of[waiting], out.reasons),
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
        if choices and job.project in self.rules.credit_projects:
            choices, credit_reason = self._affordable(job, choices)
            if credit_reason is not None:
                if not self._demoted_by_credit(job):
                    return credit_reason, False
                choices, quota_reason, power_reason = self._choices(job, pools, True)
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

    def _affordable(self, job: Job, choices: list[PoolChoice]) -> tuple[list[PoolChoice], PendingReason | None]:
        """The choices whose grant credit covers the job's time limit at the pool's SU rate; when none does, why
        (for the cheapest of them)."""
        rules, pools = self.rules, self.cap.pools
        kept = [c for c in choices if rules.covers(job, pools[c.pool].model, pools[c.pool].su_weight, c.guaranteed)]
        if kept:
            return kept, None
        cheapest = min(choices, key=lambda c: (pools[c.pool].su_weight, c.pool))
        p = pools[cheapest.pool]
        return kept, rules.credit_reason(job, p.model, p.su_weight, cheapest.guaranteed)

    def _demoted_by_credit(self, job: Job) -> bool:
        """A job its grant's credit does not cover runs as scavenger (borrowed capacity, drawing no credit) when
        the program of the grant that covers it says so; otherwise it waits for credit."""
        grant = self.rules.charged(job, "", False)
        if grant is None or grant.on_exhausted != OnExhausted.SCAVENGER:
            return False
        self._job_bound = self._other_bound = True  # its own grant, not its class
        return True

    def _choices(
        self, job: Job, pools: tuple[int, ...], scavenger: bool
    ) -> tuple[list[PoolChoice], PendingReason | None, PendingReason | None]:
        """Pools the job may use now, non-borrowed first, with why the others are excluded."""
        project = job.project
        tenant = self.snap.tenants.get(project)
        affiliation = tenant.affiliation if tenant else ""
        gpus = job.whole_gpus
        own_first: list[PoolChoice] = []
        borrow: list[PoolChoice] = []
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

    # ---- 5. reservations -------------------------------------------------------------------------------------
    def _reserve(self, job: Job, choices: list[PoolChoice], milli: int) -> PendingReason | None:
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
