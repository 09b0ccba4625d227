"""The quota ledger of one scheduling cycle: which pools a job may use now and as what (its own capacity,
borrowed capacity, or capacity its grant guarantees), and the GPU counts that decide it, kept up to date as
the cycle admits and preempts work. It starts from the snapshot's counters and changes only its own copies.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from kfabric.model.fleet import Sharing
from kfabric.model.job import MILLI_PER_GPU, Job
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.sched.capacity import Capacity, SiteInfo
from kfabric.sched.policy import Policy
from kfabric.sched.snapshot import RunningJob, Snapshot


@dataclass(frozen=True, slots=True)
class PoolChoice:
    """A pool a job may use now, and as what: borrowed capacity, or capacity its grant guarantees."""

    pool: int
    borrowed: bool
    guaranteed: bool


#: :meth:`QuotaLedger.choices`: the pools a job may use now (non-borrowed first), why the others are
#: excluded by quota and by power (the last seen), and whether its project's borrow limit excluded one
Choices = tuple[list[PoolChoice], PendingReason | None, PendingReason | None, bool]


class QuotaLedger:
    """GPU counts per project and model as this cycle changes them (see the module doc)."""

    def __init__(self, snap: Snapshot, policy: Policy, now_s: float) -> None:
        cap = snap.capacity
        self.snap, self.cap, self.now = snap, cap, now_s
        self.own = defaultdict(float, snap.own_gpus)
        self.shared_used = defaultdict(float, snap.shared_used)
        self.borrowed = defaultdict(float, snap.borrowed_gpus)
        self.unreserved = _unreserved(snap, now_s)
        self.site_cap_kw = [site.cap_kw + 1e-9 for site in cap.sites]
        #: per pool: its choice as own, borrowed and guaranteed capacity (immutable, made once per cycle)
        self._choice_objs = [
            (PoolChoice(pi, False, False), PoolChoice(pi, True, False), PoolChoice(pi, False, True))
            for pi in range(len(cap.pools))
        ]
        #: per pool, what choosing it looks at: site, kW per GPU, shared?, GPU model, owner
        self._pool_meta = [(p.site, p.kw_per_gpu, p.sharing is Sharing.SHARED, p.model, p.owner) for p in cap.pools]
        self.borrow_limit = policy.borrow_limit_pct / 100.0 * float(cap.pool_up_milli.sum()) / MILLI_PER_GPU
        self._reserved: dict[str, dict[str, int]] = {}

    def choices(self, job: Job, pools: tuple[int, ...], scavenger: bool, blocked: set[int]) -> Choices:
        """Pools the job may use now, non-borrowed first, with why the others are excluded (``blocked``: pools
        held by a job ahead of it that cannot start, when backfill is off)."""
        project = job.project
        tenant = self.snap.tenants.get(project)
        affiliation = tenant.affiliation if tenant else ""
        gpus = job.whole_gpus
        own_first: list[PoolChoice] = []
        borrow: list[PoolChoice] = []
        quota_reason = power_reason = None
        limited = False
        site_kw, site_cap, meta = self.cap.site_kw.tolist(), self.site_cap_kw, self._pool_meta
        made = self._choice_objs
        reserved_models = self.reserved_models(project)
        shared_used, unreserved = self.shared_used, self.unreserved
        for pi in pools:
            site, kw_per_gpu, shared, model, owner = meta[pi]
            if blocked and pi in blocked and not self.claims(job, pi):  # a reservation holder is never blocked
                continue
            if site_kw[site] + gpus * kw_per_gpu > site_cap[site]:
                power_reason = _power_reason(self.cap.sites[site])
                continue
            guaranteed = False
            if shared and not scavenger:
                reserved = reserved_models.get(model, 0) if reserved_models else 0
                if reserved and self.own[(project, model)] + gpus <= reserved:
                    guaranteed = True
                    borrowed = False
                else:
                    borrowed = shared_used[model] + gpus > unreserved.get(model, 0.0)
            else:
                borrowed = scavenger or owner != affiliation
            if borrowed:
                if not job.preemptible:
                    quota_reason = _NO_BORROWING
                    continue
                if self.borrowed[project] + gpus > self.borrow_limit:
                    limited = True
                    quota_reason = self._limit_reason(project)
                    continue
                borrow.append(made[pi][1])
            else:
                own_first.append(made[pi][2 if guaranteed else 0])
        own_first.extend(borrow)
        return own_first, quota_reason, power_reason, limited

    def claims(self, job: Job, pool: int) -> bool:
        """May the job reclaim borrowed capacity in this pool (its reservation, or its owner's pool)?"""
        p = self.cap.pools[pool]
        tenant = self.snap.tenants.get(job.project)
        if p.sharing == Sharing.LENDABLE:
            return tenant is not None and tenant.affiliation == p.owner
        reserved = self.reserved_models(job.project).get(p.model, 0)
        return reserved > 0 and self.own[(job.project, p.model)] + job.whole_gpus <= reserved

    def reserved_models(self, project: str) -> dict[str, int]:
        """GPUs per model that the project's grants in force reserve (empty for most projects)."""
        got = self._reserved.get(project)
        if got is None:
            got = {}
            for g in self.snap.grants_by_project.get(project, ()):
                if g.reserved_model and g.reserved_gpus and g.start_s <= self.now < g.end_s:
                    got[g.reserved_model] = got.get(g.reserved_model, 0) + g.reserved_gpus
            self._reserved[project] = got
        return got

    def count(self, job: Job, choice: PoolChoice) -> None:
        """An admitted job's GPUs count against its project's guarantee, its borrowing, or the shared pool."""
        p = self.cap.pools[choice.pool]
        gpus = job.whole_gpus
        if choice.guaranteed:
            self.own[(job.project, p.model)] += gpus
        elif choice.borrowed:
            self.borrowed[job.project] += gpus
        elif p.sharing == Sharing.SHARED:
            self.shared_used[p.model] += gpus

    def uncount(self, run: RunningJob) -> None:
        """A preempted job's GPUs no longer count (the reverse of :meth:`count` at its start)."""
        p = self.cap.pool_by_name[run.placement.pool]
        if run.guaranteed:
            self.own[(run.job.project, p.model)] -= run.gpus
        elif run.borrowed:
            self.borrowed[run.job.project] -= run.gpus
        elif p.sharing == Sharing.SHARED:
            self.shared_used[p.model] -= run.gpus

    def _limit_reason(self, project: str) -> PendingReason:
        return PendingReason(
            ReasonCode.QUOTA,
            f"project {project} already borrows {self.borrowed[project]:g} GPUs "
            f"(limit {self.borrow_limit:g}); waiting for its own work to finish",
        )


_NO_BORROWING = PendingReason(
    ReasonCode.QUOTA,
    "only borrowed capacity is free and non-preemptible jobs cannot borrow; "
    "mark the job preemptible or wait for entitled capacity",
)


def _power_reason(info: SiteInfo) -> PendingReason:
    return PendingReason(
        ReasonCode.POWER_CAP,
        f"site {info.name} is at its power cap ({info.cap_kw / 1000:g} MW); waiting for power headroom",
    )


def _unreserved(snap: Snapshot, now_s: float) -> dict[str, float]:
    """GPUs per model in shared pools that no active grant reserves (the national pool)."""
    cap: Capacity = snap.capacity
    total: dict[str, float] = defaultdict(float)
    for p in cap.pools:
        if p.sharing == Sharing.SHARED:
            total[p.model] += float(cap.pool_up_milli[p.index]) / MILLI_PER_GPU
    for g in snap.grants.values():
        if g.reserved_model and g.start_s <= now_s < g.end_s:
            total[g.reserved_model] -= g.reserved_gpus
    return dict(total)
