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
* **output** (``LaunchSpec.stdout_path``/``stderr_path``): a backend that runs jobs writes their output where the
  spec says, creating the files as the job's account (never as root: a user-chosen path may be a trap), and sets
  the class attribute ``output_files = True``; one that runs nothing (``sim``) sets it False, and ``kfabric job
  log`` then serves the job's state changes instead (``service/job_output.py``). A backend without the attribute
  is taken as writing files.
* **nodes reports health** (optional, :class:`ReportsNodes`): the nodes the backend knows something about, as
  :class:`NodeFact` (up, drain, down, fail, with the backend's reason). A node it does not list is taken as up;
  a backend without the method reports nothing (every node up). The controller calls it right after ``poll``
  and inside its reconcile transaction, so it must be cheap: a backend whose facts cost a remote call reads
  them during ``poll`` and returns them here (Slurm does). It raises :class:`BackendUnavailable` when it cannot
  know, which changes nothing (a cluster the controller cannot reach is never marked down).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable


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
    #: the batch script stored at submit (``jobs.script``); the job runs this copy, never a file on disk. "" = none:
    #: the job runs ``command`` with ``/bin/sh -c`` (local) or ``/bin/bash -c`` (slurm)
    script: str = ""
    #: where the job's standard output and error go (absolute, patterns already expanded: service/job_output.py;
    #: the same path twice: one file). "" = the backend's private files (``local``: the attempt directory)
    stdout_path: str = ""
    stderr_path: str = ""
    #: ``truncate`` (default, as Slurm) or ``append``: how an existing output file is opened
    open_mode: str = "truncate"

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


#: node states a backend reports (the ``node_states`` table's vocabulary): ``up`` runs work; ``drain`` takes no new
#: work and lets running work finish; ``down`` and ``fail`` take no work and what ran there is lost (the backend
#: reports those attempts LOST and the controller requeues them from their last checkpoint)
NODE_STATES = ("up", "drain", "down", "fail")


@dataclass(frozen=True, slots=True)
class NodeFact:
    """What a backend knows about one node's health (``name`` as the backend knows it, as in :class:`NodeGpus`).

    ``gpus_total`` / ``gpus_healthy``: the node's GPUs and how many of them are healthy, where the backend knows
    (None otherwise); ``since_s``: when the backend says the state or its reason began (epoch seconds, None:
    unknown, the controller then records when it first saw it)."""

    name: str
    state: str = "up"
    reason: str = ""
    gpus_total: int | None = None
    gpus_healthy: int | None = None
    since_s: float | None = None

    def __post_init__(self) -> None:
        if self.state not in NODE_STATES:
            raise ValueError(
                f"node {self.name!r}: unknown node state {self.state!r}; "
                f"a backend reports one of {', '.join(NODE_STATES)}"
            )

    @property
    def up(self) -> bool:
        return self.state == "up"

    @property
    def lost(self) -> bool:
        """Work on the node is lost (down, fail), not merely kept from new work (drain)."""
        return self.state in ("down", "fail")


class Backend(Protocol):
    """A cluster kfabric dispatches to. ``name`` is what clusters name in their ``backend`` field."""

    name: str

    def launch(self, spec: LaunchSpec) -> None: ...

    def terminate(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None: ...

    def poll(self) -> list[RunReport]: ...


@runtime_checkable
class ReportsNodes(Protocol):
    """A backend that reports node health (optional; see the module docstring)."""

    def nodes(self) -> list[NodeFact]: ...
