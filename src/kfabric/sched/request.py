"""What a placement policy is asked: a job, the pools it may use, and what the placement may assume."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kfabric.model.decision import NodeShare, Placement
from kfabric.model.job import Job
from kfabric.sched.capacity import Capacity
from kfabric.sched.memo import PlacementMemo
from kfabric.sched.workload import Workload


@dataclass(frozen=True, slots=True)
class PlaceRequest:
    job: Job
    #: pools the job may use, in the caller's order of preference
    pools: Sequence[int]
    #: host share per GPU for jobs that do not state their CPU or memory
    cpu_milli_per_gpu: int = 0
    memory_mib_per_gpu: int = 0
    #: per-job speed per pool (pool index -> speed against H100), overriding the pool model's catalog speed
    #: (``PoolInfo.speed``) in heterogeneity-aware placement; None: the catalog speeds (what the cycle passes)
    speed: dict[int, float] | None = None
    #: the target workload as (gpu_milli, gpus, probability) task types, for fragmentation-aware placement
    task_types: tuple[tuple[int, int, float], ...] = ()
    #: the target workload with CPU, memory and models (wins over ``task_types``); see ``sched.workload``
    workload: Workload | None = None
    #: what placements under this capacity index remember (``sched.memo``; the cycle passes its memo's); None:
    #: nothing is remembered beyond this request (same placement, slower)
    memo: PlacementMemo | None = None


PlacementFn = Callable[[Capacity, PlaceRequest], Placement | None]


def node_counts(job: Job, gpus_per_node: int) -> list[int] | None:
    """GPUs needed on each node, largest first; None if the shape cannot fit this pool's nodes."""
    if gpus_per_node <= 0:
        return None
    if job.nodes is not None and job.gpus_per_node is not None:
        return [job.gpus_per_node] * job.nodes if job.gpus_per_node <= gpus_per_node else None
    if job.gpus <= gpus_per_node:
        return [job.gpus]
    full, rem = divmod(job.gpus, gpus_per_node)
    return [gpus_per_node] * full + ([rem] if rem else [])


def host_share(job: Job, req: PlaceRequest, gpus: int) -> tuple[int, int]:
    """CPU milli and memory MiB the job needs beside ``gpus`` of its GPUs on one node."""
    if job.gpus == 0:
        return job.cpu_milli, job.memory_mib
    n_gpus = max(job.gpus, 1)
    cpu = job.cpu_milli * gpus // n_gpus if job.cpu_milli else req.cpu_milli_per_gpu * gpus
    mem = job.memory_mib * gpus // n_gpus if job.memory_mib else req.memory_mib_per_gpu * gpus
    return cpu, mem


_new_tuple = tuple.__new__


def share(node: int, gpus: tuple[int, ...], gpu_milli: int, cpu_milli: int, memory_mib: int) -> NodeShare:
    """``NodeShare(node, gpus, gpu_milli, cpu_milli, memory_mib)`` without the named tuple's constructor, which
    is Python code (a gang makes one share per node: ~2x faster here, far more from compiled code)."""
    return _new_tuple(NodeShare, (node, gpus, gpu_milli, cpu_milli, memory_mib))
