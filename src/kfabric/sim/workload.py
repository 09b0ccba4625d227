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
    #: the GPU model on which ``SimJob.run_s`` is true; on another model the twin scales it by speed
    #: (``sim.speed``, docs/gpu-speeds.md). None: run times do not depend on the model (hand-made workloads)
    reference_model: str | None = None
    #: measured throughput per job type, Gavel's shape ``{gpu_type: {"job_type|gpus": steps/s}}`` (``job.name`` is
    #: the job type); it wins over the catalog's per-model speed where both models have the job type
    job_type_throughputs: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
