"""The controller loop: reconcile backends → load the snapshot → ``sched.cycle`` → apply the decision in one
transaction → dispatch to backends outside any transaction → periodic accounting.

Crash safety: every step reads its work from the store, so a controller killed at any point resumes where
the store says. An admitted job is launched with its attempt number; backends refuse a second launch of the
same attempt, so a launch repeated after a crash never starts the job twice. A job whose launched attempt the
backend no longer knows is requeued as the next attempt.

Several servers, one leader (``service/leadership.py``): the loop of the server holding the ``controller`` lease
calls :meth:`Controller.lead` at takeover (fresh in-memory state, backends fenced to the new epoch). From then on
every write transaction of a decision (reconcile, apply, dispatch's state changes, launch bookkeeping, accounting,
the grant check) is fenced by the lease's epoch, and every launch and terminate is preceded by a check of the
lease's local deadline; a controller that lost the lease gets :class:`NotLeader` and writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, object_session, sessionmaker

from kfabric.backends.base import Backend, BackendUnavailable, LaunchSpec, NodeGpus, RunReport, RunState
from kfabric.backends.fencing import Fenced
from kfabric.model.decision import Admission, Decision, Preemption
from kfabric.model.errors import NotFound, ValidationError
from kfabric.model.job import JobState
from kfabric.scenarios.loader import Scenario, load_text
from kfabric.sched import ledger
from kfabric.sched.cycle import cycle
from kfabric.sched.expected_start import Estimate, expected_starts
from kfabric.sched.policy import Policy
from kfabric.service import audit, credit, fleet_changes, job_output, node_health, policy_changes
from kfabric.service.grants import check_underuse
from kfabric.service.jobs import transition
from kfabric.service.jobspec import placement_to_json
from kfabric.service.leadership import LEASE, FencedSessions, Leadership, NotLeader
from kfabric.service.live_state import LiveState
from kfabric.service.logs import event
from kfabric.service.usage import account, choose_grant
from kfabric.store import rowcache
from kfabric.store import tables as t

log = logging.getLogger("kfabric.controller")
#: a launch's outcome: (job row id, backend, None when launched or the exception its launch raised)
Launched = tuple[int, str, BaseException | None]
#: the actor of the controller's own audit entries
CONTROLLER = "controller"

ADMITTED, RUNNING, PENDING = JobState.ADMITTED.value, JobState.RUNNING.value, JobState.PENDING.value
FINAL_OF = {
    RunState.SUCCEEDED: JobState.SUCCEEDED,
    RunState.FAILED: JobState.FAILED,
    RunState.CANCELLED: JobState.CANCELLED,
    RunState.TIMEOUT: JobState.TIMEOUT,
}
#: how a run ended, in the ledger's words (``sched.ledger``: which ends the run-time estimator learns from)
OUTCOME_OF = {
    JobState.SUCCEEDED: ledger.SUCCEEDED,
    JobState.FAILED: ledger.FAILED,
    JobState.TIMEOUT: ledger.TIMEOUT,
    JobState.CANCELLED: ledger.CANCELLED,
}


@dataclass(frozen=True, slots=True)
class RunEnd:
    """A run that left its GPUs, for the ledger once its transaction committed: job, when, how, seconds it ran."""

    job_id: str
    at_s: float
    outcome: str
    run_s: float


#: a pending job's reason and expected start, written for many jobs in one executemany (``Controller._apply``)
_JOBS = cast(Table, t.Job.__table__)
_SET_PENDING_REASON = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("b_id"), _JOBS.c.state == PENDING)
    .values(
        reason_code=bindparam("b_code"),
        reason=bindparam("b_reason"),
        expected_start_s=bindparam("b_start"),
        expected_start_why=bindparam("b_why"),
    )
)


@dataclass
class TickReport:
    now_s: float
    admitted: int = 0
    preempting: int = 0
    launched: int = 0
    started: int = 0
    ended: int = 0
    requeued: int = 0
    pending: int = 0
    cycle_ms: float = 0.0
    unavailable: list[str] = field(default_factory=list)
    # metrics: admissions by capacity (reserved, shared, borrowed), requeues by cause (preempted, lost, withdrawn),
    # ends by final state, failures by cause (failed, timeout, launch_refused); submit-to-start seconds of jobs
    # that started for the first time
    admitted_by: Counter[str] = field(default_factory=Counter)
    requeue_causes: Counter[str] = field(default_factory=Counter)
    ended_states: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    start_waits_s: list[float] = field(default_factory=list)
    #: log: decisions (event name, fields) written once their transaction committed (``Controller._flush``)
    events: list[tuple[str, dict[str, object]]] = field(default_factory=list)


class Controller:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        scenario: Scenario,
        policy: Policy,
        backends: Mapping[str, Backend],
        clock: Callable[[], float] = time.time,
        account_interval_s: float = 300.0,
        underuse_interval_s: float = 3600.0,
    ) -> None:
        self.sessions = sessions
        self.scenario = scenario
        self.policy = policy
        self.live = LiveState(scenario, policy)
        self.backends = dict(backends)
        self.clock = clock
        self.account_interval_s = account_interval_s
        self.underuse_interval_s = underuse_interval_s
        self._underuse_at_s = -math.inf
        fleet = scenario.fleet
        # a backend configured under a cluster's own name serves that cluster (two Slurm clusters are two
        # backends); otherwise the cluster's backend kind names it (one ``local``, one ``sim``)
        cluster_backend = {c.name: c.name if c.name in self.backends else c.backend for c in fleet.clusters}
        self.pool_backend = {p.name: cluster_backend[p.cluster] for p in fleet.pools}
        missing = sorted(set(self.pool_backend.values()) - set(self.backends))
        if missing:
            raise ValueError(f"the fleet's clusters use backends {missing} that are not configured")
        self.live.set_backends(self.pool_backend)
        self.node_names = self.live.node_names
        self._reasons: dict[str, tuple[str, str, float | None, str]] = {}
        #: the last cycle's expected starts of pending jobs (sched/expected_start.py), written by ``_apply``
        self._expected: dict[str, Estimate] = {}
        self._terminating: set[tuple[str, int]] = set()
        #: launches handed to the launcher thread, by (row id, attempt), and the batches under way (see dispatch)
        self._in_flight: set[tuple[int, int]] = set()
        self._batches: list[tuple[Future[list[Launched]], list[tuple[int, int]]]] = []
        self._launcher: ThreadPoolExecutor | None = None
        #: runs that ended in the reconcile transaction in progress (the ledger takes them once it commits)
        self._ends: list[RunEnd] = []
        self._accounted_at_s = 0.0
        self._lock = threading.Lock()
        self.last_tick: TickReport | None = None
        #: called with each tick's report at its end (``/metrics`` folds them into counters)  # metrics
        self.observers: list[Callable[[TickReport], None]] = []  # metrics
        #: set by :meth:`lead` (many servers, one leader): every decision's write is fenced by the lease's epoch
        self.leadership: Leadership | None = None
        self.epoch: int | None = None

    # ---- leadership (service/leadership.py) ------------------------------------------------------------------
    def lead(self, leadership: Leadership, epoch: int) -> None:
        """Start acting as the leader of ``epoch``: forget every in-memory view (the snapshot, the pending reasons
        written, the terminations asked for; the store is rebuilt into them by the next tick), raise the backends'
        fences to ``epoch`` (a stale leader's launches are refused from now on) and record the takeover."""
        with self._lock:
            self.leadership, self.epoch = leadership, epoch
            self.live = LiveState(self.scenario, self.policy)
            self.live.set_backends(self.pool_backend)
            self.node_names = self.live.node_names
            self._reasons.clear()
            self._terminating.clear()
            self._accounted_at_s = 0.0
            self._underuse_at_s = -math.inf
            for backend in self.backends.values():
                fence = getattr(backend, "fence", None)
                if fence is not None:
                    fence(epoch)
            info = leadership.server
            with self._tx() as s:
                detail = {"epoch": epoch, "server": info.id, "host": info.host, "pid": info.pid, "url": info.url}
                audit.record(s, CONTROLLER, "lease.acquire", "lease", LEASE, self.clock(), None, detail)

    def _require_lease(self) -> None:
        """Before a backend call: this server still holds its epoch on its local monotonic deadline."""
        if self.leadership is not None and self.epoch is not None:
            self.leadership.require(self.epoch)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Session]:
        """A write transaction for a decision: fenced by the lease (NotLeader, rolled back, when it ended)."""
        if self.leadership is None or self.epoch is None:
            with self.sessions.begin() as s:
                yield s
            return
        with self.leadership.fenced(self.epoch) as s:
            yield s

    def _fenced_sessions(self) -> sessionmaker[Session]:
        if self.leadership is None or self.epoch is None:
            return self.sessions
        return cast("sessionmaker[Session]", FencedSessions(self.sessions, self.leadership, self.epoch))

    @property
    def preempt_grace_s(self) -> float:
        """Seconds a preempted job gets between SIGTERM and the kill: the live policy's ``grace_s`` (the twin's too,
        ``sched.ledger.grace_s``), read at each use so that a policy applied at run time takes effect at the next
        terminate."""
        return ledger.grace_s(self.policy)

    # ---- the loop --------------------------------------------------------------------------------------------
    def tick(self) -> TickReport:
        with self._lock:
            rep = TickReport(self.clock())
            self.follow_changes(rep.now_s)  # issue 16: stored fleet and policy changes take effect (end of class)
            self.reconcile(rep)
            self._flush(rep)  # log: what the step committed
            self.schedule(rep)
            self._flush(rep)  # log
            self.dispatch(rep)
            self._flush(rep)  # log
            if rep.now_s - self._accounted_at_s >= self.account_interval_s:
                self.account_running(rep.now_s)
            if rep.now_s - self._underuse_at_s >= self.underuse_interval_s:
                # usage up to now first, so a busy grant is not flagged for its current interval
                self.account_running(rep.now_s)
                for grant, pct, action in check_underuse(self._fenced_sessions(), rep.now_s):
                    if action != "ok":
                        event(log, "grant.underuse", grant=grant, used_pct=round(pct, 1), action=action)  # log
                self._underuse_at_s = rep.now_s
            self.last_tick = rep
            for observe in self.observers:  # metrics
                observe(rep)  # metrics
            return rep

    def allocated_gpus(self) -> float:
        return sum(r.gpus for r in self.live.snap.running.values())

    # ---- 1. reconcile ------------------------------------------------------------------------------------------
    def reconcile(self, rep: TickReport) -> None:
        reports: dict[tuple[str, int], RunReport] = {}
        source: dict[tuple[str, int], str] = {}
        polled: set[str] = set()
        for name, backend in self.backends.items():
            try:
                for r in backend.poll():
                    reports[(r.job_id, r.attempt)] = r
                    source[(r.job_id, r.attempt)] = name
                polled.add(name)
            except BackendUnavailable as exc:
                rep.unavailable.append(name)
                event(log, "backend.unavailable", logging.WARNING, backend=name, call="poll", reason=str(exc))  # log
        now = rep.now_s
        self._ends.clear()
        with self._tx() as s:
            node_health.sync(s, self, polled, reports, now)  # node health (service/node_health.py): facts → node_states
            rows = s.scalars(select(t.Job).where(t.Job.state.in_((ADMITTED, RUNNING))).order_by(t.Job.id)).all()
            # every change below is written by one flush at commit: nothing in the loop reads what it wrote from the
            # store (the audit chain's head is in memory), and a flush per job (autoflush before each lookup) was
            # half the controller's time per ended job (benchmarks/bench_slurm_dispatch.py)
            with s.no_autoflush:
                self._reconcile_rows(s, rows, polled, reports, rep)
            active = {(str(row.id), row.attempt) for row in rows if row.state in (ADMITTED, RUNNING)}
        self._settle(self._ends)
        # committed: final attempts no active row waits for are recorded; a backend that keeps every attempt in
        # memory until told (Slurm) drops them, so its poll stays the size of the live work
        for key, r in reports.items():
            backend = self.backends[source[key]]
            forget = getattr(backend, "forget", None) if getattr(backend, "forget_when_recorded", False) else None
            if forget is not None and r.state.final and key not in active:
                forget(*key)

    def _reconcile_rows(
        self,
        s: Session,
        rows: Sequence[t.Job],
        polled: set[str],
        reports: dict[tuple[str, int], RunReport],
        rep: TickReport,
    ) -> None:
        now = rep.now_s
        for row in rows:
            if row.backend not in polled:
                continue
            if not row.launched:
                if (str(row.id), row.attempt) not in reports:
                    continue  # not launched yet: dispatch launches it
                # launched by a controller that died before recording it: adopt the attempt, so that a cancel
                # or preemption terminates it instead of withdrawing a placement whose job runs
                row.launched = True
            r = reports.get((str(row.id), row.attempt)) or RunReport(
                str(row.id), row.attempt, RunState.LOST, message="the backend no longer knows it"
            )
            if r.state is RunState.RUNNING:
                if row.state == ADMITTED:
                    self._started(s, row, r.started_at_s or now, rep)
                    rep.started += 1
                continue
            self._ended(s, row, r, now, rep)

    def _settle(self, ends: list[RunEnd]) -> None:
        """Committed ends go through the ledger (``sched.ledger``), as in the twin: the run leaves the snapshot at its
        end (its use counted to then) and the estimator learns by the ledger's rule."""
        live = self.live
        for end in ends:
            job = live.job(end.job_id)
            if end.job_id in live.snap.running:
                live.ledger.finish(end.job_id, end.at_s)
            if job is not None:
                live.ledger.learn(job, end.outcome, end.run_s)
        ends.clear()

    def _audit(self, s: Session, row: t.Job, action: str, at_s: float, detail: dict[str, object]) -> None:
        """One audit entry about a job, in its tenant's organization (so ``kfabric audit --job ID`` shows it)."""
        org = self.live.projects.get(row.project_id, ("", None))[1]
        fence = {"epoch": self.epoch} if self.epoch is not None else {}
        audit.record(s, CONTROLLER, action, "job", row.id, at_s, org, {"attempt": row.attempt, **fence, **detail})

    def _note(self, rep: TickReport, name: str, row: t.Job, **fields: object) -> None:  # log
        """A decision about ``row`` to log once its transaction has committed (:meth:`_flush`)."""
        rep.events.append((name, {"job_id": row.id, "attempt": row.attempt, "project_id": row.project_id, **fields}))

    def _flush(self, rep: TickReport) -> None:  # log
        """Log the decisions noted so far (their transactions committed: a fenced-out leader logs none)."""
        for name, fields in rep.events:
            event(log, name, **fields)
        rep.events.clear()

    def _started(self, s: Session, row: t.Job, at_s: float, rep: TickReport | None = None) -> None:
        transition(s, row, JobState.RUNNING, at_s, "started")
        self._audit(s, row, "job.start", at_s, {"backend": row.backend})
        if rep is not None:  # metrics, log
            wait = max(0.0, at_s - row.submitted_at_s) if row.started_at_s is None else None  # metrics
            rep.start_waits_s.extend([wait] if wait is not None else [])  # metrics
            self._note(rep, "job.start", row, backend=row.backend, waited_s=wait)  # log
        row.started_at_s = at_s
        row.accounted_to_s = at_s
        row.last_checkpoint_s = at_s

    def _ended(self, s: Session, row: t.Job, r: RunReport, now_s: float, rep: TickReport) -> None:
        end = r.ended_at_s or now_s
        if row.state == ADMITTED:
            self._started(s, row, r.started_at_s or end, rep)
        account(s, row, end, self.live)
        credit.release(row)  # use is charged: the rest of the attempt's credit goes back
        self._terminating.discard((str(row.id), row.attempt))
        natural_end = r.state in (RunState.SUCCEEDED, RunState.FAILED, RunState.TIMEOUT)
        if r.state is RunState.LOST or (row.preempt_requested and not natural_end):
            why = (r.message or "lost by its backend") if r.state is RunState.LOST else (row.reason or "preempted")
            self._ends.append(
                RunEnd(str(row.id), end, ledger.LOST if r.state is RunState.LOST else ledger.PREEMPTED, 0.0)
            )
            transition(s, row, JobState.PREEMPTED, end, why)
            transition(s, row, JobState.PENDING, end, f"requeued after: {why}")
            self._audit(s, row, "job.requeue", end, {"why": why, "exit_code": r.exit_code})
            row.placement, row.launched, row.preempt_requested = None, False, False
            row.reason_code, row.reason = "requeued", f"requeued after: {why}"
            rep.requeued += 1
            cause = "lost" if r.state is RunState.LOST else "preempted"  # metrics
            rep.requeue_causes[cause] += 1  # metrics
            self._note(rep, "job.requeue", row, cause=cause, why=why, exit_code=r.exit_code)  # log
            return
        final = JobState.CANCELLED if row.cancel_requested else FINAL_OF[r.state]
        transition(s, row, final, end, r.message or final.value)
        self._audit(s, row, "job.end", end, {"state": final.value, "exit_code": r.exit_code, "message": r.message})
        row.ended_at_s, row.exit_code = end, r.exit_code
        rep.ended += 1
        rep.ended_states[final.value] += 1  # metrics
        rep.failures.update([final.value] if final in (JobState.FAILED, JobState.TIMEOUT) else [])  # metrics
        self._note(rep, "job.end", row, state=final.value, exit_code=r.exit_code, why=r.message)  # log
        run_s = end - row.started_at_s if row.started_at_s is not None else 0.0
        self._ends.append(RunEnd(str(row.id), end, OUTCOME_OF[final], run_s))

    # ---- 2. schedule and apply ----------------------------------------------------------------------------------
    def schedule(self, rep: TickReport) -> Decision:
        now = rep.now_s
        with self.sessions.begin() as s:
            self.live.sync(s, now)
        t0 = time.perf_counter()
        decision = cycle(self.live.snap, self.live.queue, self.policy, now, memo=self.live.memo)
        rep.cycle_ms = (time.perf_counter() - t0) * 1000
        rep.pending = len(self.live.queue)
        self._expected = expected_starts(self.live.snap, self.live.queue, decision, now)  # squeue --start
        with self._tx() as s:
            applied = self._apply(s, decision, now, rep)
            self.live.gate.write(s, now, self._reasons)  # jobs kept out of the cycle (service/eligibility_gate.py)
        self._record(applied, now)
        return decision

    def _record(self, applied: tuple[list[Preemption], list[Admission]], now: float) -> None:
        """The committed decision goes through the ledger as in the twin: victims leave now, admissions hold GPUs."""
        live = self.live
        for pre in applied[0]:
            if pre.job_id in live.snap.running:
                live.ledger.finish(pre.job_id, now)
        for adm in applied[1]:
            job = live.job(adm.job_id)
            if job is not None and adm.job_id not in live.snap.running:
                if adm.job_id in live.queue:
                    live.queue.remove(adm.job_id)
                live.ledger.start(job, adm.placement, now, adm.borrowed, adm.guaranteed)

    def _apply(self, s: Session, d: Decision, now: float, rep: TickReport) -> tuple[list[Preemption], list[Admission]]:
        """Write the decision; returns the preemptions and admissions it applied (a row that changed meanwhile, by a
        cancel for instance, is left alone)."""
        # credit held per grant, read once and kept up to date by credit.hold; rows looked up by id (no flush per
        # lookup: nothing below reads back what it wrote before the reasons' flush)
        held = credit.held_by_grant(s) if d.admissions else {}
        with s.no_autoflush:
            applied = self._apply_admissions(s, d, now, rep, held)
        self._write_reasons(s, d)
        return applied

    def _apply_admissions(
        self, s: Session, d: Decision, now: float, rep: TickReport, held: dict[int, float]
    ) -> tuple[list[Preemption], list[Admission]]:
        preempted: list[Preemption] = []
        admitted: list[Admission] = []
        ids = [int(p.job_id) for p in d.preemptions] + [int(a.job_id) for a in d.admissions]
        by_id = {
            r.id: r
            for k in range(0, len(ids), 500)
            for r in s.scalars(select(t.Job).where(t.Job.id.in_(ids[k : k + 500])))
        }
        for pre in d.preemptions:
            row = by_id.get(int(pre.job_id))
            if row is None or row.state not in (ADMITTED, RUNNING) or row.preempt_requested:
                continue
            preempted.append(pre)
            row.preempt_requested = True
            # the victim's tenant learns why, not which job (it may be another tenant's)
            row.reason = f"preempted: {pre.reason}"
            self._audit(s, row, "job.preempt", now, {"reason": pre.reason, "grace_s": pre.grace_s})
            rep.preempting += 1
            self._note(rep, "job.preempt", row, reason=pre.reason, by_job=pre.by_job, grace_s=pre.grace_s)  # log
        for adm in d.admissions:
            row = by_id.get(int(adm.job_id))
            if row is None or row.state != PENDING or row.cancel_requested or row.held_by:
                continue  # cancelled or held between the sync and this write: it waits for a later cycle
            pool = self.live.snap.capacity.pool_by_name[adm.placement.pool]
            how = "borrowed capacity" if adm.borrowed else "reserved capacity" if adm.guaranteed else "shared capacity"
            transition(s, row, JobState.ADMITTED, now, f"placed on {pool.name} ({how}); {adm.rule}")
            row.placement = placement_to_json(adm.placement)
            row.borrowed, row.guaranteed = adm.borrowed, adm.guaranteed
            row.admitted_at_s, row.expected_start_s = now, adm.start_at_s
            admitted.append(adm)
            row.attempt += 1
            row.launched = False
            row.backend = self.pool_backend[pool.name]
            row.grant_id = choose_grant(self.live, row.project_id, pool.model, now, adm.guaranteed)
            credit.hold(s, self.live, row, adm, now, held)  # credit for its time limit at the pool's SU rate
            self._audit_admission(s, row, adm, how, now)
            self._reasons.pop(adm.job_id, None)
            rep.admitted += 1
            rep.admitted_by[how.split()[0]] += 1  # metrics
            self._note(rep, "job.admit", row, pool=pool.name, capacity=how.split()[0], grant_id=row.grant_id,
                       backfilled=adm.backfilled, start_at_s=adm.start_at_s)  # fmt: skip  # log
        return preempted, admitted

    def _write_reasons(self, s: Session, d: Decision) -> None:
        """Pending reasons (and expected starts) that changed since the last cycle, in one statement."""
        expected = {r.job_id: r.start_s for r in d.reservations}
        changed = []
        for jid, reason in d.pending.items():
            start = reason.expected_start_s if reason.expected_start_s is not None else expected.get(jid)
            estimate = self._expected.get(jid)
            if start is None and estimate is not None:
                start = estimate.start_s
            key = (reason.code.value, reason.message, start, estimate.why if estimate and start is None else "")
            if self._reasons.get(jid) != key:
                self._reasons[jid] = key
                changed.append((int(jid), key))
        if changed:
            # one executemany for every changed reason instead of a load and an update per row: with a 10,000-task
            # array pending the first cycle wrote 10,000 rows one by one (24 s measured; benchmarks/
            # bench_array_cycle.py). Flushed first so the rows admitted above are no longer pending here.
            s.flush()
            s.execute(
                _SET_PENDING_REASON,
                [
                    {"b_id": row_id, "b_code": code, "b_reason": message, "b_start": start, "b_why": why}
                    for row_id, (code, message, start, why) in changed
                ],
            )

    def _audit_admission(self, s: Session, row: t.Job, adm: Admission, how: str, now: float) -> None:
        """Why the job may run where it was placed: pool, nodes, GPUs, the sovereignty rule, the capacity it
        takes and the grant (program) it runs under."""
        grant = self.live.grant_rows.get(row.grant_id) if row.grant_id is not None else None
        nodes = [self.node_names[share.node] for share in adm.placement.shares]
        self._audit(s, row, "job.admit", now, {
            "pool": adm.placement.pool, "nodes": nodes,
            "gpus": sum(len(share.gpus) for share in adm.placement.shares),
            "gpu_milli": adm.placement.gpu_milli_total, "sovereignty": adm.rule, "capacity": how,
            "grant": grant.name if grant is not None else None, "program_id": grant.program_id if grant else None,
            "backfilled": adm.backfilled, "start_at_s": adm.start_at_s,
        })  # fmt: skip

    # ---- 3. dispatch ----------------------------------------------------------------------------------------
    def dispatch(self, rep: TickReport) -> None:
        """Hand admitted attempts to their backends, and cancellations and preemptions of launched ones.

        A backend that takes launches on another thread (``concurrent_launches``: Slurm, whose sbatch is a process
        and a slurmctld round trip) gets them from the launcher thread, and this tick goes on: their outcomes are
        recorded by a later dispatch (:meth:`_collect`), so sbatch overlaps the next reconcile and cycle instead of
        holding the loop. Until then an attempt is *in flight*: not launched again, not withdrawn (a cancel waits
        for the launch and then terminates it). Crash safety is the backend's: it finds an attempt launched by a
        controller that died before recording it by its name, and reconcile adopts it."""
        now = rep.now_s
        self._collect(rep, now, wait=False)
        launches: list[tuple[int, str, LaunchSpec]] = []
        stops: list[tuple[str, str, int, float]] = []
        with self._tx() as s:
            rows = s.scalars(
                select(t.Job)
                .where(
                    or_(
                        (t.Job.state == ADMITTED) & t.Job.launched.is_(False),
                        t.Job.state.in_((ADMITTED, RUNNING))
                        & t.Job.launched.is_(True)
                        & (t.Job.cancel_requested.is_(True) | t.Job.preempt_requested.is_(True)),
                    )
                )
                .order_by(t.Job.id)
            ).all()
            busy = self._terminating_nodes(s)
            for row in rows:
                if (row.id, row.attempt) in self._in_flight:
                    continue  # its launch is under way: its outcome decides what happens to it next
                if row.launched:
                    grace = self.preempt_grace_s if row.preempt_requested else 0.0
                    stops.append((row.backend, str(row.id), row.attempt, grace))
                elif row.cancel_requested:
                    transition(s, row, JobState.CANCELLED, now, "cancelled before it started")
                    self._audit(
                        s, row, "job.end", now, {"state": "cancelled", "message": "cancelled before it started"}
                    )
                    credit.release(row)
                    row.ended_at_s = now
                    rep.ended_states["cancelled"] += 1  # metrics
                    self._note(rep, "job.end", row, state="cancelled", why="cancelled before it started")  # log
                elif row.preempt_requested:
                    transition(s, row, JobState.PENDING, now, "placement withdrawn before start (preempted)")
                    self._audit(s, row, "job.requeue", now, {"why": "placement withdrawn before start (preempted)"})
                    credit.release(row)
                    row.placement, row.preempt_requested = None, False
                    rep.requeue_causes["withdrawn"] += 1  # metrics
                    self._note(rep, "job.requeue", row, cause="withdrawn", why="withdrawn before start")  # log
                elif row.placement is not None and not (busy & self._nodes_of(row)):
                    launches.append((row.id, row.backend, self._spec(row)))
        self._flush(rep)  # log: the withdrawals and cancellations committed
        later = [x for x in launches if getattr(self.backends[x[1]], "concurrent_launches", False)]
        self._record_launches(self._launch_all([x for x in launches if x not in later]), rep, now)
        if later:
            self._hand_off(later)
        for backend, job_id, attempt, grace in stops:
            if (job_id, attempt) in self._terminating:
                continue
            try:
                self._require_lease()
                self.backends[backend].terminate(job_id, attempt, grace)
                self._terminating.add((job_id, attempt))
            except Fenced as exc:
                raise self._fenced_out(exc) from None
            except BackendUnavailable as exc:
                event(log, "job.terminate_deferred", logging.WARNING, job_id=job_id, attempt=attempt, backend=backend,
                      reason=str(exc))  # fmt: skip  # log

    def _hand_off(self, launches: list[tuple[int, str, LaunchSpec]]) -> None:
        """Launches run on the launcher thread (one batch at a time, each backend's own parallelism inside)."""
        if self._launcher is None:
            self._launcher = ThreadPoolExecutor(1, thread_name_prefix="kfabric-launch")
        keys = [(row_id, spec.attempt) for row_id, _, spec in launches]
        self._in_flight.update(keys)
        self._batches.append((self._launcher.submit(lambda: list(self._launch_all(launches))), keys))

    def _collect(self, rep: TickReport, now: float, wait: bool) -> None:
        """Record the outcomes of the batches the launcher finished (all of them, waiting, with ``wait``)."""
        batches, self._batches = self._batches, []
        for k, (batch, keys) in enumerate(batches):
            if not (wait or batch.done()):
                self._batches.append((batch, keys))
                continue
            try:
                self._record_launches(iter(batch.result()), rep, now)
            except Fenced as exc:
                self._batches.extend(batches[k + 1 :])
                raise self._fenced_out(exc) from None
            finally:
                self._in_flight.difference_update(keys)  # recorded (or fenced out): no longer in flight

    def close(self) -> None:
        """Wait for launches under way and record them (a controller that stops leaves no launch unrecorded that
        it could record: one it cannot is found again by name, as after a crash)."""
        try:
            self._collect(TickReport(self.clock()), self.clock(), wait=True)
        except (NotLeader, SQLAlchemyError) as exc:
            event(log, "controller.close", logging.WARNING, reason=str(exc))  # log
        if self._launcher is not None:
            self._launcher.shutdown(wait=True)
            self._launcher = None

    def _record_launches(self, outcomes: Iterator[Launched], rep: TickReport, now: float) -> None:
        done: list[int] = []
        for row_id, backend, outcome in outcomes:
            if outcome is None:
                done.append(row_id)
            elif isinstance(outcome, Fenced):
                raise self._fenced_out(outcome) from None
            elif isinstance(outcome, BackendUnavailable):
                event(log, "job.launch_deferred", logging.WARNING, job_id=row_id, backend=backend, reason=str(outcome))
            else:  # ValueError, OSError: the backend refused it
                exc = outcome
                self._launch_failed(row_id, str(exc), now)
                rep.failures["launch_refused"] += 1  # metrics
                rep.ended_states["failed"] += 1  # metrics
                event(log, "job.end", logging.WARNING, job_id=row_id, state="failed", why=f"refused: {exc}")  # log
        if done:
            with self._tx() as s:  # one statement per 500 launches (not a load and an update per job)
                for k in range(0, len(done), 500):
                    s.execute(
                        update(t.Job)
                        .where(t.Job.id.in_(done[k : k + 500]), t.Job.state == ADMITTED)
                        .values(launched=True)
                        .execution_options(synchronize_session=False)
                    )
            rep.launched += len(done)

    #: launches handed to a backend in one ``launch_many`` call; the lease is checked before each such batch
    LAUNCH_BATCH = 64

    def _launch_all(self, launches: list[tuple[int, str, LaunchSpec]]) -> Iterator[Launched]:
        """Hand the launches to their backends: in batches to a backend that takes several at once
        (``launch_many``, e.g. Slurm's overlapped sbatch), one by one otherwise; ``(row id, backend, None or the
        exception its launch raised)`` for each. The lease's local deadline is checked before every backend call."""
        by_backend: dict[str, list[tuple[int, LaunchSpec]]] = {}
        for row_id, name, spec in launches:
            by_backend.setdefault(name, []).append((row_id, spec))
        for name, items in by_backend.items():
            backend = self.backends[name]
            many = getattr(backend, "launch_many", None)
            step = self.LAUNCH_BATCH if many is not None else 1
            for k in range(0, len(items), step):
                chunk = items[k : k + step]
                self._require_lease()
                outcomes: list[BaseException | None]
                if many is not None:
                    outcomes = list(many([spec for _, spec in chunk]))
                else:
                    try:
                        backend.launch(chunk[0][1])
                        outcomes = [None]
                    except (BackendUnavailable, ValueError, OSError) as exc:
                        outcomes = [exc]
                for (row_id, _), outcome in zip(chunk, outcomes, strict=True):
                    yield row_id, name, outcome

    def _fenced_out(self, exc: Fenced) -> NotLeader:
        server = self.leadership.server.id if self.leadership is not None else "this server"
        return NotLeader(server, str(exc))

    def _launch_failed(self, row_id: int, why: str, now: float) -> None:
        with self._tx() as s:
            row = s.get(t.Job, row_id)
            if row is not None and row.state == ADMITTED:
                transition(s, row, JobState.FAILED, now, f"the backend refused the launch: {why}")
                self._audit(s, row, "job.end", now, {"state": "failed", "message": f"launch refused: {why}"})
                credit.release(row)
                row.ended_at_s = now

    def _nodes_of(self, row: t.Job) -> set[tuple[int, int]]:
        """The ``(node, GPU)`` pairs the row's placement holds: a launch waits only for GPUs a terminating victim
        still holds (the twin starts work on free GPUs of such a node at once, ``sched.ledger``)."""
        return {(share[0], gpu) for share in (row.placement or {}).get("shares", []) for gpu in share[1]}

    def _terminating_nodes(self, s: Session) -> set[tuple[int, int]]:
        rows = s.scalars(
            select(t.Job).where(
                t.Job.state.in_((ADMITTED, RUNNING)), t.Job.launched.is_(True), t.Job.preempt_requested.is_(True)
            )
        ).all()
        return set().union(*(self._nodes_of(r) for r in rows)) if rows else set()

    def _spec(self, row: t.Job) -> LaunchSpec:
        """The launch of the row's current attempt, with the user who submitted it and that user's POSIX account
        (the backend refuses the launch when the account cannot run it)."""
        assert row.placement is not None
        spec = row.spec
        session = object_session(row)
        user = rowcache.get(session, t.User, row.user_id) if session is not None else None
        nodes = tuple(NodeGpus(self.node_names[n], tuple(g), m, c, mem) for n, g, m, c, mem in row.placement["shares"])
        # issue 19: -o/-e resolved now (%N is known), kept on the row (job show, job log); Slurm-style variables
        name, posix = row.name or f"job-{row.id}", user.posix_user if user is not None else ""
        files = bool(getattr(self.backends.get(row.backend), "output_files", True))
        first = nodes[0].node if nodes else ""
        out = job_output.for_launch(row, name, posix, user.name if user is not None else "", first, files)
        row.stdout_path, row.stderr_path = out.stored()
        return LaunchSpec(
            job_id=str(row.id),
            attempt=row.attempt,
            name=name,
            command=str(spec.get("command", "")),
            nodes=nodes,
            time_limit_s=float(spec["time_limit_s"]),
            env=tuple(sorted({**(spec.get("env") or {}), **out.env}.items())),
            workdir=str(spec.get("workdir", "")),
            runtime_s=spec.get("runtime_estimate_s"),
            project=self.live.projects.get(row.project_id, ("", 0))[0],
            user=user.name if user is not None else f"#{row.user_id}",
            posix_user=posix,
            script=row.script or "",
            stdout_path=out.stdout_path,
            stderr_path=out.stderr_path,
            open_mode=str(spec.get("open_mode") or "truncate"),
        )

    # ---- 4. accounting ----------------------------------------------------------------------------------------
    def account_running(self, now: float) -> int:
        """Usage records for running jobs up to ``now`` (jobs that ended were accounted when they ended)."""
        n = 0
        with self._tx() as s:
            for row in s.scalars(select(t.Job).where(t.Job.state == RUNNING).order_by(t.Job.id)).all():
                if account(s, row, now, self.live) is not None:
                    n += 1
        self._accounted_at_s = now
        return n

    # ---- live fleet and policy changes (issue 16: kfabric fleet apply, node drain, policy apply) ---------------
    # ``tick`` calls :meth:`follow_changes` first: stored changes take effect at the next cycle, without a restart
    # (service/fleet_changes.py, service/policy_changes.py).
    #: the fleet_sources and policy_sources rows the in-memory state follows (None: not read yet)
    fleet_source_id: int | None = None
    policy_source_id: int | None = None
    #: called with the new scenario once a fleet change is in effect (the runtime points its API at it)
    on_fleet_change: Callable[[Scenario], None] | None = None

    def follow_changes(self, now_s: float) -> None:
        """Take a stored policy or fleet change that is not in effect yet, and drop nodes kept only for work that
        has ended. A stored change this server cannot run (a backend it lacks) waits, logged; the loop goes on."""
        try:
            self._follow_policy()
            self._follow_fleet(now_s)
        except ValidationError as exc:
            log.error("stored fleet or policy change not taken: %s", exc)

    def follow_as_standby(self) -> None:
        """A standby (another server leads) reads the fleet and policy in effect, without writing, so that its API
        (``GET /v1/fleet``, the submit-time checks) answers for the fleet the leader runs."""
        try:
            self._follow_policy()
            with self.sessions() as s:
                active = fleet_changes.active_source(s)
                source_id, document, name = active.id, active.document, active.name
            if source_id != self.fleet_source_id:
                with self._lock:
                    self._use_fleet(load_text(document, f"stored fleet {name!r}"))
                self.fleet_source_id = source_id
        except (ValidationError, NotFound) as exc:
            log.error("stored fleet or policy not followed on this standby: %s", exc)

    def apply_fleet(self, scenario: Scenario) -> None:
        """Run on ``scenario``'s fleet from the next cycle (the store's placements must already name its node
        indices: :func:`fleet_changes.take_pending` rewrites them)."""
        with self._lock:
            self._use_fleet(scenario)

    def set_policy(self, policy: Policy) -> None:
        """Schedule with ``policy`` from the next cycle (the controller's and the live state's)."""
        with self._lock:
            self._use_policy(policy)

    def _use_fleet(self, scenario: Scenario) -> None:
        fleet = scenario.fleet
        cluster_backend = {c.name: c.name if c.name in self.backends else c.backend for c in fleet.clusters}
        pool_backend = {p.name: cluster_backend[p.cluster] for p in fleet.pools}
        missing = sorted(set(pool_backend.values()) - set(self.backends))
        if missing:
            raise ValidationError("fleet", f"its clusters use backends {missing} that are not configured here",
                                  "start kfabric serve with those backends")  # fmt: skip
        self.scenario = scenario
        if fleet != self.live.fleet:
            self.live.reload(fleet)
        self.node_names = self.live.node_names
        self.pool_backend = pool_backend
        self.live.set_backends(pool_backend)
        if self.on_fleet_change is not None:
            self.on_fleet_change(scenario)

    def _use_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.live.set_policy(policy)

    def _follow_policy(self) -> None:
        with self.sessions() as s:
            stored = policy_changes.stored_policy(s)
        if stored is None or stored.id == self.policy_source_id:
            return
        self._use_policy(policy_changes.policy_of_text(stored.document, stored.name, f"stored policy #{stored.id}"))
        self.policy_source_id = stored.id
        log.info("policy %r (#%d) in effect", stored.name, stored.id)

    def _follow_fleet(self, now_s: float) -> None:
        with self.sessions() as s:
            newest = s.scalar(select(func.max(t.FleetSource.id)))
            draining = s.scalar(select(func.count()).select_from(t.NodeState).where(t.NodeState.source == "fleet"))
        if newest == self.fleet_source_id and not draining:
            return
        with self._tx() as s:
            change = fleet_changes.take_pending(s, self.fleet_source_id or -1, set(self.backends), now_s)
            if change is None and draining:
                change = fleet_changes.finish_drains(s, now_s)
        if change is not None:
            self._use_fleet(change.scenario)
            self.fleet_source_id = change.source_id
            log.info("fleet %r (#%d) in effect", change.scenario.name, change.source_id)
