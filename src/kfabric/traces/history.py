"""Replay what the live service received: ``history:DB_URL[,since=YYYY-MM-DD]``.

Every job that ran to an end (succeeded, failed or timed out) since ``since`` becomes a simulated job with its
submitted fields, arriving at its real submission time (relative to the first one replayed), and running as
long as it really ran (the sum of its attempts' run times from the job's events is not kept per attempt, so
the last attempt's start to end is used). Jobs cancelled or still pending/running have no known run time and
are left out; the description says how many.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from kfabric.model.job import JobState
from kfabric.service.jobspec import build_job
from kfabric.sim.workload import SimJob, Workload
from kfabric.store import tables as t
from kfabric.store.db import make_engine, session_factory

ENDED = (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.TIMEOUT.value)


def _options(spec: str) -> tuple[str, float | None]:
    url, since = spec, None
    head, sep, tail = spec.rpartition(",since=")
    if sep:
        url = head
        try:
            since = datetime.fromisoformat(tail).replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise ValueError(
                f"workload 'history:{spec}': since={tail!r} is not a date (fix: since=2026-11-01)"
            ) from None
    if not url:
        raise ValueError("workload 'history:': no database URL (fix: history:sqlite:///.kfabric/kfabric.db)")
    return url, since


def read_history(spec: str) -> Workload:
    url, since = _options(spec)
    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            q = (
                select(t.Job, t.Project.name, t.User.name)
                .join(t.Project, t.Project.id == t.Job.project_id)
                .join(t.User, t.User.id == t.Job.user_id)
                .order_by(t.Job.submitted_at_s, t.Job.id)
            )
            if since is not None:
                q = q.where(t.Job.submitted_at_s >= since)
            rows = s.execute(q).all()
    finally:
        engine.dispose()
    ran = [(j, p, u) for j, p, u in rows if j.state in ENDED and j.started_at_s is not None and j.ended_at_s]
    t0 = ran[0][0].submitted_at_s if ran else 0.0
    jobs = []
    for row, project, user in ran:
        assert row.started_at_s is not None and row.ended_at_s is not None
        job = build_job(f"h{row.id}", project, user, row.spec, row.submitted_at_s - t0)
        jobs.append(SimJob(job, max(1.0, row.ended_at_s - row.started_at_s), fails=row.state == JobState.FAILED.value))
    note = f"history of {url}: {len(jobs)} ended jobs replayed, {len(rows) - len(jobs)} left out (no run time)"
    return Workload(name="history", jobs=jobs, description=note)
