"""What pausing the cyclic garbage collector buys the job list (``GET /v1/jobs``), by page size: the CPU of
building one page (``job_queries.page_json``: decoding the JSON columns, the public fields, the encoding) with the
collector on and paused, and the collections it runs meanwhile. ``job_queries.pause_pays`` picks its threshold
from these figures.

    .venv/bin/python benchmarks/bench_list_gc_pause.py                  # 20,000 jobs, 15 runs per case
    .venv/bin/python benchmarks/bench_list_gc_pause.py --runs 31 --sizes 100,1000,10000

The process holds what a server holds (a runtime on the local fleet and the API app, as
``bench_queue_print.py`` builds them) and the jobs that benchmark writes. Run by hand; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_queue_print import _fill, local_runtime  # the same store as the queue benchmark


def _collections() -> tuple[list[int], Any]:
    counts = [0, 0, 0]

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            counts[info["generation"]] += 1

    return counts, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--sizes", default="30,100,300,1000,3000,10000")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="kfabric-bench-gc-"))
    os.environ.setdefault("KFABRIC_AUDIT_KEY_FILE", str(tmp / "audit.key"))
    from kfabric.api.app import create_app
    from kfabric.service import job_queries
    from kfabric.service.actors import Actor, Role

    rt = local_runtime(tmp)
    try:
        app = create_app(rt)  # noqa: F841 - held, as a server holds it
        _fill(rt, args.jobs)
        operator = Actor(0, "bench", Role.OPERATOR)
        names = rt.controller.node_names
        print(f"{args.jobs:,} jobs; {len(gc.get_objects()):,} objects tracked by the collector; "
              f"thresholds {gc.get_threshold()}")  # fmt: skip
        print(f"{'rows':>6} {'CPU on ms':>10} {'CPU paused ms':>14} {'saved':>6}  collections on, mean (gen 0/1/2)")
        for size in sizes:
            on, off, runs = [], [], []
            for i in range(args.runs):
                for paused in (i % 2 == 0, i % 2 == 1):  # interleaved, alternating which goes first
                    rows = job_queries.list_rows(rt.sessions, operator, limit=size)
                    counts, count = _collections()
                    gc.callbacks.append(count)
                    if paused:
                        gc.disable()
                    t0 = time.process_time()
                    job_queries.page_json(rows, names)
                    spent = time.process_time() - t0
                    gc.enable()
                    gc.callbacks.remove(count)
                    (off if paused else on).append(spent)
                    if not paused:
                        runs.append(counts)
            a, b = statistics.median(on) * 1e3, statistics.median(off) * 1e3
            seen = "/".join(f"{statistics.mean(c[g] for c in runs):.1f}" for g in range(3))
            print(f"{size:>6} {a:>10.2f} {b:>14.2f} {(a - b) / a:>6.0%}  {seen}")
        print(f"(medians of {args.runs} runs each; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    finally:
        rt.close()


if __name__ == "__main__":
    sys.exit(main())
