"""``kfabric bench cycle``: scheduling-cycle time on a national fleet with a realistic queue.

State: every pool online; a few thousand projects under several programs; running work placed first (until
``running`` jobs run or the fleet is full), then ``pending`` jobs queued. Job sizes run from a fractional GPU
to 4,096 GPUs, with mixed priority classes, data classifications and GPU-model lists. Between measured
cycles the decision is applied (admitted jobs start), ~1% of running jobs end and new jobs arrive so the
queue stays at its size; only the ``cycle()`` call is timed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from kfabric.model.job import Job, MinTopology, PriorityClass
from kfabric.model.sovereignty import Classification
from kfabric.scenarios.loader import Scenario
from kfabric.sched.cycle import CPU_MILLI_PER_GPU, MEMORY_MIB_PER_GPU, cycle
from kfabric.sched.fairshare import TenantInfo
from kfabric.sched.memo import CycleMemo
from kfabric.sched.placement import PlaceRequest, best_fit
from kfabric.sched.policy import Policy
from kfabric.sched.presets import PRESETS
from kfabric.sched.queue import PendingQueue
from kfabric.sched.snapshot import Snapshot

# (gpus, gpu_milli, probability): many small jobs, few giants (Philly/Helios: ~80% of jobs use <= 8 GPUs)
SIZES: tuple[tuple[int, int, float], ...] = (
    (1, 250, 0.08),
    (1, 500, 0.06),
    (1, 1000, 0.38),
    (2, 1000, 0.14),
    (4, 1000, 0.14),
    (8, 1000, 0.12),
    (16, 1000, 0.03),
    (32, 1000, 0.02),
    (64, 1000, 0.012),
    (128, 1000, 0.004),
    (256, 1000, 0.0015),
    (512, 1000, 0.0006),
    (1024, 1000, 0.0003),
    (2048, 1000, 0.0001),
    (4096, 1000, 0.00005),
)
PRIORITIES = (PriorityClass.LOW, PriorityClass.NORMAL, PriorityClass.HIGH, PriorityClass.URGENT)
PRIORITY_P = (0.2, 0.6, 0.15, 0.05)
CLASSES = (Classification.PUBLIC, Classification.INTERNAL, Classification.CONFIDENTIAL, Classification.RESTRICTED)
CLASS_P = (0.55, 0.3, 0.1, 0.05)
LIMITS_H = (1.0, 4.0, 12.0, 24.0, 72.0, 168.0)


@dataclass
class CycleBenchResult:
    pending: int
    running: int
    cycles: int
    times_ms: list[float]
    admissions: int

    def as_json(self) -> dict[str, object]:
        total_s = sum(self.times_ms) / 1000.0
        return {
            "fleet_gpus": None,
            "pending": self.pending,
            "running": self.running,
            "cycles": self.cycles,
            "median_ms": round(statistics.median(self.times_ms), 2),
            "p95_ms": round(float(np.percentile(self.times_ms, 95)), 2),
            "placements": self.admissions,
            "placements_per_s": round(self.admissions / total_s, 1) if total_s > 0 else 0.0,
        }


class _JobMaker:
    def __init__(self, rng: np.random.Generator, projects: list[str], models: list[str]) -> None:
        self.rng, self.projects, self.models = rng, projects, models
        self.n = 0
        self.size_p = np.asarray([p for *_, p in SIZES])
        self.size_p /= self.size_p.sum()

    def make(self, now_s: float) -> Job:
        rng = self.rng
        self.n += 1
        gpus, milli, _ = SIZES[int(rng.choice(len(SIZES), p=self.size_p))]
        models: tuple[str, ...] = ()
        if rng.random() < 0.3:
            models = (self.models[int(rng.integers(len(self.models)))],)
        topo = MinTopology.NVLINK if gpus in (16, 32, 64) and rng.random() < 0.5 else MinTopology.ANY
        return Job(
            id=f"b{self.n}",
            project=self.projects[int(rng.integers(len(self.projects)))],
            user=f"u{int(rng.integers(5000))}",
            name=f"train-{int(rng.integers(200))}",
            time_limit_s=3600.0 * LIMITS_H[int(rng.integers(len(LIMITS_H)))],
            gpus=gpus,
            gpu_milli=milli,
            gpu_models=models,
            min_topology=topo,
            submit_s=now_s - float(rng.uniform(0, 86_400)),
            priority=PRIORITIES[int(rng.choice(4, p=PRIORITY_P))],
            classification=CLASSES[int(rng.choice(4, p=CLASS_P))],
            preemptible=bool(rng.random() < 0.7),
            checkpoint_interval_s=3600.0 if rng.random() < 0.6 else None,
        )


def build_state(
    scenario: Scenario, pending: int, running: int, seed: int, projects: int = 3000
) -> tuple[Snapshot, PendingQueue, _JobMaker]:
    rng = np.random.default_rng(seed)
    programs = ["sovereign-fm", "national-grant", "startup", "private"]
    tenants = {
        f"proj{i:05d}": TenantInfo(
            project=f"proj{i:05d}",
            organization=f"org{i % 400:04d}",
            program=programs[i % len(programs)],
            weight=float(1 + (i % 7)),
        )
        for i in range(projects)
    }
    snap = Snapshot.for_fleet(scenario.fleet, tenants=tenants)
    snap.usage_su.update({p: float(rng.uniform(0, 1e6)) for p in tenants})
    models = sorted({p.gpu_model for p in scenario.fleet.pools})
    maker = _JobMaker(rng, sorted(tenants), models)
    now = 0.0
    all_pools = list(range(len(snap.capacity.pools)))
    placed, misses = 0, 0
    while placed < running and misses < 2 * running:
        job = maker.make(now)
        cleared = [
            pi
            for pi in all_pools
            if snap.capacity.sites[snap.capacity.pools[pi].site].clearance >= job.classification
            and (not job.gpu_models or snap.capacity.pools[pi].model in job.gpu_models)
        ]
        placement = best_fit(snap.capacity, PlaceRequest(job, cleared, CPU_MILLI_PER_GPU, MEMORY_MIB_PER_GPU))
        if placement is None:
            misses += 1
            continue
        snap.start(job, placement, now - float(rng.uniform(0, job.time_limit_s)), borrowed=False)
        placed += 1
    q = PendingQueue(snap.estimator)  # as the simulator and the service keep it: estimates vectorized
    for _ in range(pending):
        q.add(maker.make(now))
    return snap, q, maker


def run_cycle_bench(
    scenario: Scenario, pending: int, running: int, cycles: int, seed: int = 42, policy: Policy | None = None
) -> dict[str, object]:
    pol = policy or PRESETS["kfabric"]  # the default policy
    snap, q, maker = build_state(scenario, pending, running, seed)
    rng = np.random.default_rng(seed + 1)
    memo = CycleMemo()  # kept across cycles, as the simulator and the service keep theirs
    now = 0.0
    times: list[float] = []
    admitted = 0
    for _ in range(cycles):
        t0 = time.perf_counter()
        decision = cycle(snap, q, pol, now, memo=memo)
        times.append((time.perf_counter() - t0) * 1000.0)
        admitted += len(decision.admissions)
        for victim in decision.preemptions:
            snap.finish(victim.job_id)
        for adm in decision.admissions:
            job = q.remove(adm.job_id)
            snap.start(job, adm.placement, now, adm.borrowed)
        # churn: ~1% of running work ends; arrivals keep the queue at its size
        ids = sorted(snap.running)
        for i in rng.choice(len(ids), size=max(1, len(ids) // 100), replace=False):
            snap.finish(ids[int(i)])
        while len(q) < pending:
            q.add(maker.make(now))
        now += 30.0
    result = CycleBenchResult(pending, len(snap.running), cycles, times, admitted).as_json()
    result["fleet_gpus"] = scenario.fleet.gpus
    return result
