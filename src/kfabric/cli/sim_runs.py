"""Run one simulation per policy, in parallel processes when there are several (each run is independent and
deterministic), with one live progress bar per run. Children are forked, so the workload is shared, not
pickled; each child writes its run directory and the parent reads the summaries back."""

from __future__ import annotations

import json
import multiprocessing
import time
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from kfabric.cli.errors import UsageError
from kfabric.scenarios.loader import Scenario
from kfabric.sched.policy import Policy
from kfabric.sim.engine import SimOptions
from kfabric.sim.run import simulate
from kfabric.sim.workload import Workload


def _bar(err: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.fields[policy]}[/]"),
        BarColumn(),
        TextColumn("day {task.fields[day]:.1f}"),
        TextColumn("{task.fields[done]:,} jobs done"),
        TextColumn("{task.fields[queue]:,} queued"),
        TextColumn("{task.fields[speed]:,.0f} jobs/min"),
        TimeElapsedColumn(),
        console=err,
    )


def run_policies(
    scenario: Scenario,
    workload: Workload,
    policies: list[Policy],
    options: SimOptions,
    out: Path,
    horizon: float,
    err: Console,
    workers: int,
) -> dict[str, dict[str, Any]]:
    if workers <= 1 or len(policies) == 1:
        return {p.name: _serial(scenario, workload, p, options, out / p.name, horizon, err) for p in policies}
    ctx = multiprocessing.get_context("fork")
    shared = ctx.Array("d", 3 * len(policies), lock=False)
    errors = ctx.SimpleQueue()
    procs = [
        ctx.Process(target=_child, args=(i, scenario, workload, p, options, out / p.name, shared, errors), daemon=True)
        for i, p in enumerate(policies)
    ]
    t0 = time.perf_counter()
    with _bar(err) as bar:
        tasks = [
            bar.add_task("sim", total=max(horizon, 1.0), policy=p.name, day=0.0, done=0, queue=0, speed=0.0)
            for p in policies
        ]
        running: list[multiprocessing.process.BaseProcess] = []
        pending = list(enumerate(procs))
        while pending or running:
            while pending and len(running) < workers:
                _, proc = pending.pop(0)
                proc.start()
                running.append(proc)
            _refresh(bar, tasks, shared, horizon, t0)
            time.sleep(0.25)
            running = [p for p in running if p.is_alive()]
        _refresh(bar, tasks, shared, horizon, t0)
    failures = []
    while not errors.empty():
        index, text = errors.get()
        failures.append(f"policy {policies[index].name}: {text}")
    bad = [p for p in procs if p.exitcode != 0]
    if failures or bad:
        raise UsageError(
            "a simulation run failed: " + ("; ".join(failures) or f"exit codes {[p.exitcode for p in bad]}")
        )
    return {p.name: json.loads((out / p.name / "summary.json").read_text()) for p in policies}


def _refresh(bar: Progress, tasks: list[TaskID], shared: Any, horizon: float, t0: float) -> None:
    elapsed = max(time.perf_counter() - t0, 1e-9)
    for i, task in enumerate(tasks):
        t, done, queued = shared[3 * i], shared[3 * i + 1], shared[3 * i + 2]
        bar.update(
            task,
            completed=min(t, horizon),
            day=t / 86_400,
            done=int(done),
            queue=int(queued),
            speed=done / elapsed * 60,
        )


def _child(
    index: int,
    scenario: Scenario,
    workload: Workload,
    policy: Policy,
    options: SimOptions,
    out_dir: Path,
    shared: Any,
    errors: Any,
) -> None:
    def report(t: float, done: int, queued: int) -> None:
        shared[3 * index], shared[3 * index + 1], shared[3 * index + 2] = t, float(done), float(queued)

    try:
        simulate(scenario, workload, policy, options, out_dir=out_dir, progress=report)
    except Exception as exc:  # the parent reports it; a child must not die silently
        errors.put((index, f"{exc} ({traceback.format_exc(limit=3).strip().splitlines()[-1]})"))
        raise SystemExit(1) from None


def _serial(
    scenario: Scenario,
    workload: Workload,
    policy: Policy,
    options: SimOptions,
    out_dir: Path,
    horizon: float,
    err: Console,
) -> dict[str, Any]:
    with _bar(err) as bar:
        task = bar.add_task("sim", total=max(horizon, 1.0), policy=policy.name, day=0.0, done=0, queue=0, speed=0.0)
        t0 = time.perf_counter()

        def report(t: float, done: int, queued: int) -> None:
            speed = done / max(time.perf_counter() - t0, 1e-9) * 60
            bar.update(task, completed=min(t, horizon), day=t / 86_400, done=done, queue=queued, speed=speed)

        return simulate(scenario, workload, policy, options, out_dir=out_dir, progress=report).summary
