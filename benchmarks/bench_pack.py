"""GPU-sharing packing benchmark: the FGD paper's protocol (Weng et al., USENIX ATC'23) for every policy.

    .venv/bin/python benchmarks/bench_pack.py                      # all policies, seeds 42-51, ratio 1.3
    .venv/bin/python benchmarks/bench_pack.py --policy fgd,kfabric --seeds 42-43 --json

Published at 130% arrived demand (mean of seeds 42-51): FGD 95.39%, BestFit 93.08%, GpuPacking 92.00%,
GpuClustering 91.88%, DotProd 90.85%, Random 87.47%.  Run by hand; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kfabric.bench.pack import format_table, parse_seeds, run_pack
from kfabric.sched.packing import POLICIES

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "alibaba-openb-2023" / "csv"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=Path, default=TRACES / "openb_node_list_all_node.csv")
    ap.add_argument("--pods", type=Path, default=TRACES / "openb_pod_list_default.csv")
    ap.add_argument("--ratio", type=float, default=1.3)
    ap.add_argument("--seeds", default="42-51")
    ap.add_argument("--policy", default=",".join(POLICIES), help="comma-separated policy names")
    ap.add_argument("--json", action="store_true", help="print the result dict as JSON")
    args = ap.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        policies = [p.strip() for p in args.policy.split(",") if p.strip()]
        result = run_pack(args.nodes, args.pods, args.ratio, seeds, policies)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
