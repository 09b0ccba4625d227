"""End-to-end dispatch throughput from kfabric's controller to a real private Slurm 22.05 cluster.

    .venv/bin/python benchmarks/bench_slurm_dispatch.py                            # 200 jobs, 8 nodes x 8 GPUs
    .venv/bin/python benchmarks/bench_slurm_dispatch.py --jobs 500 --nodes 4 --json

One private cluster is started with the Slurm tests' helpers (tests/backends/slurm/slurm_lab.py: needs root and
slurmctld/slurmd/munge installed), seeded as a one-cluster fleet from its discovered pools, and driven by the
controller (`rt.controller.tick()` in a tight loop, as the live service's loop does with its interval). Each job
is `true` on 1 GPU (time limit 120 s), submitted with `kfabric.service.jobs.submit` before the first tick.

Reported: jobs handed to Slurm per second (jobs / time until every job is launched, i.e. sbatch accepted it),
jobs started per second (jobs / time until every job has a start time), seconds until all are final,
kfabric's scheduling overhead per job (wall time of the controller's schedule phase: store sync, the policy's
cycle and applying its decision; the pure cycle_ms sum is shown too), sbatch ms per job (wall time in the
backend's launch / jobs) and ms per backend poll. Slurm's own scheduler interval and the 2-core CI box's load
dominate the start rate. Run by hand; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "backends" / "slurm"))
sys.path.insert(0, str(REPO / "tests"))

from slurm_lab import SlurmLab, one_cluster_fleet, port_base, start_lab, stop_lab  # noqa: E402

from kfabric.backends.base import LaunchSpec, NodeGpus  # noqa: E402
from kfabric.backends.identity import account_for  # noqa: E402
from kfabric.backends.slurm import SlurmBackend  # noqa: E402
from kfabric.backends.slurm.discover import discover  # noqa: E402
from kfabric.backends.slurm.submit import sbatch_request  # noqa: E402
from kfabric.scenarios.policies import load_policy  # noqa: E402
from kfabric.service import jobs  # noqa: E402
from kfabric.service.auth import authenticate  # noqa: E402
from kfabric.service.runtime import open_runtime  # noqa: E402
from kfabric.store import tables as t  # noqa: E402
from posix_accounts import IS_ROOT, JOB_ACCOUNT, create_account, delete_account, map_users  # noqa: E402

FINAL = {"succeeded", "failed", "cancelled", "timeout"}
LAUNCHED_OR_LATER = {"running"} | FINAL
PROJECT = "bench"


class Timer:
    """Wraps a callable, summing its wall time and counting its calls."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.total_s, self.calls = fn, 0.0, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.total_s += time.perf_counter() - t0
            self.calls += 1


@contextlib.contextmanager
def private_lab(n_nodes: int) -> Iterator[SlurmLab]:
    """One private Slurm cluster of ``n_nodes`` nodes (and, as root, the throwaway account jobs run as), removed at
    the end."""
    root = Path(tempfile.mkdtemp(prefix="kfabric-bench-slurm-", dir="/tmp"))
    root.chmod(0o755)  # munged needs every parent of its socket world-executable
    lab: SlurmLab | None = None
    if IS_ROOT:
        create_account(JOB_ACCOUNT)  # jobs run as a throwaway account, never as root
    try:
        lab = start_lab("bench", n_nodes, port_base(set()), root)
        yield lab
    finally:
        if lab is not None:
            stop_lab(lab)
        shutil.rmtree(root, ignore_errors=True)
        if IS_ROOT:
            delete_account(JOB_ACCOUNT)


def run(n_jobs: int, n_nodes: int, timeout_s: float, overrides: dict[str, Any]) -> dict[str, Any]:
    with private_lab(n_nodes) as lab:
        backend = SlurmBackend(dataclasses.replace(lab.config, **overrides))
        launch, poll, read = Timer(backend.launch_many), Timer(backend.poll), Timer(backend._refresh)
        backend.launch_many, backend.poll, backend._refresh = launch, poll, read  # type: ignore[method-assign]
        rt = open_runtime(
            f"sqlite:///{lab.dir.parent}/k.db",
            load_policy("kfabric"),
            {lab.name: backend},
            fleet_document=one_cluster_fleet(lab, "bench-slurm", PROJECT, 1e9),
            audit_key_file=lab.dir.parent / "audit.key",
        )
        try:
            schedule = Timer(rt.controller.schedule)
            rt.controller.schedule = schedule  # type: ignore[method-assign]
            with rt.sessions() as s:
                op = authenticate(s, rt.bootstrap_token)
            map_users(rt.sessions, JOB_ACCOUNT)
            spec = {"gpus": 1, "time_limit_s": 120.0, "command": "true"}
            for i in range(n_jobs):
                jobs.submit(rt.sessions, op, PROJECT, {**spec, "name": f"b-{i}"}, time.time())
            cycle_ms, ticks = 0.0, 0
            t_launched = t_started = t_final = None
            t0 = time.perf_counter()
            while t_final is None:
                if time.perf_counter() - t0 > timeout_s:
                    raise TimeoutError(f"not all {n_jobs} jobs final after {timeout_s:g} s")
                rep = rt.controller.tick()
                cycle_ms += rep.cycle_ms
                ticks += 1
                now = time.perf_counter() - t0
                with rt.sessions() as s:
                    rows = s.execute(select(t.Job.state, t.Job.launched, t.Job.started_at_s)).all()
                if t_launched is None and all(
                    st in LAUNCHED_OR_LATER or (st == "admitted" and la) for st, la, _ in rows
                ):
                    t_launched = now
                if t_started is None and all(started is not None for _, _, started in rows):
                    t_started = now
                if all(st in FINAL for st, _, _ in rows):
                    t_final = now
                    states = sorted({st for st, _, _ in rows})
                if t_final is None:
                    time.sleep(0.01)
            lat = latencies(rt)
        finally:
            rt.close()
    assert t_launched is not None and t_started is not None
    return {
        "jobs": n_jobs,
        "nodes": n_nodes,
        "launch_jobs_per_s": n_jobs / t_launched,
        "start_jobs_per_s": n_jobs / t_started,
        "all_final_s": t_final,
        "sched_overhead_ms_per_job": schedule.total_s * 1000 / n_jobs,
        "cycle_ms_per_job": cycle_ms / n_jobs,
        "sbatch_ms_per_job": launch.total_s * 1000 / n_jobs,
        "poll_ms_per_call": poll.total_s * 1000 / max(1, poll.calls),
        "read_ms_per_call": read.total_s * 1000 / max(1, read.calls),
        "ticks": ticks,
        "polls": poll.calls,
        "reads": read.calls,
        "launch_calls": launch.calls,
        "sbatch_calls": backend.cli.calls,
        "submit_parallel": backend.config.submit_parallel,
        "poll_interval_s": backend.config.poll_interval_s,
        "final_states": states,
        **lat,
    }


def latencies(rt: Any) -> dict[str, float]:
    """Where a GPU's turn goes, median seconds over the jobs (wall clock): kfabric's admission → Slurm's start
    (hand-off, sbatch, Slurm's scheduling), Slurm's start → end (the job), and Slurm's end of one job → kfabric's
    admission of the next on the same GPU (Slurm's completion, kfabric's poll, reconcile and cycle)."""
    with rt.sessions() as s:
        rows = s.execute(select(t.Job.admitted_at_s, t.Job.started_at_s, t.Job.ended_at_s, t.Job.placement)).all()
    to_start = [st - ad for ad, st, _, _ in rows if ad is not None and st is not None]
    running = [en - st for _, st, en, _ in rows if st is not None and en is not None]
    by_gpu: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for ad, _, en, placement in rows:
        for node, gpus, *_ in (placement or {}).get("shares", []):
            for gpu in gpus:
                by_gpu.setdefault((node, gpu), []).append((ad, en))
    gaps = []
    for turns in by_gpu.values():
        turns.sort()
        gaps += [nxt[0] - cur[1] for cur, nxt in itertools.pairwise(turns) if cur[1] is not None]
    med = statistics.median
    return {
        "admit_to_start_s": med(to_start) if to_start else float("nan"),
        "start_to_end_s": med(running) if running else float("nan"),
        "end_to_next_admit_s": med(gaps) if gaps else float("nan"),
    }


def raw(n_jobs: int, n_nodes: int, timeout_s: float, overrides: dict[str, Any]) -> dict[str, Any]:
    """Slurm's own ceiling on this machine, without kfabric: the same sbatch arguments the backend writes for a
    1-GPU ``true`` job (without kfabric's node choice: Slurm places them), ``submit_parallel`` sbatch commands in
    flight, then ``squeue`` read until every job has started and every job has ended."""
    with private_lab(n_nodes) as lab:
        backend = SlurmBackend(dataclasses.replace(lab.config, **overrides))
        account = account_for("bench", JOB_ACCOUNT)
        first_node = discover(lab.config, online=date(2020, 1, 1)).pools[0]["node_names"][0]
        requests = []
        for i in range(n_jobs):
            spec = LaunchSpec(job_id=str(i + 1), attempt=1, name=f"r-{i}", command="true", time_limit_s=120.0,
                              nodes=(NodeGpus(first_node, (0,), 1000, 0, 0),), posix_user=JOB_ACCOUNT)  # fmt: skip
            backend._output_dir(spec, account if IS_ROOT else None)
            req = sbatch_request(backend.config, spec, lambda _nodes: "", account, IS_ROOT)
            args = [a for a in req.args if not a.startswith(("--nodelist=", "--nodes="))]
            requests.append((args, req.script))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(backend.config.submit_parallel) as pool:
            ids = list(pool.map(lambda r: backend.cli.sbatch(*r), requests))
        t_submitted = time.perf_counter() - t0
        t_started = None
        while True:
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"not all {n_jobs} jobs ended after {timeout_s:g} s")
            rows = {int(r["job_id"]): r for r in backend.cli.squeue_rows()}
            mine = [rows.get(i) for i in ids]
            now = time.perf_counter() - t0
            if t_started is None and all(r is None or r["job_state"] not in ("PENDING", "CONFIGURING") for r in mine):
                t_started = now
            if all(r is None or r["job_state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for r in mine):
                t_final = now
                break
            time.sleep(0.05)
    assert t_started is not None
    return {"jobs": n_jobs, "nodes": n_nodes, "sbatch_jobs_per_s": n_jobs / t_submitted,
            "start_jobs_per_s": n_jobs / t_started, "all_final_s": t_final,
            "submit_parallel": backend.config.submit_parallel}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=8, help="Slurm nodes, 8 GPUs each")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds of ticking")
    ap.add_argument("--submit-parallel", type=int, default=None, help="sbatch in flight at once (config default)")
    ap.add_argument("--poll-interval", type=float, default=None, help="seconds between Slurm reads (config default)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--raw", action="store_true", help="Slurm alone (sbatch + squeue, no kfabric): the ceiling here")
    args = ap.parse_args()
    overrides: dict[str, Any] = {}
    if args.submit_parallel is not None:
        overrides["submit_parallel"] = args.submit_parallel
    if args.poll_interval is not None:
        overrides["poll_interval_s"] = args.poll_interval
    if args.raw:
        r = raw(args.jobs, args.nodes, args.timeout, overrides)
        print(json.dumps(r) if args.json else
              f"Slurm alone: {r['jobs']} jobs on {r['nodes']} nodes: sbatch {r['sbatch_jobs_per_s']:.1f} jobs/s "
              f"({r['submit_parallel']} in flight), all started at {r['start_jobs_per_s']:.1f} jobs/s, all ended "
              f"after {r['all_final_s']:.1f} s")  # fmt: skip
        return
    r = run(args.jobs, args.nodes, args.timeout, overrides)
    if args.json:
        print(json.dumps(r))
        return
    cols = [
        ("jobs", "jobs", "d"),
        ("nodes", "nodes", "d"),
        ("launch jobs/s", "launch_jobs_per_s", ".1f"),
        ("started jobs/s", "start_jobs_per_s", ".1f"),
        ("all final s", "all_final_s", ".1f"),
        ("sched ms/job", "sched_overhead_ms_per_job", ".2f"),
        ("cycle ms/job", "cycle_ms_per_job", ".2f"),
        ("launch ms/job", "sbatch_ms_per_job", ".1f"),
        ("poll ms/call", "poll_ms_per_call", ".1f"),
        ("read ms/call", "read_ms_per_call", ".1f"),
    ]
    widths = [max(len(h), 8) for h, _, _ in cols]
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(cols, widths, strict=True)))
    print("  ".join(format(r[k], f).rjust(w) for (_, k, f), w in zip(cols, widths, strict=True)))
    print(
        f"median per GPU turn: admission → Slurm start {r['admit_to_start_s']:.2f} s, start → end "
        f"{r['start_to_end_s']:.2f} s, end → next admission on that GPU {r['end_to_next_admit_s']:.2f} s"
    )
    print(
        f"({r['ticks']} ticks, {r['launch_calls']} launch_many calls, {r['polls']} polls, {r['reads']} Slurm reads, "
        f"{r['sbatch_calls']} Slurm commands; submit_parallel {r['submit_parallel']}, poll_interval_s "
        f"{r['poll_interval_s']:g}; final states: {r['final_states']})"
    )


if __name__ == "__main__":
    main()
