"""One simulation run: scenario + workload + policy -> a run directory with per-job, timeline and summary files.

Files written (the report and scripts read them):
* ``jobs.csv`` — one row per submitted job (``metrics.JOB_FIELDS``): finished, still running, or never started
  (``censored`` = 1: its wait is counted up to the window's end; ``reason`` = why the last cycle left it waiting);
* ``timeline.csv`` — samples over time: queue, running, online/allocated GPUs, GPUs by owner and site, power
  (MW) by site, fragmentation;
* ``summary.json`` — the run's summary metrics (``docs/metrics.md``) plus what ran (policy, scenario, workload,
  seed, speed).
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

import numpy as np

from kfabric.model import Sharing
from kfabric.scenarios.loader import Scenario
from kfabric.sched.policy import Policy
from kfabric.sim.engine import Progress, SimOptions, Simulator
from kfabric.sim.metrics import JOB_FIELDS, JobRecord, Reserved, RunFacts, summarize
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
    records = [*sim.records, *sim.unfinished_records()]
    summary = summarize(
        run_facts(scenario, workload, sim, records),
        {
            "jobs_arrived": len(records) + sim.rejected,
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
        write_run(out_dir, sim, summary, records)
    return RunResult(policy.name, out_dir, summary)


def run_facts(scenario: Scenario, workload: Workload, sim: Simulator, records: list[JobRecord]) -> RunFacts:
    """What the summary needs from a finished simulation (``records``: every job admitted to the queue)."""
    gpu_s = dict(sim.gpu_s_by_pool)
    borrowed = dict(sim.borrowed_gpu_s_by_pool)
    running, running_borrowed = sim.running_gpu_s()
    for pool, v in running.items():
        gpu_s[pool] = gpu_s.get(pool, 0.0) + v
    for pool, v in running_borrowed.items():
        borrowed[pool] = borrowed.get(pool, 0.0) + v
    reserved = [
        Reserved(g.id, g.project, g.reserved_model, g.reserved_gpus, g.start_s, g.end_s)
        for g in sim.snap.grants.values()
        if g.reserved_gpus > 0 and g.reserved_model
    ]
    return RunFacts(
        jobs=records,
        window_s=sim.now,
        allocated_gpu_s=sim.allocated_gpu_s,
        online_gpu_s=sim.online_gpu_s,
        entitlement=sim.entitlement(),
        su_by_project=sim.su_total,
        program_of={p: t.program for p, t in sim.tenants.items()},
        owner_of_pool={p.name: p.owner for p in scenario.fleet.pools},
        lendable_pools=frozenset(p.name for p in scenario.fleet.pools if p.sharing is Sharing.LENDABLE),
        gpu_s_by_pool=gpu_s,
        borrowed_gpu_s_by_pool=borrowed,
        rejected_by_reason=dict(sim.rejected_by_reason),
        reserved=reserved,
        fits_reservation=fits_reservation(workload, records, reserved),
    )


def fits_reservation(workload: Workload, records: list[JobRecord], reserved: list[Reserved]) -> dict[str, str]:
    """Jobs that fit inside the free part of a reservation of their project at submission: a reserved grant in
    force then, of a model the job accepts (any, when it names none), with no more GPUs than it reserves less
    what the project's own jobs held on that model at that moment. Job id -> grant id.

    "Held" counts each job of the project from its first start to its end (or the window's end) on the model
    of the pool it last ran on, so a job preempted meanwhile counts as holding throughout: the free part is
    never overstated."""
    by_project: dict[str, list[Reserved]] = {}
    for r in reserved:
        by_project.setdefault(r.project, []).append(r)
    jobs = {sj.job.id: sj.job for sj in workload.jobs if sj.job.project in by_project}
    mine: dict[str, list[JobRecord]] = {}
    for rec in records:
        if rec.project in by_project:
            mine.setdefault(rec.project, []).append(rec)
    out: dict[str, str] = {}
    for project, recs in mine.items():
        for model in sorted({g.model for g in by_project[project]}):
            held = [r for r in recs if r.started and r.gpu_model == model]
            starts = np.sort(np.asarray([r.start_s for r in held], dtype=np.float64))
            start_gpus = np.cumsum(np.asarray([r.gpus for r in sorted(held, key=lambda r: r.start_s)]))
            ended = sorted((r for r in held if r.finished), key=lambda r: r.end_s)
            ends = np.asarray([r.end_s for r in ended], dtype=np.float64)
            end_gpus = np.cumsum(np.asarray([r.gpus for r in ended]))
            for rec in recs:
                job = jobs.get(rec.job_id)
                if job is None or rec.job_id in out or (job.gpu_models and model not in job.gpu_models):
                    continue
                t = rec.submit_s
                i, k = int(np.searchsorted(starts, t, side="right")), int(np.searchsorted(ends, t, side="right"))
                used = (float(start_gpus[i - 1]) if i else 0.0) - (float(end_gpus[k - 1]) if k else 0.0)
                if rec.started and rec.gpu_model == model and rec.start_s <= t:
                    used -= rec.gpus  # started at its submission: not in its own way
                for g in by_project[project]:
                    if g.model == model and g.start_s <= t < g.end_s and job.whole_gpus + used <= g.gpus + 1e-9:
                        out[rec.job_id] = g.grant
                        break
    return out


def _policy_json(policy: Policy) -> dict[str, Any]:
    data = asdict(policy)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}


def write_run(out_dir: Path, sim: Simulator, summary: dict[str, Any], records: list[JobRecord] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "jobs.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(JOB_FIELDS)
        for rec in sim.records if records is None else records:
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
