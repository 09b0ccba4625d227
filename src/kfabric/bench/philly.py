"""``kfabric bench philly``: the Philly-derived protocol (docs/benchmarks.md) under six policies.

All 15 Gavel VC traces merged, each VC a project of equal weight, arrivals as given, run time on V100,
cluster 64 nodes x 8 V100 (NVLink domain 8), time limits as users would ask (seeded over-estimates), no node
failures. ``sjf-oracle`` alone sees the true run time (as the job's declared estimate); ``kfabric`` never does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from kfabric.scenarios.loader import load_scenario
from kfabric.sched.presets import PRESETS
from kfabric.sim.engine import SimOptions
from kfabric.sim.run import simulate
from kfabric.sim.workload import Workload
from kfabric.traces.sources import load_workload

POLICIES = ("fifo", "sjf-oracle", "qssf", "las", "multifactor", "kfabric")
KEYS = ("avg_jct_s", "p99_jct_s", "avg_wait_s", "p999_wait_s", "utilization")


def with_oracle_estimates(workload: Workload) -> Workload:
    """The same jobs, each declaring its true run time as its estimate (only the oracle policy gets this)."""
    jobs = [
        dataclasses.replace(sj, job=dataclasses.replace(sj.job, runtime_estimate_s=sj.run_s)) for sj in workload.jobs
    ]
    return dataclasses.replace(workload, name=workload.name + "+oracle", jobs=jobs)  # keeps the speed tables


def run_philly(
    traces: str | None = None,
    policies: tuple[str, ...] = POLICIES,
    seed: int = 0,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    scenario = load_scenario("philly")
    workload = load_workload(f"philly:{traces}" if traces else "philly", scenario, None, seed)
    oracle = with_oracle_estimates(workload)
    options = SimOptions(start=date(2017, 10, 1), seed=seed, failures_per_gpu_s=0.0)
    t0 = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    for name in policies:
        if progress is not None:
            progress(name)
        wl = oracle if name == "sjf-oracle" else workload
        run = simulate(scenario, wl, PRESETS[name], options, out_dir=out_dir / name if out_dir else None)
        results[name] = {k: float(run.summary[k]) for k in KEYS}
    return {"policies": results, "seconds": round(time.perf_counter() - t0, 2), "jobs": len(workload.jobs)}
