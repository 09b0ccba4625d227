"""How long ``kfabric queue`` takes to print a long queue, end to end (a fresh ``kfabric`` process, HTTP paging,
the server's query and serialization, formatting, writing to a pipe).

    .venv/bin/python benchmarks/bench_queue_print.py                 # 20,000 jobs, 3 runs each
    .venv/bin/python benchmarks/bench_queue_print.py --jobs 50000 --runs 5

A server (the API on the local fleet, 4 declared GPUs, no controller loop: nothing changes while it runs)
holds ``--jobs`` jobs written straight into its store: four in five pending, the rest running or ended, spread
over 40 users and 8 projects, with array tasks where the store has the columns. Timed: ``kfabric queue --all``
(every job), ``kfabric queue`` (active ones), ``kfabric queue -u user7`` (a server-side filter) and
``kfabric queue --all --format id,name,user,state,time --sort -id``, each writing to a pipe (not a terminal, so
plain columns). Also the same list as JSON through the Python client alone (the API's share). The issue's
target: 20,000 jobs in under 2 s. Run by hand; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import insert, select

ROOT = Path(__file__).resolve().parents[1]
KFABRIC = str(ROOT / ".venv" / "bin" / "kfabric")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fill(rt: object, n: int) -> None:
    """``n`` jobs in the store, as the controller would leave them (one bulk insert)."""
    from kfabric.store import tables as t

    sessions = rt.sessions  # type: ignore[attr-defined]
    with sessions.begin() as s:
        org = s.scalar(select(t.Organization.id))
        users = []
        for i in range(40):
            row = t.User(name=f"user{i}", organization_id=org, role="member")
            s.add(row)
            users.append(row)
        projects = []
        for i in range(8):
            p = t.Project(name=f"proj{i}", organization_id=org)
            s.add(p)
            projects.append(p)
        s.flush()
        now = time.time()
        rows = []
        for i in range(n):
            kind = i % 10
            state = "pending" if kind < 8 else ("running" if kind == 8 else "succeeded")
            started = now - 600 if state != "pending" else None
            spec = {"name": f"job{i}", "command": ["python", "train.py", "--seed", str(i)], "gpus": 1 + i % 4,
                    "time_limit_s": 3600.0, "priority": "normal"}  # fmt: skip
            row = {
                "project_id": projects[i % 8].id,
                "user_id": users[i % 40].id,
                "name": f"job{i}",
                "spec": spec,
                "state": state,
                "reason_code": "resources" if state == "pending" else "",
                "reason": "waiting for 4 free GPU(s) of H100 (min topology: node); 0 free now"
                if state == "pending"
                else "",
                "expected_start_s": now + 3600 + i if state == "pending" else None,
                "submitted_at_s": now - 3600 + i * 0.01,
                "started_at_s": started,
                "ended_at_s": now - 60 if state == "succeeded" else None,
                "exit_code": 0 if state == "succeeded" else None,
                "placement": {"pool": "local", "shares": [[0, [i % 4], 1000, 0, 0]]} if started else None,
            }
            if i >= n - 1000 and state == "pending" and hasattr(t.Job, "array_job_id"):
                row["array_job_id"], row["array_task_id"] = n - 1000 + 1, i - (n - 1000)
            rows.append(row)
        s.execute(insert(t.Job), rows)


def _time(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, float, float, int]:
    """Median wall seconds, median CPU seconds of the ``kfabric`` process and of the server (this process: user +
    system, what they cost on an idle machine), and the lines printed."""
    times, cpus, servers, lines = [], [], [], 0
    for _ in range(runs):
        before, server = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        servers.append(time.process_time() - server)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
        lines = done.stdout.count("\n")
    return statistics.median(times), statistics.median(cpus), statistics.median(servers), lines


def local_runtime(tmp: Path) -> Any:
    """A runtime on the 4-GPU local fleet with its SQLite store under ``tmp`` (what both list benchmarks fill)."""
    from kfabric.backends.local import LocalBackend
    from kfabric.scenarios.local import local_scenario_text
    from kfabric.scenarios.policies import load_policy
    from kfabric.service.runtime import open_runtime

    return open_runtime(
        f"sqlite:///{tmp}/kfabric.db",
        load_policy("kfabric"),
        {"local": LocalBackend(tmp / "local", gpus=4)},
        fleet="local",
        fleet_document=local_scenario_text(4),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kfabric-bench-queue-"))
    os.environ.setdefault("KFABRIC_AUDIT_KEY_FILE", str(tmp / "audit.key"))
    from kfabric.api.app import create_app
    from kfabric.client import Client

    rt = local_runtime(tmp)
    t0 = time.perf_counter()
    _fill(rt, args.jobs)
    print(f"filled the store with {args.jobs:,} jobs in {time.perf_counter() - t0:.1f} s")
    port = _free_port()
    web = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    while not web.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "KFABRIC_URL": url, "KFABRIC_TOKEN": str(rt.bootstrap_token)}
    try:
        with Client(url, str(rt.bootstrap_token)) as client:
            t0 = time.perf_counter()
            got = client.jobs(state=["pending", "admitted", "running", "preempted", "succeeded", "failed",
                                     "cancelled", "timeout"])  # fmt: skip
            print(f"API only (Python client, all {len(got):,} jobs as JSON): {time.perf_counter() - t0:.2f} s")
        for label, extra in (
            ("kfabric queue --all", ["--all"]),
            ("kfabric queue", []),
            ("kfabric queue -u user7", ["-u", "user7"]),
            ("kfabric queue --all --format id,name,user,state,time --sort=-id",
             ["--all", "--format", "id,name,user,state,time", "--sort=-id"]),
        ):  # fmt: skip
            seconds, cpu, server, lines = _time([KFABRIC, "queue", *extra], env, args.runs)
            print(f"{label:<66} {seconds:6.2f} s wall, CPU {cpu:5.2f} s CLI + {server:5.2f} s server ({lines:,} lines)")
        seconds, cpu, _, _ = _time([KFABRIC, "--help"], env, args.runs)
        print(f"{'kfabric --help (process start-up alone)':<68} {seconds:6.2f} s wall, {cpu:5.2f} s CLI CPU")
        print(f"(medians of {args.runs} runs; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    finally:
        web.should_exit = True
        thread.join(10)
        rt.close()


if __name__ == "__main__":
    sys.exit(main())
