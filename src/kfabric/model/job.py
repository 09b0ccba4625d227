"""Jobs, their states and allowed transitions (product spec section 4)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from kfabric.model.errors import TransitionError, require
from kfabric.model.sovereignty import Classification

MILLI_PER_GPU = 1000


class PriorityClass(IntEnum):
    SCAVENGER = 0
    LOW = 1
    NORMAL = 2
    HIGH = 3
    URGENT = 4

    @classmethod
    def parse(cls, text: str) -> PriorityClass:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(c.name.lower() for c in cls)
            raise ValueError(f"unknown priority class {text!r}; expected one of: {choices}") from None


class MinTopology(IntEnum):
    """The smallest topology domain that must hold all of a job's GPUs."""

    ANY = 0
    NODE = 1
    NVLINK = 2
    RACK = 3
    UNIT = 4
    CLUSTER = 5

    @classmethod
    def parse(cls, text: str) -> MinTopology:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(c.name.lower() for c in cls)
            raise ValueError(f"unknown minimum topology {text!r}; expected one of: {choices}") from None


class JobState(Enum):
    PENDING = "pending"
    ADMITTED = "admitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"

    @property
    def final(self) -> bool:
        return not TRANSITIONS[self]


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.ADMITTED, JobState.CANCELLED, JobState.FAILED}),
    # admitted -> pending: dispatch failed or the placement was withdrawn before the job started
    JobState.ADMITTED: frozenset(
        {JobState.RUNNING, JobState.PENDING, JobState.CANCELLED, JobState.FAILED, JobState.PREEMPTED}
    ),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.PREEMPTED}
    ),
    JobState.PREEMPTED: frozenset({JobState.PENDING, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMEOUT: frozenset(),
}


def check_transition(job_id: str, current: JobState, wanted: JobState) -> None:
    """Raise :class:`TransitionError` unless ``current -> wanted`` is allowed."""
    allowed = TRANSITIONS[current]
    if wanted not in allowed:
        raise TransitionError(job_id, current.value, wanted.value, tuple(sorted(s.value for s in allowed)))


@dataclass(frozen=True, slots=True)
class Job:
    """A job as submitted. ``gpus`` is the total number of GPUs; a fractional job has ``gpus == 1`` and
    ``gpu_milli < 1000``. ``nodes``/``gpus_per_node``, when set, fix the node shape (``nodes * gpus_per_node
    == gpus``). ``gpu_models`` empty means any model. Times are seconds; ``submit_s`` is on the caller's clock.
    """

    id: str
    project: str
    time_limit_s: float
    gpus: int = 1
    gpu_milli: int = MILLI_PER_GPU
    nodes: int | None = None
    gpus_per_node: int | None = None
    gpu_models: tuple[str, ...] = ()
    min_topology: MinTopology = MinTopology.ANY
    user: str = ""
    name: str = ""
    submit_s: float = 0.0
    runtime_estimate_s: float | None = None
    priority: PriorityClass = PriorityClass.NORMAL
    preemptible: bool = True
    checkpoint_interval_s: float | None = None
    restart_cost_s: float = 0.0
    classification: Classification = Classification.PUBLIC
    cpu_milli: int = 0
    memory_mib: int = 0
    grant: str | None = None
    command: str = ""
    image: str = ""
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        where = f"job {self.id!r}"
        require(self.id != "", "job.id", "must not be empty")
        require(self.project != "", f"{where}.project", "must not be empty", "pass --project NAME")
        require(
            self.time_limit_s > 0,
            f"{where}.time_limit_s",
            f"must be > 0, got {self.time_limit_s}",
            "every job needs a time limit, as in Slurm (e.g. --time 4:00:00)",
        )
        require(self.gpus >= 0, f"{where}.gpus", f"must be >= 0, got {self.gpus}")
        require(
            0 < self.gpu_milli <= MILLI_PER_GPU,
            f"{where}.gpu_milli",
            f"must be in 1..1000, got {self.gpu_milli}",
            "use 1000 for whole GPUs, e.g. 250 for a quarter GPU",
        )
        if self.gpu_milli < MILLI_PER_GPU:
            require(
                self.gpus == 1,
                f"{where}.gpu_milli",
                f"a fractional GPU share ({self.gpu_milli} milli) needs gpus == 1, got {self.gpus}",
                "ask for one fractional GPU, or whole GPUs",
            )
        if self.nodes is not None or self.gpus_per_node is not None:
            require(
                self.nodes is not None and self.gpus_per_node is not None,
                f"{where}.nodes",
                "nodes and gpus_per_node go together",
                "give both, e.g. --nodes 2 --gpus-per-node 8",
            )
            assert self.nodes is not None and self.gpus_per_node is not None
            require(self.nodes >= 1, f"{where}.nodes", f"must be >= 1, got {self.nodes}")
            require(
                self.nodes * self.gpus_per_node == self.gpus,
                f"{where}.gpus",
                f"gpus {self.gpus} != nodes {self.nodes} x gpus_per_node {self.gpus_per_node}",
                "drop --gpus or make it the product",
            )
        require(
            self.runtime_estimate_s is None or self.runtime_estimate_s > 0,
            f"{where}.runtime_estimate_s",
            "must be > 0 when set",
        )
        require(
            self.checkpoint_interval_s is None or self.checkpoint_interval_s > 0,
            f"{where}.checkpoint_interval_s",
            "must be > 0 when set",
        )
        require(self.restart_cost_s >= 0, f"{where}.restart_cost_s", "must be >= 0")
        require(self.cpu_milli >= 0, f"{where}.cpu_milli", "must be >= 0")
        require(self.memory_mib >= 0, f"{where}.memory_mib", "must be >= 0")

    @property
    def fractional(self) -> bool:
        return self.gpu_milli < MILLI_PER_GPU

    @property
    def gpu_milli_total(self) -> int:
        """Total GPU capacity asked, in milli-GPUs."""
        return self.gpu_milli if self.fractional else self.gpus * MILLI_PER_GPU

    @property
    def whole_gpus(self) -> float:
        return self.gpu_milli_total / MILLI_PER_GPU
