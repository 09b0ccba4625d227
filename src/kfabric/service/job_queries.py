"""What the job routes read (``/v1/jobs``): one job, its events and output, and the list, each as the fields of
the API's public job (``kfabric.api.schemas.JobPublic``; the API builds its models from these, the service never
imports the API).

The list is the hot one: ``kfabric queue --all`` over 20,000 jobs. :func:`list_json` reads only the columns the
answer shows (no ORM rows; the user's name joined in the same query) and encodes the page in one call of
pydantic-core's encoder, with no model per job. :func:`fields` is the one rule for what a job's public fields are,
used by both paths, so they cannot drift; tests/api/test_job_list_json.py checks every field against the model.
"""

from __future__ import annotations

import gc
import itertools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Select, Text, cast, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import Conflict, PermissionDenied
from kfabric.service import job_output, job_visibility
from kfabric.service.actors import Actor
from kfabric.service.jobs import visible_job
from kfabric.store import tables as t

#: the columns :func:`fields` reads, in its argument order (the list selects exactly these); the two JSON columns
#: as their text, decoded a page at a time (:func:`page_fields`)
_COLUMNS = (
    t.Job.id, t.Project.name, t.User.name, t.Job.name, t.Job.state, t.Job.reason_code, t.Job.reason,
    t.Job.expected_start_s, t.Job.expected_start_why, t.Job.submitted_at_s, t.Job.admitted_at_s,
    t.Job.started_at_s, t.Job.ended_at_s, t.Job.exit_code, t.Job.attempt, cast(t.Job.spec, Text),
    cast(t.Job.placement, Text), t.Job.cancel_requested, t.Job.stdout_path, t.Job.stderr_path, t.Job.array_job_id,
    t.Job.array_task_id, t.Job.held_by, t.Job.dependency, t.Job.begin_at_s,
)  # fmt: skip
_SPEC, _PLACEMENT = 15, 16


def _f(value: Any) -> float | None:
    return float(value) if value is not None else None


def fields(
    node_names: Sequence[str], job_id: int, project: str, user: str | None, name: str, state: str,
    reason_code: str, reason: str,
    expected_start_s: float | None, expected_start_why: str | None, submitted_at_s: float,
    admitted_at_s: float | None, started_at_s: float | None, ended_at_s: float | None, exit_code: int | None,
    attempt: int, spec: dict[str, Any], placement: dict[str, Any] | None, cancel_requested: bool,
    stdout_path: str | None, stderr_path: str | None, array_job_id: int | None, array_task_id: int | None,
    held_by: str | None, dependency: str | None, begin_at_s: float | None,
) -> dict[str, Any]:  # fmt: skip
    """A job's public fields (those of ``JobPublic``, in its order, with the types its JSON has) from its stored
    columns (in the order of ``_COLUMNS``): node indices named from ``node_names``, the display id ``12`` or
    ``12_3``."""
    place = placement or {}
    nodes = [
        {"node": node_names[n] if n < len(node_names) else str(n), "gpus": [int(g) for g in gs], "gpu_milli": int(m)}
        for n, gs, m, _c, _mem in place.get("shares", ())
    ]
    return {
        "id": job_id,
        "project": project,
        "user": user or "",
        "name": name,
        "state": state,
        "reason_code": reason_code,
        "reason": reason,
        "expected_start_s": _f(expected_start_s),
        "expected_start_why": expected_start_why or "",
        "submitted_at_s": float(submitted_at_s),
        "admitted_at_s": _f(admitted_at_s),
        "started_at_s": _f(started_at_s),
        "ended_at_s": _f(ended_at_s),
        "exit_code": exit_code,
        "attempt": attempt,
        "gpus": int(spec.get("gpus", 1)),
        "gpu_milli": int(spec.get("gpu_milli", 1000)),
        "time_limit_s": float(spec["time_limit_s"]),
        "priority": str(spec.get("priority", "normal")),
        "pool": place.get("pool"),
        "nodes": nodes,
        "cancel_requested": cancel_requested,
        "spec": spec,
        "notes": [],
        "stdout_path": stdout_path or "",
        "stderr_path": stderr_path or "",
        "array_job_id": array_job_id,
        "array_task_id": array_task_id,
        "display_id": f"{array_job_id}_{array_task_id}" if array_job_id is not None else str(job_id),
        "held_by": held_by or "",
        "dependency": dependency or "",
        "begin_s": _f(begin_at_s),
    }


def row_fields(row: t.Job, project: str, user: str, node_names: Sequence[str]) -> dict[str, Any]:
    """:func:`fields` of a loaded (or just submitted) job row."""
    return fields(
        node_names, row.id, project, user, row.name, row.state, row.reason_code, row.reason, row.expected_start_s,
        row.expected_start_why, row.submitted_at_s, row.admitted_at_s, row.started_at_s, row.ended_at_s,
        row.exit_code, row.attempt, row.spec, row.placement, row.cancel_requested, row.stdout_path, row.stderr_path,
        row.array_job_id, row.array_task_id, row.held_by, row.dependency, row.begin_at_s,
    )  # fmt: skip


def user_name(sessions: sessionmaker[Session], user_id: int) -> str:
    with sessions() as s:
        return s.scalar(select(t.User.name).where(t.User.id == user_id)) or ""


def job(sessions: sessionmaker[Session], actor: Actor, ref: int | str, node_names: Sequence[str]) -> dict[str, Any]:
    """The public fields of the job ``ref`` names (``12`` or ``12_3``), if ``actor`` may see it (404 otherwise)."""
    with sessions() as s:
        row, project = visible_job(s, actor, ref)
        user = s.scalar(select(t.User.name).where(t.User.id == row.user_id)) or ""
        return row_fields(row, project.name, user, node_names)


def named_fields(sessions: sessionmaker[Session], row: t.Job, node_names: Sequence[str]) -> dict[str, Any]:
    """:func:`row_fields` of a job row the caller already holds (e.g. just cancelled), its names looked up."""
    with sessions() as s:
        project = s.scalar(select(t.Project.name).where(t.Project.id == row.project_id))
        user = s.scalar(select(t.User.name).where(t.User.id == row.user_id)) or ""
    return row_fields(row, project or "?", user, node_names)


def events(sessions: sessionmaker[Session], actor: Actor, ref: int | str) -> list[dict[str, Any]]:
    """The state changes of the job ``ref`` names, oldest first (``JobEventPublic``'s fields)."""
    with sessions() as s:
        row, _ = visible_job(s, actor, ref)
        query = select(t.JobEvent).where(t.JobEvent.job_id == row.id).order_by(t.JobEvent.id)
        return [
            {"at_s": e.at_s, "from_state": e.from_state, "to_state": e.to_state, "reason": e.reason}
            for e in s.scalars(query)
        ]


def log(
    sessions: sessionmaker[Session], actor: Actor, ref: int | str, output_files: Any, stream: str, offset: int,
    max_bytes: int, tail_lines: int | None,
) -> job_output.JobLog:  # fmt: skip
    """A part of the output of the job ``ref`` names, for its user and operators (see ``job_output.job_log``).
    ``output_files(backend)`` says whether that backend writes output files (else the output is the job's state
    changes). A file that may not be read is a 409."""
    with sessions() as s:
        row, _ = visible_job(s, actor, ref)
        if row.user_id != actor.user_id and not actor.is_operator:
            raise PermissionDenied(
                f"read the output of job {ref}", "only the job's user and operators read it", "ask its user"
            )
        user = s.get(t.User, row.user_id)
        posix = user.posix_user if user is not None else ""
        files = bool(output_files(row.backend))
        changes: list[tuple[float, str, str, str]] = []
        if not files:
            query = select(t.JobEvent).where(t.JobEvent.job_id == row.id).order_by(t.JobEvent.id)
            changes = [(e.at_s, e.from_state, e.to_state, e.reason) for e in s.scalars(query)]
        try:
            return job_output.job_log(row, posix, changes, files, stream, offset, max_bytes, tail_lines)
        except job_output.OutputRefused as exc:
            fix = "read the file on the machine where it was written"
            raise Conflict(f"job {ref} output", str(exc), fix) from None


def _listing(
    actor: Actor, states: set[str] | None, project: str | None, limit: int, after_id: int, users: set[str] | None,
    pool: str | None,
) -> Select[*tuple[Any, ...]] | None:  # fmt: skip
    """The list's query (None: the caller's role sees no jobs); who sees which jobs is ``job_visibility``'s rule."""
    q = (
        select(*_COLUMNS)
        .join(t.Project, t.Project.id == t.Job.project_id)
        .outerjoin(t.User, t.User.id == t.Job.user_id)
        .where(t.Job.id > after_id)
    )
    scoped = job_visibility.scoped_jobs(q, actor)
    if scoped is None:
        return None
    q = scoped
    if states:
        q = q.where(t.Job.state.in_(sorted(states)))
    if project:
        q = q.where(t.Project.name == project)
    if users:
        q = q.where(t.User.name.in_(sorted(users)))
    if pool:
        q = q.where(t.Job.placement["pool"].as_string() == pool)
    return q.order_by(t.Job.id).limit(limit)


# ---- the collector pause -------------------------------------------------------------------------------------

#: pages of at least this many rows are built with the cyclic garbage collector paused (:func:`pause_pays`)
GC_PAUSE_MIN_ROWS = 5000


def pause_pays(rows: int) -> bool:
    """Whether building a page of ``rows`` jobs is worth pausing the process's cyclic garbage collector. A page's
    rows become new container objects (decoded specs and placements, the fields), none in a reference cycle; with
    the collector on, every 700 of them start a young collection over the page built so far, and, in a page of
    thousands, now and then a full one over the whole process. Measured (``benchmarks/bench_list_gc_pause.py``,
    docs/benchmarks.md; 4 runs, 2-CPU machine): 1,000 rows 6.8-7.8 ms of CPU with the collector on, 6-9 % less
    paused; 3,000 rows 23-28 ms, -11 to -15 %; 5,000-6,000 rows 46-59 ms, -13 to -18 %; 7,000-10,000 rows (the
    CLI asks 10,000 a page) 77-208 ms, -15 to -60 %, a full collection landing in many of them. Below 5,000 rows
    the pause saves a few milliseconds: not worth turning a process-wide switch off for."""
    return rows >= GC_PAUSE_MIN_ROWS


@dataclass(frozen=True, slots=True)
class PauseEvent:
    """What :class:`CollectorPause` tells its watchers: ``paused`` (page ``page`` of ``rows`` rows turned the
    collector off) or ``resumed`` (the same page ended, the collector is on again; ``collected``: the young
    collection the pause held back runs now)."""

    kind: str
    page: int
    rows: int
    collected: bool = False


class CollectorPause:
    """The one pause of the cyclic garbage collector that list pages take (its state is the process's). Only one
    page at a time owns the pause: a page that starts while another owns it is built with the collector as it
    finds it, and the pause ends when its owner's page is built, whatever else is still running. So the collector
    is never off for longer than one page build, however many list requests a client keeps in flight; when a pause
    ends, the young collection it held back (the new objects of every thread, cyclic garbage included) runs at
    once. A collector someone else turned off is left off. ``watchers`` are called with the pause's lock held, in
    order (tests check the pauses through them): they must return quickly and not list jobs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = 0  # the page that owns the pause now (0: none)
        self._pages = itertools.count(1)
        self.watchers: list[Callable[[PauseEvent], None]] = []

    def _tell(self, event: PauseEvent) -> None:
        for watch in self.watchers:
            watch(event)

    @contextmanager
    def around(self, rows: int) -> Iterator[None]:
        """The build of one page of ``rows`` rows: paused when :func:`pause_pays` and no other page owns the
        pause."""
        page, owns = next(self._pages), False
        if pause_pays(rows):
            with self._lock:
                owns = self._owner == 0 and gc.isenabled()
                if owns:
                    gc.disable()
                    self._owner = page
                    self._tell(PauseEvent("paused", page, rows))
        try:
            yield
        finally:
            if owns:
                with self._lock:
                    self._owner = 0
                    gc.enable()
                    held_back = gc.get_count()[0] > gc.get_threshold()[0]
                    self._tell(PauseEvent("resumed", page, rows, held_back))
                if held_back:
                    gc.collect(0)


#: the list's collector pause (``COLLECTOR_PAUSE.watchers``: the hook tests observe it through)
COLLECTOR_PAUSE = CollectorPause()


def list_rows(
    sessions: sessionmaker[Session], actor: Actor, states: set[str] | None = None, project: str | None = None,
    limit: int = 1000, after_id: int = 0, users: set[str] | None = None, pool: str | None = None,
) -> list[list[Any]]:  # fmt: skip
    """The stored columns (``_COLUMNS``) of the jobs ``actor`` may see, by id, filtered in SQL: ``states``,
    ``project`` (name), ``users`` (names) and ``pool`` (where the job is or was placed); at most ``limit`` after
    ``after_id``."""
    q = _listing(actor, states, project, limit, after_id, users, pool)
    if q is None:
        return []
    with sessions() as s:  # a Core statement on the session's connection: no ORM row machinery
        return [list(r) for r in s.connection().execute(q).all()]


def page_fields(rows: list[list[Any]], node_names: Sequence[str]) -> list[dict[str, Any]]:
    """The public fields of :func:`list_rows`' rows (their JSON columns decoded in place)."""
    # the page's JSON columns in one decoder call each (one call per value costs ~3 times more); a NULL placement
    # is JSON's null
    specs = json.loads("[" + ",".join(r[_SPEC] for r in rows) + "]")
    places = json.loads("[" + ",".join(r[_PLACEMENT] or "null" for r in rows) + "]")
    for r, spec, place in zip(rows, specs, places, strict=True):
        r[_SPEC], r[_PLACEMENT] = spec, place
    return [fields(node_names, *r) for r in rows]


def page_json(rows: list[list[Any]], node_names: Sequence[str]) -> bytes:
    """:func:`page_fields` as the API's JSON (a list of public jobs), encoded in one pass; non-finite numbers as
    ``null``, as the API's models write them. The page's objects are gone when it returns."""
    return to_json(page_fields(rows, node_names), inf_nan_mode="null")


def list_json(
    sessions: sessionmaker[Session], actor: Actor, node_names: Sequence[str], states: set[str] | None = None,
    project: str | None = None, limit: int = 1000, after_id: int = 0, users: set[str] | None = None,
    pool: str | None = None,
) -> bytes:  # fmt: skip
    """The jobs :func:`list_rows` selects as the API's JSON (:func:`page_json`), built under the collector pause
    when it pays."""
    rows = list_rows(sessions, actor, states, project, limit, after_id, users, pool)
    with COLLECTOR_PAUSE.around(len(rows)):
        body = page_json(rows, node_names)
        del rows  # freed before the pause ends: the collection it held back need not walk them
    return body
