"""What the fleet routes and ``/metrics`` read from the store: GPUs allocated per pool, jobs by state, the
controller lease's epoch and the last cycle any server recorded."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.job import JobState
from kfabric.store import tables as t


def allocated_by_pool(sessions: sessionmaker[Session]) -> dict[str, float]:
    """GPUs held by admitted and running jobs, per pool name (fractional shares count as their fraction)."""
    used: dict[str, float] = defaultdict(float)
    placed = select(t.Job.placement).where(t.Job.state.in_((JobState.ADMITTED.value, JobState.RUNNING.value)))
    with sessions() as s:
        for placement in s.scalars(placed):
            if placement:
                used[placement["pool"]] += sum(len(g) * m for _n, g, m, _c, _mem in placement["shares"]) / 1000
    return dict(used)


def state_counts(states: Sequence[str]) -> Select[str, int]:
    """The statement of :func:`jobs_by_state`: grouped on the ``ix_jobs_state`` index (a range of it, never the
    job table)."""
    return select(t.Job.state, func.count()).where(t.Job.state.in_(states)).group_by(t.Job.state)


def jobs_by_state(s: Session, states: Sequence[str]) -> dict[str, int]:
    """How many jobs are in each of ``states``; states without jobs are left out."""
    return {str(state): int(n) for state, n in s.execute(state_counts(states))}


def lease_epoch(s: Session, name: str) -> int:
    """The epoch of lease ``name`` (0 when nobody took it yet)."""
    row = s.get(t.Lease, name)
    return int(row.epoch) if row is not None else 0


def last_cycle_s(s: Session) -> float | None:
    """The latest cycle any server recorded (``servers.last_cycle_s``, written by the leader's heartbeat)."""
    value = s.scalar(select(func.max(t.Server.last_cycle_s)))
    return float(value) if value is not None else None


def store_answers(sessions: sessionmaker[Session]) -> None:
    """Run the smallest statement on the store (``/healthz``): raises if the store does not answer."""
    with sessions() as s:
        s.execute(select(1))
