"""The controller's tick with a 10,000-task array pending, next to the same tick without it (issue 19).

    .venv/bin/python benchmarks/bench_array_cycle.py                 # SQLite, lab fleet, sim backend
    .venv/bin/python benchmarks/bench_array_cycle.py --tasks 10000 --background 500 --ticks 20 --json

A runtime on the lab fleet (sim backend, fake clock) gets ``--background`` one-GPU jobs that keep the fleet busy
and a queue of the same size behind them. Then, for each case, ``--ticks`` controller ticks are timed (the whole
tick: reconcile, the store sync with the eligibility gate, the cycle, the decision's transaction, dispatch):

* ``baseline``: no array;
* ``capped``: a ``--tasks``-task array with ``%10`` pending (the gate keeps all but 10 out of the cycle);
* ``uncapped``: the same array without a cap (every task is in the cycle's queue, as in Slurm);
* ``held``: the same array submitted ``--hold`` (the gate keeps every task out).

Each case runs on a fresh store. Reported per case: the array's submission (one request, one transaction), the
first tick after it (which writes the waiting tasks' reasons), and the median and max of the following ticks.
Run by hand; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from kfabric.backends.sim import SimBackend
from kfabric.scenarios.policies import load_policy
from kfabric.service import jobs
from kfabric.service.auth import actor_for, authenticate
from kfabric.service.runtime import open_runtime
from kfabric.store import tables as t

START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def run_case(case: str, tasks: int, background: int, ticks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        rt = open_runtime(f"sqlite:///{Path(tmp) / 'k.db'}", load_policy("kfabric"), {"sim": SimBackend(clock)},
                          fleet="lab", clock=clock, audit_key_file=Path(tmp) / "audit.key")  # fmt: skip
        try:
            with rt.sessions() as s:
                token = rt.bootstrap_token
                op = authenticate(s, token) if token else actor_for(s, s.scalars(select(t.User)).first())
            long_job = {"gpus": 1, "time_limit_s": 86_400.0, "runtime_estimate_s": 80_000.0}
            for _ in range(2 * background):
                jobs.submit(rt.sessions, op, "vision-lab", long_job, clock())
            for _ in range(3):  # the fleet fills up; the rest waits
                rt.controller.tick()
                clock.now += 30
            out: dict[str, Any] = {"case": case}
            if case != "baseline":
                spec = {"gpus": 1, "time_limit_s": 3600.0, "runtime_estimate_s": 600.0,
                        "array": f"0-{tasks - 1}" + ("%10" if case == "capped" else "")}  # fmt: skip
                if case == "held":
                    spec["hold"] = True
                t0 = time.perf_counter()
                jobs.submit(rt.sessions, op, "vision-lab", spec, clock())
                out["submit_ms"] = round((time.perf_counter() - t0) * 1000, 1)
                t0 = time.perf_counter()
                rt.controller.tick()
                clock.now += 30
                out["first_tick_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            times, cycles = [], []
            for _ in range(ticks):
                t0 = time.perf_counter()
                rep = rt.controller.tick()
                times.append((time.perf_counter() - t0) * 1000)
                cycles.append(rep.cycle_ms)
                clock.now += 30
            out.update(
                pending_in_cycle=rep.pending,
                tick_median_ms=round(statistics.median(times), 1),
                tick_max_ms=round(max(times), 1),
                cycle_median_ms=round(statistics.median(cycles), 1),
            )
            return out
        finally:
            rt.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--background", type=int, default=300, help="running jobs, and as many pending (default 300)")
    ap.add_argument("--ticks", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = [run_case(c, args.tasks, args.background, args.ticks) for c in ("baseline", "capped", "uncapped", "held")]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"controller tick, lab fleet, sim backend, SQLite; {args.background} running + {args.background} pending"
          f" background jobs; array of {args.tasks} tasks; {args.ticks} ticks per case")  # fmt: skip
    print(f"{'case':<10} {'submit ms':>10} {'1st tick ms':>12} {'tick p50 ms':>12} {'tick max ms':>12} "
          f"{'cycle p50 ms':>13} {'in cycle':>9}")  # fmt: skip
    for r in results:
        print(f"{r['case']:<10} {r.get('submit_ms', '-'):>10} {r.get('first_tick_ms', '-'):>12} "
              f"{r['tick_median_ms']:>12} {r['tick_max_ms']:>12} {r['cycle_median_ms']:>13} "
              f"{r['pending_in_cycle']:>9}")  # fmt: skip


if __name__ == "__main__":
    main()
