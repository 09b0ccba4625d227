"""Issue 19 on real Slurm 22.05: a job's stored script runs through sbatch (never a file on disk), its ``-o/-e`` files
are written where Slurm writes them (``--output/--error``, created by slurmstepd as the job's account, with kfabric's
patterns expanded: ``%j`` is kfabric's id, not Slurm's), the paths are kept on the job, and ``GET /v1/jobs/{id}/log``
reads them. ``SLURM_JOB_ID`` inside the job stays Slurm's own (``srun`` needs it); ``KFABRIC_JOB_ID`` is kfabric's."""

from __future__ import annotations

import pwd
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from slurm_lab import SlurmLab, fresh_prefix, up_pools

from kfabric.api.app import create_app
from kfabric.backends.slurm import SlurmBackend
from kfabric.scenarios.policies import load_policy
from kfabric.service.runtime import Runtime, open_runtime
from posix_accounts import JOB_ACCOUNT, map_users

pytestmark = pytest.mark.integration
FINAL = ("succeeded", "failed", "cancelled", "timeout")


def _fleet(lab: SlurmLab) -> str:
    doc = {
        "name": "one-slurm-site",
        "description": "one real Slurm cluster",
        "owners": [{"name": "government", "kind": "government"}],
        "sites": [{"name": lab.config.site, "certification": "government-operated", "clearance": "restricted",
                   "region": "kr", "operator": "test", "power_cap_mw": 10.0, "pue": 1.2}],
        "clusters": [{"name": lab.name, "site": lab.config.site, "backend": "slurm"}],
        "pools": up_pools(lab),
        "organizations": [{"name": "kisti", "kind": "institute"}],
        "projects": [{"name": "fm", "organization": "kisti"}],
        "programs": [{"name": "sovereign"}],
        "grants": [{"id": "g-fm", "program": "sovereign", "project": "fm", "start": date(2020, 1, 1),
                    "end": date(2100, 1, 1), "credit_su_hours": 1e6}],
    }  # fmt: skip
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture
def service(slurm_a: SlurmLab, tmp_path: Path, job_account: str) -> Iterator[tuple[Runtime, TestClient]]:
    backend = slurm_a.backend(job_name_prefix=fresh_prefix())
    rt = open_runtime(
        f"sqlite:///{tmp_path}/k.db", load_policy("kfabric"), {slurm_a.name: backend}, fleet_document=_fleet(slurm_a)
    )
    try:
        map_users(rt.sessions, job_account)  # sbatch --uid: jobs run as the test account
        with TestClient(create_app(rt), raise_server_exceptions=False) as client:
            client.headers["Authorization"] = f"Bearer {rt.bootstrap_token}"
            yield rt, client
    finally:
        rt.close()


def _run(rt: Runtime, client: TestClient, ids: list[int], timeout_s: float = 180) -> dict[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s  # generous: Slurm commands slow down on a loaded 2-core box
    while True:
        rt.controller.tick()
        jobs = {i: client.get(f"/v1/jobs/{i}").json() for i in ids}
        if all(j["state"] in FINAL for j in jobs.values()):
            return jobs
        assert time.monotonic() < deadline, {i: (j["state"], j["reason"]) for i, j in jobs.items()}
        time.sleep(0.5)


def test_output_files_are_where_slurm_writes_them_and_job_log_reads_them(
    service: tuple[Runtime, TestClient], job_dir: Path, slurm_a: SlurmLab
) -> None:
    rt, client = service
    script = (
        "#!/bin/bash\n#SBATCH --comment=ignored-by-kfabric\n"
        'echo "kf=$KFABRIC_JOB_ID slurm=$SLURM_JOB_ID name=$SLURM_JOB_NAME dir=$SLURM_SUBMIT_DIR"\n'
        "echo to-stderr >&2\nexit 3\n"
    )
    body = {"project": "fm", "gpus": 1, "time_limit_s": 120.0, "workdir": str(job_dir), "name": "sl"}
    patterned = client.post("/v1/jobs", json={**body, "script": script, "output": "%x-%j-%N.out", "error": "%j.err"})
    plain = client.post("/v1/jobs", json={**body, "command": "echo plain 100%"})
    assert patterned.status_code == 201 and plain.status_code == 201, (patterned.text, plain.text)
    pid, qid = patterned.json()["id"], plain.json()["id"]
    jobs = _run(rt, client, [pid, qid])

    job = jobs[pid]
    assert (job["state"], job["exit_code"]) == ("failed", 3), job["reason"]
    node = job["nodes"][0]["node"]
    out, err = Path(job["stdout_path"]), Path(job["stderr_path"])
    assert (out, err) == (job_dir / f"sl-{pid}-{node}.out", job_dir / f"{pid}.err")
    kf, slurm, name, submit_dir = (w.split("=", 1)[1] for w in out.read_text().split())
    assert (kf, name, submit_dir) == (str(pid), "sl", str(job_dir))
    backend = rt.controller.backends[slurm_a.name]
    assert isinstance(backend, SlurmBackend)
    assert slurm == str(backend.slurm_job_id(str(pid), job["attempt"]))  # Slurm's own id: srun finds its allocation
    assert err.read_text() == "to-stderr\n"
    assert out.stat().st_uid == pwd.getpwnam(JOB_ACCOUNT).pw_uid  # slurmstepd created it as the job's account

    log = client.get(f"/v1/jobs/{pid}/log").json()
    assert log["data"] == out.read_text() and log["final"] and log["eof"]
    assert client.get(f"/v1/jobs/{pid}/log", params={"stream": "err", "tail_lines": 1}).json()["data"] == "to-stderr\n"

    default = jobs[qid]
    assert default["state"] == "succeeded", default["reason"]
    assert default["stdout_path"] == default["stderr_path"] == str(job_dir / f"kfabric-{qid}.out")
    assert client.get(f"/v1/jobs/{qid}/log").json()["data"] == "plain 100%\n"
