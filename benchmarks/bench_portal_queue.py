"""Server time of the portal's queue page (``/jobs``, paged, 50 rows a page) with many jobs in the store.

    .venv/bin/python benchmarks/bench_portal_queue.py                    # 10,000 jobs, 20 renders each
    .venv/bin/python benchmarks/bench_portal_queue.py --jobs 50000 --runs 10 --db postgresql+psycopg://...

A runtime on the lab fleet (no controller loop: nothing changes while it runs) holds ``--jobs`` jobs written
straight into its store, as the controller leaves them: four in five pending with a reason, the rest running or
ended, in one project of one organization whose org-admin is signed in. Timed, in this process: the whole request
through the ASGI app (session lookup, tenancy, count, the page's query, the template) for the first page, a page in
the middle, the last page, the pending filter and the live-refresh fragment. The issue's target: under 1 s of
server time. Run by hand; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KFABRIC_AUDIT_KEY_FILE", str(Path(tempfile.mkdtemp(prefix="kfabric-bench-")) / "audit.key"))

from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from kfabric.api.app import create_app
from kfabric.backends.sim import SimBackend
from kfabric.scenarios.policies import load_policy
from kfabric.service.auth import issue_token
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t

NOW = 1_780_000_000.0
STATES = ("pending",) * 8 + ("running", "succeeded")


def fill(rt: Runtime, n: int) -> str:
    """``n`` jobs of project vision-lab (one bulk insert); returns a token of snu-vision's org-admin."""
    with rt.sessions.begin() as s:
        org = s.scalar(select(t.Organization.id).where(t.Organization.name == "snu-vision"))
        project = s.scalar(select(t.Project.id).where(t.Project.name == "vision-lab"))
        admin = t.User(name="bench-admin", role="org-admin", organization_id=org)
        s.add(admin)
        s.flush()
        token = issue_token(s, admin, NOW)
        rows = []
        for i in range(n):
            state = STATES[i % len(STATES)]
            rows.append({
                "project_id": project, "user_id": admin.id, "name": f"job-{i}", "state": state,
                "spec": {"gpus": 1 + i % 8, "gpu_models": ["H100"], "time_limit_s": 3600.0},
                "reason_code": "resources" if state == "pending" else "",
                "reason": "waiting for 8 free H100 GPUs on one node (pool h100)" if state == "pending" else "",
                "expected_start_s": NOW + i if state == "pending" else None,
                "submitted_at_s": NOW - n + i, "started_at_s": NOW if state != "pending" else None,
            })  # fmt: skip
        s.execute(insert(t.Job), rows)
    return token


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--db", help="database URL (default: a new SQLite file)")
    args = ap.parse_args()
    db = args.db or f"sqlite:///{tempfile.mkdtemp(prefix='kfabric-bench-')}/kfabric.db"
    rt = open_runtime(db, load_policy("kfabric"), {"sim": SimBackend(lambda: NOW)}, fleet="lab", clock=lambda: NOW)
    try:
        token = fill(rt, args.jobs)
        with TestClient(create_app(rt)) as c:
            page = c.get("/signin")
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf is not None
            r = c.post("/signin", data={"csrf": csrf.group(1), "token": token}, follow_redirects=False)
            assert r.status_code == 303, r.text
            pages = -(-args.jobs // 50)
            cases = {
                "first page": "/jobs",
                "middle page": f"/jobs?page={pages // 2}",
                "last page": f"/jobs?page={pages}",
                "pending, page 2": "/jobs?state=pending&page=2",
                "live-refresh fragment": "/jobs/rows",
            }
            print(f"{args.jobs} jobs in {rt.engine.dialect.name}; {args.runs} renders each (50 rows a page)")
            print(f"{'page':<24}{'median ms':>10}{'p95 ms':>10}{'max ms':>10}{'rows':>6}")
            for label, path in cases.items():
                r = c.get(path)
                assert r.status_code == 200, r.text
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    r = c.get(path)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200
                times.sort()
                p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
                rows = r.text.count('<tr data-job="')
                print(f"{label:<24}{statistics.median(times):>10.1f}{p95:>10.1f}{times[-1]:>10.1f}{rows:>6}")
    finally:
        rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
