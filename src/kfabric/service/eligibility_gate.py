"""Which pending jobs may enter the scheduling cycle: the one place that keeps out held jobs, jobs whose ``--begin``
time has not come, jobs whose dependencies are not met (or can never be), and array tasks beyond their array's
``%N`` cap. The cycle (``kfabric.sched``) never sees such a job, so no backend is ever handed one.

Called by :meth:`kfabric.service.live_state.LiveState._sync_jobs` with the active job rows of each tick
(:data:`GATE_COLUMNS` added to its light scan); the reasons of the jobs it keeps out are written by
:meth:`EligibilityGate.write` in the controller's fenced transaction of the cycle's decision, only when they
changed, with one ``UPDATE`` per distinct reason (a 10,000-task array behind its cap is one statement per 500
tasks the first time, nothing after).

Reasons (``reason_code``: reason), checked in this order, as Slurm shows one reason:

* ``held``: held by its user (``kfabric release ID``) or by an operator (only an operator releases it);
* ``dependency``: ``waits for afterok:12,afterany:13_2``; or ``dependency never satisfied: ...``. A dependency
  that can never be met **cancels** the job (state ``cancelled``, reason ``dependency never satisfied: ...``, as
  Slurm's ``kill_invalid_depend`` does) unless it was submitted with ``--kill-on-invalid-dep=no``: it then stays
  pending with that reason until it is updated or cancelled;
* ``begin_time``: not before its ``--begin`` time (its expected start is that time);
* ``array_limit``: its array already runs (or has admitted) its ``%N`` tasks; lower task ids go first.

Costs per tick: a loop over the active rows that skips, with four comparisons, every job that asks nothing of the
gate; a dependency's jobs are looked up once while active (their states are in the scan) and kept once final (a
final state never changes: ``kfabric requeue`` refuses ended jobs); an array referenced as a whole that still has
active tasks costs one grouped count of its ended tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kfabric.model.errors import ValidationError
from kfabric.model.job import JobState
from kfabric.service import audit
from kfabric.service.dependencies import Dependency, Status, combine, parse_dependency, term_status
from kfabric.service.job_arrays import JobRef, max_running
from kfabric.service.jobs import transition
from kfabric.store import tables as t

#: the columns the gate reads from each active row, after (id, state, attempt, cancel_requested, preempt_requested)
GATE_COLUMNS = (
    t.Job.project_id,
    t.Job.user_id,
    t.Job.name,
    t.Job.held_by,
    t.Job.begin_at_s,
    t.Job.dependency,
    t.Job.kill_on_invalid_dep,
    t.Job.array_job_id,
    t.Job.reason_code,
)
#: ``reason_code`` of a pending job changed by ``kfabric update``: the live state reads it again
UPDATED = "updated"
NEVER_SATISFIED = "dependency never satisfied"
PENDING = JobState.PENDING.value
_RUNNING = (JobState.ADMITTED.value, JobState.RUNNING.value)
_FINAL = frozenset(s.value for s in JobState if s.final)
_CHUNK = 500
#: the actor of the gate's audit entries (the controller's)
CONTROLLER = "controller"


@dataclass(frozen=True, slots=True)
class Kept:
    """Why a pending job stays out of this cycle; ``end`` cancels it (a dependency that can never be met)."""

    code: str
    text: str
    expected_start_s: float | None = None
    end: bool = False


@dataclass
class _Row:
    id: int
    state: str
    project_id: int
    user_id: int
    name: str
    held_by: str
    begin_at_s: float | None
    dependency: str
    kill: bool
    array_job_id: int | None


def _utc(at_s: float) -> str:
    return datetime.fromtimestamp(at_s, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass
class EligibilityGate:
    #: jobs kept out by the last :meth:`admit`, and the pending jobs it found changed by ``kfabric update``
    kept: dict[int, Kept] = field(default_factory=dict)
    stale: list[int] = field(default_factory=list)
    #: what :meth:`write` last wrote per job (code, text, start)
    _written: dict[int, tuple[str, str, float | None]] = field(default_factory=dict)
    #: final states (they never change), array heads, task ids, caps and parsed expressions seen so far
    _final: dict[int, str] = field(default_factory=dict)
    _is_array: dict[int, bool] = field(default_factory=dict)
    _task_ids: dict[tuple[int, int], int | None] = field(default_factory=dict)
    _array_final: dict[int, frozenset[str]] = field(default_factory=dict)
    _caps: dict[int, int | None] = field(default_factory=dict)
    _parsed: dict[str, Dependency | None] = field(default_factory=dict)

    # ---- deciding ------------------------------------------------------------------------------------------
    def admit(self, session: Session, rows: Sequence[Any], now_s: float) -> set[int]:
        """The ids of the pending rows that may enter the cycle; the others are in :attr:`kept`. ``rows`` are
        the active rows: ``(id, state, attempt, cancel_requested, preempt_requested, *GATE_COLUMNS)``."""
        allowed: set[int] = set()
        gated: list[Any] = []
        self.kept, self.stale = {}, []
        #: per array: the states of its active tasks, and how many are admitted or running
        array_states: dict[int, set[str]] = {}
        busy: dict[int, int] = {}
        for row in rows:
            rid, state = row[0], row[1]
            if state == PENDING and row[13] == UPDATED:
                self.stale.append(rid)
            array = row[12]
            if not row[8] and row[9] is None and not row[10] and array is None:
                if state == PENDING:
                    allowed.add(rid)
                continue
            if array is not None:
                array_states.setdefault(array, set()).add(state)
                if state in _RUNNING:
                    busy[array] = busy.get(array, 0) + 1
            if state == PENDING:
                gated.append(row)
        if not gated:
            return allowed
        states = {row[0]: row[1] for row in rows}
        singles = self._singletons(rows) if any("singleton" in row[10] for row in gated) else {}
        capped: dict[int, list[int]] = {}
        # held, begin and dependency decide alike for rows that ask alike (the tasks of an array): once per kind
        decided: dict[tuple[Any, ...], Kept | None] = {}
        for row in gated:
            key = (row[8], row[9], row[10], row[11])
            if key in decided and "singleton" not in row[10]:
                kept = decided[key]
            else:
                r = _Row(row[0], row[1], row[5], row[6], row[7], row[8], row[9], row[10], bool(row[11]), row[12])
                kept = decided[key] = self._check(session, r, states, array_states, singles, now_s)
            if kept is not None:
                self.kept[row[0]] = kept
            elif row[12] is not None and self._cap(session, row[12]) is not None:
                capped.setdefault(row[12], []).append(row[0])
            else:
                allowed.add(row[0])
        for array_id, waiting in capped.items():
            cap = self._cap(session, array_id)
            assert cap is not None
            free = max(0, cap - busy.get(array_id, 0))
            waiting.sort()
            allowed.update(waiting[:free])
            if len(waiting) > free:
                kept = Kept("array_limit", f"array {array_id} runs at most {cap} tasks at once (%{cap})")
                self.kept.update(dict.fromkeys(waiting[free:], kept))
        return allowed

    def _check(
        self,
        session: Session,
        r: _Row,
        states: Mapping[int, str],
        array_states: Mapping[int, set[str]],
        singles: Mapping[tuple[int, str], int],
        now_s: float,
    ) -> Kept | None:
        if r.held_by:
            if r.held_by == "admin":
                return Kept("held", "held by an operator (only an operator can release it)")
            return Kept("held", "held by its user; kfabric release JOBID lets it run")
        if r.dependency:
            status, text = self._dependency(session, r, states, array_states, singles)
            if status is Status.NEVER:
                if r.kill:
                    return Kept("dependency", f"{NEVER_SATISFIED}: {text}", end=True)
                return Kept("dependency", f"{NEVER_SATISFIED}: {text} (kept pending: --kill-on-invalid-dep=no)")
            if status is Status.WAIT:
                return Kept("dependency", f"waits for {text}")
        if r.begin_at_s is not None and r.begin_at_s > now_s:
            return Kept("begin_time", f"not before {_utc(r.begin_at_s)} (--begin)", r.begin_at_s)
        return None

    def _dependency(
        self,
        session: Session,
        r: _Row,
        states: Mapping[int, str],
        array_states: Mapping[int, set[str]],
        singles: Mapping[tuple[int, str], int],
    ) -> tuple[Status, str]:
        """The status of ``r``'s dependency and, unless met, the terms it waits for or that can never be met."""
        if r.dependency not in self._parsed:
            try:
                self._parsed[r.dependency] = parse_dependency(r.dependency)
            except ValidationError:
                self._parsed[r.dependency] = None
        dep = self._parsed[r.dependency]
        if dep is None:
            return Status.NEVER, f"{r.dependency!r} is not a dependency"
        self._look_up(session, [ref.job_id for ref in dep.refs if ref.job_id not in states], states)
        statuses: list[Status] = []
        notes: list[str] = []
        for term in dep.terms:
            if term.kind == "singleton":
                first = singles.get((r.user_id, r.name))
                ok = first == r.id
                statuses.append(Status.MET if ok else Status.WAIT)
                if not ok:
                    notes.append(f"singleton (another job named {r.name!r} of the same user is ahead)")
                continue
            parts = [
                (ref, term_status(term.kind, self._states_of(session, ref, states, array_states))) for ref in term.refs
            ]
            status = combine([s for _ref, s in parts], False)
            statuses.append(status)
            if status is not Status.MET:
                bad = [str(ref) for ref, s in parts if s is status] or [str(ref) for ref, _s in parts]
                notes.append(f"{term.kind}:{':'.join(bad)}")
        total = combine(statuses, dep.any_of)
        return total, ("?" if dep.any_of else ",").join(notes)

    def _states_of(
        self, session: Session, ref: JobRef, states: Mapping[int, str], array_states: Mapping[int, set[str]]
    ) -> Sequence[str] | None:
        """The states behind one reference: the job's; every task's (distinct) for an array; None if unknown."""
        if ref.task is not None:
            key = (ref.job_id, ref.task)
            if key not in self._task_ids:
                self._task_ids[key] = session.scalar(
                    select(t.Job.id).where(t.Job.array_job_id == ref.job_id, t.Job.array_task_id == ref.task)
                )
            tid = self._task_ids[key]
            if tid is None:
                return None
            self._look_up(session, [tid], states)
            state = states.get(tid) or self._final.get(tid)
            return (state,) if state is not None else None
        if not self._is_array.get(ref.job_id, False):
            state = states.get(ref.job_id) or self._final.get(ref.job_id)
            return (state,) if state is not None else None
        if ref.job_id in self._array_final:
            return tuple(self._array_final[ref.job_id])
        active = array_states.get(ref.job_id, set())
        ended = session.execute(
            select(t.Job.state)
            .where(t.Job.array_job_id == ref.job_id, t.Job.state.in_(sorted(_FINAL)))
            .group_by(t.Job.state)
        ).scalars()
        done = frozenset(ended)
        if not active:
            self._array_final[ref.job_id] = done
        return tuple(active | done)

    def _look_up(self, session: Session, ids: Iterable[int], states: Mapping[int, str]) -> None:
        """Learn whether each of ``ids`` heads an array and, for those not active, their (final) state."""
        wanted = sorted({i for i in ids if i not in self._is_array or (i not in states and i not in self._final)})
        for k in range(0, len(wanted), _CHUNK):
            q = select(t.Job.id, t.Job.state, t.Job.array_job_id).where(t.Job.id.in_(wanted[k : k + _CHUNK]))
            for jid, state, array_id in session.execute(q):
                self._is_array[jid] = array_id == jid
                if state in _FINAL:
                    self._final[jid] = state

    def _cap(self, session: Session, array_id: int) -> int | None:
        if array_id not in self._caps:
            spec = session.scalar(select(t.Job.spec).where(t.Job.id == array_id)) or {}
            self._caps[array_id] = max_running(str(spec.get("array", "")))
        return self._caps[array_id]

    @staticmethod
    def _singletons(rows: Sequence[Any]) -> dict[tuple[int, str], int]:
        """Per (user, name): the one job a ``singleton`` dependency lets go (0 while one of them is admitted or
        running; else the lowest pending id)."""
        out: dict[tuple[int, str], int] = {}
        for row in rows:
            key = (row[6], row[7])
            if row[1] in _RUNNING:
                out[key] = 0
            elif row[1] == PENDING and out.get(key) != 0:
                out[key] = min(out.get(key, row[0]), row[0])
        return out

    # ---- writing -------------------------------------------------------------------------------------------
    def write(
        self,
        session: Session,
        now_s: float,
        cycle_reasons: dict[str, Any],
        end: Callable[[Session, int, str, float], None] | None = None,
    ) -> None:
        """Store the reasons of the jobs kept out (those that changed), in the controller's transaction; cancel
        through ``end(session, job_id, why, now_s)`` the jobs whose dependency can never be met. ``cycle_reasons``
        is the controller's cache of reasons it wrote: a job kept out leaves it, so that its reason from the cycle
        is written again when it comes back."""
        end = end or end_never_satisfied
        for jid in self.stale:
            self._written.pop(jid, None)
            cycle_reasons.pop(str(jid), None)
        for jid in [j for j in self._written if j not in self.kept]:
            del self._written[jid]
        groups: dict[tuple[str, str, float | None], list[int]] = {}
        for jid, kept in self.kept.items():
            cycle_reasons.pop(str(jid), None)
            if kept.end:
                end(session, jid, kept.text, now_s)
                continue
            key = (kept.code, kept.text, kept.expected_start_s)
            if self._written.get(jid) != key:
                self._written[jid] = key
                groups.setdefault(key, []).append(jid)
        for (code, text, start), ids in groups.items():
            for k in range(0, len(ids), _CHUNK):
                session.execute(
                    update(t.Job)
                    .where(t.Job.id.in_(ids[k : k + _CHUNK]), t.Job.state == PENDING)
                    .values(reason_code=code, reason=text, expected_start_s=start, expected_start_why=text)
                    .execution_options(synchronize_session=False)
                )


def end_never_satisfied(session: Session, job_id: int, why: str, now_s: float) -> None:
    """Cancel a pending job whose dependency can never be met (Slurm's ``DependencyNeverSatisfied`` with
    ``kill_invalid_depend``), audited as the controller's ``job.end``."""
    row = session.get(t.Job, job_id)
    if row is None or row.state != PENDING:
        return
    transition(session, row, JobState.CANCELLED, now_s, why)
    row.ended_at_s = now_s
    org = session.scalar(select(t.Project.organization_id).where(t.Project.id == row.project_id))
    audit.record(session, CONTROLLER, "job.end", "job", row.id, now_s, org, {"state": "cancelled", "message": why})
