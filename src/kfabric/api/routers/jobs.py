"""/v1/jobs: submit, list, show, cancel, events."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
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
    ShortText,
)
from kfabric.service import feasibility, job_control, job_output, job_queries, jobs
from kfabric.service.actors import Actor
from kfabric.service.feasibility import Feasibility
from kfabric.service.runtime import Runtime
from kfabric.service.submissions import Submission

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

#: a job id in a path: bounded, so a huge number is a 422, not a storage error (64-bit ids)
JobId = Annotated[int, Path(ge=1, le=2**62)]
#: a job reference in a path: ``12`` (a job, or every task of array 12) or ``12_3`` (task 3 of array 12)
JobRefText = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[1-9][0-9]{0,18}(_[0-9]{1,10})?$")]


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
    if row.user_id == actor.user_id:
        user = actor.name
    else:
        user = await run_in_threadpool(job_queries.user_name, rt.sessions, row.user_id)
    public = JobPublic.model_validate(job_queries.row_fields(row, project, user, rt.controller.node_names))
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
    user: Annotated[list[ShortText] | None, Query(max_length=100)] = None,
    pool: Annotated[ShortText | None, Query(max_length=200)] = None,
) -> Response:
    """Jobs the caller may see, oldest first (page with ``after_id``); filtered by the server on ``state``,
    ``project``, ``user`` (names, repeatable) and ``pool`` (where the job is or was placed). Encoded in one pass
    from the selected columns (service/job_queries.py), with the same keys and types as ``JobPublic``."""
    body = job_queries.list_json(
        c.rt.sessions, c.actor, c.rt.controller.node_names, set(state) if state else None, project, limit,
        after_id, set(user) if user else None, pool,
    )  # fmt: skip
    return Response(body, media_type="application/json")


@router.get("/{job_id}", response_model=JobPublic)
def show(job_id: JobRefText, c: Caller) -> JobPublic:
    return JobPublic.model_validate(job_queries.job(c.rt.sessions, c.actor, job_id, c.rt.controller.node_names))


@router.get("/{job_id}/events", response_model=list[JobEventPublic])
def events(job_id: JobRefText, c: Caller) -> list[JobEventPublic]:
    return [JobEventPublic.model_validate(e) for e in job_queries.events(c.rt.sessions, c.actor, job_id)]


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
    backends = c.rt.controller.backends

    def output_files(backend: str) -> bool:
        return bool(getattr(backends.get(backend), "output_files", True))

    got = job_queries.log(c.rt.sessions, c.actor, job_id, output_files, stream, offset, max_bytes, tail_lines)
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
    public = JobPublic.model_validate(job_queries.named_fields(c.rt.sessions, row, c.rt.controller.node_names))
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
