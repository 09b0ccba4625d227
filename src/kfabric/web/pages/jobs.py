"""My jobs: the queue (state, pending reason, expected start; filters, paging, live refresh), a job's page (spec,
events as a timeline, where it runs, its output, cancel). Tenancy is the API's: the jobs ``job_visibility.scoped_jobs``
lets a caller see, and ``jobs.visible_job`` for one job (another tenant's job is a 404 page)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from kfabric.model.job import JobState
from kfabric.service import jobs, portal_jobs
from kfabric.service.actors import Role
from kfabric.service.portal_records import JobRecord
from kfabric.service.runtime import Runtime
from kfabric.web import nav
from kfabric.web.tables import Paging, query
from kfabric.web.view import PageRoute, Posted, View, Viewer

router = APIRouter(route_class=PageRoute, include_in_schema=False)
nav.add("nav.jobs", "/jobs", frozenset({Role.OPERATOR, Role.ORG_ADMIN, Role.MEMBER}), order=10)

JobId = Annotated[int, Path(ge=1, le=2**62)]
STATES = tuple(s.value for s in JobState)
#: seconds between live refreshes of the queue and job pages
REFRESH_S = 3
#: lines of a job's output the job page shows (the end of it)
TAIL_LINES = 40


# ---- the queue -----------------------------------------------------------------------------------------------


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


def _queue(view: View, state: str, project: str, page: str, template: str) -> Response:
    filters = Filters.of(state, project, page)
    rows, paging, projects = portal_jobs.queue_page(
        view.rt.sessions, view.actor, filters.state, filters.project, lambda total: Paging.of(filters.page, total)
    )
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


def placement(rt: Runtime, row: JobRecord) -> Placement | None:
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


def _writes_files(rt: Runtime) -> Callable[[str], bool]:
    """Whether a backend writes output files (``local``, ``slurm``); on ``sim`` the output is the state changes."""
    return lambda backend: bool(getattr(rt.controller.backends.get(backend), "output_files", True))


def job_context(view: View, job_id: int) -> dict[str, Any]:
    d = portal_jobs.job_detail(view.rt.sessions, view.actor, job_id, _writes_files(view.rt), TAIL_LINES)
    return {
        "job": d.job,
        "project": d.project,
        "user": d.user,
        "events": d.events,
        "grant": d.grant,
        "where": placement(view.rt, d.job),
        "may_cancel": d.may_cancel,
        "final": d.final,
        "spec_items": sorted(d.job.spec.items()),
        "output": d.output or portal_jobs.JobOutput(None, None, view.t("job.output.owner_only")),
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
