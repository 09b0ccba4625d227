"""``kfabric bench sim``: how many synthetic national jobs the twin replays per minute of wall time."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from kfabric.native import loaded
from kfabric.scenarios.loader import load_scenario
from kfabric.sched.presets import PRESETS
from kfabric.sim.engine import SimOptions
from kfabric.sim.run import default_start, simulate
from kfabric.sim.workload import Workload
from kfabric.traces.national import national_arrays, synthetic_national


def national_jobs(n: int, seed: int) -> tuple[Workload, float]:
    """About ``n`` jobs of the synthetic national workload on korea-2030, and the days they span."""
    scenario = load_scenario("korea-2030")
    per_day = max(len(national_arrays(scenario, 1.0, seed).submit_s), 1)
    days = max(n / per_day, 0.01)
    # arrivals vary by weekday and grow with the capacity online: stretch the window until it holds n jobs
    for _ in range(8):
        have = len(national_arrays(scenario, days, seed).submit_s)
        if have >= n:
            break
        days *= n / max(have, 1) * 1.02
    workload = synthetic_national(scenario, days, seed)
    jobs = workload.jobs[:n]
    return dataclasses.replace(workload, jobs=jobs), days  # keeps the reference model (sim.speed)


def run_sim_speed(
    jobs: int = 1_000_000, seed: int = 0, policy: str = "kfabric", interval_s: float = 60.0
) -> dict[str, Any]:
    scenario = load_scenario("korea-2030")
    t_gen = time.perf_counter()
    workload, _days = national_jobs(jobs, seed)
    gen_s = time.perf_counter() - t_gen
    options = SimOptions(start=default_start(scenario), seed=seed, interval_s=interval_s)
    t0 = time.perf_counter()
    run = simulate(scenario, workload, PRESETS[policy], options)
    wall = time.perf_counter() - t0
    done = int(run.summary["jobs_finished"])
    return {
        "jobs": len(workload.jobs),
        "jobs_finished": done,
        "sim_days": round(float(run.summary["sim_days"]), 2),
        "wall_s": round(wall, 2),
        "jobs_per_min": round(len(workload.jobs) / wall * 60.0, 1) if wall > 0 else 0.0,
        "cycles": run.summary["cycles"],
        "cycle_s": round(float(run.summary["cycle_s"]), 2),
        "generate_s": round(gen_s, 2),
        "policy": policy,
        "interval_s": interval_s,
        # "native": the mypyc-compiled core and simulator ran (scripts/bootstrap.sh builds them); "python": sources
        "build": loaded(),
    }
