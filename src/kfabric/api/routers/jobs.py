"""/v1/jobs: submit, list, show, cancel, events."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from kfabric.api.deps import Caller
from kfabric.api.schemas import JobCreate, JobEventPublic, JobPublic, NodePublic, ShortText
from kfabric.service import feasibility, jobs
from kfabric.service.actors import Actor
from kfabric.service.feasibility import Feasibility
from kfabric.service.runtime import Runtime
from kfabric.service.submissions import Submission
from kfabric.store import tables as t

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

#: a job id in a path: bounded, so a huge number is a 422, not a storage error (64-bit ids)
JobId = Annotated[int, Path(ge=1, le=2**62)]


def job_public(row: t.Job, project: str, user: str, node_names: list[str]) -> JobPublic:
    spec = row.spec
    placement = row.placement or {}
    nodes = [
        NodePublic(node=node_names[n] if n < len(node_names) else str(n), gpus=list(g), gpu_milli=m)
        for n, g, m, _c, _mem in placement.get("shares", [])
    ]
    return JobPublic(
        id=row.id,
        project=project,
        user=user,
        name=row.name,
        state=row.state,
        reason_code=row.reason_code,
        reason=row.reason,
        expected_start_s=row.expected_start_s,
        submitted_at_s=row.submitted_at_s,
        admitted_at_s=row.admitted_at_s,
        started_at_s=row.started_at_s,
        ended_at_s=row.ended_at_s,
        exit_code=row.exit_code,
        attempt=row.attempt,
        gpus=int(spec.get("gpus", 1)),
        gpu_milli=int(spec.get("gpu_milli", 1000)),
        time_limit_s=float(spec["time_limit_s"]),
        priority=str(spec.get("priority", "normal")),
        pool=placement.get("pool"),
        nodes=nodes,
        cancel_requested=row.cancel_requested,
        spec=spec,
    )


def _user(rt: Runtime, user_id: int) -> str:
    with rt.sessions() as s:
        return s.scalar(select(t.User.name).where(t.User.id == user_id)) or ""


@router.post("", status_code=201, response_model=JobPublic)
async def submit(body: JobCreate, c: Caller) -> Response:
    """Submit a job. With ``client_key``, a repeated submission returns the first one's job (200, not 201)."""
    sub = jobs.prepare(c.actor, body.project, body.spec(), c.now, body.client_key, admission(c.rt))
    return await submission_answer(c.rt, c.actor, body.project, sub)


def admission(rt: Runtime) -> Feasibility:
    """The submit-time admission of the service (kfabric.service.feasibility): the route and the fast path
    (api/fast_submit.py) both pass it to ``jobs.prepare``, so both answer alike."""
    return feasibility.for_service(rt.scenario.fleet, rt.sessions)


async def submission_answer(rt: Runtime, actor: Actor, project: str, sub: Submission) -> Response:
    """Queue a checked submission for the next group commit (kfabric.service.submissions) and answer once it is
    committed. Async: the request waits for its batch without holding a thread. Also the fast path's answer
    (api/fast_submit.py). The notes of a :class:`~kfabric.service.jobs.Prepared` submission are in the answer."""
    row, created = await asyncio.wrap_future(jobs.enqueue(rt.sessions, sub))
    # the submitter is the job's user unless the client key was first used by someone else: no second query
    user = actor.name if row.user_id == actor.user_id else await run_in_threadpool(_user, rt, row.user_id)
    public = job_public(row, project, user, rt.controller.node_names)
    if isinstance(sub, jobs.Prepared) and sub.notes:
        public.notes = list(sub.notes)
    # serialized here (pydantic-core) instead of validated again against the response model
    return Response(public.model_dump_json(), status_code=201 if created else 200, media_type="application/json")


@router.get("", response_model=list[JobPublic])
def list_jobs(
    c: Caller,
    state: Annotated[list[ShortText] | None, Query(max_length=10)] = None,
    project: Annotated[ShortText | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> list[JobPublic]:
    """Jobs the caller may see, oldest first (page with ``after_id``)."""
    with c.rt.sessions() as s:
        rows = jobs.list_jobs(s, c.actor, set(state) if state else None, project, limit, after_id)
        users = dict(s.execute(select(t.User.id, t.User.name)).all())
    names = c.rt.controller.node_names
    return [job_public(j, p, users.get(j.user_id, ""), names) for j, p in rows]


@router.get("/{job_id}", response_model=JobPublic)
def show(job_id: JobId, c: Caller) -> JobPublic:
    with c.rt.sessions() as s:
        row, project = jobs.visible_job(s, c.actor, job_id)
        user = s.scalar(select(t.User.name).where(t.User.id == row.user_id)) or ""
    return job_public(row, project.name, user, c.rt.controller.node_names)


@router.get("/{job_id}/events", response_model=list[JobEventPublic])
def events(job_id: JobId, c: Caller) -> list[JobEventPublic]:
    with c.rt.sessions() as s:
        row, _ = jobs.visible_job(s, c.actor, job_id)
        evs = s.scalars(select(t.JobEvent).where(t.JobEvent.job_id == row.id).order_by(t.JobEvent.id)).all()
        return [JobEventPublic(at_s=e.at_s, from_state=e.from_state, to_state=e.to_state, reason=e.reason) for e in evs]


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel(job_id: JobId, c: Caller) -> JobPublic:
    """Cancel a job: a pending one ends at once, a running one is stopped by the controller's next dispatch."""
    row = jobs.cancel(c.rt.sessions, c.actor, job_id, c.now)
    with c.rt.sessions() as s:
        project = s.get(t.Project, row.project_id)
        user = s.scalar(select(t.User.name).where(t.User.id == row.user_id)) or ""
    return job_public(row, project.name if project else "?", user, c.rt.controller.node_names)
