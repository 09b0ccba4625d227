"""An array with a concurrency cap and an ``afterok`` chain, run by the controller on real Slurm 22.05 (cluster
``alpha`` of conftest.py): kfabric holds the dependencies and the cap itself, so Slurm only ever gets jobs that may
run: every array task ran, never more than the cap at once, and the chain ran in order (issue 19)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from slurm_lab import SlurmLab, fresh_prefix, one_cluster_fleet
from sqlalchemy import select

from kfabric.scenarios.policies import load_policy
from kfabric.service import jobs
from kfabric.service.auth import authenticate
from kfabric.service.runtime import open_runtime
from kfabric.store import tables as t
from posix_accounts import map_users

pytestmark = pytest.mark.integration
FINAL = ("succeeded", "failed", "cancelled", "timeout")


def test_array_cap_and_afterok_chain_on_slurm(slurm_a: SlurmLab, tmp_path: Path, job_account: str) -> None:
    backend = slurm_a.backend(job_name_prefix=fresh_prefix())
    rt = open_runtime(
        f"sqlite:///{tmp_path}/k.db",
        load_policy("kfabric"),
        {slurm_a.name: backend},
        fleet_document=one_cluster_fleet(slurm_a, "arrays-deps"),
    )
    try:
        map_users(rt.sessions, job_account)
        with rt.sessions() as s:
            assert rt.bootstrap_token is not None
            op = authenticate(s, rt.bootstrap_token)
        base = {"gpus": 1, "time_limit_s": 120.0}
        array, _ = jobs.submit(rt.sessions, op, "p", {**base, "array": "0-5%2", "command": "sleep 1"}, time.time())
        first, _ = jobs.submit(rt.sessions, op, "p", {**base, "dependency": f"afterok:{array.id}",
                                                       "command": "sleep 1"}, time.time())  # fmt: skip
        second, _ = jobs.submit(rt.sessions, op, "p", {**base, "dependency": f"afterok:{first.id}",
                                                        "command": "true"}, time.time())  # fmt: skip
        never, _ = jobs.submit(rt.sessions, op, "p", {**base, "command": "exit 4"}, time.time())
        doomed, _ = jobs.submit(rt.sessions, op, "p", {**base, "dependency": f"afterok:{never.id}"}, time.time())
        most_at_once = 0
        deadline = time.monotonic() + 240  # Slurm commands slow down on a loaded 2-core box
        while time.monotonic() < deadline:
            rt.controller.tick()
            with rt.sessions() as s:
                rows = s.execute(select(t.Job.id, t.Job.state, t.Job.array_job_id)).all()
            states = {rid: state for rid, state, _a in rows}
            tasks = [state for _r, state, a in rows if a == array.id]
            most_at_once = max(most_at_once, sum(state in ("admitted", "running") for state in tasks))
            if all(state in FINAL for state in states.values()):
                break
            time.sleep(0.3)
        with rt.sessions() as s:
            got = {r.id: r for r in s.scalars(select(t.Job))}
        task_rows = [r for r in got.values() if r.array_job_id == array.id]
        assert len(task_rows) == 6 and {r.state for r in task_rows} == {"succeeded"}
        assert most_at_once <= 2
        assert got[first.id].state == got[second.id].state == "succeeded"
        assert got[first.id].started_at_s >= max(r.ended_at_s for r in task_rows)
        assert got[second.id].started_at_s >= got[first.id].ended_at_s
        assert got[never.id].state == "failed"
        assert got[doomed.id].state == "cancelled" and got[doomed.id].reason.startswith("dependency never satisfied")
        assert got[doomed.id].attempt == 0  # never handed to Slurm
    finally:
        rt.close()
