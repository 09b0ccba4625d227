"""The digital twin's discrete-event loop. It drives the same ``sched.cycle`` as the live service and holds
no policy of its own: it only advances a virtual clock and realizes decisions.

Events (a heap of ``(time, seq, kind, payload)``; arrivals stream from the sorted workload): arrivals,
completions, time-limit kills, preemptions with restart from the last checkpoint (lost work counted), node
failures and repairs, pools coming online, hourly under-use checks of reserved grants; grants start and
expire by their dates inside the core. Every state change between cycles (arrivals, starts, ends, estimator,
usage, credit, under-use) goes through ``sched.ledger``, as in the live controller.
Scheduling runs when something changed, at most once per ``interval_s``. Seeded: same inputs, same run.
"""

from __future__ import annotations

import dataclasses
import gc
import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from kfabric.model.decision import Admission, Decision
from kfabric.model.fleet import Fleet
from kfabric.model.job import Job
from kfabric.model.reasons import PendingReason
from kfabric.sched import ledger
from kfabric.sched.capacity import Capacity
from kfabric.sched.cycle import cycle
from kfabric.sched.fairshare import TenantInfo, shares
from kfabric.sched.ledger import Ledger
from kfabric.sched.memo import CycleMemo
from kfabric.sched.policy import Policy
from kfabric.sched.queue import PendingQueue
from kfabric.sched.snapshot import GrantState, Snapshot, placement_milli
from kfabric.sim.metrics import JobRecord
from kfabric.sim.speed import RunTimeScale
from kfabric.sim.workload import SimJob, Workload

#: Meta's Llama 3 report: 419 unexpected interruptions in 54 days on 16,384 GPUs
LLAMA3_FAILURES_PER_GPU_S = 419 / (54 * 86_400 * 16_384)

_END, _FAIL, _REPAIR, _ONLINE, _CYCLE, _UNDERUSE, _WAKE = 0, 1, 2, 3, 4, 5, 6
#: new container objects between young garbage collections while a simulation runs (Python's default: 700)
GC_YOUNG_THRESHOLD = 50_000

Progress = Callable[[float, int, int], None]


@dataclass(frozen=True)
class SimOptions:
    start: date
    days: float | None = None
    interval_s: float = 60.0
    failures_per_gpu_s: float = LLAMA3_FAILURES_PER_GPU_S
    repair_s: float = 4 * 3600.0
    sample_s: float = 3600.0
    seed: int = 0


@dataclass(slots=True)
class _Live:
    sim: SimJob
    remaining_s: float
    first_start_s: float = -1.0
    work_start_s: float = 0.0
    restarts: int = 0
    preemptions: int = 0
    lost_gpu_s: float = 0.0
    gpu_s: float = 0.0
    su: float = 0.0
    token: int = 0
    pool: str = ""
    timeout: bool = False
    #: credit held for the current attempt: the grant's id ("" for none) and SU-hours (time limit x SU rate)
    credit_grant: str = ""
    credit_su: float = 0.0
    #: the job's run-time estimator key ids, interned once at arrival
    keys: tuple[int, ...] = ()
    #: seconds on the current attempt's GPU model per second of reference run time (``sim.speed``)
    scale: float = 1.0


@dataclass
class Timeline:
    t_s: list[float] = field(default_factory=list)
    queue: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    online_gpus: list[float] = field(default_factory=list)
    allocated_gpus: list[float] = field(default_factory=list)
    by_owner: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    by_site: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    power_mw: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    fragmentation: list[float] = field(default_factory=list)


class Simulator:
    def __init__(
        self,
        fleet: Fleet,
        workload: Workload,
        policy: Policy,
        options: SimOptions,
        tenants: Mapping[str, TenantInfo] | None = None,
        grants: Mapping[str, GrantState] | None = None,
        wall_clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """``wall_clock`` only measures the run's own speed (cycle seconds); it never affects decisions."""
        self.wall_clock = wall_clock
        self.fleet, self.workload, self.policy, self.opt = fleet, workload, policy, options
        self.rng = np.random.default_rng(options.seed)
        self.tenants = dict(tenants or {})
        self.tenants.update(workload.tenants)
        cap = Capacity(fleet)
        self.snap = Snapshot(cap, tenants=self.tenants, grants=dict(grants or {}))
        #: what the scheduling cycles remember between them for speed (``sched.memo``)
        self.memo = CycleMemo()
        #: every state change between cycles goes through the ledger (the live controller's too)
        self.ledger = Ledger(self.snap, policy.fairshare_half_life_s)
        #: run times are true on the workload's reference GPU model; other models scale them (docs/gpu-speeds.md)
        self.speed = RunTimeScale(fleet.gpu_models, workload.reference_model, workload.job_type_throughputs)
        #: projects with a credit-limited grant (the only ones whose starts reserve credit)
        self.credit_projects = frozenset(g.project for g in self.snap.grants.values() if g.credit_left_su is not None)
        self.queue = PendingQueue(self.snap.estimator)
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.now = 0.0
        self.live: dict[str, _Live] = {}
        self.records: list[JobRecord] = []
        self.node_jobs: dict[int, set[str]] = defaultdict(set)
        self.su_total: dict[str, float] = defaultdict(float)
        self.cycle_due = False
        self.cycle_pending = False
        self.last_cycle = -math.inf
        self.cycles = 0
        self.rejected = 0
        #: arrivals refused by admission control, by reason code (``ReasonCode`` values)
        self.rejected_by_reason: dict[str, int] = defaultdict(int)
        #: GPU-seconds held per pool by attempts that ended (``running_gpu_s`` adds those still running), and the
        #: part of it on borrowed capacity
        self.gpu_s_by_pool: dict[str, float] = defaultdict(float)
        self.borrowed_gpu_s_by_pool: dict[str, float] = defaultdict(float)
        #: why each job was left waiting by the latest cycle
        self.pending_reasons: Mapping[str, PendingReason] = {}
        self.cycle_s = 0.0
        self.allocated_milli = 0.0
        self.allocated_gpu_s = 0.0
        self.online_gpu_s = 0.0
        self.timeline = Timeline()
        self.next_sample = 0.0
        self.horizon = options.days * 86_400.0 if options.days is not None else math.inf
        for i, pool in enumerate(fleet.pools):
            offset = (pool.online - options.start).days * 86_400.0
            if offset <= 0:
                cap.set_pool_online(i, True)
            else:
                self._push(offset, _ONLINE, i)
        self._schedule_failure()
        if self.ledger.watched():
            self._push(0.0, _UNDERUSE, None)
        # a grant starting or ending changes what a cycle may decide with no other event (the live cycles each tick)
        for t in sorted({x for g in self.snap.grants.values() for x in (g.start_s, g.end_s) if 0 < x < math.inf}):
            self._push(t, _WAKE, None)

    # ---- the loop ----------------------------------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> None:
        # The garbage collector took ~10 % of a national run: the fleet and the workload (millions of objects)
        # live as long as the run, so they are moved out of its reach (given back afterwards unless the caller
        # had frozen objects itself), and a young collection waits for 50,000 new container objects instead of
        # 700 (the run allocates millions, few in reference cycles). Neither changes what the run decides.
        thawed = gc.get_freeze_count() == 0
        threshold = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(max(threshold[0], GC_YOUNG_THRESHOLD), *threshold[1:])
        try:
            self._run(progress)
        finally:
            gc.set_threshold(*threshold)
            if thawed:
                gc.unfreeze()

    def _run(self, progress: Progress | None) -> None:
        jobs = self.workload.jobs
        nxt = 0
        last_report = -math.inf
        while True:
            t_arrival = jobs[nxt].job.submit_s if nxt < len(jobs) else math.inf
            t_event = self.heap[0][0] if self.heap else math.inf
            t = min(t_arrival, t_event)
            if t == math.inf or t > self.horizon:
                self._advance(min(self.horizon, self.now if t == math.inf else self.horizon))
                break
            self._advance(t)
            while nxt < len(jobs) and jobs[nxt].job.submit_s <= t:
                self._arrive(jobs[nxt])
                nxt += 1
            while self.heap and self.heap[0][0] <= t:
                _, _, kind, payload = heapq.heappop(self.heap)
                self._handle(kind, payload)
            if self.cycle_due and len(self.queue):
                if t >= self.last_cycle + self.opt.interval_s:
                    self._cycle()
                # still due after a cycle whose preemptions requeued work: the next cycle comes one interval later,
                # as the live controller's next tick (not at the next unrelated event)
                if self.cycle_due and len(self.queue) and not self.cycle_pending:
                    self.cycle_pending = True
                    self._push(self.last_cycle + self.opt.interval_s, _CYCLE, None)
            if progress is not None and t - last_report >= 3600.0:
                last_report = t
                progress(t, len(self.records), len(self.queue))
            if nxt >= len(jobs) and not self.live and not self.heap_has_work():
                break
        if progress is not None:
            progress(self.now, len(self.records), len(self.queue))

    def heap_has_work(self) -> bool:
        return any(kind in (_END, _CYCLE) for _, _, kind, _ in self.heap)

    def _push(self, t: float, kind: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, payload))

    def _advance(self, t: float) -> None:
        """Move the clock to ``t``: integrate utilization and emit timeline samples on the way."""
        while self.next_sample <= t and self.next_sample <= self.horizon:
            self._sample(self.next_sample)
            self.next_sample += self.opt.sample_s
        dt = t - self.now
        if dt > 0:
            self.allocated_gpu_s += self.allocated_milli / 1000.0 * dt
            self.online_gpu_s += float(self.snap.capacity.pool_up_milli.sum()) / 1000.0 * dt
            self.now = t

    # ---- events --------------------------------------------------------------------------------------------
    def _arrive(self, sj: SimJob) -> None:
        admitted = ledger.arrival(self.snap, sj.job, self.now)
        if not admitted.queued:
            # refused by its project's grants, by the service's own rule (sched.ledger.arrival)
            self.rejected += 1
            self.rejected_by_reason[admitted.code.value if admitted.code is not None else "refused"] += 1
            return
        keys = self.snap.estimator.key_ids(sj.job)
        self.live[sj.job.id] = _Live(sj, remaining_s=sj.run_s, keys=keys)
        self.queue.add(sj.job, self._affiliation(sj.job), keys)
        self.cycle_due = True

    def _affiliation(self, job: Job) -> str:
        tenant = self.tenants.get(job.project)
        return tenant.affiliation if tenant else ""

    def _handle(self, kind: int, payload: object) -> None:
        if kind == _END:
            assert isinstance(payload, tuple)
            job_id, token = str(payload[0]), int(payload[1])
            lv = self.live.get(job_id)
            if lv is not None and lv.token == token:
                self._end(job_id, lv)
        elif kind == _FAIL:
            self._fail()
        elif kind == _REPAIR:
            assert isinstance(payload, int)
            self.snap.capacity.set_up(payload, True)
            self.cycle_due = True
        elif kind == _ONLINE:
            assert isinstance(payload, int)
            self.snap.capacity.set_pool_online(payload, True)
            self.cycle_due = True
        elif kind == _CYCLE:
            self.cycle_pending = False
            self.cycle_due = True
        elif kind == _WAKE:
            self.cycle_due = True
        elif kind == _UNDERUSE:
            if any(action == ledger.RECLAIMED for _g, _p, action in self.ledger.check_underuse(self.now)):
                self.cycle_due = True
            self._push(self.now + ledger.UNDERUSE_INTERVAL_S, _UNDERUSE, None)

    def _end(self, job_id: str, lv: _Live) -> None:
        run_s = self.now - lv.work_start_s
        self._stop(job_id, lv)
        lv.remaining_s = 0.0
        state = ledger.TIMEOUT if lv.timeout else ledger.FAILED if lv.sim.fails else ledger.SUCCEEDED
        self.ledger.learn(lv.sim.job, state, run_s, lv.keys)
        self._record(job_id, lv, state)
        self.cycle_due = True

    def _record(self, job_id: str, lv: _Live, state: str) -> None:
        job = lv.sim.job
        del self.live[job_id]
        self.records.append(
            JobRecord(
                job_id=job_id,
                project=job.project,
                gpus=job.whole_gpus,
                submit_s=job.submit_s,
                start_s=lv.first_start_s,
                end_s=self.now,
                run_s=lv.sim.run_s,
                preemptions=lv.preemptions,
                lost_gpu_s=lv.lost_gpu_s,
                gpu_s=lv.gpu_s,
                su=lv.su,
                state=state,
                pool=lv.pool,
                gpu_model=self.snap.capacity.pool_by_name[lv.pool].model if lv.pool else "",
            )
        )

    def _stop(self, job_id: str, lv: _Live, give: bool = True) -> float:
        """Take a running job off its GPUs; returns the seconds of work it did in this run."""
        done = self.ledger.finish(job_id, self.now, give)
        run = done.run
        lv.gpu_s += done.gpu_s
        lv.su += done.su
        self.su_total[run.job.project] += done.su
        self.gpu_s_by_pool[run.placement.pool] += done.gpu_s
        if run.borrowed:
            self.borrowed_gpu_s_by_pool[run.placement.pool] += done.gpu_s
        if lv.credit_grant:
            self.ledger.release_credit(lv.credit_grant, lv.credit_su, done.su / 3600.0)
            lv.credit_grant, lv.credit_su = "", 0.0
        self.allocated_milli -= run.milli
        for share in run.placement.shares:
            self.node_jobs[share.node].discard(job_id)
        return max(0.0, self.now - lv.work_start_s)

    def _interrupt(self, job_id: str, why: str, give: bool = True) -> None:
        """Preemption or node failure: the job goes back to the queue and keeps work up to its checkpoint."""
        lv = self.live[job_id]
        done = self._stop(job_id, lv, give)
        job = lv.sim.job
        restart = job.restart_cost_s if lv.restarts else 0.0
        useful = max(0.0, done - restart)
        interval = job.checkpoint_interval_s
        saved = math.floor(useful / interval) * interval if interval else 0.0
        lv.remaining_s = max(lv.remaining_s - saved / lv.scale, 1.0)  # back to reference-model seconds
        lv.lost_gpu_s += (done - saved) * job.whole_gpus
        lv.token += 1
        if why == "preempted":
            lv.preemptions += 1
        self.queue.add(job, self._affiliation(job), lv.keys)
        self.cycle_due = True

    def _schedule_failure(self) -> None:
        """Failures arrive as a Poisson process over the GPUs online now (re-drawn at each failure)."""
        online = float(self.snap.capacity.pool_up_milli.sum()) / 1000.0
        rate = self.opt.failures_per_gpu_s * max(online, 1.0)
        if self.opt.failures_per_gpu_s <= 0:
            return
        self._push(self.now + float(self.rng.exponential(1.0 / rate)), _FAIL, None)

    def _fail(self) -> None:
        cap = self.snap.capacity
        weights = np.where(cap.up, cap.node_gpus, 0).astype(np.float64)
        total = weights.sum()
        if total > 0:
            # a node drawn with probability proportional to its GPUs: the same draw as
            # ``rng.choice(n, p=weights / total)`` (one uniform, inverse CDF) without its slow checks of p
            cdf = np.cumsum(weights / total)
            cdf /= cdf[-1]
            node = int(cdf.searchsorted(self.rng.random(), side="right"))
            for job_id in sorted(self.node_jobs.get(node, ())):
                self._interrupt(job_id, "node_failure")
            cap.set_up(node, False)
            self._push(self.now + self.opt.repair_s, _REPAIR, node)
        self._schedule_failure()

    # ---- scheduling ----------------------------------------------------------------------------------------
    def _cycle(self) -> None:
        self.ledger.accrue(self.now)
        t0 = self.wall_clock()
        # keep: the cycle leaves the capacity as its decision does, so applying it below touches no GPUs twice
        decision = cycle(self.snap, self.queue, self.policy, self.now, keep=True, memo=self.memo)
        self.cycle_s += self.wall_clock() - t0
        self.cycles += 1
        self.last_cycle = self.now
        self.cycle_due = False
        self.pending_reasons = decision.pending
        self._apply(decision)

    def _apply(self, decision: Decision) -> None:
        starts = ledger.start_times(self.snap, decision, self.now, ledger.grace_s(self.policy))
        for pre in decision.preemptions:
            self._interrupt(pre.job_id, "preempted", give=False)
        for adm in decision.admissions:
            at = starts[adm.job_id]
            self._start(adm if at == adm.start_at_s else dataclasses.replace(adm, start_at_s=at))

    def _start(self, adm: Admission) -> None:
        job = self.queue.remove(adm.job_id)
        lv = self.live[adm.job_id]
        self.ledger.start(job, adm.placement, self.now, adm.borrowed, adm.guaranteed, take=False)
        if lv.first_start_s < 0:
            lv.first_start_s = adm.start_at_s
        lv.work_start_s = adm.start_at_s
        lv.pool = adm.placement.pool
        # the work left is in seconds on the reference model: this pool's GPU model runs it faster or slower
        lv.scale = self.speed.factor(job, self.snap.capacity.pool_by_name[lv.pool].model)
        need = lv.remaining_s * lv.scale + (job.restart_cost_s if lv.restarts else 0.0)
        lv.restarts += 1
        limit = job.time_limit_s  # from the attempt's start, as every backend counts it (not from the admission)
        lv.timeout = need > limit
        lv.token += 1
        self._push(adm.start_at_s + min(need, limit), _END, (adm.job_id, lv.token))
        self.allocated_milli += placement_milli(adm.placement)
        victim_at = ledger.victim_from_s(self.policy, job, self.now)
        if victim_at is not None:
            self._push(victim_at, _WAKE, None)
        if job.project in self.credit_projects:
            pool = self.snap.capacity.pool_by_name[adm.placement.pool]
            held = self.ledger.hold_credit(job, pool.model, pool.su_weight, adm.guaranteed, self.now)
            lv.credit_grant, lv.credit_su = held
        for share in adm.placement.shares:
            self.node_jobs[share.node].add(adm.job_id)

    # ---- observation ---------------------------------------------------------------------------------------
    def _sample(self, t: float) -> None:
        cap = self.snap.capacity
        tl = self.timeline
        tl.t_s.append(t)
        tl.queue.append(len(self.queue))
        tl.running.append(len(self.snap.running))
        tl.online_gpus.append(float(cap.pool_up_milli.sum()) / 1000.0)
        tl.allocated_gpus.append(self.allocated_milli / 1000.0)
        used = (cap.pool_up_milli - cap.pool_milli) / 1000.0
        by_owner: dict[str, float] = defaultdict(float)
        by_site: dict[str, float] = defaultdict(float)
        for p in cap.pools:
            by_owner[p.owner] += float(used[p.index])
            by_site[cap.sites[p.site].name] += float(used[p.index])
        for owner in sorted({p.owner for p in cap.pools}):
            tl.by_owner[owner].append(by_owner[owner])
        for site in cap.sites:
            tl.by_site[site.name].append(by_site[site.name])
            tl.power_mw[site.name].append(float(cap.site_kw[site.index]) / 1000.0)
        tl.fragmentation.append(self._fragmentation())

    def _fragmentation(self) -> float:
        """Share of free GPUs on nodes that cannot host the queue's typical (median) whole-GPU request."""
        cap = self.snap.capacity
        arrays = self.queue.arrays()
        alive = arrays["alive"] > 0
        if not alive.any():
            return 0.0
        typical = max(1, round(float(np.median(arrays["milli"][alive])) / 1000.0))
        free = np.where(cap.up, cap.whole, 0)
        total = float(free.sum())
        if total <= 0:
            return 0.0
        per_node = np.minimum(typical, cap.node_gpus)
        stranded = float(free[free < per_node].sum())
        return stranded / total

    def unfinished_records(self) -> list[JobRecord]:
        """Jobs still in the system at the end (running or never started), as records at ``now`` (the window's
        end): a running job's GPU time and service units include its current attempt; a job that never started
        is ``censored`` (its wait is at least ``now - submit``) with the latest cycle's reason for its wait."""
        out: list[JobRecord] = []
        for job_id, lv in self.live.items():
            job = lv.sim.job
            run = self.snap.running.get(job_id)
            gpu_s, su = lv.gpu_s, lv.su
            if run is not None:
                held = max(0.0, self.now - run.start_s) * run.milli / 1000.0
                gpu_s += held
                su += held * self.snap.capacity.pool_by_name[run.placement.pool].su_weight
            reason = self.pending_reasons.get(job_id) if lv.first_start_s < 0 else None
            out.append(
                JobRecord(
                    job_id=job_id,
                    project=job.project,
                    gpus=job.whole_gpus,
                    submit_s=job.submit_s,
                    start_s=lv.first_start_s if lv.first_start_s >= 0 else math.nan,
                    end_s=math.nan,
                    run_s=lv.sim.run_s,
                    preemptions=lv.preemptions,
                    lost_gpu_s=lv.lost_gpu_s,
                    gpu_s=gpu_s,
                    su=su,
                    state="running" if run is not None else "pending",
                    pool=lv.pool,
                    gpu_model=self.snap.capacity.pool_by_name[lv.pool].model if lv.pool else "",
                    window_end_s=self.now,
                    reason=reason.code.value if reason is not None else "",
                )
            )
        return out

    def running_gpu_s(self) -> tuple[dict[str, float], dict[str, float]]:
        """GPU-seconds per pool held by the attempts running now (all, and on borrowed capacity), up to ``now``."""
        held: dict[str, float] = defaultdict(float)
        borrowed: dict[str, float] = defaultdict(float)
        for run in self.snap.running.values():
            gpu_s = max(0.0, self.now - run.start_s) * run.milli / 1000.0
            held[run.placement.pool] += gpu_s
            if run.borrowed:
                borrowed[run.placement.pool] += gpu_s
        return held, borrowed

    def entitlement(self) -> dict[str, float]:
        return shares(self.tenants) if self.tenants else {}
