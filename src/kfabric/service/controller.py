"""The controller loop: reconcile backends → load the snapshot → ``sched.cycle`` → apply the decision in one
transaction → dispatch to backends outside any transaction → periodic accounting.

Crash safety: every step reads its work from the store, so a controller killed at any point resumes where
the store says. An admitted job is launched with its attempt number; backends refuse a second launch of the
same attempt, so a launch repeated after a crash never starts the job twice. A job whose launched attempt the
backend no longer knows is requeued as the next attempt.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, object_session, sessionmaker

from kfabric.backends.base import Backend, BackendUnavailable, LaunchSpec, NodeGpus, RunReport, RunState
from kfabric.model.decision import Admission, Decision
from kfabric.model.job import JobState
from kfabric.scenarios.loader import Scenario
from kfabric.sched.cycle import cycle
from kfabric.sched.policy import Policy
from kfabric.service import audit, credit
from kfabric.service.grants import check_underuse
from kfabric.service.jobs import transition
from kfabric.service.jobspec import placement_to_json
from kfabric.service.live_state import LiveState
from kfabric.service.usage import account, choose_grant
from kfabric.store import tables as t

log = logging.getLogger("kfabric.controller")
#: the actor of the controller's own audit entries
CONTROLLER = "controller"

ADMITTED, RUNNING, PENDING = JobState.ADMITTED.value, JobState.RUNNING.value, JobState.PENDING.value
FINAL_OF = {
    RunState.SUCCEEDED: JobState.SUCCEEDED,
    RunState.FAILED: JobState.FAILED,
    RunState.CANCELLED: JobState.CANCELLED,
    RunState.TIMEOUT: JobState.TIMEOUT,
}


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


class Controller:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        scenario: Scenario,
        policy: Policy,
        backends: Mapping[str, Backend],
        clock: Callable[[], float] = time.time,
        account_interval_s: float = 300.0,
        preempt_grace_s: float = 10.0,
        underuse_interval_s: float = 3600.0,
    ) -> None:
        self.sessions = sessions
        self.policy = policy
        self.live = LiveState(scenario, policy)
        self.backends = dict(backends)
        self.clock = clock
        self.account_interval_s = account_interval_s
        self.preempt_grace_s = preempt_grace_s
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
        self.node_names = self.live.node_names
        self._reasons: dict[str, tuple[str, str, float | None]] = {}
        self._terminating: set[tuple[str, int]] = set()
        self._accounted_at_s = 0.0
        self._lock = threading.Lock()
        self.last_tick: TickReport | None = None

    # ---- the loop --------------------------------------------------------------------------------------------
    def tick(self) -> TickReport:
        with self._lock:
            rep = TickReport(self.clock())
            self.reconcile(rep)
            self.schedule(rep)
            self.dispatch(rep)
            if rep.now_s - self._accounted_at_s >= self.account_interval_s:
                self.account_running(rep.now_s)
            if rep.now_s - self._underuse_at_s >= self.underuse_interval_s:
                # usage up to now first, so a busy grant is not flagged for its current interval
                self.account_running(rep.now_s)
                for grant, pct, action in check_underuse(self.sessions, rep.now_s):
                    if action != "ok":
                        log.info("grant %s at %.1f%% of its reservation: %s", grant, pct, action)
                self._underuse_at_s = rep.now_s
            self.last_tick = rep
            return rep

    def allocated_gpus(self) -> float:
        return sum(r.gpus for r in self.live.snap.running.values())

    # ---- 1. reconcile ------------------------------------------------------------------------------------------
    def reconcile(self, rep: TickReport) -> None:
        reports: dict[tuple[str, int], RunReport] = {}
        polled: set[str] = set()
        for name, backend in self.backends.items():
            try:
                for r in backend.poll():
                    reports[(r.job_id, r.attempt)] = r
                polled.add(name)
            except BackendUnavailable as exc:
                rep.unavailable.append(name)
                log.warning("backend %s unavailable: %s", name, exc)
        now = rep.now_s
        with self.sessions.begin() as s:
            rows = s.scalars(select(t.Job).where(t.Job.state.in_((ADMITTED, RUNNING))).order_by(t.Job.id)).all()
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
                        self._started(s, row, r.started_at_s or now)
                        rep.started += 1
                    continue
                self._ended(s, row, r, now, rep)

    def _audit(self, s: Session, row: t.Job, action: str, at_s: float, detail: dict[str, object]) -> None:
        """One audit entry about a job, in its tenant's organization (so ``kfabric audit --job ID`` shows it)."""
        org = self.live.projects.get(row.project_id, ("", None))[1]
        audit.record(s, CONTROLLER, action, "job", row.id, at_s, org, {"attempt": row.attempt, **detail})

    def _started(self, s: Session, row: t.Job, at_s: float) -> None:
        transition(s, row, JobState.RUNNING, at_s, "started")
        self._audit(s, row, "job.start", at_s, {"backend": row.backend})
        row.started_at_s = at_s
        row.accounted_to_s = at_s
        row.last_checkpoint_s = at_s

    def _ended(self, s: Session, row: t.Job, r: RunReport, now_s: float, rep: TickReport) -> None:
        end = r.ended_at_s or now_s
        if row.state == ADMITTED:
            self._started(s, row, r.started_at_s or end)
        account(s, row, end, self.live)
        credit.release(row)  # use is charged: the rest of the attempt's credit goes back
        self._terminating.discard((str(row.id), row.attempt))
        natural_end = r.state in (RunState.SUCCEEDED, RunState.FAILED, RunState.TIMEOUT)
        if r.state is RunState.LOST or (row.preempt_requested and not natural_end):
            why = (r.message or "lost by its backend") if r.state is RunState.LOST else (row.reason or "preempted")
            transition(s, row, JobState.PREEMPTED, end, why)
            transition(s, row, JobState.PENDING, end, f"requeued after: {why}")
            self._audit(s, row, "job.requeue", end, {"why": why, "exit_code": r.exit_code})
            row.placement, row.launched, row.preempt_requested = None, False, False
            row.reason_code, row.reason = "requeued", f"requeued after: {why}"
            rep.requeued += 1
            return
        final = JobState.CANCELLED if row.cancel_requested else FINAL_OF[r.state]
        transition(s, row, final, end, r.message or final.value)
        self._audit(s, row, "job.end", end, {"state": final.value, "exit_code": r.exit_code, "message": r.message})
        row.ended_at_s, row.exit_code = end, r.exit_code
        rep.ended += 1
        if final is JobState.SUCCEEDED and row.started_at_s is not None:
            job = self.live.job(str(row.id))
            if job is not None:
                self.live.snap.estimator.observe(job, max(1.0, end - row.started_at_s))

    # ---- 2. schedule and apply ----------------------------------------------------------------------------------
    def schedule(self, rep: TickReport) -> Decision:
        now = rep.now_s
        with self.sessions.begin() as s:
            self.live.sync(s, now)
        t0 = time.perf_counter()
        decision = cycle(self.live.snap, self.live.queue, self.policy, now)
        rep.cycle_ms = (time.perf_counter() - t0) * 1000
        rep.pending = len(self.live.queue)
        with self.sessions.begin() as s:
            self._apply(s, decision, now, rep)
        return decision

    def _apply(self, s: Session, d: Decision, now: float, rep: TickReport) -> None:
        for pre in d.preemptions:
            row = s.get(t.Job, int(pre.job_id))
            if row is None or row.state not in (ADMITTED, RUNNING) or row.preempt_requested:
                continue
            row.preempt_requested = True
            # the victim's tenant learns why, not which job (it may be another tenant's)
            row.reason = f"preempted: {pre.reason}"
            self._audit(s, row, "job.preempt", now, {"reason": pre.reason, "grace_s": pre.grace_s})
            rep.preempting += 1
        for adm in d.admissions:
            row = s.get(t.Job, int(adm.job_id))
            if row is None or row.state != PENDING or row.cancel_requested:
                continue
            pool = self.live.snap.capacity.pool_by_name[adm.placement.pool]
            how = "borrowed capacity" if adm.borrowed else "reserved capacity" if adm.guaranteed else "shared capacity"
            transition(s, row, JobState.ADMITTED, now, f"placed on {pool.name} ({how}); {adm.rule}")
            row.placement = placement_to_json(adm.placement)
            row.borrowed, row.guaranteed = adm.borrowed, adm.guaranteed
            row.admitted_at_s, row.expected_start_s = now, adm.start_at_s
            row.attempt += 1
            row.launched = False
            row.backend = self.pool_backend[pool.name]
            row.grant_id = choose_grant(self.live, row.project_id, pool.model, now, adm.guaranteed)
            credit.hold(s, self.live, row, adm, now)  # credit for its time limit at the pool's SU rate
            self._audit_admission(s, row, adm, how, now)
            self._reasons.pop(adm.job_id, None)
            rep.admitted += 1
        expected = {r.job_id: r.start_s for r in d.reservations}
        changed = []
        for jid, reason in d.pending.items():
            start = reason.expected_start_s if reason.expected_start_s is not None else expected.get(jid)
            key = (reason.code.value, reason.message, start)
            if self._reasons.get(jid) != key:
                self._reasons[jid] = key
                changed.append((int(jid), key))
        for row_id, (code, message, start) in changed:
            pending_row = s.get(t.Job, row_id)
            if pending_row is not None and pending_row.state == PENDING:
                pending_row.reason_code, pending_row.reason, pending_row.expected_start_s = code, message, start

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
        now = rep.now_s
        launches: list[tuple[int, str, LaunchSpec]] = []
        stops: list[tuple[str, str, int, float]] = []
        with self.sessions.begin() as s:
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
                elif row.preempt_requested:
                    transition(s, row, JobState.PENDING, now, "placement withdrawn before start (preempted)")
                    self._audit(s, row, "job.requeue", now, {"why": "placement withdrawn before start (preempted)"})
                    credit.release(row)
                    row.placement, row.preempt_requested = None, False
                elif row.placement is not None and not (busy & self._nodes_of(row)):
                    launches.append((row.id, row.backend, self._spec(row)))
        done: list[int] = []
        for row_id, backend, spec in launches:
            try:
                self.backends[backend].launch(spec)
                done.append(row_id)
            except BackendUnavailable as exc:
                log.warning("launch of job %s deferred: backend %s unavailable: %s", row_id, backend, exc)
            except (ValueError, OSError) as exc:
                self._launch_failed(row_id, str(exc), now)
        for backend, job_id, attempt, grace in stops:
            if (job_id, attempt) in self._terminating:
                continue
            try:
                self.backends[backend].terminate(job_id, attempt, grace)
                self._terminating.add((job_id, attempt))
            except BackendUnavailable as exc:
                log.warning("terminate of job %s deferred: %s", job_id, exc)
        if done:
            with self.sessions.begin() as s:
                for row_id in done:
                    launched = s.get(t.Job, row_id)
                    if launched is not None and launched.state == ADMITTED:
                        launched.launched = True
            rep.launched += len(done)

    def _launch_failed(self, row_id: int, why: str, now: float) -> None:
        with self.sessions.begin() as s:
            row = s.get(t.Job, row_id)
            if row is not None and row.state == ADMITTED:
                transition(s, row, JobState.FAILED, now, f"the backend refused the launch: {why}")
                self._audit(s, row, "job.end", now, {"state": "failed", "message": f"launch refused: {why}"})
                credit.release(row)
                row.ended_at_s = now

    def _nodes_of(self, row: t.Job) -> set[int]:
        return {share[0] for share in (row.placement or {}).get("shares", [])}

    def _terminating_nodes(self, s: Session) -> set[int]:
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
        user = session.get(t.User, row.user_id) if session is not None else None
        nodes = tuple(NodeGpus(self.node_names[n], tuple(g), m, c, mem) for n, g, m, c, mem in row.placement["shares"])
        return LaunchSpec(
            job_id=str(row.id),
            attempt=row.attempt,
            name=row.name or f"job-{row.id}",
            command=str(spec.get("command", "")),
            nodes=nodes,
            time_limit_s=float(spec["time_limit_s"]),
            env=tuple(sorted((spec.get("env") or {}).items())),
            workdir=str(spec.get("workdir", "")),
            runtime_s=spec.get("runtime_estimate_s"),
            project=self.live.projects.get(row.project_id, ("", 0))[0],
            user=user.name if user is not None else f"#{row.user_id}",
            posix_user=user.posix_user if user is not None else "",
        )

    # ---- 4. accounting ----------------------------------------------------------------------------------------
    def account_running(self, now: float) -> int:
        """Usage records for running jobs up to ``now`` (jobs that ended were accounted when they ended)."""
        n = 0
        with self.sessions.begin() as s:
            for row in s.scalars(select(t.Job).where(t.Job.state == RUNNING).order_by(t.Job.id)).all():
                if account(s, row, now, self.live) is not None:
                    n += 1
        self._accounted_at_s = now
        return n
