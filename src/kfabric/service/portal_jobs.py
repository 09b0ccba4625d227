"""What the portal's job pages read: the queue a user sees (the jobs ``job_visibility`` lets it see, as the API's
list, filtered and paged), one job with its events, owner, grant and the tail of its output, and the operators'
queue by pending reason. Every function opens its own read and returns plain records
(:mod:`kfabric.service.portal_records`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.service import job_output, job_visibility, jobs
from kfabric.service.actors import Actor, Role
from kfabric.service.portal_records import JobEventRecord, JobRecord, Window, of
from kfabric.store import tables as t

W = TypeVar("W", bound=Window)

#: the "active" filter of the queue: jobs not yet ended
ACTIVE = ("pending", "admitted", "running", "preempted")


# ---- the queue -----------------------------------------------------------------------------------------------


def _project_names(session: Session, actor: Actor) -> list[str]:
    q = job_visibility.scoped_projects(select(t.Project.name).order_by(t.Project.name), actor)
    return list(session.scalars(q).all()) if q is not None else []


def visible_projects(sessions: sessionmaker[Session], actor: Actor) -> list[str]:
    """Names of the projects ``actor`` sees (the choices of the portal's project fields and filters)."""
    with sessions() as s:
        return _project_names(s, actor)


@dataclass(frozen=True, slots=True)
class QueueRow:
    job: JobRecord
    project: str
    user: str


def _filtered(scope: Select[Any], state: str, project: str) -> Select[Any]:
    if state == "active":
        scope = scope.where(t.Job.state.in_(ACTIVE))
    elif state:
        scope = scope.where(t.Job.state == state)
    return scope.where(t.Project.name == project) if project else scope


def _queue_rows(s: Session, ids: Any) -> list[QueueRow]:
    rows = s.execute(
        select(t.Job, t.Project.name, t.User.name)
        .join(ids, ids.c.id == t.Job.id)
        .join(t.Project, t.Project.id == t.Job.project_id)
        .join(t.User, t.User.id == t.Job.user_id)
        .order_by(t.Job.id.desc())
    ).all()
    return [QueueRow(of(JobRecord, j), p, u) for j, p, u in rows]


def queue_page(
    sessions: sessionmaker[Session], actor: Actor, state: str, project: str, window: Callable[[int], W]
) -> tuple[list[QueueRow], W, list[str]]:
    """One page of the jobs ``actor`` sees (``state``: a job state, "active" or "" for all; ``project``: a name or
    ""), newest first; ``window(total)`` picks the page. Also the projects the filter offers."""
    with sessions() as s:
        projects = _project_names(s, actor)
        scope = job_visibility.scoped_jobs(select(t.Job.id).join(t.Project, t.Project.id == t.Job.project_id), actor)
        if scope is None:
            return [], window(0), projects
        scope = _filtered(scope, state, project)
        paging = window(int(s.scalar(select(func.count()).select_from(scope.subquery())) or 0))
        ids = scope.order_by(t.Job.id.desc()).limit(paging.size).offset(paging.offset).subquery()
        return _queue_rows(s, ids), paging, projects


# ---- one job -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobOutput:
    """The end of a job's output streams, or why there is none to show (``refused``)."""

    out: job_output.JobLog | None
    err: job_output.JobLog | None
    refused: str = ""


@dataclass(frozen=True, slots=True)
class JobDetail:
    """One job as its page shows it; ``output`` is None for someone who may not read it (not the job's user, not
    an operator)."""

    job: JobRecord
    project: str
    user: str
    events: list[JobEventRecord]
    grant: str | None
    output: JobOutput | None
    may_cancel: bool
    final: bool


def _output(row: t.Job, posix_user: str, events: list[JobEventRecord], files: bool, tail_lines: int) -> JobOutput:
    """The last ``tail_lines`` of each stream, read as ``GET /v1/jobs/{id}/log`` reads them (service/job_output.py);
    on a backend without output files (``sim``) the output is the job's state changes."""
    changes = [(e.at_s, e.from_state, e.to_state, e.reason) for e in events] if not files else []
    try:
        out, err = (job_output.job_log(row, posix_user, changes, files, stream, tail_lines=tail_lines)
                    for stream in ("out", "err"))  # fmt: skip
        return JobOutput(out, err)
    except job_output.OutputRefused as exc:
        return JobOutput(None, None, str(exc))


def _may_cancel(row: t.Job, actor: Actor) -> bool:
    return (
        row.state not in jobs.FINAL
        and not row.cancel_requested
        and (actor.role is not Role.MEMBER or row.user_id == actor.user_id)
    )


def job_detail(
    sessions: sessionmaker[Session], actor: Actor, job_id: int, files: Callable[[str], bool], tail_lines: int
) -> JobDetail:
    """Job ``job_id`` if ``actor`` may see it (:class:`NotFound` otherwise, as the API answers). ``files(backend)``
    says whether that backend writes output files; the output is read after the store's session is closed."""
    with sessions() as s:
        row, project = jobs.visible_job(s, actor, job_id)
        owner = s.get(t.User, row.user_id)
        user, posix_user = (owner.name, owner.posix_user) if owner is not None else ("", "")
        events = [of(JobEventRecord, e) for e in s.scalars(select(t.JobEvent).where(t.JobEvent.job_id == row.id)
                                                            .order_by(t.JobEvent.id))]  # fmt: skip
        grant = s.get(t.Grant, row.grant_id) if row.grant_id is not None else None
        grant_name, project_name = (grant.name if grant else None), project.name
        s.expunge_all()
    readable = row.user_id == actor.user_id or actor.is_operator
    output = _output(row, posix_user, events, files(row.backend), tail_lines) if readable else None
    return JobDetail(of(JobRecord, row), project_name, user, events, grant_name, output, _may_cancel(row, actor),
                     row.state in jobs.FINAL)  # fmt: skip


# ---- the operators' queue by pending reason ------------------------------------------------------------------


def pending_reasons(sessions: sessionmaker[Session], actor: Actor) -> list[tuple[str, int]]:
    """Pending jobs per reason code, most first (operators: they see every tenant's queue)."""
    actor.require_operator("see every tenant's queue")
    with sessions() as s:
        counts = s.execute(
            select(t.Job.reason_code, func.count())
            .where(t.Job.state == "pending")
            .group_by(t.Job.reason_code)
            .order_by(func.count().desc(), t.Job.reason_code)
        ).all()
    return [(c, n) for c, n in counts]


def pending_with(
    sessions: sessionmaker[Session], actor: Actor, reason: str, window: Window
) -> list[tuple[JobRecord, str, str]]:
    """The pending jobs waiting for ``reason`` (job, project, user), oldest first, the rows ``window`` picks."""
    actor.require_operator("see every tenant's queue")
    with sessions() as s:
        rows = s.execute(
            select(t.Job, t.Project.name, t.User.name)
            .join(t.Project, t.Project.id == t.Job.project_id)
            .join(t.User, t.User.id == t.Job.user_id)
            .where(t.Job.state == "pending", t.Job.reason_code == reason)
            .order_by(t.Job.id)
            .limit(window.size)
            .offset(window.offset)
        ).all()
        return [(of(JobRecord, j), p, u) for j, p, u in rows]
