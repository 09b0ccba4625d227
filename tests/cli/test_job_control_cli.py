"""The Slurm habits through the ``kfabric`` command against a real server (API + controller loop, ``local``
backend with 4 GPUs, in this process): a script snapshot with ``#SBATCH`` lines, arrays, an ``afterok`` chain,
hold/release/update, array-aware cancel."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from kfabric.api.app import create_app
from kfabric.backends.local import LocalBackend
from kfabric.cli.main import main
from kfabric.client import Client
from kfabric.scenarios.local import local_scenario_text
from kfabric.scenarios.policies import load_policy
from kfabric.service.loop import ControllerLoop
from kfabric.service.runtime import open_runtime
from posix_accounts import map_users

FINAL = ("succeeded", "failed", "cancelled", "timeout")


@dataclass(frozen=True)
class Server:
    url: str
    token: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, job_account: str) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("kfabric-slurm-habits")
    rt = open_runtime(
        f"sqlite:///{tmp}/kfabric.db",
        load_policy("kfabric"),
        {"local": LocalBackend(tmp / "local", gpus=4)},
        fleet="local",
        fleet_document=local_scenario_text(4),
    )
    assert rt.bootstrap_token
    map_users(rt.sessions, job_account)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    web = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, name="kfabric-test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not web.started:
        assert time.monotonic() < deadline, "the API server did not start within 10 s"
        time.sleep(0.02)
    loop = ControllerLoop(rt.controller, 0.2)
    loop.start()
    try:
        yield Server(f"http://127.0.0.1:{port}", rt.bootstrap_token)
    finally:
        web.should_exit = True
        thread.join(10)
        loop.stop()
        rt.close()


@pytest.fixture
def env(server: Server, monkeypatch: pytest.MonkeyPatch, job_dir: Path) -> Server:
    monkeypatch.setenv("KFABRIC_URL", server.url)
    monkeypatch.setenv("KFABRIC_TOKEN", server.token)
    monkeypatch.delenv("KFABRIC_TOKEN_FILE", raising=False)
    monkeypatch.delenv("KFABRIC_STATE_DIR", raising=False)
    monkeypatch.chdir(job_dir)
    return server


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    return out


def wait_for(server: Server, job_id: int, states: tuple[str, ...], timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with Client(server.url, server.token) as client:
        while True:
            job = client.job(job_id)
            if job["state"] in states:
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['state']}: {job['reason']}"
            time.sleep(0.1)


def test_script_snapshot_with_sbatch_lines(env: Server, capsys: pytest.CaptureFixture[str], job_dir: Path) -> None:
    script = job_dir / "edit.sh"
    first = (
        "#!/bin/bash\n"
        "#SBATCH -A default  # the project\n"
        "#SBATCH -t 2:00 -J snap\n"
        "#SBATCH --exclusive\n"
        "sleep 1; echo first version > version.txt\n"
    )
    script.write_text(first)
    code, out, err = cli(capsys, "submit", "--parsable", str(script))
    assert code == 0, err
    job_id = int(out)
    assert "--exclusive is not supported by kfabric and was ignored" in err
    script.write_text(first.replace("first", "edited"))  # sbatch snapshots the script: this changes nothing
    job = wait_for(env, job_id, FINAL)
    assert (job["state"], job["name"], job["project"]) == ("succeeded", "snap", "default")
    assert (job_dir / "version.txt").read_text() == "first version\n"
    with Client(env.url, env.token) as client:
        assert client.job_script(job_id)["script"] == first


def test_array_afterok_chain_hold_release_and_cancel(env: Server, capsys: pytest.CaptureFixture[str]) -> None:
    out = ok(capsys, "submit", "-A", "default", "-t", "1", "--array", "0-3%2", "--parsable", "--wrap", "sleep 0.3")
    array = int(out)
    after = int(ok(capsys, "submit", "-A", "default", "-t", "1", "-d", f"afterok:{array}", "--parsable",
                   "--wrap", "true"))  # fmt: skip
    held = int(ok(capsys, "submit", "-A", "default", "-t", "1", "-H", "--parsable", "--wrap", "true"))
    with Client(env.url, env.token) as client:
        tasks = [j for j in client.jobs() if j["array_job_id"] == array]
    assert [j["display_id"] for j in tasks] == [f"{array}_{k}" for k in range(4)]
    job = wait_for(env, after, FINAL, timeout_s=30)
    assert job["state"] == "succeeded"
    ends = [wait_for(env, j["id"], FINAL)["ended_at_s"] for j in tasks]
    assert job["started_at_s"] >= max(ends)
    assert wait_for(env, held, ("pending",))["reason_code"] in ("held", "new")
    assert "released job" in ok(capsys, "release", str(held))
    assert wait_for(env, held, FINAL)["state"] == "succeeded"

    second = int(ok(capsys, "submit", "-A", "default", "-t", "1", "-a", "0-2", "-H", "--parsable", "--wrap", "true"))
    assert "updated 3 task(s)" in ok(capsys, "update", str(second), "--time", "0:30", "--name", "renamed")
    assert ok(capsys, "cancel", f"{second}_1") == f"Cancelled job {second}_1\n"
    # a task is named ARRAYID_TASK everywhere a job id is taken: show, events, log
    task = json.loads(ok(capsys, "job", "show", f"{second}_1", "--json"))
    assert (task["array_job_id"], task["array_task_id"], task["state"]) == (second, 1, "cancelled")
    assert "cancelled" in ok(capsys, "job", "events", f"{second}_1")
    code, _, err = cli(capsys, "job", "show", f"{second}_9")
    assert code == 2 and "not found" in err.lower()
    out = ok(capsys, "cancel", str(second))
    assert out.startswith(f"Array {second}: cancelled 2 task(s)")
    code, _, err = cli(capsys, "cancel", "12_x")
    assert code == 2 and "is not a job id" in err
