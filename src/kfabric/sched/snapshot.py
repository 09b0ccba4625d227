"""The scheduler's view of the world, kept by its owner (simulator or service) and updated by deltas.

``Snapshot`` holds the capacity index, running work with expected ends, tenants, grants, decayed usage and
the run-time history. ``start`` and ``finish`` are the only ways work enters or leaves it, so the quota
counters stay consistent with the running set. A cycle reads a snapshot and leaves it as it found it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kfabric.model.decision import Placement
from kfabric.model.fleet import Fleet
from kfabric.model.job import MILLI_PER_GPU, Job
from kfabric.model.tenancy import OnExhausted
from kfabric.sched.capacity import Capacity
from kfabric.sched.estimator import RuntimeEstimator
from kfabric.sched.fairshare import TenantInfo, shares
from kfabric.sched.run_index import PoolRuns


class RunningJob:
    """A job on its GPUs. A plain class, not a dataclass: compiled (mypyc), a dataclass's ``__init__`` stays
    Python code, and one is made per start. Compared by identity (there is one per running job)."""

    def __init__(
        self,
        job: Job,
        placement: Placement,
        start_s: float,
        expected_end_s: float,
        last_checkpoint_s: float,
        borrowed: bool,
        guaranteed: bool = False,
    ) -> None:
        self.job = job
        self.placement = placement
        self.start_s = start_s
        self.expected_end_s = expected_end_s
        self.last_checkpoint_s = last_checkpoint_s
        self.borrowed = borrowed
        self.guaranteed = guaranteed
        #: GPU milli held (``placement.gpu_milli_total``, cached: the hot loops read it)
        self.milli = placement_milli(placement)

    def __repr__(self) -> str:
        return (
            f"RunningJob(job={self.job.id!r}, pool={self.placement.pool!r}, milli={self.milli}, "
            f"start_s={self.start_s}, expected_end_s={self.expected_end_s}, borrowed={self.borrowed}, "
            f"guaranteed={self.guaranteed})"
        )

    @property
    def gpus(self) -> float:
        return self.milli / MILLI_PER_GPU

    def lost_work_gpu_s(self, now_s: float) -> float:
        """GPU-seconds lost if preempted now: time since the last checkpoint times GPUs. The last checkpoint
        is the later of what the owner recorded and the job's periodic checkpoints since its start."""
        ran = max(0.0, now_s - self.start_s)
        interval = self.job.checkpoint_interval_s
        periodic = self.start_s + (ran // interval) * interval if interval else self.start_s
        since = max(self.last_checkpoint_s, periodic)
        return max(0.0, now_s - since) * self.gpus


def placement_milli(placement: Placement) -> int:
    """GPU milli a placement holds: ``Placement.gpu_milli_total``, here in the compiled core."""
    total = 0
    for share in placement.shares:
        total += len(share.gpus) * share.gpu_milli
    return total


@dataclass(frozen=True, slots=True)
class GrantState:
    """A grant as the core sees it. ``credit_left_su`` (None: no credit limit) is the SU-hours *free*: the
    credit less what was used and less what admitted and running jobs hold (``sched.rules``)."""

    id: str
    project: str
    start_s: float
    end_s: float
    reserved_model: str | None = None
    reserved_gpus: int = 0
    credit_left_su: float | None = None
    on_exhausted: OnExhausted = OnExhausted.STOP
    max_job_duration_s: float | None = None
    #: the program's utilization floor for reserved GPUs (0: no under-use rule; ``sched.ledger``)
    utilization_floor_pct: float = 0.0

    def with_credit(self, left_su: float) -> GrantState:
        """The same grant with ``left_su`` SU-hours of credit free (credit less what was used and what active
        jobs hold; the owner keeps it)."""
        return GrantState(
            self.id,
            self.project,
            self.start_s,
            self.end_s,
            self.reserved_model,
            self.reserved_gpus,
            left_su,
            self.on_exhausted,
            self.max_job_duration_s,
            self.utilization_floor_pct,
        )

    def with_end(self, end_s: float) -> GrantState:
        """The same grant ending at ``end_s`` (reclaimed for under-use)."""
        return GrantState(
            self.id,
            self.project,
            self.start_s,
            end_s,
            self.reserved_model,
            self.reserved_gpus,
            self.credit_left_su,
            self.on_exhausted,
            self.max_job_duration_s,
            self.utilization_floor_pct,
        )


@dataclass
class Snapshot:
    capacity: Capacity
    tenants: Mapping[str, TenantInfo] = field(default_factory=dict)
    grants: Mapping[str, GrantState] = field(default_factory=dict)
    usage_su: dict[str, float] = field(default_factory=dict)
    attained_gpu_s: dict[str, float] = field(default_factory=dict)
    estimator: RuntimeEstimator = field(default_factory=RuntimeEstimator)
    running: dict[str, RunningJob] = field(default_factory=dict)
    #: GPUs of guaranteed (reserved) work per (project, model)
    own_gpus: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    #: GPUs per model used on shared pools by work that is neither guaranteed nor borrowed
    shared_used: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: GPUs each project runs on borrowed capacity
    borrowed_gpus: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    grants_by_project: dict[str, list[GrantState]] = field(default_factory=dict)
    #: running work per pool index (kept by start/finish), and the preemptible GPU milli per pool and
    #: priority class, and per pool on borrowed capacity: preemption skips pools where it cannot succeed
    running_by_pool: dict[int, dict[str, RunningJob]] = field(default_factory=lambda: defaultdict(dict))
    preemptible_milli: dict[tuple[int, int], int] = field(default_factory=lambda: defaultdict(int))
    borrowed_milli: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    #: running work per pool index as columns (victim search and availability profiles read them with numpy)
    run_index: dict[int, PoolRuns] = field(default_factory=lambda: defaultdict(PoolRuns))
    #: the tenants' normalized fair shares (computed on first use; they change only with the tenants). What
    #: cycles remember between them for speed is the owner's ``sched.memo.CycleMemo``, not kept here
    _shares: dict[str, float] | None = None

    def __post_init__(self) -> None:
        by_project: dict[str, list[GrantState]] = defaultdict(list)
        for g in sorted(self.grants.values(), key=lambda g: (g.start_s, g.id)):
            by_project[g.project].append(g)
        self.grants_by_project = dict(by_project)

    @classmethod
    def for_fleet(cls, fleet: Fleet, online_at_s: float | None = None, **kwargs: object) -> Snapshot:
        """A snapshot with every pool online (or those online at ``online_at_s``, a POSIX time)."""
        cap = Capacity(fleet)
        for i, pool in enumerate(fleet.pools):
            if online_at_s is None or pool.online <= datetime.fromtimestamp(online_at_s, UTC).date():
                cap.set_pool_online(i, True)
        return cls(cap, **kwargs)  # type: ignore[arg-type]

    def set_tenants(self, tenants: Mapping[str, TenantInfo], grants: Mapping[str, GrantState]) -> None:
        """Replace the tenants and grants (an owner following its store): the caches that depend on them go."""
        self.tenants = tenants
        self.grants = grants
        self._shares = None
        self.__post_init__()

    def fair_shares(self) -> dict[str, float]:
        """Normalized fair-share shares of the tenants (computed once: tenants do not change after creation)."""
        if self._shares is None:
            self._shares = shares(self.tenants)
        return self._shares

    def reserved(self, project: str, model: str, now_s: float) -> int:
        return sum(
            g.reserved_gpus
            for g in self.grants_by_project.get(project, ())
            if g.reserved_model == model and g.start_s <= now_s < g.end_s
        )

    def start(
        self,
        job: Job,
        placement: Placement,
        now_s: float,
        borrowed: bool,
        guaranteed: bool = False,
        take: bool = True,
    ) -> None:
        """Record that ``job`` runs on ``placement`` from ``now_s`` (takes the capacity, unless ``take`` is
        False because a ``cycle(keep=True)`` already took it)."""
        if job.id in self.running:
            raise ValueError(f"job {job.id} is already running")
        cap = self.capacity
        if take:
            for s in placement.shares:
                cap.take(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
        run = RunningJob(job, placement, now_s, now_s + job.time_limit_s, now_s, borrowed, guaranteed)
        self.running[job.id] = run
        self._count(run, +1.0)

    def finish(self, job_id: str, give: bool = True) -> RunningJob:
        """Remove a running job (ended, killed or preempted) and give its capacity back (unless ``give`` is
        False because a ``cycle(keep=True)`` that preempted it already gave it)."""
        run = self.running.pop(job_id)
        cap = self.capacity
        if give:
            for s in run.placement.shares:
                cap.give(s.node, s.gpus, s.gpu_milli, s.cpu_milli, s.memory_mib)
        self._count(run, -1.0)
        return run

    def checkpointed(self, job_id: str, at_s: float) -> None:
        """A running job saved a checkpoint at ``at_s`` (preempting it now loses only the work since then)."""
        run = self.running[job_id]
        run.last_checkpoint_s = at_s
        self.run_index[self.capacity.pool_by_name[run.placement.pool].index].checkpointed(job_id, at_s)

    def _count(self, run: RunningJob, sign: float) -> None:
        pool = self.capacity.pool_by_name[run.placement.pool]
        if sign > 0:
            self.running_by_pool[pool.index][run.job.id] = run
        else:
            del self.running_by_pool[pool.index][run.job.id]
        if sign > 0:
            self.run_index[pool.index].add(run, self.attained_gpu_s.get(run.job.id, 0.0))
        else:
            self.run_index[pool.index].remove(run.job.id)
        if run.job.preemptible:
            self.preemptible_milli[(pool.index, int(run.job.priority))] += int(sign) * run.milli
            if run.borrowed:
                self.borrowed_milli[pool.index] += int(sign) * run.milli
        if run.guaranteed:
            self.own_gpus[(run.job.project, pool.model)] += sign * run.gpus
        elif run.borrowed:
            self.borrowed_gpus[run.job.project] += sign * run.gpus
        elif pool.sharing.value == "shared":
            self.shared_used[pool.model] += sign * run.gpus
