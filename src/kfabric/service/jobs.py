"""Submit, cancel, list and show jobs. Submissions are idempotent per ``(project, client_key)``: a retry with
the same key returns the job the first call created, whatever happened to the first response."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import Conflict, NotFound, PermissionDenied, ValidationError
from kfabric.model.job import JobState, check_transition
from kfabric.service import audit, notifications
from kfabric.service.actors import Actor, Role
from kfabric.service.dependencies import parse_dependency
from kfabric.service.feasibility import Feasibility
from kfabric.service.job_arrays import JobRef, parse_array, parse_ref
from kfabric.service.job_output import check_pattern
from kfabric.service.jobspec import build_job, control_columns
from kfabric.service.submissions import Submission, committer, key_conflict, task_values
from kfabric.store import tables as t

FINAL = {s.value for s in JobState if s.final}


def _project(session: Session, actor: Actor, name: str) -> t.Project:
    project = session.scalars(select(t.Project).where(t.Project.name == name)).one_or_none()
    if project is None or not actor.sees_project(project.id, project.organization_id):
        raise NotFound("project", name, "kfabric projects lists the projects you belong to")
    return project


@dataclass(slots=True)
class Prepared(Submission):
    """A submission that passed :func:`prepare`, with the notes its answer carries (e.g. demoted to scavenger)."""

    notes: tuple[str, ...] = ()


def prepare(
    actor: Actor,
    project_name: str,
    spec: dict[str, Any],
    now_s: float,
    client_key: str | None = None,
    feasibility: Feasibility | None = None,
    script: str | None = None,
    sessions: sessionmaker[Session] | None = None,
) -> Prepared:
    """Check a submission before it queues (role, client key, every spec field and, given ``feasibility``, that
    the job can ever run: :mod:`kfabric.service.feasibility`); raises naming the problem. ``script`` is the batch
    script's text (stored with the job). A dependency's jobs must exist and be visible to ``actor``, checked in
    ``sessions`` (default: the feasibility's store)."""
    if actor.role not in (Role.OPERATOR, Role.ORG_ADMIN, Role.MEMBER):
        raise PermissionDenied("submit jobs", f"the {actor.role.value} role does not run work")
    if client_key is not None and not (0 < len(client_key) <= 200):
        raise ValidationError("client_key", "must be 1..200 characters", "use a UUID per logical submission")
    tasks = parse_array(str(spec["array"]), "job.array").indices if spec.get("array") else ()
    for stream in ("output", "error"):  # Slurm's -o/-e patterns: an unknown %q is refused here, not at launch
        if spec.get(stream) is not None:
            check_pattern(str(spec[stream]), f"job.{stream}")
    dependency = parse_dependency(str(spec.get("dependency", "")), "job.dependency")
    if dependency is not None:
        spec = {**spec, "dependency": str(dependency)}  # normalized: kinds in lower case, no blanks
        store = sessions if sessions is not None else feasibility.sessions if feasibility is not None else None
        if store is not None:
            with store() as session:
                check_refs(session, actor, dependency.refs, "job.dependency")
    try:
        job = build_job("new", project_name, actor.name, spec, now_s)  # validates; raises naming the field
    except ValidationError as e:  # the model names fields of "job 'new'" (no id yet): say "job.<field>"
        raise ValidationError(e.where.replace("job 'new'", "job", 1), e.problem, e.fix) from None
    notes = feasibility.check(actor, project_name, job, now_s) if feasibility is not None else ()
    columns = control_columns(spec, script)
    return Prepared(actor, project_name, spec, now_s, client_key, columns=columns, tasks=tasks, notes=notes)


def check_refs(session: Session, actor: Actor, refs: Iterable[JobRef], where: str) -> None:
    """Every job (or array task) ``refs`` name exists and ``actor`` sees it; :class:`NotFound` (404) otherwise, the
    same answer for a job of another tenant as for one that does not exist."""
    wanted = sorted({r.job_id for r in refs})
    found: dict[int, tuple[int | None, int, int]] = {}
    for i in range(0, len(wanted), 500):
        q = (
            select(t.Job.id, t.Job.array_job_id, t.Project.id, t.Project.organization_id)
            .join(t.Project, t.Project.id == t.Job.project_id)
            .where(t.Job.id.in_(wanted[i : i + 500]))
        )
        found.update({jid: (arr, pid, org) for jid, arr, pid, org in session.execute(q)})
    for ref in refs:
        hit = found.get(ref.job_id)
        if hit is None or not actor.sees_project(hit[1], hit[2]):
            raise NotFound("job", str(ref), f"{where}: depend only on jobs you can see (kfabric queue lists them)")
        if ref.task is not None:
            task = session.scalar(
                select(t.Job.id).where(t.Job.array_job_id == ref.job_id, t.Job.array_task_id == ref.task)
            )
            if task is None:
                raise NotFound("job", str(ref), f"{where}: array {ref.job_id} has no task {ref.task}")


def enqueue(sessions: sessionmaker[Session], sub: Submission) -> Future[tuple[t.Job, bool]]:
    """Queue a prepared submission for the next group commit (:mod:`kfabric.service.submissions`); the future
    resolves to ``(job, created)`` once its batch committed, or to the submission's own error."""
    return committer(sessions, _submit_alone).enqueue(sessions, sub)


def submit(
    sessions: sessionmaker[Session],
    actor: Actor,
    project_name: str,
    spec: dict[str, Any],
    now_s: float,
    client_key: str | None = None,
    script: str | None = None,
) -> tuple[t.Job, bool]:
    """Create a pending job (an array: its first task); returns ``(job, created)``. ``created`` is False for a
    repeated client key. Returns after the job is committed (with whatever other submissions shared its transaction)."""
    sub = prepare(actor, project_name, spec, now_s, client_key, script=script, sessions=sessions)
    return enqueue(sessions, sub).result()


def _submit_alone(sessions: sessionmaker[Session], sub: Submission) -> tuple[t.Job, bool]:
    """One submission in a transaction of its own (the fallback when its batch failed): the ORM path."""
    actor, client_key, spec, now_s = sub.actor, sub.client_key, sub.spec, sub.now_s
    try:
        with sessions.begin() as session:
            project = _project(session, actor, sub.project_name)
            if client_key is not None:
                found = _by_key(session, project.id, client_key)
                if found is not None:
                    if not sub.same_request(found):
                        raise key_conflict(client_key, found.id)
                    return found, False
            row = t.Job(
                project_id=project.id,
                user_id=actor.user_id,
                client_key=client_key,
                name=str(spec.get("name", "")),
                spec=spec,
                state=JobState.PENDING.value,
                reason_code="new",
                reason="submitted; waiting for the next scheduling cycle",
                submitted_at_s=now_s,
                array_task_id=sub.tasks[0] if sub.tasks else None,
                **sub.columns,
            )
            session.add(row)
            session.flush()  # the job's id, for its event and audit entry
            last_id = _insert_tasks(session, row, sub) if sub.tasks else None
            detail = sub.audit_detail(row.id, last_id)
            audit.record(session, actor.name, "job.submit", "job", row.id, now_s, project.organization_id, detail)
            # added after the audit entry so that one flush (at commit) writes the event, the entry and the head
            session.add(t.JobEvent(job_id=row.id, at_s=now_s, from_state="", to_state="pending", reason="submitted"))
            return row, True
    except IntegrityError:
        if client_key is None:
            raise
    # a concurrent request with the same client key won the race: return its job
    with sessions.begin() as session:
        project = _project(session, actor, sub.project_name)
        found = _by_key(session, project.id, client_key)
        if found is None:
            raise Conflict("client_key", "a concurrent submission with this key failed", "retry the submission")
        if not sub.same_request(found):
            raise key_conflict(client_key, found.id)
        return found, False


def _insert_tasks(session: Session, head: t.Job, sub: Submission) -> int:
    """The other tasks of the array whose first task is ``head`` (inserted, with its id), with their events;
    returns the last task's id."""
    head.array_job_id = head.id
    columns = [c.key for c in t.Job.__table__.columns if c.key != "id"]
    base = {c: getattr(head, c) for c in columns}
    rows = [{k: v for k, v in task_values(base, head.id, k).items() if k != "id"} for k in sub.tasks[1:]]
    if not rows:
        return head.id
    ids = list(session.scalars(insert(t.Job).returning(t.Job.id, sort_by_parameter_order=True), rows))
    events = [{"job_id": i, "at_s": sub.now_s, "from_state": "", "to_state": "pending", "reason": "submitted"}
              for i in ids]  # fmt: skip
    session.execute(insert(t.JobEvent), events)
    return ids[-1]


def _by_key(session: Session, project_id: int, client_key: str) -> t.Job | None:
    return session.scalars(
        select(t.Job).where(t.Job.project_id == project_id, t.Job.client_key == client_key)
    ).one_or_none()


def visible_job(session: Session, actor: Actor, job_id: int | str) -> tuple[t.Job, t.Project]:
    """The job ``job_id`` names (a job id, or ``ARRAYID_TASK`` for a task of an array) if ``actor`` may see it."""
    row: t.Job | None
    if isinstance(job_id, str):
        ref = parse_ref(job_id)
        if ref.task is None:
            row = session.get(t.Job, ref.job_id)
        else:
            query = select(t.Job).where(t.Job.array_job_id == ref.job_id, t.Job.array_task_id == ref.task)
            row = session.scalars(query).one_or_none()
    else:
        row = session.get(t.Job, job_id)
    project = session.get(t.Project, row.project_id) if row is not None else None
    if row is None or project is None or not actor.sees_project(project.id, project.organization_id):
        raise NotFound("job", job_id, "kfabric queue lists the jobs you can see")
    return row, project


def cancel(sessions: sessionmaker[Session], actor: Actor, job_id: int, now_s: float) -> t.Job:
    """Pending jobs end at once; admitted or running ones are terminated by the controller's next dispatch."""
    with sessions.begin() as session:
        row, project = visible_job(session, actor, job_id)
        if actor.role is Role.MEMBER and row.user_id != actor.user_id:
            raise PermissionDenied(f"cancel job {job_id}", "members cancel only their own jobs", "ask an org-admin")
        if row.state in FINAL:
            raise Conflict(f"job {job_id}", f"is already {row.state}", "nothing to cancel")
        if row.cancel_requested:
            return row
        if row.state in (JobState.PENDING.value, JobState.PREEMPTED.value) and not row.launched:
            transition(session, row, JobState.CANCELLED, now_s, f"cancelled by {actor.name}")
            row.ended_at_s = now_s
        else:
            row.cancel_requested = True
            row.reason = f"cancel requested by {actor.name}; stopping"
        audit.record(session, actor.name, "job.cancel", "job", row.id, now_s, project.organization_id)
        return row


def transition(session: Session, row: t.Job, to: JobState, now_s: float, reason: str) -> None:
    """Move a job to ``to`` (checked against the state machine) and record the event."""
    check_transition(str(row.id), JobState(row.state), to)
    session.add(t.JobEvent(job_id=row.id, at_s=now_s, from_state=row.state, to_state=to.value, reason=reason))
    notifications.enqueue(session, row, to.value, now_s, reason)  # --mail-type/--notify: same transaction
    row.state = to.value
    if to is not JobState.PENDING:
        row.reason_code, row.reason = "", reason
    row.expected_start_s = None
