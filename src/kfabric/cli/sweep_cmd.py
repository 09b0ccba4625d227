"""``kfabric sweep SPEC.yaml``: scenario variants x policies x seeds (docs/sweeps.md), in local processes or on a
Ray cluster (``--ray ADDRESS``); one comparison table, ``sweep.json``, ``sweep.csv`` and one HTML report.

A run travels as a :class:`RunTask` of plain data (the variant's scenario, the policy's name or YAML text, the
workload spec, the options) and comes back as its run directory's files, so the same code runs in a local
process, in this process (``--workers 1``) or on another machine of a Ray cluster, with the same results."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import date
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kfabric.cli.console import stdout_console
from kfabric.cli.errors import UsageError
from kfabric.cli.simulate_cmd import SUMMARY_COLUMNS
from kfabric.scenarios.loader import Scenario, load_scenario
from kfabric.scenarios.policies import load_policy
from kfabric.sched.policy import Policy
from kfabric.sched.presets import PRESETS
from kfabric.sim import sweep
from kfabric.sim.run import default_start
from kfabric.sim.workload import Workload

#: the report compares the runs of the first seed (variants x policies); more than this many are left to
#: `kfabric report RUN_DIR...`
MAX_REPORT_RUNS = 24
TABLE_COLUMNS = tuple(c for c in SUMMARY_COLUMNS if c[0] != "jobs_per_min")


@dataclass(frozen=True)
class RunTask:
    """One run, as plain data that pickles anywhere (no compiled core objects)."""

    run: str
    variant: str
    policy: str
    seed: int
    scenario: Scenario
    base: Scenario
    base_key: str
    #: a preset name, or the YAML text of a policy file and the file's stem (its name when it gives none)
    policy_preset: str
    policy_yaml: str
    policy_stem: str
    workload: str
    days: float | None
    start: date
    interval_s: float
    failures: bool
    sweep: str


@dataclass(frozen=True)
class RunOutput:
    run: str
    files: dict[str, bytes]
    error: str = ""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sweep",
        help="run scenario variants x policies x seeds of the digital twin (locally or on Ray) and compare them",
        description=(
            "Runs every variant x policy x seed of a sweep spec (docs/sweeps.md), each an ordinary simulation "
            "written to OUT/VARIANT.POLICY.seedN/, then writes OUT/sweep.json, OUT/sweep.csv and OUT/report.html "
            "and prints one comparison table. Results are the same whichever executor runs them."
        ),
    )
    p.add_argument("spec", type=Path, metavar="SPEC.yaml", help="the sweep spec (docs/sweeps.md)")
    p.add_argument("--out", type=Path, help="output directory (default: ./sweep-NAME)")
    p.add_argument("--workers", type=int, help="local processes (default: the CPU count; 1 runs in this process)")
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on the Ray cluster at ADDRESS (HOST:PORT of its head, or ray://HOST:10001); needs the ray extra",
    )
    p.add_argument(
        "--max-runs",
        type=int,
        default=sweep.DEFAULT_MAX_RUNS,
        help=f"refuse sweeps of more runs than this (default {sweep.DEFAULT_MAX_RUNS:,})",
    )
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("--json", action="store_true", help="print sweep.json instead of the table")
    p.set_defaults(handler=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: must be >= 1, got {args.workers}")
    if args.max_runs < 1:
        raise UsageError(f"--max-runs: must be >= 1, got {args.max_runs}")
    if args.ray is not None and args.workers is not None:
        raise UsageError("--workers applies to local processes; with --ray the cluster's CPUs decide (drop one)")
    spec = sweep.read_spec(args.spec)
    if spec.runs > args.max_runs:
        raise UsageError(
            f"{args.spec}: {len(spec.variants)} variants x {len(spec.policies)} policies x {len(spec.seeds)} seeds "
            f"= {spec.runs:,} runs, more than --max-runs {args.max_runs:,} (fix: trim the spec, or pass "
            f"--max-runs {spec.runs} if you mean it)"
        )
    tasks = plan(spec)
    out: Path = args.out if args.out is not None else Path(f"sweep-{spec.name}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory")
    err = Console(stderr=True)
    t0 = time.perf_counter()
    if args.ray is not None:
        from kfabric.cli.sweep_ray import run_on_ray  # Ray is optional and heavy: imported only when asked for

        outputs = run_on_ray(args.ray, tasks, work)
        executor: dict[str, Any] = {"kind": "ray", "address": args.ray}
    else:
        workers = min(args.workers or os.cpu_count() or 1, len(tasks))
        outputs = run_local(tasks, workers)
        executor = {"kind": "local", "workers": workers}
    out.mkdir(parents=True, exist_ok=True)  # after the executor is ready: a refused sweep writes nothing
    records = collect(tasks, outputs, out, err)
    executor["wall_s"] = time.perf_counter() - t0
    doc = sweep.sweep_document(spec, records, executor)
    sweep.write_atomic(out / "sweep.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
    sweep.write_atomic(out / "sweep.csv", sweep.sweep_csv(records))
    report = None if args.no_report else write_sweep_report(spec, records, out, err)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    stdout_console().print(comparison_table(spec, doc["table"]))
    where = f"{len(records)} runs under {out}/, sweep.json, sweep.csv"
    stdout_console().print(where + (f", {report.name}" if report is not None else ""))
    return 0


def plan(spec: sweep.SweepSpec) -> list[RunTask]:
    """Every run of the spec, seeds outermost (a process then reuses the workload it loaded for a seed)."""
    base = load_scenario(spec.base.fleet)
    scenarios = [sweep.apply_variant(base, v, spec, i) for i, v in enumerate(spec.variants)]
    policies: list[tuple[Policy, str, str, str]] = []
    for i, ref in enumerate(spec.policies):
        policy = load_policy(ref)
        preset, text, stem = (
            (ref, "", "") if ref in PRESETS else ("", Path(ref).read_text(encoding="utf-8"), Path(ref).stem)
        )
        if not sweep.NAME_RE.match(policy.name):
            raise spec.fail(
                f"policies[{i}]",
                f"the policy's name {policy.name!r} cannot name a run directory",
                f"name it with {sweep.NAME_RULE} (name: in its file)",
            )
        policies.append((policy, preset, text, stem))
    names = [p[0].name for p in policies]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise spec.fail(f"policies[{i}]", f"two policies share the name {n!r}", "give each policy file a name:")
    start = spec.base.start or default_start(base)
    base_key = hashlib.sha256(repr(base).encode()).hexdigest()
    tasks = []
    for seed in spec.seeds:
        for variant, scenario in zip(spec.variants, scenarios, strict=True):
            for policy, preset, text, stem in policies:
                tasks.append(
                    RunTask(
                        run=sweep.run_name(variant.name, policy.name, seed),
                        variant=variant.name,
                        policy=policy.name,
                        seed=seed,
                        scenario=scenario,
                        base=base,
                        base_key=base_key,
                        policy_preset=preset,
                        policy_yaml=text,
                        policy_stem=stem,
                        workload=spec.base.workload,
                        days=spec.base.days,
                        start=start,
                        interval_s=spec.base.interval_s,
                        failures=spec.base.failures,
                        sweep=spec.name,
                    )
                )
    return tasks


# ---- one run, wherever it executes -------------------------------------------------------------------------------
_WORKLOADS: dict[tuple[str, str, float | None, int], Workload] = {}


def _workload(task: RunTask) -> Workload:
    """The run's workload, generated from the base scenario (every variant meets the same demand); a process
    keeps the last two it loaded (runs are planned seed by seed)."""
    from kfabric.traces.sources import load_workload

    key = (task.base_key, task.workload, task.days, task.seed)
    if key not in _WORKLOADS:
        while len(_WORKLOADS) >= 2:
            _WORKLOADS.pop(next(iter(_WORKLOADS)))
        _WORKLOADS[key] = load_workload(task.workload, task.base, task.days, task.seed)
    return _WORKLOADS[key]


def _policy(task: RunTask) -> Policy:
    if task.policy_preset:
        return load_policy(task.policy_preset)
    with tempfile.TemporaryDirectory(prefix="kfabric-policy-") as tmp:
        path = Path(tmp) / f"{task.policy_stem}.yaml"
        path.write_text(task.policy_yaml, encoding="utf-8")
        return load_policy(str(path))


def work(task: RunTask) -> RunOutput:
    """Run one task; errors come back as text (exceptions with custom arguments do not cross processes)."""
    try:
        options = sweep.sim_options(task.start, task.days, task.interval_s, task.failures, task.seed)
        info = {"variant": task.variant, "sweep": task.sweep}
        files = sweep.run_files(task.scenario, _workload(task), _policy(task), options, info)
        return RunOutput(task.run, files)
    except Exception as exc:  # reported by the caller with the run's name
        last = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return RunOutput(task.run, {}, str(exc) if str(exc) in last else f"{exc} ({last})")


# ---- executors -------------------------------------------------------------------------------------------------
def run_local(tasks: list[RunTask], workers: int) -> Iterator[RunOutput]:
    """In this process (``workers`` = 1), else in ``workers`` forked processes; outputs as runs finish."""
    if workers <= 1:
        for task in tasks:
            yield work(task)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
        futures: set[Future[RunOutput]] = {pool.submit(work, t) for t in tasks}
        try:
            while futures:
                done, futures = wait(futures, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            for f in futures:
                f.cancel()


def collect(tasks: list[RunTask], outputs: Iterator[RunOutput], out: Path, err: Console) -> list[sweep.RunRecord]:
    """Write each run directory as its files arrive; the records come back in plan order."""
    failures: dict[str, list[str]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    progress = Progress(
        TextColumn("[bold]sweep[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(), console=err,
    )  # fmt: skip
    with progress:
        bar = progress.add_task("runs", total=len(tasks), last="")
        for output in outputs:
            if output.error:
                failures.setdefault(output.error, []).append(output.run)
            else:
                sweep.write_run_dir(out, output.run, output.files)
                summaries[output.run] = json.loads(output.files["summary.json"])
            progress.update(bar, advance=1, last=output.run)
    if failures:
        lines = [f"{', '.join(runs[:3])}{' ...' if len(runs) > 3 else ''}: {text}" for text, runs in failures.items()]
        raise UsageError(f"{sum(map(len, failures.values()))} of {len(tasks)} runs failed: " + "; ".join(lines))
    missing = [t.run for t in tasks if t.run not in summaries]
    if missing:
        raise UsageError(f"{len(missing)} runs returned nothing (first: {missing[0]}); run the sweep again")
    return [sweep.RunRecord(t.run, t.variant, t.policy, t.seed, summaries[t.run]) for t in tasks]


# ---- output ------------------------------------------------------------------------------------------------------
def comparison_table(spec: sweep.SweepSpec, rows: list[dict[str, Any]]) -> Table:
    seeds = len(spec.seeds)
    fleet = Path(spec.base.fleet).name if "/" in spec.base.fleet else spec.base.fleet
    title = f"sweep {spec.name}: {spec.base.workload} on {fleet}"
    title += f", mean over {seeds} seeds (per-seed values in sweep.csv)" if seeds > 1 else f", seed {spec.seeds[0]}"
    table = Table(title=title)
    table.add_column("variant")
    table.add_column("policy")
    for _, label, _fmt in TABLE_COLUMNS:
        table.add_column(label, justify="right")
    previous = ""
    for row in rows:
        mean: dict[str, float] = row["mean"]
        variant = row["variant"] if row["variant"] != previous else ""
        table.add_row(
            variant,
            row["policy"],
            *[fmt(mean[key]) if key in mean else "–" for key, _, fmt in TABLE_COLUMNS],
            end_section=False,
        )
        previous = row["variant"]
    return table


def write_sweep_report(spec: sweep.SweepSpec, records: list[sweep.RunRecord], out: Path, err: Console) -> Path | None:
    """The HTML report over the first seed's runs (every variant x policy), when there are not too many."""
    from kfabric.report.html import write_report  # plotly is imported only when a report is made

    first = [r for r in records if r.seed == spec.seeds[0]]
    if len(first) > MAX_REPORT_RUNS:
        err.print(
            f"report: {len(first)} runs per seed are more than {MAX_REPORT_RUNS}; no report.html "
            f"(make one over the runs you want: kfabric report {out}/RUN ...)"
        )
        return None
    return write_report([out / r.run for r in first], out / "report.html")
