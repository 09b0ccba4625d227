"""What the expected starts (``sched.expected_start``) add to a scheduling cycle, on the cycle benchmark's national
fleet and queue (``kfabric bench cycle``'s state: korea-2030, running work placed first, then the queue).

    .venv/bin/python benchmarks/bench_expected_start.py                      # 10,000 pending, 20,000 running
    .venv/bin/python benchmarks/bench_expected_start.py --pending 50000 --horizon 2000

Per cycle: the ``cycle()`` time and the ``expected_starts()`` time after it, on the same state (the decision
is applied between cycles as the benchmark of the cycle does). Printed: medians and maxima, and how many pending
jobs got a time, a "beyond the planning horizon" why, or another why. Run by hand; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

from kfabric.bench.cycle import build_state
from kfabric.scenarios.loader import load_scenario
from kfabric.sched.cycle import cycle
from kfabric.sched.expected_start import DEFAULT_HORIZON, expected_starts
from kfabric.sched.presets import PRESETS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleet", default="korea-2030")
    ap.add_argument("--pending", type=int, default=10_000)
    ap.add_argument("--running", type=int, default=20_000)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--horizon", type=int, default=DEFAULT_HORIZON)
    args = ap.parse_args()
    policy = PRESETS["kfabric"]
    snap, q, maker = build_state(load_scenario(args.fleet), args.pending, args.running, seed=42)
    now = 0.0
    cycle_ms, estimate_ms = [], []
    counts = {"time": 0, "horizon": 0, "other why": 0}
    for _ in range(args.cycles):
        t0 = time.perf_counter()
        decision = cycle(snap, q, policy, now)
        t1 = time.perf_counter()
        got = expected_starts(snap, q, decision, now, horizon=args.horizon)
        t2 = time.perf_counter()
        cycle_ms.append((t1 - t0) * 1000)
        estimate_ms.append((t2 - t1) * 1000)
        counts = {"time": 0, "horizon": 0, "other why": 0}
        for e in got.values():
            counts["time" if e.start_s is not None else "horizon" if "horizon" in e.why else "other why"] += 1
        for victim in decision.preemptions:
            snap.finish(victim.job_id)
        for adm in decision.admissions:
            snap.start(q.remove(adm.job_id), adm.placement, now, adm.borrowed)
        while len(q) < args.pending:
            q.add(maker.make(now))
        now += 30.0
    print(f"{args.fleet}: {args.pending:,} pending, {len(snap.running):,} running, horizon {args.horizon:,}")
    print(f"cycle()            median {statistics.median(cycle_ms):8.1f} ms   max {max(cycle_ms):8.1f} ms")
    print(f"expected_starts()  median {statistics.median(estimate_ms):8.1f} ms   max {max(estimate_ms):8.1f} ms")
    print(f"last cycle's pending jobs: {counts['time']:,} with a time, {counts['horizon']:,} beyond the horizon, "
          f"{counts['other why']:,} with another why")  # fmt: skip


if __name__ == "__main__":
    main()
