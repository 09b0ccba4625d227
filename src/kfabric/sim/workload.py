"""What the simulator replays: jobs as submitted plus the truth the scheduler never sees (run time)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kfabric.model.job import Job
from kfabric.sched.fairshare import TenantInfo


@dataclass(frozen=True, slots=True)
class SimJob:
    """``job.submit_s`` is the arrival, in seconds from the simulation's start. ``run_s`` is how long the job
    runs once started, without interruptions (the truth; the scheduler sees only ``job.time_limit_s`` and
    history). ``fails`` marks a job that ends in failure after ``run_s`` (it still used the GPUs)."""

    job: Job
    run_s: float
    fails: bool = False


@dataclass(frozen=True)
class Workload:
    name: str
    jobs: list[SimJob]
    #: fair-share tree entries for the workload's projects (merged over the scenario's own tenants)
    tenants: Mapping[str, TenantInfo] = field(default_factory=dict)
    #: share of service each project is entitled to (defaults to its fair-share share)
    description: str = ""
