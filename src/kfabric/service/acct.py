"""Per-job accounting over a window, like Slurm's ``sacct``: state, times, elapsed, GPUs, GPU-hours, SU, charge,
exit code and nodes of every job the caller may see that was eligible or running in ``[start_s, end_s)``.

Window (sacct's rule): a job is in it when it was submitted before the window ends and had not ended before the
window starts (``submitted < end`` and ``ended is null or ended >= start``). GPU-hours, SU-hours and charged
SU-hours are the job's totals over its usage records (``service/usage.py``), not clipped to the window: one
query, jobs joined to the per-job sums of ``usage_records``.

Tenancy: the jobs the caller sees by the one job-visibility rule (``service/job_visibility.py``, as ``kfabric
queue`` and ``GET /v1/jobs``): operators every job; org-admins their organization's; members their projects';
other roles none (:class:`PermissionDenied`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kfabric.model.errors import PermissionDenied, ValidationError
from kfabric.service.actors import Actor
from kfabric.service.job_visibility import job_condition
from kfabric.store import tables as t

#: the columns of a row, in order (also the CSV header)
FIELDS = (
    "id", "array_job_id", "array_task_id", "name", "user", "project", "state", "submitted_at_s", "started_at_s",
    "ended_at_s", "elapsed_s", "gpus", "gpu_milli", "gpu_hours", "su_hours", "charged_su_hours", "exit_code",
    "nodes", "reason",
)  # fmt: skip
MAX_ROWS = 10_000


def job_accounting(
    session: Session,
    actor: Actor,
    now_s: float,
    start_s: float | None = None,
    end_s: float | None = None,
    users: Sequence[str] = (),
    project: str | None = None,
    states: Sequence[str] = (),
    node_names: Sequence[str] = (),
    limit: int = MAX_ROWS,
    after_id: int = 0,
) -> list[dict[str, Any]]:
    """One row per job in the window (oldest first, ``after_id`` pages), with its usage totals."""
    if start_s is not None and end_s is not None and start_s >= end_s:
        raise ValidationError("start", f"the window's start {start_s:.0f} is not before its end {end_s:.0f}",
                              "give -S before -E")  # fmt: skip
    usage = (
        select(
            t.UsageRecord.job_id.label("job_id"),
            func.sum(t.UsageRecord.gpu_s).label("gpu_s"),
            func.sum(t.UsageRecord.su).label("su"),
            func.sum(t.UsageRecord.charged_su).label("charged_su"),
        )
        .group_by(t.UsageRecord.job_id)
        .subquery()
    )
    q = (
        select(t.Job, t.Project.name, t.User.name, usage.c.gpu_s, usage.c.su, usage.c.charged_su)
        .join(t.Project, t.Project.id == t.Job.project_id)
        .join(t.User, t.User.id == t.Job.user_id)
        .outerjoin(usage, usage.c.job_id == t.Job.id)
        .where(t.Job.id > after_id)
    )
    visible = job_condition(actor)
    if visible is None:
        raise PermissionDenied("see job accounting", f"the {actor.role.value} role runs no jobs", "ask an operator")
    q = q.where(visible)
    if end_s is not None:
        q = q.where(t.Job.submitted_at_s < end_s)
    if start_s is not None:
        q = q.where(t.Job.ended_at_s.is_(None) | (t.Job.ended_at_s >= start_s))
    if users:
        q = q.where(t.User.name.in_(sorted(set(users))))
    if project:
        q = q.where(t.Project.name == project)
    if states:
        q = q.where(t.Job.state.in_(sorted(set(states))))
    rows = session.execute(q.order_by(t.Job.id).limit(min(limit, MAX_ROWS))).all()
    return [_row(job, p, u, gpu_s, su, charged, now_s, node_names) for job, p, u, gpu_s, su, charged in rows]


def _row(
    job: t.Job,
    project: str,
    user: str,
    gpu_s: float | None,
    su: float | None,
    charged: float | None,
    now_s: float,
    node_names: Sequence[str],
) -> dict[str, Any]:
    spec = job.spec or {}
    started, ended = job.started_at_s, job.ended_at_s
    elapsed = 0.0 if started is None else max((ended if ended is not None else now_s) - started, 0.0)
    shares = (job.placement or {}).get("shares", [])
    nodes = [node_names[n] if n < len(node_names) else str(n) for n, *_rest in shares]
    return {
        "id": job.id,
        "array_job_id": job.array_job_id,
        "array_task_id": job.array_task_id,
        "name": job.name,
        "user": user,
        "project": project,
        "state": job.state,
        "submitted_at_s": job.submitted_at_s,
        "started_at_s": started,
        "ended_at_s": ended,
        "elapsed_s": elapsed,
        "gpus": int(spec.get("gpus", 1)),
        "gpu_milli": int(spec.get("gpu_milli", 1000)),
        "gpu_hours": (gpu_s or 0.0) / 3600.0,
        "su_hours": (su or 0.0) / 3600.0,
        "charged_su_hours": (charged or 0.0) / 3600.0,
        "exit_code": job.exit_code,
        "nodes": nodes,
        "reason": job.reason,
    }


def acct_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV (header :data:`FIELDS`; nodes joined with spaces)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    for r in rows:
        writer.writerow(["" if r[f] is None else " ".join(r[f]) if f == "nodes" else r[f] for f in FIELDS])
    return out.getvalue()
