"""/v1/jobs: submit, list, show, cancel, events."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import TypeAdapter
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from kfabric.api.deps import Caller
from kfabric.api.schemas import (
    JobChangePublic,
    JobCreate,
    JobEventPublic,
    JobLogPublic,
    JobPublic,
    JobScriptPublic,
    JobUpdate,
    NodePublic,
    ShortText,
)
from kfabric.model.errors import Conflict, PermissionDenied
from kfabric.service import feasibility, job_control, job_output, jobs
from kfabric.service.actors import Actor
from kfabric.service.feasibility import Feasibility
from kfabric.service.runtime import Runtime
from kfabric.service.submissions import Submission
from kfabric.store import tables as t

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

#: a job id in a path: bounded, so a huge number is a 422, not a storage error (64-bit ids)
JobId = Annotated[int, Path(ge=1, le=2**62)]
#: a job reference in a path: ``12`` (a job, or every task of array 12) or ``12_3`` (task 3 of array 12)
JobRefText = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[1-9][0-9]{0,18}(_[0-9]{1,10})?$")]


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
        expected_start_why=row.expected_start_why or "",
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
        stdout_path=row.stdout_path or "",
        stderr_path=row.stderr_path or "",
        array_job_id=row.array_job_id,
        array_task_id=row.array_task_id,
        display_id=f"{row.array_job_id}_{row.array_task_id}" if row.array_job_id is not None else str(row.id),
        held_by=row.held_by or "",
        dependency=row.dependency or "",
        begin_s=row.begin_at_s,
    )


def _user(rt: Runtime, user_id: int) -> str:
    with rt.sessions() as s:
        return s.scalar(select(t.User.name).where(t.User.id == user_id)) or ""


@router.post("", status_code=201, response_model=JobPublic)
async def submit(body: JobCreate, c: Caller) -> Response:
    """Submit a job. With ``client_key``, a repeated submission returns the first one's job (200, not 201)."""
    sub = jobs.prepare(c.actor, body.project, body.spec(), c.now, body.client_key, admission(c.rt), body.script)
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


#: serializes a page of jobs in one call (pydantic-core), instead of FastAPI's validate-then-encode per item
_JOB_LIST = TypeAdapter(list[JobPublic])


@router.get("", response_model=list[JobPublic])
def list_jobs(
    c: Caller,
    state: Annotated[list[ShortText] | None, Query(max_length=10)] = None,
    project: Annotated[ShortText | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    user: Annotated[list[ShortText] | None, Query(max_length=100)] = None,
    pool: Annotated[ShortText | None, Query(max_length=200)] = None,
) -> Response:
    """Jobs the caller may see, oldest first (page with ``after_id``); filtered by the server on ``state``,
    ``project``, ``user`` (names, repeatable) and ``pool`` (where the job is or was placed)."""
    with c.rt.sessions() as s:
        rows = jobs.list_jobs(
            s, c.actor, set(state) if state else None, project, limit, after_id, set(user) if user else None, pool
        )
        ids = sorted({j.user_id for j, _p in rows})
        users = dict(s.execute(select(t.User.id, t.User.name).where(t.User.id.in_(ids))).all()) if ids else {}
    names = c.rt.controller.node_names
    page = [job_public(j, p, users.get(j.user_id, ""), names) for j, p in rows]
    return Response(_JOB_LIST.dump_json(page), media_type="application/json")


@router.get("/{job_id}", response_model=JobPublic)
def show(job_id: JobRefText, c: Caller) -> JobPublic:
    with c.rt.sessions() as s:
        row, project = jobs.visible_job(s, c.actor, job_id)
        user = s.scalar(select(t.User.name).where(t.User.id == row.user_id)) or ""
    return job_public(row, project.name, user, c.rt.controller.node_names)


@router.get("/{job_id}/events", response_model=list[JobEventPublic])
def events(job_id: JobRefText, c: Caller) -> list[JobEventPublic]:
    with c.rt.sessions() as s:
        row, _ = jobs.visible_job(s, c.actor, job_id)
        evs = s.scalars(select(t.JobEvent).where(t.JobEvent.job_id == row.id).order_by(t.JobEvent.id)).all()
        return [JobEventPublic(at_s=e.at_s, from_state=e.from_state, to_state=e.to_state, reason=e.reason) for e in evs]


@router.get("/{job_id}/log", response_model=JobLogPublic)
def log(
    job_id: JobRefText,
    c: Caller,
    stream: Annotated[Literal["out", "err"], Query()] = "out",
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    max_bytes: Annotated[int, Query(ge=1, le=job_output.MAX_READ_BYTES)] = job_output.DEFAULT_READ_BYTES,
    tail_lines: Annotated[int | None, Query(ge=0, le=100_000)] = None,
) -> JobLogPublic:
    """A part of the job's output (``stream=err``: its standard error): ``max_bytes`` from ``offset``, or the last
    ``tail_lines`` lines; follow with ``offset=next_offset`` until ``final`` and ``eof``. For the job's user and
    operators. The file is read as service/job_output.py says (no link a user made is followed; only a regular
    file of the job's account is read): 409 otherwise. On ``sim`` the output is the job's state changes."""
    with c.rt.sessions() as s:
        row, _ = jobs.visible_job(s, c.actor, job_id)
        if row.user_id != c.actor.user_id and not c.actor.is_operator:
            raise PermissionDenied(
                f"read the output of job {job_id}", "only the job's user and operators read it", "ask its user"
            )
        user = s.get(t.User, row.user_id)
        posix = user.posix_user if user is not None else ""
        files = bool(getattr(c.rt.controller.backends.get(row.backend), "output_files", True))
        events: list[tuple[float, str, str, str]] = []
        if not files:
            query = select(t.JobEvent).where(t.JobEvent.job_id == row.id).order_by(t.JobEvent.id)
            events = [(e.at_s, e.from_state, e.to_state, e.reason) for e in s.scalars(query)]
        try:
            got = job_output.job_log(row, posix, events, files, stream, offset, max_bytes, tail_lines)
        except job_output.OutputRefused as exc:
            fix = "read the file on the machine where it was written"
            raise Conflict(f"job {job_id} output", str(exc), fix) from None
    chunk = got.chunk
    return JobLogPublic(
        job_id=got.job_id,
        stream=got.stream,
        path=got.path,
        offset=chunk.offset,
        next_offset=chunk.next_offset,
        size=chunk.size,
        eof=chunk.eof,
        state=got.state,
        final=got.final,
        data=chunk.data.decode(errors="replace"),
        note=got.note,
    )


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel(job_id: JobRefText, c: Caller) -> JobPublic:
    """Cancel a job: a pending one ends at once, a running one is stopped by the controller's next dispatch. ``12``
    cancels every task of array 12, ``12_3`` one task; the answer is the named job (the array's first task), with
    a note saying how many tasks were cancelled."""
    row, changed = job_control.cancel(c.rt.sessions, c.actor, job_id, c.now)
    with c.rt.sessions() as s:
        project = s.get(t.Project, row.project_id)
        user = s.scalar(select(t.User.name).where(t.User.id == row.user_id)) or ""
    public = job_public(row, project.name if project else "?", user, c.rt.controller.node_names)
    public.notes = [changed.message]
    return public


def _changed(changed: job_control.Changed) -> JobChangePublic:
    return JobChangePublic(job=changed.ref, action=changed.action, changed=len(changed.job_ids),
                           job_ids=list(changed.job_ids), message=changed.message)  # fmt: skip


@router.post("/{job_id}/hold", response_model=JobChangePublic)
def hold(job_id: JobRefText, c: Caller) -> JobChangePublic:
    """Hold a pending job (``12``: every pending task of array 12; ``12_3``: one task). An operator's hold is an
    admin hold, which only an operator releases."""
    return _changed(job_control.hold(c.rt.sessions, c.actor, job_id, c.now))


@router.post("/{job_id}/release", response_model=JobChangePublic)
def release(job_id: JobRefText, c: Caller) -> JobChangePublic:
    """Release a held job (an admin hold: operators only)."""
    return _changed(job_control.release(c.rt.sessions, c.actor, job_id, c.now))


@router.post("/{job_id}/requeue", response_model=JobChangePublic)
def requeue(job_id: JobRefText, c: Caller) -> JobChangePublic:
    """Stop an admitted or running job and queue it again as its next attempt (ended jobs are refused)."""
    return _changed(job_control.requeue(c.rt.sessions, c.actor, job_id, c.now))


@router.patch("/{job_id}", response_model=JobChangePublic)
def update(job_id: JobRefText, body: JobUpdate, c: Caller) -> JobChangePublic:
    """Change a pending job (time limit, priority, GPUs, name, begin time, dependency) within the caller's rights:
    owners may lower the time limit and the priority, operators may also raise them."""
    changed = job_control.update(c.rt.sessions, c.actor, job_id, body.changes(), c.now, admission(c.rt))
    return _changed(changed)


@router.get("/{job_id}/script", response_model=JobScriptPublic)
def script(job_id: JobId, c: Caller) -> JobScriptPublic:
    """The batch script the job runs, as it was submitted (its owner and operators)."""
    with c.rt.sessions() as s:
        text = job_control.job_script(s, c.actor, job_id)
    data = (text or "").encode()
    return JobScriptPublic(job_id=job_id, script=text, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
