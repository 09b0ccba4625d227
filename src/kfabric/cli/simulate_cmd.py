"""``kfabric simulate``: replay a workload on a fleet under one or more policies (one run each)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kfabric.cli.console import stdout_console
from kfabric.cli.errors import UsageError
from kfabric.cli.sim_runs import run_policies
from kfabric.report.tables import fmt_duration
from kfabric.scenarios.loader import Scenario, load_scenario, load_text
from kfabric.scenarios.policies import load_policy
from kfabric.sched.policy import Policy
from kfabric.service.runtime import open_store, stored_fleet
from kfabric.sim.engine import SimOptions
from kfabric.sim.metrics import SIZE_CLASSES
from kfabric.sim.run import default_start
from kfabric.traces.sources import load_workload


def _pct(v: float) -> str:
    return f"{v:.1%}"


def _count(v: float) -> str:
    return f"{v:,.0f}"


def _ratio(v: float) -> str:
    return f"{v:.3f}"


#: the comparison table: waits and slowdown are over every submitted job (never-started ones censored at the
#: window's end), JCT over finished jobs (docs/metrics.md)
SUMMARY_COLUMNS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("utilization", "util", _pct),
    ("avg_jct_s", "avg JCT", fmt_duration),
    ("p99_jct_s", "p99 JCT", fmt_duration),
    ("avg_wait_s", "avg wait", fmt_duration),
    ("p999_wait_s", "p99.9 wait", fmt_duration),
    ("max_wait_s", "max wait", fmt_duration),
    ("jobs_never_started", "unstarted", _count),
    ("jobs_rejected", "rejected", _count),
    ("avg_bounded_slowdown", "slowdown", _ratio),
    ("jain_demand", "Jain dem.", _ratio),
    ("jain_entitlement", "Jain ent.", _ratio),
    ("jobs_finished", "done", _count),
    ("jobs_per_min", "jobs/min", _count),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="replay a workload on a fleet under one or more policies (the digital twin)",
        description="Replay a workload on a fleet; one run per --policy, written to OUT/<policy>/.",
    )
    p.add_argument(
        "--fleet",
        required=True,
        help="scenario: korea-2030, lab, openb[:CSV], a YAML file, or store:DB_URL (the fleet a service runs)",
    )
    p.add_argument(
        "--workload",
        required=True,
        help="national[:scale=X], philly[:DIR], openb[:PODS_CSV], tiresias[:CSV], history:DB_URL[,since=DATE]",
    )
    p.add_argument("--days", type=float, help="simulated days (arrivals after this are dropped)")
    p.add_argument("--policy", action="append", required=True, help="preset name or policy YAML; repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", help="calendar date of t=0, YYYY-MM-DD (default: when the whole fleet is online)")
    p.add_argument("--interval", type=float, default=60.0, help="minimum seconds between scheduling cycles")
    p.add_argument("--no-failures", action="store_true", help="disable node failures")
    p.add_argument("--out", type=Path, required=True, help="output directory (one sub-directory per policy)")
    p.add_argument("--jobs", type=int, help="runs in parallel (default: one per policy, up to the CPU count)")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")
    p.set_defaults(handler=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    if args.days is not None and args.days <= 0:
        raise UsageError(f"--days: must be > 0, got {args.days}")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs: must be >= 1, got {args.jobs}")
    if args.interval <= 0:
        raise UsageError(f"--interval: must be > 0 seconds, got {args.interval}")
    policies: list[Policy] = [load_policy(p) for p in args.policy]
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise UsageError(f"--policy: two policies share a name ({', '.join(names)}); give each file a unique name")
    scenario = stored_scenario(args.fleet.removeprefix("store:")) if args.fleet.startswith("store:") else None
    scenario = scenario or load_scenario(args.fleet)
    start = default_start(scenario)
    if args.start:
        try:
            start = date.fromisoformat(args.start)
        except ValueError:
            raise UsageError(f"--start: expected YYYY-MM-DD, got {args.start!r}") from None
    err = Console(stderr=True)
    with err.status(f"loading workload {args.workload}"):
        workload = load_workload(args.workload, scenario, args.days, args.seed)
    options = SimOptions(
        start=start,
        days=args.days,
        interval_s=args.interval,
        seed=args.seed,
        failures_per_gpu_s=0.0 if args.no_failures else SimOptions(start=start).failures_per_gpu_s,
    )
    horizon = (args.days or max((j.job.submit_s for j in workload.jobs), default=0.0) / 86_400.0) * 86_400.0
    workers = args.jobs if args.jobs is not None else min(len(policies), os.cpu_count() or 1)
    summaries = run_policies(scenario, workload, policies, options, args.out, horizon, err, workers)
    if args.json:
        print(json.dumps({"runs": {n: _without_tenants(s) for n, s in summaries.items()}}, indent=2))
        return 0
    table = Table(title=f"{workload.name} on {scenario.name}: {len(workload.jobs):,} jobs, seed {args.seed}")
    table.add_column("policy")
    for _, label, _fmt in SUMMARY_COLUMNS:
        table.add_column(label, justify="right")
    for name, s in summaries.items():
        table.add_row(name, *[fmt(s[key]) for key, _, fmt in SUMMARY_COLUMNS])
    stdout_console().print(table)
    stdout_console().print(breakdown_table(summaries))
    stdout_console().print(f"runs written under {args.out}/ ({', '.join(summaries)})")
    return 0


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _section(summaries: dict[str, dict[str, Any]], key: str) -> list[str]:
    """The keys of a per-name mapping (e.g. ``gpu_hours_by_owner``) over all runs, sorted."""
    names: set[str] = set()
    for s in summaries.values():
        value = s.get(key)
        if isinstance(value, dict):
            names.update(str(k) for k in value)
    return sorted(names)


def breakdown_table(summaries: dict[str, dict[str, Any]]) -> Table:
    """Where the GPU-hours went and who waited, one column per policy: the largest jobs' waits and starvation,
    waits by size class, delivered GPU-hours by owner and program, lent capacity, preemption cost, rejections."""
    names = list(summaries)
    table = Table(title="who waited and where the GPU-hours went (waits over all submitted jobs, censored)")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")

    def row(label: str, cells: list[str], end_section: bool = False) -> None:
        table.add_row(label, *cells, end_section=end_section)

    sizes = [c for c in SIZE_CLASSES if any(c in (s.get("wait_by_size") or {}) for s in summaries.values())]
    for i, cls in enumerate(sizes):
        stats = [(s.get("wait_by_size") or {}).get(cls, {}) for s in summaries.values()]
        cells = [
            f"{fmt_duration(_num(st.get('max_wait_s')))} · {_count(_num(st.get('never_started')))}/"
            f"{_count(_num(st.get('jobs')))}"
            for st in stats
        ]
        row(f"{cls} GPUs: max wait · never started/jobs", cells, end_section=i == len(sizes) - 1)
    for key, label, unit in (
        ("gpu_hours_by_owner", "owner", "GPU-h"),
        ("gpu_hours_by_program", "program", "GPU-h"),
        ("lent_gpu_hours_by_owner", "lent by", "GPU-h"),
    ):
        keys = _section(summaries, key)
        for i, k in enumerate(keys):
            cells = [_count(_num((s.get(key) or {}).get(k))) for s in summaries.values()]
            row(f"{label} {k} ({unit})", cells, end_section=i == len(keys) - 1)
    row("preemptions · lost GPU-h", [
        f"{_count(_num(s.get('preemptions')))} · {_count(_num(s.get('lost_gpu_hours')))}" for s in summaries.values()
    ])  # fmt: skip
    for key, label in (("rejected_by_reason", "rejected"), ("never_started_by_reason", "never started")):
        for k in _section(summaries, key):
            row(f"{label}: {k}", [_count(_num((s.get(key) or {}).get(k))) for s in summaries.values()])
    return table


def _without_tenants(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "tenants"}


def stored_scenario(db_url: str) -> Scenario:
    """The fleet a kfabric service stores (``--fleet store:DB_URL``), to replay its history on."""
    engine, sessions = open_store(db_url)
    try:
        stored = stored_fleet(sessions)
    finally:
        engine.dispose()
    if stored is None:
        raise UsageError(f"--fleet store:{db_url}: that store holds no fleet (has `kfabric serve` run on it?)")
    return load_text(stored[1], f"stored fleet {stored[0]!r}")
