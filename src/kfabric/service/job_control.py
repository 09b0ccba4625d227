"""Holds, releases, requeues and changes of jobs (``scontrol hold|release|requeue|update``), array-aware cancel,
and the script snapshot a job runs.

A job reference is ``12`` (the job; every task when 12 is an array, i.e. the id of its first task) or ``12_3``
(task 3 of array 12). Each action runs in one transaction and is audited (``job.hold``, ``job.release``,
``job.requeue``, ``job.update``, ``job.cancel``; one entry per request, naming the tasks it changed).

Rights. A job of another tenant is "not found" (404), whatever the action. Members act on their own jobs only,
org-admins on their organization's, operators on every job. Beyond that:

* **hold** (pending jobs): an operator's hold is an *admin* hold, which only an operator releases; anyone else's is
  a *user* hold. **release** lifts either (an admin hold: operators only).
* **requeue**: an admitted or running job is stopped (with the preemption grace) and goes back to pending as its
  next attempt. An ended job is not requeued (its accounting is closed; submit it again); a pending one has
  nothing to requeue. (Slurm can requeue ended batch jobs while slurmctld remembers them; kfabric keeps every job,
  so it would reopen closed records: refused.)
* **update** (pending jobs only, as the scheduler has not placed them): the owner (or an org-admin) may lower the
  time limit, lower the priority class, and change the GPU count, the name, ``--begin`` and the dependency;
  raising the time limit or the priority needs an operator. The changed job is checked as a submission is
  (fields, and whether it can ever run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import Conflict, NotFound, PermissionDenied, ValidationError
from kfabric.model.job import Job, JobState, PriorityClass
from kfabric.service import audit
from kfabric.service.actors import Actor, Role
from kfabric.service.dependencies import parse_dependency
from kfabric.service.eligibility_gate import UPDATED
from kfabric.service.feasibility import Feasibility
from kfabric.service.job_arrays import JobRef, parse_ref
from kfabric.service.jobs import FINAL, check_refs, transition, visible_job
from kfabric.service.jobspec import build_job
from kfabric.store import tables as t

PENDING, ADMITTED, RUNNING = JobState.PENDING.value, JobState.ADMITTED.value, JobState.RUNNING.value
#: the fields ``update`` changes
UPDATE_FIELDS = ("time_limit_s", "priority", "gpus", "name", "begin_s", "dependency", "kill_on_invalid_dep")


@dataclass(frozen=True, slots=True)
class Changed:
    """The answer to an action on a reference: how many jobs (tasks) it changed, and the ids."""

    ref: str
    action: str
    job_ids: tuple[int, ...]
    message: str


def targets(session: Session, actor: Actor, ref: JobRef) -> tuple[list[t.Job], t.Project, bool]:
    """The rows ``ref`` names, their project, and whether it named a whole array; :class:`NotFound` for a job the
    actor cannot see (as for one that does not exist)."""
    head, project = visible_job(session, actor, ref.job_id)
    if ref.task is not None:
        row = session.scalars(
            select(t.Job).where(t.Job.array_job_id == ref.job_id, t.Job.array_task_id == ref.task)
        ).one_or_none()
        if row is None:
            raise NotFound("job", str(ref), f"job {ref.job_id} is not an array with task {ref.task} (kfabric queue)")
        return [row], project, False
    if head.array_job_id == head.id:
        rows = list(session.scalars(select(t.Job).where(t.Job.array_job_id == head.id).order_by(t.Job.id)).all())
        return rows, project, True
    return [head], project, False


def _owner_or_admin(actor: Actor, rows: Sequence[t.Job], action: str, ref: JobRef) -> None:
    if actor.role is Role.MEMBER and any(r.user_id != actor.user_id for r in rows):
        raise PermissionDenied(f"{action} job {ref}", "members act only on their own jobs", "ask an org-admin")
    if actor.role not in (Role.OPERATOR, Role.ORG_ADMIN, Role.MEMBER):
        raise PermissionDenied(f"{action} job {ref}", f"the {actor.role.value} role does not run work")


def _record(session: Session, actor: Actor, action: str, ref: JobRef, rows: Sequence[t.Job], project: t.Project,
            now_s: float, detail: dict[str, Any]) -> None:  # fmt: skip
    """One audit entry for the request: on the job, or on the array (with the count and the first and last ids)."""
    if len(rows) > 1 or ref.task is not None:
        detail = {**detail, "ref": str(ref), "tasks": len(rows)}
        if rows:
            detail["first_id"], detail["last_id"] = rows[0].id, rows[-1].id
    object_id = rows[0].id if len(rows) == 1 else ref.job_id
    audit.record(session, actor.name, action, "job", object_id, now_s, project.organization_id, detail)


def _parse(ref: str | JobRef) -> JobRef:
    return ref if isinstance(ref, JobRef) else parse_ref(ref)


# ---- hold / release ------------------------------------------------------------------------------------------
def hold(sessions: sessionmaker[Session], actor: Actor, ref: str | JobRef, now_s: float) -> Changed:
    """Hold pending jobs (an operator's hold is an admin hold). Jobs that are not pending are refused (one job) or
    skipped (an array: its pending tasks are held)."""
    jr = _parse(ref)
    with sessions.begin() as session:
        rows, project, whole = targets(session, actor, jr)
        _owner_or_admin(actor, rows, "hold", jr)
        by = "admin" if actor.is_operator else "user"
        pending = [r for r in rows if r.state == PENDING]
        if not pending:
            state = rows[0].state if len(rows) == 1 else "not pending (no task is)"
            raise Conflict(f"job {jr}", f"is {state}", "only pending jobs are held; cancel or requeue a running one")
        for r in pending:
            if r.held_by != "admin":  # a user's hold never weakens an operator's
                r.held_by = by
        _record(session, actor, "job.hold", jr, pending, project, now_s, {"held_by": by})
        return Changed(str(jr), "hold", tuple(r.id for r in pending), _count("held", pending, whole))


def release(sessions: sessionmaker[Session], actor: Actor, ref: str | JobRef, now_s: float) -> Changed:
    """Release held jobs. Only an operator releases an admin hold."""
    jr = _parse(ref)
    with sessions.begin() as session:
        rows, project, whole = targets(session, actor, jr)
        _owner_or_admin(actor, rows, "release", jr)
        held = [r for r in rows if r.held_by and r.state == PENDING]
        if not held:
            raise Conflict(f"job {jr}", "is not held", f"kfabric hold {jr} holds a pending job")
        if not actor.is_operator and any(r.held_by == "admin" for r in held):
            raise PermissionDenied(
                f"release job {jr}", "it is held by an operator; only an operator can release it", "ask an operator"
            )
        for r in held:
            r.held_by = ""
        _record(session, actor, "job.release", jr, held, project, now_s, {})
        return Changed(str(jr), "release", tuple(r.id for r in held), _count("released", held, whole))


# ---- requeue -------------------------------------------------------------------------------------------------
def requeue(sessions: sessionmaker[Session], actor: Actor, ref: str | JobRef, now_s: float) -> Changed:
    """Stop admitted or running jobs and put them back in the queue as their next attempt (the controller's next
    dispatch terminates them; an admitted job not launched yet goes back at once there)."""
    jr = _parse(ref)
    with sessions.begin() as session:
        rows, project, whole = targets(session, actor, jr)
        _owner_or_admin(actor, rows, "requeue", jr)
        live = [r for r in rows if r.state in (ADMITTED, RUNNING) and not r.cancel_requested]
        if not live:
            state = rows[0].state if len(rows) == 1 else "not running (no task is)"
            fix = (
                "an ended job is not requeued in kfabric: submit it again"
                if len(rows) == 1 and rows[0].state in FINAL
                else "only admitted or running jobs are requeued"
            )
            raise Conflict(f"job {jr}", f"is {state}", fix)
        for r in live:
            if not r.preempt_requested:
                r.preempt_requested = True
                r.reason = f"requeue requested by {actor.name}; stopping"
        _record(session, actor, "job.requeue", jr, live, project, now_s, {"requested_by": actor.name})
        return Changed(str(jr), "requeue", tuple(r.id for r in live), _count("requeueing", live, whole))


# ---- cancel (array-aware) --------------------------------------------------------------------------------------
def cancel(sessions: sessionmaker[Session], actor: Actor, ref: str | JobRef, now_s: float) -> tuple[t.Job, Changed]:
    """Cancel a job, an array task, or every task of an array that has not ended; returns the named row (the
    array's first task) and what changed."""
    jr = _parse(ref)
    with sessions.begin() as session:
        rows, project, whole = targets(session, actor, jr)
        if actor.role is Role.MEMBER and any(r.user_id != actor.user_id for r in rows):
            raise PermissionDenied(f"cancel job {jr}", "members cancel only their own jobs", "ask an org-admin")
        open_rows = [r for r in rows if r.state not in FINAL and not r.cancel_requested]
        if not open_rows:
            if any(r.cancel_requested and r.state not in FINAL for r in rows):
                return rows[0], Changed(str(jr), "cancel", (), "already cancelling")
            raise Conflict(f"job {jr}", f"is already {rows[0].state}" if len(rows) == 1 else "has ended (every task)",
                           "nothing to cancel")  # fmt: skip
        for r in open_rows:
            if r.state in (PENDING, JobState.PREEMPTED.value) and not r.launched:
                transition(session, r, JobState.CANCELLED, now_s, f"cancelled by {actor.name}")
                r.ended_at_s = now_s
            else:
                r.cancel_requested = True
                r.reason = f"cancel requested by {actor.name}; stopping"
        _record(session, actor, "job.cancel", jr, open_rows, project, now_s, {})
        return rows[0], Changed(
            str(jr), "cancel", tuple(r.id for r in open_rows), _count("cancelled", open_rows, whole)
        )


def _count(verb: str, rows: Sequence[t.Job], whole: bool) -> str:
    return f"{verb} {len(rows)} task(s) of the array" if whole else f"{verb} job {rows[0].id}"


# ---- update --------------------------------------------------------------------------------------------------
def update(
    sessions: sessionmaker[Session],
    actor: Actor,
    ref: str | JobRef,
    changes: dict[str, Any],
    now_s: float,
    feasibility: Feasibility | None = None,
) -> Changed:
    """Change pending jobs (``changes``: any of :data:`UPDATE_FIELDS`; ``begin_s`` 0 or None clears it,
    ``dependency`` "" clears it). Raises naming the field for a change the caller may not make or that makes the
    job invalid; nothing is written then."""
    jr = _parse(ref)
    unknown = sorted(set(changes) - set(UPDATE_FIELDS))
    if unknown:
        raise ValidationError(f"update.{unknown[0]}", "cannot be changed", f"changeable: {', '.join(UPDATE_FIELDS)}")
    if not changes:
        raise ValidationError("update", "names no change", "give e.g. --time 1:00:00 or --priority low")
    dependency = None
    if "dependency" in changes:
        dependency = parse_dependency(str(changes["dependency"] or ""), "update.dependency")

    def change(session: Session) -> tuple[Job, t.Project, list[t.Job], bool, dict[str, Any]]:
        """Apply the change to the rows in ``session``; returns the first pending job as changed."""
        rows, project, whole = targets(session, actor, jr)
        _owner_or_admin(actor, rows, "update", jr)
        pending = [r for r in rows if r.state == PENDING]
        if not pending:
            state = f"is {rows[0].state}" if len(rows) == 1 else "has no pending task"
            raise Conflict(f"job {jr}", state, "only pending jobs are updated (as most fields in Slurm)")
        if dependency is not None:
            check_refs(session, actor, dependency.refs, "update.dependency")
            if any(ref.job_id in {r.id for r in rows} or ref.job_id == jr.job_id for ref in dependency.refs):
                raise ValidationError("update.dependency", "names the job itself", "a job cannot wait for itself")
            _refuse_cycle(session, rows, dependency.refs)
        first = pending[0]
        detail: dict[str, Any] = {}
        for key, value in changes.items():
            old = _current(first, key)
            _check_right(actor, key, old, value)
            detail[key] = [old, value]
        first_job: Job | None = None
        for r in pending:
            _apply(r, changes, dependency)
            try:  # the changed job is checked by building it, as a submission is
                job = build_job(str(r.id), project.name, actor.name, r.spec, r.submitted_at_s)
            except ValidationError as e:
                raise _as_update(e, r.id) from None
            first_job = first_job or job
            r.reason_code, r.reason = UPDATED, f"updated by {actor.name}; waiting for the next scheduling cycle"
        assert first_job is not None
        return first_job, project, pending, whole, detail

    if feasibility is not None:
        # checked on the changed job before the write transaction, never inside it: the check reads the store
        # in its own session, which would wait for this transaction's lock on SQLite (BEGIN IMMEDIATE)
        with sessions() as probe:
            job, project, *_ = change(probe)
            project_name = project.name
            probe.rollback()
        feasibility.check(actor, project_name, job, now_s)
    with sessions.begin() as session:
        _job, project, pending, whole, detail = change(session)
        _record(session, actor, "job.update", jr, pending, project, now_s, {"changes": detail})
        return Changed(str(jr), "update", tuple(r.id for r in pending), _count("updated", pending, whole))


def _as_update(e: ValidationError, job_id: int) -> ValidationError:
    """The model's error about changed job ``job_id`` (``job 'ID'.FIELD``, or ``job.FIELD`` for a field the spec
    could not parse) as the update names its fields (``update.FIELD``)."""
    for prefix in (f"job '{job_id}'", "job"):
        if e.where == prefix or e.where.startswith(prefix + "."):
            return ValidationError("update" + e.where[len(prefix) :], e.problem, e.fix)
    return e


def _current(row: t.Job, key: str) -> Any:
    if key == "begin_s":
        return row.begin_at_s
    if key == "dependency":
        return row.dependency
    if key == "kill_on_invalid_dep":
        return row.kill_on_invalid_dep
    if key == "name":
        return row.name
    defaults = {"priority": "normal", "gpus": 1}
    return row.spec.get(key, defaults.get(key))


def _check_right(actor: Actor, key: str, old: Any, new: Any) -> None:
    """Owners may lower the time limit and the priority; raising either needs an operator."""
    if actor.is_operator:
        return
    if key == "time_limit_s" and new is not None and float(new) > float(old):
        raise PermissionDenied(
            "raise the time limit", f"from {old:g} s to {float(new):g} s needs an operator (you may lower it)"
        )
    if key == "priority":
        try:
            before, after = PriorityClass.parse(str(old)), PriorityClass.parse(str(new))
        except ValueError:
            return  # not a priority class: building the changed job refuses it (update.priority), for every role
        if after > before:
            raise PermissionDenied(
                "raise the priority",
                f"from {before.name.lower()} to {after.name.lower()} needs an operator (you may lower it)",
            )


#: most pending jobs a dependency-cycle check looks through before it gives up and refuses the change
MAX_CYCLE_WALK = 10_000


def _refuse_cycle(session: Session, rows: Sequence[t.Job], refs: Sequence[JobRef]) -> None:
    """Refuse a dependency that would make ``rows`` wait for themselves through other pending jobs (12 waits for 13,
    13 for 14, and 14 would now wait for 12): none of them could ever start. Slurm refuses such a change too."""
    mine = {r.id for r in rows} | {r.array_job_id for r in rows if r.array_job_id is not None}
    seen: set[tuple[int, int | None]] = set()
    frontier = [(ref.job_id, ref.task) for ref in refs]
    path: dict[tuple[int, int | None], str] = {(ref.job_id, ref.task): str(ref) for ref in refs}
    while frontier:
        frontier = [k for k in frontier if k not in seen]
        seen.update(frontier)
        if len(seen) > MAX_CYCLE_WALK:
            raise ValidationError("update.dependency", f"reaches more than {MAX_CYCLE_WALK:,} pending jobs",
                                  "depend on fewer jobs (or on an array id)")  # fmt: skip
        ids = sorted({job_id for job_id, _ in frontier})
        if not ids:
            return
        found = session.execute(
            select(t.Job.id, t.Job.array_job_id, t.Job.array_task_id, t.Job.dependency).where(
                (t.Job.id.in_(ids) | t.Job.array_job_id.in_(ids)), t.Job.state == PENDING, t.Job.dependency != ""
            )
        ).all()
        step: list[tuple[int, int | None]] = []
        for job_id, array_id, task_id, text in found:
            via = next((k for k in frontier if _names(k, job_id, array_id, task_id)), None)
            parsed = parse_dependency(text) if via is not None else None
            if via is None or parsed is None:
                continue
            for ref in parsed.refs:
                chain = f"{path[via]} → {ref}"
                if ref.job_id in mine:
                    raise ValidationError("update.dependency", f"makes a cycle: the job would wait for itself "
                                          f"through {chain}", "remove one of the dependencies")  # fmt: skip
                path.setdefault((ref.job_id, ref.task), chain)
                step.append((ref.job_id, ref.task))
        frontier = step


def _names(key: tuple[int, int | None], job_id: int, array_id: int | None, task_id: int | None) -> bool:
    """Whether the reference ``key`` (job or array id, task or None) names the row ``job_id``."""
    ref_id, task = key
    if task is None:
        return ref_id in (job_id, array_id)
    return ref_id == array_id and task == task_id


def _apply(row: t.Job, changes: dict[str, Any], dependency: Any) -> None:
    spec = dict(row.spec)
    for key, value in changes.items():
        if key == "begin_s":
            row.begin_at_s = float(value) if value else None
        elif key == "dependency":
            row.dependency = str(dependency) if dependency is not None else ""
        elif key == "kill_on_invalid_dep":
            row.kill_on_invalid_dep = bool(value)
        elif key == "name":
            row.name = str(value)
            spec["name"] = str(value)
        elif key == "gpus":
            spec["gpus"] = int(value)
            spec.pop("nodes", None)
            spec.pop("gpus_per_node", None)
        elif key == "priority":
            spec["priority"] = str(value).strip().lower()
        else:
            spec[key] = float(value)
    row.spec = spec


# ---- the script snapshot ---------------------------------------------------------------------------------------
def job_script(session: Session, actor: Actor, job_id: int) -> str | None:
    """The batch script job ``job_id`` runs, as submitted (None: the job was a ``--wrap`` command). Its owner and
    operators may read it (a script may hold what its author shares with nobody else): others get 403, other
    tenants 404."""
    row, _project = visible_job(session, actor, job_id)
    if not actor.is_operator and row.user_id != actor.user_id:
        raise PermissionDenied(f"read the script of job {job_id}", "only its owner and operators read a job's script")
    return row.script
