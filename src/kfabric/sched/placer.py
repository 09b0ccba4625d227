"""The placer of one scheduling cycle: puts a job on the pools it may use now, non-borrowed first, and says
what held it back when nothing fits (:class:`NoFit`'s scope), so the cycle knows whether the job's class-mates
can fare better. A pool holding reservations takes a job only if its availability profile holds it over the
whole time limit (backfill never delays a reservation)."""

from __future__ import annotations

from collections.abc import Callable

from kfabric.model.decision import Placement
from kfabric.model.job import MILLI_PER_GPU, Job
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.sched.capacity import Capacity
from kfabric.sched.memo import PlacementMemo
from kfabric.sched.placement import PlaceRequest
from kfabric.sched.profile import Profile
from kfabric.sched.quota import PoolChoice
from kfabric.sched.request import node_counts

#: default host resources a GPU brings along when a job does not ask for CPU/memory explicitly
CPU_MILLI_PER_GPU = 4_000
MEMORY_MIB_PER_GPU = 32_768

#: what held a job back (:class:`NoFit`), from the narrowest to the widest claim: the shape of its class (every
#: class-mate fails the same way); its time limit against a reservation's profile (a class-mate with a shorter
#: limit may fit); something of its own (its project's borrowing or grant: a class-mate may fit)
CLASS, TIME_LIMIT, JOB = 0, 1, 2


class NoFit:
    """The job does not fit now: why (None: for the caller to say) and how far that reaches (``scope``:
    ``CLASS``, ``TIME_LIMIT`` or ``JOB``)."""

    def __init__(self, reason: PendingReason | None, scope: int) -> None:
        self.reason = reason
        self.scope = scope


#: the answers without a reason, made once (no allocation per failed placement)
NO_FIT = NoFit(None, CLASS)
NO_FIT_BY_PROFILE = NoFit(None, TIME_LIMIT)

Place = Callable[[Capacity, PlaceRequest], Placement | None]
#: the job fits: where, and on which choice of pool (a plain tuple: one is made per placement, and a tuple is the
#: cheapest object there is; tell it from a :class:`NoFit` with ``isinstance(x, NoFit)``)
Fit = tuple[Placement, PoolChoice]


class Placer:
    """Places jobs on the cycle's capacity (see the module doc). ``profiles`` is the cycle's own dict of
    availability profiles (filled as reservations are made); ``task_types`` the queue's, for scorers that
    measure fragmentation against them."""

    def __init__(
        self, cap: Capacity, place: Place, profiles: dict[int, Profile], now_s: float, memo: PlacementMemo
    ) -> None:
        self.cap, self.place_fn, self.profiles, self.now, self.memo = cap, place, profiles, now_s, memo
        self.task_types: tuple[tuple[int, int, float], ...] = ()
        self._host_cache: dict[tuple[int, ...], tuple[int, int]] = {}
        #: CPU milli and memory MiB per GPU of each pool's nodes
        self.host_per_gpu = [
            (
                int(cap.cpu_total[p.first_node]) // max(p.gpus_per_node, 1),
                int(cap.mem_total[p.first_node]) // max(p.gpus_per_node, 1),
            )
            for p in cap.pools
        ]

    def place(self, job: Job, choices: list[PoolChoice], prefilter: bool = False) -> Fit | NoFit:
        """Place on non-borrowed pools first. ``prefilter``: first drop pools that cannot hold the job's shape
        (:meth:`may_fit`), for callers that retry the same job many times (preemption trials)."""
        usable = choices
        held = NO_FIT
        if self.profiles:
            usable = []
            for c in choices:
                profile = self.profiles.get(c.pool)
                if (
                    profile is None
                    or not profile.reserved
                    or profile.fits(self.now, job.time_limit_s, job.gpu_milli_total)
                ):
                    usable.append(c)
                else:
                    held = NO_FIT_BY_PROFILE
        for borrowed in (False, True):
            group = [c.pool for c in usable if c.borrowed == borrowed]
            if not group:
                continue
            # a job that names no CPU/memory gets the default per GPU, but never more than its node's share
            cpu, mem = self._host_per_gpu(group)
            # pools without enough free nodes of the right size cannot hold it: not worth a placement search
            fit = [pi for pi in group if self.may_fit(pi, job)] if prefilter else group
            if not fit:
                continue
            req = PlaceRequest(job, fit, cpu, mem, task_types=self.task_types, memo=self.memo)
            placement = self.place_fn(self.cap, req)
            if placement is not None:
                pi = self.cap.pool_by_name[placement.pool].index
                return placement, next(c for c in usable if c.pool == pi)
        return held

    def may_fit(self, pool: int, job: Job) -> bool:
        """A necessary condition for the job's GPUs to fit the pool now, from the free-GPU buckets: enough
        GPU milli, and enough up nodes with enough whole free GPUs for each node of its shape."""
        cap = self.cap
        if cap.pool_milli[pool] < job.gpu_milli_total:
            return False
        if job.gpus == 0 or job.fractional:
            return True
        counts = node_counts(job, cap.pools[pool].gpus_per_node)
        return counts is not None and cap.shape_fits(pool, counts)

    def waiting_reason(self, job: Job, choices: list[PoolChoice]) -> PendingReason:
        """Why a job that fits none of its choices waits: too few free GPUs, or free ones in the wrong shape."""
        models = ", ".join(sorted({self.cap.pools[c.pool].model for c in choices}))
        free = sum(int(self.cap.pool_milli[c.pool]) for c in choices) / MILLI_PER_GPU
        topology = job.min_topology.name.lower()
        if free >= job.whole_gpus:
            message = (
                f"waiting for {job.whole_gpus:g} GPU(s) of {models}: {free:g} are free, but not in a shape that "
                f"fits (min topology: {topology}) with the CPU and memory the job needs beside them"
            )
        else:
            message = (
                f"waiting for {job.whole_gpus:g} free GPU(s) of {models} (min topology: {topology}); {free:g} free now"
            )
        return PendingReason(ReasonCode.RESOURCES, message)

    def _host_per_gpu(self, group: list[int]) -> tuple[int, int]:
        """CPU milli and memory MiB per GPU for jobs that name none: the default, capped by the smallest
        per-GPU share of the group's nodes (cached per group of pools)."""
        key = tuple(group)
        got = self._host_cache.get(key)
        if got is None:
            got = self._host_cache[key] = (
                min(CPU_MILLI_PER_GPU, *(self.host_per_gpu[pi][0] for pi in group)),
                min(MEMORY_MIB_PER_GPU, *(self.host_per_gpu[pi][1] for pi in group)),
            )
        return got
