"""End to end: ``kfabric serve`` with a config naming two real Slurm clusters runs jobs submitted through
``kfabric submit``, and ``kfabric queue`` shows them with their states and Slurm nodes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from slurm_lab import SlurmLab, two_site_fleet

from kfabric.cli.main import main

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_serve_runs_cli_jobs_on_two_slurm_clusters(
    slurm_a: SlurmLab,
    slurm_b: SlurmLab,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    job_account: str,
    job_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # submitted from a directory the job's account may write, as a user submits from their own: the job runs there
    # and writes kfabric-%j.out there (sbatch's defaults)
    monkeypatch.chdir(job_dir)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(two_site_fleet(slurm_a, slurm_b))
    clusters = tmp_path / "clusters.yaml"
    keys = ("name", "site", "slurm_conf", "workdir_root")
    entries = [{k: getattr(lab.config, k) for k in keys} for lab in (slurm_a, slurm_b)]
    clusters.write_text(yaml.safe_dump({"slurm_clusters": entries}))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    state = tmp_path / "state"
    argv = [sys.executable, "-m", "kfabric.cli.main", "serve", "--fleet", str(fleet), "--slurm-config",
            str(clusters), "--state-dir", str(state), "--port", str(port), "--tick", "0.5"]  # fmt: skip
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
            assert time.monotonic() < deadline, "kfabric serve did not come up"
            time.sleep(0.3)
        auth = ["--url", url, "--token", (state / "operator.token").read_text().strip()]
        _cli(capsys, "user", "set-posix", "admin", job_account, *auth)  # root serves: jobs run as the test account
        ids = []
        for project, extra in (("sovereign-fm", ["--classification", "restricted"]), ("nova-llm", [])):
            out = _cli(capsys, "submit", "--project", project, "--gpus", "8", "--time", "2", *extra,
                       "--wrap", "echo $SLURMD_NODENAME", *auth)  # fmt: skip
            assert out.startswith("Submitted job ")
            ids.append(int(out.split()[-1]))
        deadline = time.monotonic() + 180
        while True:
            jobs = {j["id"]: j for j in json.loads(_cli(capsys, "queue", "--all", "--json", *auth))}
            if all(jobs[i]["state"] in ("succeeded", "failed", "cancelled", "timeout") for i in ids):
                break
            assert time.monotonic() < deadline, jobs
            time.sleep(1)
        assert [jobs[i]["state"] for i in ids] == ["succeeded", "succeeded"], {i: jobs[i]["reason"] for i in ids}
        restricted = jobs[ids[0]]
        assert restricted["pool"] in {p["name"] for p in yaml.safe_load(fleet.read_text())["pools"]}
        assert all(n["node"].startswith("node") for n in restricted["nodes"])
        table = _cli(capsys, "queue", "--all", *auth)
        assert "2 jobs" in table and all(f" {i} " in table for i in ids)  # people see both Slurm-backed jobs
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
