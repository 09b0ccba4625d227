"""The scheduler's view of the live fleet, kept in memory and brought up to date from the store by diffs.

The store is the truth: after a restart the state is rebuilt from it (running work from admitted/running
rows, the queue from pending rows, fair-share usage from decayed usage records). Between ticks only what
changed is read in full (new job rows); everything else is a light scan of ids and states.

Runs start and finish, usage decays and accrues, and the estimator learns through ``sched.ledger`` (the twin's
path too): the controller records its own admissions, preemptions and ends there as it commits them, and a sync
catches what it did not see (a restart, a cancel before launch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from kfabric.model.fleet import Fleet
from kfabric.model.job import Job, JobState
from kfabric.model.tenancy import OnExhausted
from kfabric.scenarios.loader import Scenario
from kfabric.sched.fairshare import TenantInfo
from kfabric.sched.ledger import Ledger
from kfabric.sched.memo import CycleMemo
from kfabric.sched.policy import Policy
from kfabric.sched.queue import PendingQueue
from kfabric.sched.snapshot import GrantState, Snapshot
from kfabric.service.credit import held_by_grant
from kfabric.service.eligibility_gate import GATE_COLUMNS, EligibilityGate
from kfabric.service.jobspec import job_of_row, placement_of_json
from kfabric.service.programs import rules_of_json
from kfabric.store import tables as t

ACTIVE = (JobState.PENDING.value, JobState.ADMITTED.value, JobState.RUNNING.value)
IN_FORCE = ("active", "flagged")


@dataclass(frozen=True, slots=True)
class JobMeta:
    row_id: int
    project_id: int
    state: str
    attempt: int


class LiveState:
    def __init__(self, scenario: Scenario, policy: Policy) -> None:
        self.fleet: Fleet = scenario.fleet
        self.policy = policy
        self.snap = Snapshot.for_fleet(self.fleet)
        #: what the scheduling cycles remember between them for speed (``sched.memo``; emptied on a new snapshot)
        self.memo = CycleMemo()
        #: every change between cycles goes through the ledger (``sched.ledger``); the store keeps under-use
        self.ledger = Ledger(self.snap, policy.fairshare_half_life_s, track_underuse=False)
        self.queue = PendingQueue(self.snap.estimator)
        self.owners = {o.name for o in self.fleet.owners}
        self.projects: dict[int, tuple[str, int]] = {}
        self.users: dict[int, str] = {}
        self._grants_key: tuple[object, ...] | None = None
        #: usage was rebuilt from the records (None: not yet); the time of the sync in progress
        self._usage_at_s: float | None = None
        self._now_s = 0.0
        #: after a reload: use up to then is in the usage already (runs re-entering count from there)
        self._counted_to_s: float | None = None
        self._jobs: dict[str, Job] = {}
        #: which pending jobs may enter the cycle (service/eligibility_gate.py)
        self.gate = EligibilityGate()
        self.grant_rows: dict[int, t.Grant] = {}
        self._online_day: str = ""
        #: backend node name per fleet node index, and the index of each name
        self.node_names: list[str] = fleet_node_names(self.fleet, self.snap)
        self.node_index: dict[str, int] = {name: i for i, name in enumerate(self.node_names)}
        #: nodes taken out of service (by index), with why (``node_states`` rows), as of the last sync
        self.out_nodes: dict[int, list[str]] = {}
        #: which backend serves each pool (:meth:`set_backends`), and each backend's node names → indices
        self.pool_backend: dict[str, str] = {}
        self._backend_names: dict[str, dict[str, int]] = {}

    # ---- public --------------------------------------------------------------------------------------------
    def sync(self, session: Session, now_s: float) -> None:
        """Make the snapshot and queue match the store at ``now_s``."""
        self._now_s = now_s
        self._sync_nodes(session, now_s)
        self._sync_tenants(session)
        self._sync_usage(session, now_s)
        self._sync_jobs(session)
        self.ledger.accrue(now_s)

    def reload(self, fleet: Fleet) -> None:
        """Start over on another fleet (``kfabric fleet apply``): a new capacity index, node names and queue; the
        next :meth:`sync` rebuilds running work (placements already rewritten to the new fleet's node indices),
        the queue, tenants and node states from the store. Run-time history and decayed usage are kept."""
        estimator, usage = self.snap.estimator, self.snap.usage_su
        self.ledger.accrue(self._now_s)
        self._counted_to_s = self.ledger.usage_at_s
        self.fleet = fleet
        self.snap = Snapshot.for_fleet(fleet, estimator=estimator, usage_su=usage)
        self.ledger = Ledger(self.snap, self.policy.fairshare_half_life_s, self.ledger.usage_at_s, track_underuse=False)
        self.queue = PendingQueue(self.snap.estimator)
        self.owners = {o.name for o in fleet.owners}
        self._grants_key = None
        self._jobs = {}
        self._online_day = ""
        self.node_names = fleet_node_names(fleet, self.snap)
        self.node_index = {name: i for i, name in enumerate(self.node_names)}
        self.out_nodes = {}
        self._backend_names = {}

    def set_backends(self, pool_backend: Mapping[str, str]) -> None:
        """Which backend serves each pool: a backend's node facts name only its own nodes (two clusters may both
        have a ``node1``)."""
        self.pool_backend = dict(pool_backend)
        self._backend_names = {}

    def names_of(self, source: str) -> Mapping[str, int]:
        """Node name → index for rows of ``source``: a backend's own nodes, else every node of the fleet."""
        if source not in self.pool_backend.values():
            return self.node_index
        found = self._backend_names.get(source)
        if found is None:
            found = self._backend_names[source] = {
                self.node_names[i]: i
                for pool, info in zip(self.fleet.pools, self.snap.capacity.pools, strict=True)
                if self.pool_backend.get(pool.name) == source
                for i in info.node_range
            }
        return found

    def set_policy(self, policy: Policy) -> None:
        """Use ``policy`` from the next sync and cycle on (``kfabric policy apply``)."""
        self.policy = policy
        self.ledger.half_life_s = policy.fairshare_half_life_s
        self.memo.clear()

    def job(self, job_id: str) -> Job | None:
        """The core's view of an active job (None once it has left the queue and the running set)."""
        return self._jobs.get(job_id)

    # ---- parts ---------------------------------------------------------------------------------------------
    def _sync_nodes(self, session: Session, now_s: float) -> None:
        """A node is schedulable when its pool is online (its online date has come) and no ``node_states`` row
        takes it out (an operator's drain, a backend's down/drain/fail). Only changes touch the capacity index."""
        day = datetime.fromtimestamp(now_s, UTC).date()
        out: dict[int, list[str]] = {}
        rows = session.execute(
            select(t.NodeState.node, t.NodeState.source, t.NodeState.state, t.NodeState.reason).where(
                t.NodeState.state != "up"
            )
        )
        by_source: dict[str, Mapping[str, int]] = {}
        for name, source, state, reason in rows:
            names = by_source.get(source)
            if names is None:
                names = by_source[source] = self.names_of(source)
            index = names.get(name)
            if index is not None:
                out.setdefault(index, []).append(f"{state} ({source}){': ' + reason if reason else ''}")
        new_day = day.isoformat() != self._online_day
        if not new_day and out.keys() == self.out_nodes.keys():
            self.out_nodes = out
            return
        capacity = self.snap.capacity
        for i, pool in enumerate(self.fleet.pools):
            online = pool.online <= day
            for node in capacity.pools[i].node_range:
                capacity.set_up(node, online and node not in out)
        self.out_nodes = out
        if new_day:
            self._online_day = day.isoformat()
            self.memo.clear()

    def _sync_tenants(self, session: Session) -> None:
        projects = session.execute(select(t.Project.id, t.Project.name, t.Project.organization_id)).all()
        self.projects = {pid: (name, org) for pid, name, org in projects}
        self.users = dict(session.execute(select(t.User.id, t.User.name)).all())
        grants = session.scalars(select(t.Grant).order_by(t.Grant.id)).all()
        programs = {p.id: p for p in session.scalars(select(t.Program)).all()}
        held = held_by_grant(session)
        key = tuple(
            (
                g.id,
                g.status,
                g.start_s,
                g.end_s,
                g.reserved_gpus,
                g.credit_su_hours,
                round(g.used_su_hours, 6),
                round(held.get(g.id, 0.0), 6),
            )
            for g in grants
        )
        if key == self._grants_key:
            return
        self._grants_key = key
        self.grant_rows = {g.id: g for g in grants}
        orgs = dict(session.execute(select(t.Organization.id, t.Organization.name)).all())
        states: dict[str, GrantState] = {}
        by_project: dict[str, list[t.Grant]] = {}
        for g in grants:
            if g.status not in IN_FORCE and g.status != "reclaimed":
                continue
            project = self.projects[g.project_id][0]
            by_project.setdefault(project, []).append(g)
            rules = rules_of_json(programs[g.program_id].rules)
            # free credit: less what was used and what admitted and running jobs hold (sched.rules)
            credit = g.credit_su_hours - g.used_su_hours - held.get(g.id, 0.0) if g.credit_su_hours > 0 else None
            states[g.name] = GrantState(
                id=g.name,
                project=project,
                start_s=g.start_s,
                end_s=g.end_s,
                reserved_model=g.reserved_model,
                reserved_gpus=g.reserved_gpus,
                credit_left_su=credit,
                on_exhausted=rules.on_exhausted if isinstance(rules.on_exhausted, OnExhausted) else OnExhausted.STOP,
                max_job_duration_s=rules.max_job_duration_s,
                utilization_floor_pct=rules.utilization_floor_pct,
            )
        tenants: dict[str, TenantInfo] = {}
        for name, org in self.projects.values():
            gs = by_project.get(name, [])
            program = programs[gs[0].program_id] if gs else None
            tenants[name] = TenantInfo(
                project=name,
                organization=orgs.get(org, "?"),
                program=program.name if program else "-",
                weight=sum(g.weight for g in gs) or 1.0,
                program_weight=program.weight if program else 1.0,
                affiliation=program.owner if program and program.owner in self.owners else "",
            )
        self.snap.set_tenants(tenants, states)
        self.ledger.grants_changed()

    def _sync_usage(self, session: Session, now_s: float) -> None:
        """After a restart, decayed usage is rebuilt from the records; from then on the ledger keeps it (decay
        and accrual at each sync, :meth:`sync`), so the records are not added twice."""
        if self._usage_at_s is not None:
            return
        q = select(t.UsageRecord.project_id, t.UsageRecord.end_s, t.UsageRecord.su)
        records = [(self.projects.get(pid, ("?", 0))[0], end_s, su) for pid, end_s, su in session.execute(q)]
        self.ledger.rebuild_usage(records, now_s)
        self._usage_at_s = now_s

    def _sync_jobs(self, session: Session) -> None:
        rows = session.execute(
            select(
                t.Job.id, t.Job.state, t.Job.attempt, t.Job.cancel_requested, t.Job.preempt_requested, *GATE_COLUMNS
            ).where(t.Job.state.in_(ACTIVE))
        ).all()
        allowed = self.gate.admit(session, rows, self._now_s)  # held, --begin, dependencies, array caps (issue 19)
        for stale in map(str, self.gate.stale):  # changed by `kfabric update`: read again
            self._jobs.pop(stale, None)
            if stale in self.queue:
                self.queue.remove(stale)
        want_pending: set[str] = set()
        want_running: dict[str, int] = {}
        for rid, state, attempt, cancel, preempt, *_ in rows:
            jid = str(rid)
            if state == JobState.PENDING.value:
                if not cancel and rid in allowed:
                    want_pending.add(jid)
            elif not preempt:
                want_running[jid] = attempt
        snap, queue = self.snap, self.queue
        # leave first (gives capacity back), then enter; the controller recorded its own decisions and the ends
        # it saw in the ledger already: this catches the rest (a placement withdrawn, a cancel before launch)
        leaving = [j for j in snap.running if j not in want_running]
        if leaving:
            ended = dict(
                session.execute(
                    select(t.Job.id, t.Job.accounted_to_s).where(t.Job.id.in_([int(j) for j in leaving]))
                ).all()
            )
            for jid in leaving:
                at = ended.get(int(jid))
                self.ledger.finish(jid, at if at is not None else self._now_s)
        for jid in [j.id for j in queue if j.id not in want_pending]:
            queue.remove(jid)
        new = [int(j) for j in (want_pending | set(want_running)) if j not in self._jobs]
        for i in range(0, len(new), 500):
            for row in session.scalars(select(t.Job).where(t.Job.id.in_(new[i : i + 500]))).all():
                name = self.projects[row.project_id][0]
                self._jobs[str(row.id)] = job_of_row(row, name, self.users.get(row.user_id, ""))
                if row.attained_gpu_s > 0:
                    snap.attained_gpu_s[str(row.id)] = row.attained_gpu_s
        running_rows = {
            str(r.id): r
            for r in session.scalars(
                select(t.Job).where(t.Job.id.in_([int(j) for j in want_running if j not in snap.running]))
            ).all()
        }
        for jid, row in sorted(running_rows.items(), key=lambda kv: int(kv[0])):
            assert row.placement is not None
            start = row.admitted_at_s or row.started_at_s or row.submitted_at_s
            counted = max(row.accounted_to_s or start, self._counted_to_s or start)
            placement = placement_of_json(row.placement)
            self.ledger.start(self._jobs[jid], placement, start, row.borrowed, row.guaranteed, counted_to_s=counted)
            if row.last_checkpoint_s is not None:
                snap.checkpointed(jid, row.last_checkpoint_s)
        for jid in sorted((j for j in want_pending if j not in queue), key=int):
            job = self._jobs[jid]
            tenant = snap.tenants.get(job.project)
            queue.add(job, tenant.affiliation if tenant else "")
        for jid in [j for j in self._jobs if j not in want_pending and j not in want_running]:
            del self._jobs[jid]
            snap.attained_gpu_s.pop(jid, None)
        self._counted_to_s = None


def fleet_node_names(fleet: Fleet, snap: Snapshot) -> list[str]:
    """Backend node name per fleet node index: the pool's declared ``node_names`` (real clusters), else the
    pool's name for a one-node pool, else ``POOL-NNN``."""
    declared = {p.name: p.node_names for p in fleet.pools}
    names: list[str] = []
    for pool in snap.capacity.pools:
        if declared.get(pool.name):
            names.extend(declared[pool.name])
        elif pool.nodes == 1:
            names.append(pool.name)
        else:
            names.extend(f"{pool.name}-{k + 1:03d}" for k in range(pool.nodes))
    return names
