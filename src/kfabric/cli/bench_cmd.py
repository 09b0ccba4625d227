"""``kfabric bench ...``: the benchmark commands. Their flags and JSON keys are contracts: keep them stable."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kfabric.bench.cycle import run_cycle_bench
from kfabric.bench.pack import format_table, parse_seeds, run_pack
from kfabric.bench.philly import KEYS, run_philly
from kfabric.bench.simspeed import run_sim_speed
from kfabric.cli.console import stdout_console
from kfabric.cli.errors import UsageError
from kfabric.scenarios.loader import load_scenario

_TRACES = Path(__file__).resolve().parents[3].parent / "shared" / "traces" / "alibaba-openb-2023" / "csv"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="run a benchmark and print its figures")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH")

    def bench_help(_args: argparse.Namespace) -> int:
        bench.print_help()
        return 2

    bench.set_defaults(handler=bench_help)

    pack = bench_sub.add_parser(
        "pack",
        help="GPU allocation ratio under the FGD paper's packing protocol (Alibaba openb trace)",
        description="Runs the FGD paper's protocol (see ../shared/traces/README.md) per placement policy.",
    )
    pack.add_argument("--nodes", type=Path, default=_TRACES / "openb_node_list_all_node.csv", metavar="CSV")
    pack.add_argument("--pods", type=Path, default=_TRACES / "openb_pod_list_default.csv", metavar="CSV")
    pack.add_argument("--ratio", type=float, default=1.3, help="arrived demand / capacity (default 1.3)")
    pack.add_argument("--seeds", default="42-51", help="e.g. 42-51 or 1,2,3 (default 42-51)")
    pack.add_argument("--policy", default="fgd,best-fit,first-fit,kfabric", help="comma-separated policies")
    pack.add_argument("--json", action="store_true", help="print JSON")
    pack.set_defaults(handler=_pack)

    cyc = bench_sub.add_parser(
        "cycle",
        help="scheduling-cycle time on a national fleet with a large queue",
        description="Median and p95 time of sched.cycle() on a fleet with many pending and running jobs.",
    )
    cyc.add_argument("--fleet", default="korea-2030", help="scenario name or YAML path (default korea-2030)")
    cyc.add_argument("--pending", type=int, default=100_000)
    cyc.add_argument("--running", type=int, default=50_000)
    cyc.add_argument("--cycles", type=int, default=20)
    cyc.add_argument("--seed", type=int, default=42)
    cyc.add_argument("--json", action="store_true", help="print JSON")
    cyc.set_defaults(handler=_cycle)

    philly = bench_sub.add_parser(
        "philly",
        help="Philly-derived protocol: JCT and waits of fifo, sjf-oracle, qssf, las, multifactor, kfabric",
        description="Replays all 15 Gavel/Philly VC traces on 64 x 8 V100 under each policy (docs/benchmarks.md).",
    )
    philly.add_argument("--traces", help="directory of Gavel *.trace files (default: ../shared/traces/...)")
    philly.add_argument("--seed", type=int, default=0, help="seed of the time-limit over-estimates")
    philly.add_argument("--out", type=Path, help="also write each run (jobs.csv, timeline.csv, summary.json) here")
    philly.add_argument("--json", action="store_true", help="print JSON")
    philly.set_defaults(handler=_philly)

    sim = bench_sub.add_parser(
        "sim",
        help="simulator speed: synthetic national jobs replayed per minute on korea-2030",
        description="Replays N synthetic national jobs on korea-2030 with the default policy.",
    )
    sim.add_argument("--jobs", type=int, default=1_000_000)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--interval",
        type=float,
        default=60.0,
        help="minimum seconds between scheduling cycles (default 60, as `kfabric simulate`; the main job uses 300)",
    )
    sim.add_argument("--json", action="store_true", help="print JSON")
    sim.set_defaults(handler=_sim)


def _pack(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in str(args.policy).split(",") if p.strip()]
    if not policies:
        raise UsageError("--policy: give at least one placement policy, e.g. --policy fgd,kfabric")
    result = run_pack(args.nodes, args.pods, args.ratio, parse_seeds(args.seeds), policies)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def _print_figures(title: str, result: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int | float) else str(value))
    stdout_console().print(table)


def _philly(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    result = run_philly(args.traces, seed=args.seed, out_dir=args.out, progress=lambda n: err.print(f"running {n}..."))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = Table(title=f"Philly-derived protocol: {result['jobs']:,} jobs on 64 x 8 V100 ({result['seconds']} s)")
    table.add_column("policy")
    for key in KEYS:
        table.add_column(key, justify="right")
    policies: dict[str, dict[str, float]] = result["policies"]
    for name, figures in policies.items():
        table.add_row(name, *[f"{figures[k]:.3f}" if k == "utilization" else f"{figures[k]:,.0f}" for k in KEYS])
    stdout_console().print(table)
    return 0


def _sim(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise UsageError(f"--jobs: must be >= 1, got {args.jobs}")
    if not args.interval > 0:
        raise UsageError(f"--interval: must be > 0 seconds, got {args.interval}")
    with Console(stderr=True).status(f"replaying {args.jobs:,} synthetic national jobs on korea-2030"):
        result = run_sim_speed(args.jobs, seed=args.seed, interval_s=args.interval)
    _print_figures("simulator speed on korea-2030", result, args.json)
    return 0


def _cycle(args: argparse.Namespace) -> int:
    for flag in ("pending", "running", "cycles"):
        if getattr(args, flag) < (1 if flag == "cycles" else 0):
            raise UsageError(f"--{flag}: must be a positive number, got {getattr(args, flag)}")
    scenario = load_scenario(args.fleet)
    console = Console(stderr=True)
    with console.status(f"building state: {args.running:,} running, {args.pending:,} pending on {scenario.name}"):
        result = run_cycle_bench(scenario, args.pending, args.running, args.cycles, seed=args.seed)
    _print_figures(f"sched.cycle() on {scenario.name}", result, args.json)
    return 0
