"""The backend protocol: what the controller asks of a cluster, and the contracts every backend keeps.

Contracts (every implementation and its tests honour them):

* **launch is idempotent** per ``(job_id, attempt)``: calling it again for an attempt the backend already
  knows (running or finished) does nothing. It never starts an attempt twice, even across controller crashes.
* **terminate is idempotent**: terminating an unknown or already finished attempt does nothing. With
  ``grace_s > 0`` the job first gets SIGTERM (a chance to checkpoint), then is killed after the grace period.
* **calls are fast**: no call blocks on the job; ``launch`` returns once the work is handed over.
* **a backend being down never loses a job**: a call that cannot reach the cluster raises
  :class:`BackendUnavailable`; the controller keeps the job in its state and retries later.
* **poll reports facts**: every attempt the backend knows, with its state, exit code and real start/end times.
  A backend never decides placement; it runs what it is told where it is told.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class BackendUnavailable(Exception):
    """The cluster cannot be reached now; retry later. Nothing was changed."""


class RunState(Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    #: the backend lost the attempt (node died, process vanished without an exit record): requeue it
    LOST = "lost"

    @property
    def final(self) -> bool:
        return self is not RunState.RUNNING


@dataclass(frozen=True, slots=True)
class NodeGpus:
    """The GPUs an attempt gets on one node (node name as the backend knows it, GPU indices on the node)."""

    node: str
    gpus: tuple[int, ...]
    gpu_milli: int = 1000
    cpu_milli: int = 0
    memory_mib: int = 0


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    job_id: str
    attempt: int
    name: str
    command: str
    nodes: tuple[NodeGpus, ...]
    time_limit_s: float
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    #: for the sim backend: how long the job runs (seconds of simulated time); ignored by real backends
    runtime_s: float | None = None
    #: the kfabric project (Slurm maps it to an account)
    project: str = ""
    #: the kfabric user who submitted the job (named in refusals)
    user: str = ""
    #: the POSIX account the job runs as (``users.posix_user``; ``backends/identity.py``); "" = none mapped
    posix_user: str = ""

    @property
    def key(self) -> str:
        return f"{self.job_id}.{self.attempt}"


@dataclass(frozen=True, slots=True)
class RunReport:
    job_id: str
    attempt: int
    state: RunState
    started_at_s: float | None = None
    ended_at_s: float | None = None
    exit_code: int | None = None
    message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """A cluster kfabric dispatches to. ``name`` is what clusters name in their ``backend`` field."""

    name: str

    def launch(self, spec: LaunchSpec) -> None: ...

    def terminate(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None: ...

    def poll(self) -> list[RunReport]: ...
