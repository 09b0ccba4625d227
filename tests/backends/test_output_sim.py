"""Issue 19 on the ``sim`` backend: nothing runs, so no output file is written; ``kfabric job log`` serves the job's
state changes (marked simulated) and, for a job that failed, why on its ``err`` stream. The stored script is recorded
with the attempt, and its first command decides a simulated exit code as a command does."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "api"))  # `from api_world import ...`

from api_world import Api, open_api

from kfabric.backends.base import LaunchSpec, NodeGpus, RunState
from kfabric.backends.sim import SimBackend


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    with open_api(db_url) as a:
        yield a


def _submit(api: Api, **fields: object) -> int:
    r = api.post("/v1/jobs", api.operator, {"project": "vision-lab", "time_limit_s": 3600.0, "gpus": 1, **fields})
    assert r.status_code == 201, r.text
    job_id: int = r.json()["id"]
    return job_id


def test_job_log_on_sim_is_the_simulated_run(api: Api) -> None:
    ok = _submit(api, name="fine", script="#!/bin/bash\n#SBATCH -t 1:00:00\necho hi\n")
    bad = _submit(api, name="bad", script="#!/bin/bash\n# a comment\nexit 4\n")
    early = api.get(f"/v1/jobs/{ok}/log", api.operator).json()
    assert (early["data"], early["final"]) == ("", False) and "has not started" in early["note"]
    api.tick(30.0, times=4)
    jobs = {j: api.get(f"/v1/jobs/{j}", api.operator).json() for j in (ok, bad)}
    assert (jobs[ok]["state"], jobs[bad]["state"], jobs[bad]["exit_code"]) == ("succeeded", "failed", 4)
    assert jobs[ok]["stdout_path"] == "" == jobs[ok]["stderr_path"]  # no file: the output is the simulated run
    out = api.get(f"/v1/jobs/{ok}/log", api.operator).json()
    assert out["final"] and out["eof"] and out["path"] == ""
    assert "-> running" in out["data"] and "-> succeeded" in out["data"]
    err = api.get(f"/v1/jobs/{bad}/log?stream=err", api.operator).json()
    assert err["data"] == f"sim: job {bad} failed: {jobs[bad]['reason']}\n" and "exit code 4" in err["data"]
    assert api.get(f"/v1/jobs/{ok}/log?stream=err", api.operator).json()["data"] == ""
    tail = api.get(f"/v1/jobs/{ok}/log?tail_lines=1", api.operator).json()
    assert tail["data"].count("\n") == 1 and "-> succeeded" in tail["data"]


def test_the_sim_records_the_script_across_processes(tmp_path: Path) -> None:
    clock = [0.0]
    first = SimBackend(lambda: clock[0], state_dir=tmp_path)
    script = "#!/bin/bash\nexit 3\n"
    first.launch(LaunchSpec("7", 1, "s", "", (NodeGpus("n1", (0,)),), 600.0, runtime_s=10.0, script=script))
    again = SimBackend(lambda: clock[0], state_dir=tmp_path)  # another process reading the same state
    clock[0] = 20.0
    (report,) = again.poll()
    assert (report.state, report.exit_code) == (RunState.FAILED, 3)
    assert '"script": "#!/bin/bash\\nexit 3\\n"' in (tmp_path / "attempts" / "7.1.json").read_text()
