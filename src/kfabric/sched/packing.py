"""Tasks of a GPU-sharing trace in scheduler terms (the FGD paper's packing protocol; ``kfabric bench pack``).

Resource model (Weng et al., "Beware of Fragmentation", USENIX ATC'23): a task asks for ``cpu_milli`` CPU,
``memory_mib`` memory and either nothing from GPUs (``num_gpu == 0``), ``gpu_milli < 1000`` of ONE GPU (a
shared GPU), or ``num_gpu = k`` whole GPUs (``gpu_milli == 1000``) on one node; ``gpu_spec`` optionally
restricts the GPU model. A task becomes a single-node :class:`~kfabric.model.job.Job` placed by the
scheduler's own placements (``kfabric.sched.registry.PLACEMENTS``); the trace's task types, weighted by how
often each occurs, are the target :class:`~kfabric.sched.workload.Workload` fragmentation is measured against.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kfabric.model.job import MILLI_PER_GPU, Job, MinTopology
from kfabric.sched.workload import TaskType, Workload

GPU_MILLI = MILLI_PER_GPU
"""Milli units of one whole GPU."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task's request. ``gpu_milli`` is per GPU: < 1000 (one shared GPU) or 1000 (whole GPUs)."""

    cpu_milli: int
    memory_mib: int
    num_gpu: int = 0
    gpu_milli: int = 0
    gpu_spec: tuple[str, ...] = ()
    """Acceptable GPU models; empty means any."""

    def __post_init__(self) -> None:
        problem = task_spec_problem(self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli)
        if problem:
            raise ValueError(problem)

    @property
    def gpu_demand(self) -> int:
        """Total GPU milli requested."""
        return self.num_gpu * self.gpu_milli


def task_spec_problem(cpu_milli: int, memory_mib: int, num_gpu: int, gpu_milli: int) -> str:
    """Why a request is not a valid task ("" when it is)."""
    if cpu_milli < 0 or memory_mib < 0 or num_gpu < 0:
        return f"cpu_milli, memory_mib and num_gpu must be >= 0 (got {cpu_milli}, {memory_mib}, {num_gpu})"
    if num_gpu == 0 and gpu_milli != 0:
        return f"gpu_milli must be 0 when num_gpu is 0 (got gpu_milli={gpu_milli})"
    if num_gpu == 1 and not 0 < gpu_milli <= GPU_MILLI:
        return f"gpu_milli must be in 1..{GPU_MILLI} when num_gpu is 1 (got {gpu_milli})"
    if num_gpu > 1 and gpu_milli != GPU_MILLI:
        return f"a task with num_gpu={num_gpu} > 1 must ask for whole GPUs, gpu_milli={GPU_MILLI} (got {gpu_milli})"
    return ""


def workload_of(tasks: Sequence[TaskSpec]) -> Workload:
    """The target workload of a trace: its distinct requests, each weighted by its number of tasks (the
    paper's task-type popularity)."""
    counts = Counter(tasks)
    return Workload(
        [TaskType(t.gpu_milli, t.num_gpu, t.cpu_milli, t.memory_mib, t.gpu_spec, float(n)) for t, n in counts.items()]
    )


def job_of(task: TaskSpec, job_id: str) -> Job:
    """The task as a job that must fit on one node (the protocol never splits a task over nodes)."""
    return Job(
        id=job_id,
        project="trace",
        time_limit_s=1.0,
        gpus=task.num_gpu,
        gpu_milli=task.gpu_milli if task.num_gpu else GPU_MILLI,
        gpu_models=task.gpu_spec,
        min_topology=MinTopology.NODE,
        cpu_milli=task.cpu_milli,
        memory_mib=task.memory_mib,
    )
