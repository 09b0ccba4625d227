"""One simulation run: scenario + workload + policy -> a run directory with per-job, timeline and summary files.

Files written (the report and scripts read them):
* ``jobs.csv`` — one row per finished job (``metrics.JOB_FIELDS``);
* ``timeline.csv`` — samples over time: queue, running, online/allocated GPUs, GPUs by owner and site, power
  (MW) by site, fragmentation;
* ``summary.json`` — the run's summary metrics plus what ran (policy, scenario, workload, seed, speed).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from kfabric.scenarios.loader import Scenario
from kfabric.sched.policy import Policy
from kfabric.sim.engine import Progress, SimOptions, Simulator
from kfabric.sim.metrics import JOB_FIELDS, summarize
from kfabric.sim.setup import grants_of, open_grants, tenants_of
from kfabric.sim.workload import Workload


@dataclass(frozen=True)
class RunResult:
    policy: str
    out_dir: Path | None
    summary: dict[str, Any]


def simulate(
    scenario: Scenario,
    workload: Workload,
    policy: Policy,
    options: SimOptions,
    out_dir: Path | None = None,
    progress: Progress | None = None,
    wall_clock: Callable[[], float] = time.perf_counter,
) -> RunResult:
    t0 = wall_clock()
    grants = grants_of(scenario, options.start)
    sim = Simulator(
        scenario.fleet,
        workload,
        policy,
        options,
        tenants=tenants_of(scenario),
        grants={**grants, **open_grants(workload, grants)},
        wall_clock=wall_clock,
    )
    sim.run(progress)
    wall_s = wall_clock() - t0
    summary = summarize(
        sim.records,
        sim.allocated_gpu_s,
        sim.online_gpu_s,
        sim.entitlement(),
        sim.su_total,
        {
            "jobs_submitted": sum(1 for j in workload.jobs if j.job.submit_s <= sim.horizon),
            "jobs_unfinished": len(sim.live),
            "jobs_rejected": sim.rejected,
            "sim_days": sim.now / 86_400.0,
            "cycles": sim.cycles,
            "cycle_s": sim.cycle_s,
            "wall_s": wall_s,
            "jobs_per_min": len(sim.records) / wall_s * 60.0 if wall_s > 0 else 0.0,
            "power_peak_mw": {site: max(values, default=0.0) for site, values in sorted(sim.timeline.power_mw.items())},
            "fragmentation_avg": (
                sum(sim.timeline.fragmentation) / len(sim.timeline.fragmentation) if sim.timeline.fragmentation else 0.0
            ),
        },
    )
    summary["run"] = {
        "policy": policy.name,
        "policy_config": _policy_json(policy),
        "scenario": scenario.name,
        "workload": workload.name,
        "workload_description": workload.description,
        "seed": options.seed,
        "start": options.start.isoformat(),
        "days": options.days,
        "interval_s": options.interval_s,
    }
    if out_dir is not None:
        write_run(out_dir, sim, summary)
    return RunResult(policy.name, out_dir, summary)


def _policy_json(policy: Policy) -> dict[str, Any]:
    data = asdict(policy)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}


def write_run(out_dir: Path, sim: Simulator, summary: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "jobs.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(JOB_FIELDS)
        for rec in sim.records:
            w.writerow(rec.row())
    tmp.replace(out_dir / "jobs.csv")
    tl = sim.timeline
    owners = sorted(tl.by_owner)
    sites = sorted(tl.by_site)
    header = ["t_s", "queue", "running", "online_gpus", "allocated_gpus", "fragmentation"]
    header += [f"owner:{o}" for o in owners] + [f"site:{s}" for s in sites] + [f"power_mw:{s}" for s in sites]
    tmp = out_dir / "timeline.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i, t in enumerate(tl.t_s):
            row: list[object] = [t, tl.queue[i], tl.running[i], tl.online_gpus[i], round(tl.allocated_gpus[i], 3)]
            row.append(round(tl.fragmentation[i], 4))
            row += [round(tl.by_owner[o][i], 3) for o in owners]
            row += [round(tl.by_site[s][i], 3) for s in sites]
            row += [round(tl.power_mw[s][i], 4) for s in sites]
            w.writerow(row)
    tmp.replace(out_dir / "timeline.csv")
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
    tmp.replace(out_dir / "summary.json")


def default_start(scenario: Scenario) -> date:
    """Start when the whole fleet is online (the last pool's online date)."""
    return max((p.online for p in scenario.fleet.pools), default=date(2030, 1, 1))
