"""My jobs: the queue (state, pending reason, expected start; filters, paging, live refresh), a job's page (spec,
events as a timeline, where it runs, its output, cancel). Tenancy is the API's: the jobs ``jobs.list_jobs`` would
list, and ``jobs.visible_job`` for one job (another tenant's job is a 404 page)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from kfabric.model.job import JobState
from kfabric.service import job_output, jobs
from kfabric.service.actors import Actor, Role
from kfabric.service.runtime import Runtime
from kfabric.store import tables as t
from kfabric.web import nav
from kfabric.web.tables import Paging, query
from kfabric.web.view import PageRoute, Posted, View, Viewer

router = APIRouter(route_class=PageRoute, include_in_schema=False)
nav.add("nav.jobs", "/jobs", frozenset({Role.OPERATOR, Role.ORG_ADMIN, Role.MEMBER}), order=10)

JobId = Annotated[int, Path(ge=1, le=2**62)]
STATES = tuple(s.value for s in JobState)
#: the "active" filter: jobs not yet ended
ACTIVE = ("pending", "admitted", "running", "preempted")
#: seconds between live refreshes of the queue and job pages
REFRESH_S = 3
#: lines of a job's output the job page shows (the end of it)
TAIL_LINES = 40


# ---- the queue -----------------------------------------------------------------------------------------------


def scoped(q: Select[Any], actor: Actor) -> Select[Any] | None:
    """``q`` (over jobs joined with their project) limited to the jobs ``actor`` may see, as ``jobs.list_jobs``
    limits them; None for roles that see no jobs."""
    if actor.role is Role.ORG_ADMIN:
        return q.where(t.Project.organization_id == actor.organization_id)
    if actor.role is Role.MEMBER:
        return q.where(t.Job.project_id.in_(sorted(actor.project_ids)))
    if actor.role is Role.OPERATOR:
        return q
    return None


def visible_projects(session: Session, actor: Actor) -> list[str]:
    q = select(t.Project.name).order_by(t.Project.name)
    if actor.role is Role.ORG_ADMIN:
        q = q.where(t.Project.organization_id == actor.organization_id)
    elif actor.role is Role.MEMBER:
        q = q.where(t.Project.id.in_(sorted(actor.project_ids)))
    elif actor.role is not Role.OPERATOR:
        return []
    return list(session.scalars(q).all())


@dataclass(frozen=True, slots=True)
class Filters:
    state: str
    project: str
    page: str

    @classmethod
    def of(cls, state: str, project: str, page: str) -> Filters:
        state = state if state in STATES or state == "active" else ""
        return cls(state, project[:200], page[:10])

    def as_query(self) -> dict[str, Any]:
        return {"state": self.state, "project": self.project}


@dataclass(frozen=True, slots=True)
class QueueRow:
    job: t.Job
    project: str
    user: str


def queue_page(rt: Runtime, actor: Actor, filters: Filters) -> tuple[list[QueueRow], Paging, list[str]]:
    """One page of the jobs ``actor`` sees, newest first, and the projects the filter offers."""
    base = select(t.Job.id).join(t.Project, t.Project.id == t.Job.project_id)
    with rt.sessions() as s:
        projects = visible_projects(s, actor)
        scope = scoped(base, actor)
        if scope is None:
            return [], Paging.of("1", 0), projects
        if filters.state == "active":
            scope = scope.where(t.Job.state.in_(ACTIVE))
        elif filters.state:
            scope = scope.where(t.Job.state == filters.state)
        if filters.project:
            scope = scope.where(t.Project.name == filters.project)
        total = int(s.scalar(select(func.count()).select_from(scope.subquery())) or 0)
        paging = Paging.of(filters.page, total)
        ids = scope.order_by(t.Job.id.desc()).limit(paging.size).offset(paging.offset).subquery()
        rows = s.execute(
            select(t.Job, t.Project.name, t.User.name)
            .join(ids, ids.c.id == t.Job.id)
            .join(t.Project, t.Project.id == t.Job.project_id)
            .join(t.User, t.User.id == t.Job.user_id)
            .order_by(t.Job.id.desc())
        ).all()
        return [QueueRow(j, p, u) for j, p, u in rows], paging, projects


def _queue(view: View, state: str, project: str, page: str, template: str) -> Response:
    filters = Filters.of(state, project, page)
    rows, paging, projects = queue_page(view.rt, view.actor, filters)
    return view.render(
        template,
        rows=rows,
        paging=paging,
        projects=projects,
        filters=filters,
        states=STATES,
        query=query,
        refresh_s=REFRESH_S,
    )


@router.get("/jobs")
def queue(view: Viewer, state: str = "", project: str = "", page: str = "") -> Response:
    return _queue(view, state, project, page, "jobs.html")


@router.get("/jobs/rows")
def queue_rows(view: Viewer, state: str = "", project: str = "", page: str = "") -> Response:
    """The queue's table alone (the live refresh fetches it)."""
    return _queue(view, state, project, page, "jobs_rows.html")


# ---- one job -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    site: str
    cluster: str
    pool: str
    gpu_model: str
    nodes: list[tuple[str, list[int], int]]  # node, GPU indexes, milli per GPU


def placement(rt: Runtime, row: t.Job) -> Placement | None:
    got = row.placement or {}
    pool_name = got.get("pool")
    if not pool_name:
        return None
    pool = next((p for p in rt.scenario.fleet.pools if p.name == pool_name), None)
    cluster = next((c for c in rt.scenario.fleet.clusters if pool and c.name == pool.cluster), None)
    names = rt.controller.node_names
    nodes = [(names[n] if n < len(names) else str(n), list(g), int(m)) for n, g, m, *_rest in got.get("shares", [])]
    return Placement(
        cluster.site if cluster else "?", cluster.name if cluster else "?", pool_name,
        pool.gpu_model if pool else "?", nodes,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class OutputTail:
    """The end of a job's output streams, or why the page shows none (``refused``)."""

    out: job_output.JobLog | None
    err: job_output.JobLog | None
    refused: str = ""


def output_tail(view: View, row: t.Job, posix_user: str, events: list[t.JobEvent]) -> OutputTail:
    """The last lines of the job's output, read as ``GET /v1/jobs/{id}/log`` reads them (service/job_output.py):
    for the job's user and operators only; on ``sim`` the output is the job's state changes."""
    if row.user_id != view.actor.user_id and not view.actor.is_operator:
        return OutputTail(None, None, view.t("job.output.owner_only"))
    files = bool(getattr(view.rt.controller.backends.get(row.backend), "output_files", True))
    changes = [(e.at_s, e.from_state, e.to_state, e.reason) for e in events] if not files else []
    try:
        out, err = (job_output.job_log(row, posix_user, changes, files, stream, tail_lines=TAIL_LINES)
                    for stream in ("out", "err"))  # fmt: skip
        return OutputTail(out, err)
    except job_output.OutputRefused as exc:
        return OutputTail(None, None, str(exc))


def job_context(view: View, job_id: int) -> dict[str, Any]:
    with view.rt.sessions() as s:
        row, project = jobs.visible_job(s, view.actor, job_id)
        owner = s.get(t.User, row.user_id)
        user, posix_user = (owner.name, owner.posix_user) if owner is not None else ("", "")
        events = list(s.scalars(select(t.JobEvent).where(t.JobEvent.job_id == row.id).order_by(t.JobEvent.id)))
        grant = s.get(t.Grant, row.grant_id) if row.grant_id is not None else None
        s.expunge_all()
    may_cancel = (
        row.state not in jobs.FINAL
        and not row.cancel_requested
        and (view.actor.role is not Role.MEMBER or row.user_id == view.actor.user_id)
    )
    return {
        "job": row,
        "project": project.name,
        "user": user,
        "events": events,
        "grant": grant.name if grant else None,
        "where": placement(view.rt, row),
        "may_cancel": may_cancel,
        "final": row.state in jobs.FINAL,
        "spec_items": sorted(row.spec.items()),
        "output": output_tail(view, row, posix_user, events),
        "tail_lines": TAIL_LINES,
        "refresh_s": REFRESH_S,
    }


@router.get("/jobs/{job_id}")
def job_page(view: Viewer, job_id: JobId) -> Response:
    return view.render("job.html", **job_context(view, job_id))


@router.get("/jobs/{job_id}/live")
def job_live(view: Viewer, job_id: JobId) -> Response:
    """The job page's changing part alone (the live refresh fetches it)."""
    return view.render("job_live.html", **job_context(view, job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel(view: Viewer, form: Posted, job_id: JobId) -> Response:
    jobs.cancel(view.rt.sessions, view.actor, job_id, view.now)
    return view.redirect(f"/jobs/{job_id}")
