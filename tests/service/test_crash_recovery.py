"""Crash recovery of `kfabric serve` end to end: the server is a real subprocess, killed with SIGKILL twice.

1. During a burst of idempotent submissions (threads retry with the same client key until the server is back):
   every acknowledged job exists exactly once, the store holds one job per client key, every job succeeds and
   ran exactly once (each job appends "$KFABRIC_JOB_ID $KFABRIC_ATTEMPT" to a shared runs.log).
2. While jobs are running: their runners outlive the server; after the restart each job ends succeeded,
   on its first attempt, and ran once.

Plus, in process: a controller that died between launching an attempt and recording the launch leaves a job
admitted but "not launched" while it runs; after the restart a cancel or a preemption must stop that attempt,
not withdraw the placement of a job that runs (which left it running: a second attempt ran beside it).

Runs on SQLite and on a real PostgreSQL (the `db_url` fixture). Every process started here (the server and
the local backend's runners, each in a process group of its own) is killed by id in a `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from kfabric.backends.local import LocalBackend
from kfabric.scenarios.local import local_scenario_text
from kfabric.scenarios.policies import load_policy
from kfabric.service import jobs
from kfabric.service.auth import authenticate
from kfabric.service.controller import Controller
from kfabric.service.runtime import open_runtime
from kfabric.store import tables as t
from posix_accounts import map_users

THREADS = 4
PER_THREAD = 50
GPUS = 4
TICK_S = 0.2
FINAL = {"succeeded", "failed", "cancelled", "timeout"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """`kfabric serve --fleet local` as a subprocess in a process group of its own; start, kill, restart."""

    def __init__(self, db_url: str, state_dir: Path, logs: Path) -> None:
        self.db_url = db_url
        self.state_dir = state_dir
        self.logs = logs
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout_s: float = 30.0) -> None:
        assert self.proc is None, "already running"
        self.starts += 1
        log = self.logs / f"server-{self.starts}.log"
        cmd = [
            sys.executable, "-m", "kfabric.cli.main", "serve", "--db", self.db_url, "--fleet", "local",
            "--local-gpus", str(GPUS), "--tick", str(TICK_S), "--port", str(self.port),
            "--state-dir", str(self.state_dir), "--log-level", "warning",
        ]  # fmt: skip
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode} at start\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/healthz", timeout=1.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"server not healthy after {timeout_s} s\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server's process group (the job runners live in groups of their own and survive)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def token(self) -> str:
        return (self.state_dir / "operator.token").read_text().strip()

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for log in sorted(self.logs.glob("server-*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name} ---\n" + "\n".join(text))
        return "\n".join(out)


def _kill_runners(state_dir: Path) -> None:
    """SIGKILL the process group of every local-backend runner still alive (checked by its command line)."""
    for pid_file in (state_dir / "local" / "jobs").glob("*/pid"):
        text = pid_file.read_text().strip()
        if not text.isdigit():
            continue
        pid = int(text)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(pid_file.parent) in cmdline:  # the runner of this attempt, not a reused pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def _runner_alive(attempt_dir: Path) -> bool:
    text = (attempt_dir / "pid").read_text().strip() if (attempt_dir / "pid").exists() else ""
    if not text.isdigit():
        return False
    try:
        stat = Path(f"/proc/{text}/stat").read_text()
        cmdline = Path(f"/proc/{text}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z" and str(attempt_dir) in cmdline


def _jobs(server: Server, token: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.base}/v1/jobs", params={"limit": 10000}, headers=_auth(token), timeout=30)
    assert r.status_code == 200, r.text
    jobs: list[dict[str, Any]] = r.json()
    return jobs


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _wait_final(server: Server, token: str, ids: set[int], timeout_s: float) -> dict[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = {j["id"]: j for j in _jobs(server, token) if j["id"] in ids}
        if len(jobs) == len(ids) and all(j["state"] in FINAL for j in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            states = Counter(j["state"] for j in jobs.values())
            raise AssertionError(
                f"not all {len(ids)} jobs final after {timeout_s} s: {dict(states)}, {len(ids) - len(jobs)} missing"
                f"\n{server.log_tail()}"
            )
        time.sleep(0.25)


def _runs(runs_log: Path) -> Counter[int]:
    lines = runs_log.read_text().splitlines() if runs_log.exists() else []
    return Counter(int(line.split()[0]) for line in lines)


class Submitter:
    """Client threads that submit jobs with unique client keys, retrying a key until the server answers it."""

    def __init__(self, server: Server, token: str, command: str, deadline_s: float) -> None:
        self.server = server
        self.token = token
        self.command = command
        self.deadline = time.monotonic() + deadline_s
        self.lock = threading.Lock()
        self.acked: dict[str, list[int]] = {}  # client key -> every job id the API acknowledged for it
        self.statuses: Counter[int] = Counter()
        self.retries = 0
        self.errors: list[str] = []

    @property
    def n_acked(self) -> int:
        with self.lock:
            return len(self.acked)

    def run_thread(self, thread: int, n: int) -> None:
        try:
            with httpx.Client(base_url=self.server.base, headers=_auth(self.token), timeout=10.0) as client:
                for i in range(n):
                    self._submit(client, f"t{thread}-k{i:03d}")
        except Exception as exc:  # reported by the test, not lost in the thread
            self.errors.append(f"thread {thread}: {exc!r}")

    def _submit(self, client: httpx.Client, key: str) -> None:
        body = {
            "project": "default", "gpus": 1, "time_limit_s": 60, "command": self.command, "client_key": key,
        }  # fmt: skip
        while True:
            if time.monotonic() > self.deadline:
                raise AssertionError(f"client key {key} not acknowledged before the deadline")
            try:
                r = client.post("/v1/jobs", json=body)
            except httpx.TransportError:  # the server is down (killed) or restarting: retry the same key
                with self.lock:
                    self.retries += 1
                time.sleep(0.05)
                continue
            with self.lock:
                self.statuses[r.status_code] += 1
            if r.status_code >= 500:
                time.sleep(0.05)
                continue
            assert r.status_code in (200, 201), f"{key}: {r.status_code} {r.text}"
            job_id = r.json()["id"]
            with self.lock:
                self.acked.setdefault(key, []).append(job_id)
            return


@pytest.mark.integration
def test_server_killed_during_submissions_and_while_jobs_run(
    db_url: str, tmp_path: Path, job_account: str, job_dir: Path
) -> None:
    state_dir = tmp_path / "state"
    runs_log = job_dir / "runs.log"  # jobs run as job_account: where it may write
    logs = tmp_path / "logs"
    logs.mkdir()
    server = Server(db_url, state_dir, logs)
    record = f'echo "$KFABRIC_JOB_ID $KFABRIC_ATTEMPT" >> {shlex.quote(str(runs_log))}'
    try:
        server.start()
        token = server.token()
        with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {token}"}) as op:
            op.patch("/v1/users/admin", json={"posix_user": job_account}).raise_for_status()

        # ---- 1. SIGKILL in the middle of a burst of submissions ---------------------------------------------
        sub = Submitter(server, token, f"{record}; sleep 0.2", deadline_s=60)
        threads = [threading.Thread(target=sub.run_thread, args=(k, PER_THREAD)) for k in range(THREADS)]
        for th in threads:
            th.start()
        total = THREADS * PER_THREAD
        deadline = time.monotonic() + 30
        while sub.n_acked < total // 2 and not sub.errors and time.monotonic() < deadline:
            time.sleep(0.005)
        acked_before_kill = sub.n_acked
        server.kill()
        assert 0 < acked_before_kill < total, f"kill not mid-burst: {acked_before_kill} of {total} acknowledged"
        time.sleep(0.3)  # clients hit a dead port meanwhile
        server.start()
        for th in threads:
            th.join(timeout=70)
        assert not any(th.is_alive() for th in threads), "client threads did not finish"
        assert not sub.errors, sub.errors
        assert len(sub.acked) == total, f"{total - len(sub.acked)} client keys never acknowledged"
        assert sub.retries > 0, "no client saw the server down: the kill did not interrupt the burst"

        ids_of = {key: set(ids) for key, ids in sub.acked.items()}
        assert all(len(ids) == 1 for ids in ids_of.values()), {k: v for k, v in ids_of.items() if len(v) > 1}
        ids = {next(iter(v)) for v in ids_of.values()}
        assert len(ids) == total, "two client keys were acknowledged with the same job"

        stored = _jobs(server, token)
        assert len(stored) == total, f"{len(stored)} jobs stored for {total} client keys"
        assert {j["id"] for j in stored} == ids
        # every key again, to the restarted server (a client that never saw its answers): the same jobs, 200
        again = Submitter(server, token, f"{record}; sleep 0.2", deadline_s=30)
        for k in range(THREADS):
            again.run_thread(k, PER_THREAD)
        assert not again.errors, again.errors
        assert again.statuses == Counter({200: total}), again.statuses
        assert all(again.acked[k] == sub.acked[k][:1] for k in again.acked), "a repeated key got another job"

        final = _wait_final(server, token, ids, timeout_s=60)
        not_ok = {i: (j["state"], j["reason"]) for i, j in final.items() if j["state"] != "succeeded"}
        assert not not_ok, not_ok
        runs = _runs(runs_log)
        assert set(runs) == ids, f"ran but unknown: {set(runs) - ids}; never ran: {ids - set(runs)}"
        assert all(n == 1 for n in runs.values()), {i: n for i, n in runs.items() if n != 1}
        lines = dict(tuple(map(int, line.split())) for line in runs_log.read_text().splitlines())
        assert all(lines[i] == final[i]["attempt"] for i in ids), "a job ran an attempt other than its last"

        # ---- 2. SIGKILL while jobs run: the runners outlive the server ---------------------------------------
        runs_log.unlink()
        long = Submitter(server, token, f"{record}; sleep 3", deadline_s=20)
        long.run_thread(99, GPUS)
        assert not long.errors, long.errors
        long_ids = {v[0] for v in long.acked.values()}
        deadline = time.monotonic() + 20
        while True:
            states = {j["id"]: j["state"] for j in _jobs(server, token) if j["id"] in long_ids}
            if all(s == "running" for s in states.values()):
                break
            assert time.monotonic() < deadline, f"long jobs not all running: {states}\n{server.log_tail()}"
            time.sleep(0.1)
        server.kill()
        attempts = [state_dir / "local" / "jobs" / f"{i}.1" for i in sorted(long_ids)]
        assert all(_runner_alive(a) for a in attempts), "a runner died with the server"
        server.start()
        final = _wait_final(server, token, long_ids, timeout_s=30)
        not_ok = {i: (j["state"], j["attempt"], j["reason"]) for i, j in final.items()}
        assert all(j["state"] == "succeeded" and j["attempt"] == 1 for j in final.values()), not_ok
        runs = _runs(runs_log)
        assert runs == Counter(dict.fromkeys(long_ids, 1)), runs
    finally:
        server.kill()
        _kill_runners(state_dir)


def _tick_until(controller: Controller, done: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        controller.tick()
        time.sleep(0.1)


@pytest.mark.parametrize("stop", ["cancel", "preempt"])
def test_restart_adopts_an_attempt_launched_but_not_recorded(
    db_url: str, tmp_path: Path, stop: str, job_account: str, job_dir: Path
) -> None:
    local = tmp_path / "local"
    runs_log = job_dir / "runs.log"
    policy = load_policy("kfabric")
    rt = open_runtime(
        db_url,
        policy,
        {"local": LocalBackend(local, gpus=GPUS)},
        fleet="local",
        fleet_document=local_scenario_text(GPUS),
    )
    try:
        map_users(rt.sessions, job_account)
        with rt.sessions() as s:
            actor = authenticate(s, rt.bootstrap_token)
        command = f'echo "$KFABRIC_JOB_ID $KFABRIC_ATTEMPT" >> {shlex.quote(str(runs_log))}; sleep 2'
        spec = {"gpus": 1, "time_limit_s": 60.0, "command": command}
        row, _ = jobs.submit(rt.sessions, actor, "default", spec, time.time(), "k")
        first = local / "jobs" / f"{row.id}.1"
        rt.controller.tick()  # admitted and launched
        deadline = time.monotonic() + 10
        while not (first / "started").exists():
            assert time.monotonic() < deadline, "attempt 1 did not start"
            time.sleep(0.02)
        # the controller "died" after launching attempt 1 but before recording it; a new one starts
        with rt.sessions.begin() as s:
            s.execute(update(t.Job).where(t.Job.id == row.id).values(launched=False))
        restarted = Controller(rt.sessions, rt.scenario, policy, {"local": LocalBackend(local, gpus=GPUS)})
        if stop == "cancel":
            jobs.cancel(rt.sessions, actor, row.id, time.time())
        else:  # as if the first cycle after the restart preempted it
            with rt.sessions.begin() as s:
                s.execute(update(t.Job).where(t.Job.id == row.id).values(preempt_requested=True, reason="preempted"))

        def state() -> tuple[str, int]:
            with rt.sessions() as s:
                job = s.get(t.Job, row.id)
                assert job is not None
                return job.state, job.attempt

        want = "cancelled" if stop == "cancel" else "succeeded"
        _tick_until(restarted, lambda: state()[0] == want, 20, f"job {want}")
        assert (first / "result.json").exists(), "attempt 1 was never stopped"
        assert '"cancelled"' in (first / "result.json").read_text(), "attempt 1 ran on after it was stopped"
        ran = _runs(runs_log)
        if stop == "cancel":
            assert state() == ("cancelled", 1) and ran == Counter({row.id: 1})
        else:  # attempt 2 started only after attempt 1 was stopped: never two at once
            assert state() == ("succeeded", 2) and ran == Counter({row.id: 2})
            ended_1 = float(json.loads((first / "result.json").read_text())["ended_at_s"])
            started_2 = float((local / "jobs" / f"{row.id}.2" / "started").read_text())
            assert started_2 >= ended_1, "attempt 2 ran beside attempt 1"
    finally:
        rt.close()
        _kill_runners(tmp_path)
