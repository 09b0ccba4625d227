"""One scheduling cycle: ``cycle(snapshot, pending, policy, now, memo=...) -> Decision``. Pure: the snapshot is
left exactly as found (the whole cycle is one trial, rolled back; with ``keep=True`` the capacity is left as the
decision leaves it, for an owner that applies the decision next), and the same inputs give the same decision
(the memo only makes it faster).

The cycle is a small coordinator over a workspace (``sched.cycle_state``) and its parts: the placer returns
``Fit`` or ``NoFit(reason, scope)``, the preemptor a ``Plan`` or None, the quota ledger the pools a job may use.

Steps:
 1. fair-share factors and ordering keys for the whole queue (vectorized), one stable sort;
 2. walk the queue in order; per equivalence class, the pools it may ever use (models, sovereignty,
    ownership, topology, online); per job, grant and program rules;
 3. place the job (non-borrowed pools first), honouring power caps, borrow limits and, with backfill, every
    reservation made so far (availability profiles);
 4. if it does not fit: try preemption (priority class, quota reclaim) in a trial;
 5. otherwise give it a reservation (while the policy allows more) or a reason; when what held it back is its
    class's shape (``NoFit.scope``), mark the class as failed so the rest of that class is skipped in O(1);
 6. stop early once every class in the queue has failed; everything left gets its class's reason.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from kfabric.model.decision import Decision
from kfabric.model.job import Job, PriorityClass
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.model.tenancy import OnExhausted
from kfabric.sched import fairshare
from kfabric.sched.cycle_state import Workspace
from kfabric.sched.eligibility import Eligibility, eligible_pools
from kfabric.sched.memo import ELIGIBILITY_LIMIT, CycleMemo
from kfabric.sched.ordering import OrderContext, order
from kfabric.sched.placer import CLASS, CPU_MILLI_PER_GPU, JOB, MEMORY_MIB_PER_GPU, TIME_LIMIT, NoFit, Placer
from kfabric.sched.policy import Policy
from kfabric.sched.preemption import Preemptor
from kfabric.sched.queue import PendingQueue
from kfabric.sched.quota import PoolChoice
from kfabric.sched.reasons import PendingReasons
from kfabric.sched.registry import ORDERINGS
from kfabric.sched.snapshot import Snapshot
from kfabric.sched.trial import Trial

__all__ = ["CPU_MILLI_PER_GPU", "MEMORY_MIB_PER_GPU", "CycleMemo", "cycle"]

#: queue positions scanned per vectorized step of the main loop
_CHUNK = 2048
#: a queue position's outcome: not examined, admitted; codes >= 0 number its pending reason (``_Book.reasons``)
NOT_EXAMINED, ADMITTED = -2, -1

_BEHIND_BLOCKED = PendingReason(
    ReasonCode.PRIORITY,
    "waiting behind jobs ahead of it that cannot start yet on the same pools (backfill is off)",
)
_BEHIND_RESERVATIONS = PendingReason(
    ReasonCode.PRIORITY,
    "waiting behind higher-priority jobs that hold reservations on the capacity it needs",
)
_CLASS_BEHIND_RESERVATIONS = PendingReason(
    ReasonCode.PRIORITY,
    "waiting behind higher-priority jobs of the same shape that hold reservations on the capacity",
)
_CYCLE_LIMIT = PendingReason(
    ReasonCode.CYCLE_LIMIT,
    "not examined in this cycle (the scheduler's per-cycle bound); retried next cycle",
)


def cycle(
    snapshot: Snapshot,
    pending: PendingQueue,
    policy: Policy,
    now_s: float,
    keep: bool = False,
    memo: CycleMemo | None = None,
) -> Decision:
    """The decision for this state. The snapshot's capacity is left as found, unless ``keep``: then it is
    left as the decision leaves it (preempted work off its GPUs, admitted work on them), and the caller
    must record the decision with ``Snapshot.finish(..., give=False)`` and ``Snapshot.start(..., take=False)``
    (the simulator does, to skip undoing and redoing every placement). The decision is the same either way.
    ``memo``: what the owner's cycles remember between them for speed (``sched.memo``; None: a fresh one)."""
    cap = snapshot.capacity
    if keep and cap.logging:
        raise ValueError("cycle(keep=True) needs a capacity with no trial in progress")
    if memo is None:
        memo = CycleMemo()
    memo.bind(cap)
    with Trial(cap, {}, now_s) as whole:
        decision = _Cycle(Workspace(snapshot, pending, policy, now_s, memo)).run()
        if keep:
            whole.commit()
    return decision


class _Book:
    """One cycle's pending reasons, numbered in first-seen order, and what it learned per job class: the
    classes that failed (with the reason their members get), and the shortest time limit that failed only
    because it would delay a reservation (``cut``; longer ones of the class fail the same way). A plain object,
    not closures over ``_Cycle.run``'s locals: compiled (mypyc), such closures and their environment would form a
    reference cycle that keeps every cycle's objects alive until the garbage collector runs."""

    def __init__(self, n_classes: int) -> None:
        self.reasons: list[PendingReason] = []
        self.ids: dict[PendingReason, int] = {}
        self.failed = np.zeros(n_classes, dtype=bool)
        self.class_reason = np.full(n_classes, -1, dtype=np.int64)
        self.n_failed = 0
        self.cut = np.full(n_classes, np.inf)
        self.cut_reason = np.full(n_classes, -1, dtype=np.int64)
        self.longest_fit: dict[int, tuple[float, int]] = {}

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
        # jobs of a failed class behind a reservation wait for it; the reason they get says so
        self.class_reason[k] = self.index_of(
            _CLASS_BEHIND_RESERVATIONS if reason.code == ReasonCode.RESERVATION else reason
        )
        self.n_failed += 1

    def cut_at(self, k: int, limit_s: float, idx: int) -> None:
        """A job of class ``k`` with time limit ``limit_s`` was held back by a reservation's profile (reason
        ``idx``): class-mates with a limit as long or longer fail the same way."""
        previous = self.longest_fit.get(k)
        if previous is None or limit_s < previous[0]:
            self.longest_fit[k] = (limit_s, idx)
            self.cut[k] = limit_s
            self.cut_reason[k] = idx


class _Walk:
    """The queue in order, and how far the walk through it got."""

    def __init__(self, q: PendingQueue, rows: np.ndarray, klass: np.ndarray, holder: np.ndarray, bound: int) -> None:
        self.rows, self.klass, self.holder = rows, klass, holder
        self.rows_list: list[int] = rows.tolist()
        self.jobs = q.rows()
        self.limits = q.arrays()["time_limit_s"][rows]
        n_classes = len(q.class_keys)
        self.live_classes = int(np.count_nonzero(np.bincount(klass, minlength=n_classes))) if rows.size else 0
        self.book = _Book(n_classes)
        self.outcome = np.full(len(rows), NOT_EXAMINED, dtype=np.int64)
        #: per class: the pools it may ever use (or why none)
        self.eligibility: dict[int, Eligibility] = {}
        self.examined = 0
        self.bound = bound
        # a job whose project holds a reservation may reclaim what its class-mates may not: never skipped
        self.holders_left = int(holder.sum())

    def done(self) -> bool:
        """Stop: every class failed and no reservation holder is left, or the per-cycle bound is reached."""
        return (self.book.n_failed >= self.live_classes and not self.holders_left) or self.examined >= self.bound


class _Cycle:
    """The coordinator (see the module doc)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws, self.q, self.policy, self.now, self.snap = ws, ws.q, ws.policy, ws.now, ws.snap
        self.placer = Placer(ws.cap, ws.modes.placement.place, ws.profiles, ws.now, ws.memo.placement)
        self.preemptor = Preemptor(ws, self.placer)

    def run(self) -> Decision:
        walk = self._start()
        for chunk_start in range(0, len(walk.rows), _CHUNK):
            if walk.done() or not self._walk_chunk(walk, chunk_start):
                break
        return self._decision(walk)

    # ---- 1. order ------------------------------------------------------------------------------------------
    def _start(self) -> _Walk:
        q = self.q
        rows = order(q, self._keys())
        klass = q.arrays()["klass"].astype(np.int64)[rows]
        if self.ws.modes.placement.queue_workload:
            self.placer.task_types = self._task_types(klass)
        return _Walk(q, rows, klass, self._holder_rows(rows), self.policy.bf_max_job_test)

    def _keys(self) -> np.ndarray:
        w = self.policy.weights
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
            total_milli=float(self.ws.cap.pool_up_milli.sum()),
            las_thresholds_gpu_s=self.policy.las_thresholds_gpu_s,
            starvation_age_s=self.policy.starvation_age_s,
            fairshare_strength=self.policy.fairshare_strength,
            service_levels=self.policy.preempt_by_service,
        )
        return ORDERINGS[self.policy.ordering](self.q, ctx)

    def _holder_rows(self, rows: np.ndarray) -> np.ndarray:
        """Per ordered row: does the job's project hold an active reservation (so it may reclaim)?"""
        holders = sorted(
            {g.project for g in self.snap.grants.values() if g.reserved_gpus > 0 and g.start_s <= self.now < g.end_s}
        )
        pids = [pid for pid in (self.q.project_id(p) for p in holders) if pid is not None]
        if not pids or not rows.size:
            return np.zeros(len(rows), dtype=bool)
        return np.isin(self.q.arrays()["project"][rows].astype(np.int64), pids)

    def _task_types(self, klass_rows: np.ndarray) -> tuple[tuple[int, int, float], ...]:
        counts: Counter[tuple[int, int]] = Counter()
        for k, n in zip(*np.unique(klass_rows, return_counts=True), strict=True):
            key = self.q.class_keys[int(k)]
            counts[(int(key[1]), int(key[0]))] += int(n)  # type: ignore[call-overload]
        total = sum(counts.values()) or 1
        return tuple((m, g, n / total) for (m, g), n in sorted(counts.items()))

    # ---- 2. walk the queue ---------------------------------------------------------------------------------
    def _walk_chunk(self, walk: _Walk, start: int) -> bool:
        """Examine the chunk's positions whose class has not failed yet; False once the walk must stop."""
        klass, holder, book = walk.klass, walk.holder, walk.book
        failed = book.failed
        chunk = slice(start, start + _CHUNK)
        todo = np.flatnonzero((~failed[klass[chunk]] & (walk.limits[chunk] < book.cut[klass[chunk]])) | holder[chunk])
        todo += start
        for pos in todo.tolist():
            k = int(klass[pos])
            mine = bool(holder[pos])
            if failed[k] and not mine:
                continue
            if walk.done():
                return False
            walk.holders_left -= mine
            job = walk.jobs[walk.rows_list[pos]]
            assert job is not None
            walk.outcome[pos] = self._examine(walk, k, job, mine)
        return True

    def _examine(self, walk: _Walk, k: int, job: Job, mine: bool) -> int:
        """The job's outcome (``ADMITTED`` or its reason's number), and what its class learns from it."""
        book = walk.book
        too_long = book.longest_fit.get(k)
        if too_long is not None and not mine and job.time_limit_s >= too_long[0]:
            # a class-mate with a shorter time limit could not start without delaying a reservation
            return too_long[1]
        walk.examined += 1
        elig = walk.eligibility.get(k)
        if elig is None:
            elig = walk.eligibility[k] = self._eligibility(k, job)
        if elig.reason is not None:
            idx = book.index_of(elig.reason)
            book.fail_class(k, elig.reason)
            return idx
        no = self._schedule(job, elig.pools)
        if no is None:
            return ADMITTED
        assert no.reason is not None
        idx = book.index_of(no.reason)
        if no.scope == CLASS:
            book.fail_class(k, no.reason)
        elif no.scope == TIME_LIMIT and not mine:
            book.cut_at(k, job.time_limit_s, idx)
        return idx

    def _eligibility(self, k: int, job: Job) -> Eligibility:
        """Per class, remembered across cycles (``CycleMemo``) for as long as the same pools are online."""
        key = self.q.class_keys[k]
        cache = self.ws.memo.eligibility
        cached = cache.get((key, self.ws.online))
        if isinstance(cached, Eligibility):
            return cached
        if len(cache) > ELIGIBILITY_LIMIT:
            cache.clear()
        elig = cache[(key, self.ws.online)] = eligible_pools(self.ws.cap, job, str(key[-1]))
        return elig

    def _decision(self, walk: _Walk) -> Decision:
        """Everything not examined gets its class's reason, its time limit's, or the per-cycle bound's."""
        book, outcome = walk.book, walk.outcome
        limit = book.index_of(_CYCLE_LIMIT)
        unexamined = outcome == NOT_EXAMINED
        ks = walk.klass[unexamined]
        too_long_here = walk.limits[unexamined] >= book.cut[ks]
        of_class = book.class_reason[ks]
        outcome[unexamined] = np.where(book.failed[ks], of_class, np.where(too_long_here, book.cut_reason[ks], limit))
        waiting = np.flatnonzero(outcome >= 0)
        ws = self.ws
        return Decision(
            admissions=tuple(ws.admissions),
            preemptions=tuple(ws.preemptions),
            reservations=tuple(ws.reservations),
            pending=PendingReasons(self.q.ids, walk.rows[waiting], outcome[waiting], book.reasons),
        )

    # ---- 3-5. one job ----------------------------------------------------------------------------------------
    def _schedule(self, job: Job, pools: tuple[int, ...]) -> NoFit | None:
        """Admit the job (None), or say why not and how far that reaches (``NoFit.scope``)."""
        got = self._choices(job, pools)
        if isinstance(got, NoFit):
            return got
        choices, scope = got
        placed = self.placer.place(job, choices)
        if not isinstance(placed, NoFit):
            self.ws.admit(job, placed, self.now)
            return None
        if placed.scope > scope:
            scope = placed.scope
        plan = self.preemptor.find(job, choices)
        if plan is not None:
            for victim in plan.victims:
                self.ws.preempt(victim, job, self.preemptor.reason(job, victim))
            self.ws.admit(job, plan.fit, self.now + self.policy.grace_s)
            return None
        return NoFit(self._waiting(job, choices), scope)

    def _choices(self, job: Job, pools: tuple[int, ...]) -> tuple[list[PoolChoice], int] | NoFit:
        """The pools the job may use now (grant and program rules, quota, power, credit) and the scope of what
        held it back so far, or why it may use none."""
        ws = self.ws
        rules = ws.rules
        rule_block = rules.check(job)
        if rule_block is not None:
            return NoFit(rule_block, JOB)
        scope = CLASS
        scavenger = rules.scavenger(job)
        if scavenger and job.priority != PriorityClass.SCAVENGER:
            scope = JOB  # demoted by its project's grant, not by its class
        choices, quota_reason, power_reason, limited = ws.quota.choices(job, pools, scavenger, ws.blocked_pools)
        if choices and job.project in rules.credit_projects:
            choices, credit_reason = self._affordable(job, choices)
            if credit_reason is not None:
                if not self._demoted_by_credit(job):
                    return NoFit(credit_reason, JOB)
                scope = JOB  # its own grant, not its class
                choices, quota_reason, power_reason, limited = ws.quota.choices(job, pools, True, ws.blocked_pools)
        if limited:
            scope = JOB  # its project's borrowing, not its class
        if not choices:
            if quota_reason is not None:
                # only borrowed capacity for a job that may not borrow: so for its class-mates too
                return NoFit(quota_reason, scope)
            # every pool is at its power cap or blocked behind a job ahead of it (backfill is off)
            return NoFit(_BEHIND_BLOCKED if power_reason is None else power_reason, JOB)
        return choices, scope

    def _waiting(self, job: Job, choices: list[PoolChoice]) -> PendingReason:
        """A job that fits nowhere now: keep later jobs off its pools (backfill off), reserve capacity for it
        (while the policy allows more), or say what it waits for."""
        ws = self.ws
        if ws.modes.backfill.blocks_pools:
            ws.blocked_pools.update(c.pool for c in choices)
        if ws.reservations_left > 0 and self.now - job.submit_s >= self.policy.reserve_after_s:
            reservation = ws.reserve(job, choices)
            if reservation is not None:
                return reservation
        if ws.any_reservation:
            return _BEHIND_RESERVATIONS
        return self.placer.waiting_reason(job, choices)

    def _affordable(self, job: Job, choices: list[PoolChoice]) -> tuple[list[PoolChoice], PendingReason | None]:
        """The choices whose grant credit covers the job's time limit at the pool's SU rate; when none does, why
        (for the cheapest of them)."""
        rules, pools = self.ws.rules, self.ws.cap.pools
        kept = [c for c in choices if rules.covers(job, pools[c.pool].model, pools[c.pool].su_weight, c.guaranteed)]
        if kept:
            return kept, None
        cheapest = min(choices, key=lambda c: (pools[c.pool].su_weight, c.pool))
        p = pools[cheapest.pool]
        return kept, rules.credit_reason(job, p.model, p.su_weight, cheapest.guaranteed)

    def _demoted_by_credit(self, job: Job) -> bool:
        """A job its grant's credit does not cover runs as scavenger (borrowed capacity, drawing no credit) when
        the program of the grant that covers it says so; otherwise it waits for credit."""
        grant = self.ws.rules.charged(job, "", False)
        return grant is not None and grant.on_exhausted == OnExhausted.SCAVENGER
