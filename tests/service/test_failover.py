"""Failover end to end: three real `kfabric serve` processes share one PostgreSQL store and one state folder; clients
spread a burst of idempotent submissions over their APIs (a key whose server does not answer is retried, same key,
on the next one). Then the leader is

* killed with SIGKILL mid-burst: a standby takes over within TTL + one renew interval and adopts the running work;
* stopped with SIGSTOP past its lease and resumed after the takeover: it must not act after waking (no audit entry
  of its epoch after the new epoch's first one, no launch of its epoch after the new epoch's first launch) and it
  follows as a standby.

On the `sim` backend (the lab fleet; the shared sim state under STATE/sim, launches in STATE/sim/launches.log) and
on the `local` backend (4 declared GPUs; every job appends "$KFABRIC_JOB_ID $KFABRIC_ATTEMPT" to runs.log). Measured
and printed: takeover time (lease, and first cycle of the new leader), acknowledged jobs lost (0), jobs launched
twice (0: one launch per (job, attempt), never two attempts of a job at once, every job ran once).

Every process started here (servers, in process groups of their own, and the local runners) is killed by id in a
`finally`.
"""

from __future__ import annotations

import contextlib
import itertools
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from kfabric.store import tables as t
from pg_server import PgServer

TTL_S = 3.0
RENEW_S = 1.0
TICK_S = 0.2
FINAL = {"succeeded", "failed", "cancelled", "timeout"}
_numbers = itertools.count(1)

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Server:
    """One `kfabric serve` subprocess in a process group of its own."""

    def __init__(self, name: str, db_url: str, state_dir: Path, logs: Path, fleet: list[str]) -> None:
        self.name, self.db_url, self.state_dir, self.fleet = name, db_url, state_dir, fleet
        self.log = logs / f"{name}.log"
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def start(self, timeout_s: float = 30.0) -> None:
        cmd = [
            sys.executable, "-m", "kfabric.cli.main", "serve", "--db", self.db_url, *self.fleet,
            "--tick", str(TICK_S), "--lease-ttl", str(TTL_S), "--lease-renew", str(RENEW_S),
            "--port", str(self.port), "--state-dir", str(self.state_dir), "--log-level", "warning",
        ]  # fmt: skip
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode} at start\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/healthz", timeout=1.0).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"{self.name} not healthy after {timeout_s} s\n{self.tail()}"
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self.stopped

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        self.stopped = sig is signal.SIGSTOP
        if sig is signal.SIGKILL:
            self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:] if self.log.exists() else []
        return f"--- {self.name} ---\n" + "\n".join(text)


@dataclass
class Cluster:
    servers: list[Server]
    state_dir: Path
    token: str = ""

    def live(self) -> list[Server]:
        return [s for s in self.servers if s.alive]

    def status(self) -> dict[str, Any]:
        for server in self.live():
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{server.base}/v1/status", headers=_auth(self.token), timeout=2.0)
                if r.status_code == 200:
                    answer: dict[str, Any] = r.json()
                    return answer
        raise AssertionError("no live server answers /v1/status")

    def leader(self, newer_than: int = 0, timeout_s: float = 30.0) -> tuple[Server, int, dict[str, Any]]:
        """The server leading at an epoch > ``newer_than`` (waits for one)."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status()
            lead = st["leader"]
            if lead is not None and st["lease"]["epoch"] > newer_than:
                (server,) = [s for s in self.servers if s.proc is not None and s.proc.pid == lead["pid"]]
                return server, int(st["lease"]["epoch"]), st
            assert time.monotonic() < deadline, f"no leader after epoch {newer_than}: {st}\n{self.tails()}"
            time.sleep(0.05)

    def jobs(self) -> list[dict[str, Any]]:
        for server in self.live():
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{server.base}/v1/jobs", params={"limit": 10000}, headers=_auth(self.token), timeout=5)
                if r.status_code == 200:
                    found: list[dict[str, Any]] = r.json()
                    return found
        raise AssertionError("no live server lists the jobs")

    def wait_final(self, ids: set[int], timeout_s: float) -> dict[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = {j["id"]: j for j in self.jobs() if j["id"] in ids}
            if len(jobs) == len(ids) and all(j["state"] in FINAL for j in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                states = Counter(j["state"] for j in jobs.values())
                raise AssertionError(
                    f"not all {len(ids)} jobs final after {timeout_s} s: {dict(states)}\n{self.tails()}"
                )
            time.sleep(0.25)

    def tails(self) -> str:
        return "\n".join(s.tail() for s in self.servers)


@dataclass
class Burst:
    """Client threads submitting with unique client keys, each key retried on the next server until answered."""

    cluster: Cluster
    body: dict[str, Any]
    deadline: float
    acked: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, thread: int, n: int) -> None:
        servers = self.cluster.servers
        try:
            for i in range(n):
                self._submit(f"t{thread}-k{i:03d}", servers[(thread + i) % len(servers)])
        except Exception as exc:  # reported by the test
            self.errors.append(f"thread {thread}: {exc!r}")

    def _submit(self, key: str, first: Server) -> None:
        order = self.cluster.servers
        turn = order.index(first)
        while True:
            assert time.monotonic() < self.deadline, f"client key {key} not acknowledged in time"
            server = order[turn % len(order)]
            turn += 1
            try:
                r = httpx.post(
                    f"{server.base}/v1/jobs", json={**self.body, "client_key": key},
                    headers=_auth(self.cluster.token), timeout=2.0,
                )  # fmt: skip
            except httpx.TransportError:  # killed, stopped or restarting: the same key on the next server
                with self.lock:
                    self.retries += 1
                continue
            if r.status_code >= 500:
                continue
            assert r.status_code in (200, 201), f"{key}: {r.status_code} {r.text}"
            with self.lock:
                self.acked[key] = int(r.json()["id"])
            return


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    name = f"failover_{os.getpid()}_{next(_numbers)}"
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


@contextlib.contextmanager
def cluster_of_three(pg_url: str, tmp_path: Path, fleet: list[str]) -> Iterator[Cluster]:
    state = tmp_path / "state"
    logs = tmp_path / "logs"
    logs.mkdir()
    servers = [Server(f"server-{i}", pg_url, state, logs, fleet) for i in (1, 2, 3)]
    cluster = Cluster(servers, state)
    try:
        servers[0].start()  # the first one seeds the store and writes the operator token
        cluster.token = (state / "operator.token").read_text().strip()
        for server in servers[1:]:
            server.start()
        yield cluster
    finally:
        for server in servers:
            server.kill()
        _kill_runners(state)


def _kill_runners(state_dir: Path) -> None:
    for pid_file in (state_dir / "local" / "jobs").glob("*/pid"):
        text = pid_file.read_text().strip()
        if not text.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(pid_file.parent) in Path(f"/proc/{text}/cmdline").read_bytes().decode(errors="replace"):
                os.killpg(int(text), signal.SIGKILL)


# ---- launch records ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    job: int
    attempt: int
    epoch: int
    start: float
    end: float


def _launches(kind: str, state: Path) -> list[Launch]:
    """Every attempt the backend ever created, in launch order, with its epoch and when it ran."""
    out = []
    if kind == "sim":
        for line in (state / "sim" / "launches.log").read_text().splitlines():
            rec = json.loads(line)
            att = json.loads((state / "sim" / "attempts" / f"{rec['job_id']}.{rec['attempt']}.json").read_text())
            end = att["stopped"][1] if att["stopped"] else att["end_at_s"]
            out.append(Launch(int(rec["job_id"]), rec["attempt"], rec["epoch"], att["started_at_s"], end))
        return out
    for spec_file in (state / "local" / "jobs").glob("*/spec.json"):
        spec = json.loads(spec_file.read_text())
        started = spec_file.parent / "started"
        result = spec_file.parent / "result.json"
        start = float(started.read_text()) if started.exists() else spec["launched_at_s"]
        end = float(json.loads(result.read_text())["ended_at_s"]) if result.exists() else float("inf")
        out.append(Launch(int(spec["job_id"]), spec["attempt"], spec["epoch"], start, end))
    return sorted(out, key=lambda x: x.start)


def _twice(launches: list[Launch]) -> list[str]:
    """Jobs launched twice: an attempt launched more than once, or two attempts of a job running at once."""
    bad = [
        f"job {j} attempt {a} launched {n} times"
        for (j, a), n in Counter((x.job, x.attempt) for x in launches).items()
        if n > 1
    ]
    by_job: dict[int, list[Launch]] = {}
    for x in launches:
        by_job.setdefault(x.job, []).append(x)
    for job, runs in by_job.items():
        runs.sort(key=lambda x: x.start)
        bad += [
            f"job {job}: attempts {a.attempt} and {b.attempt} overlap"
            for a, b in itertools.pairwise(runs)
            if b.start < a.end
        ]
    return bad


def _audit_epochs(pg_url: str) -> list[int]:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as c:
            details = c.execute(select(t.AuditEntry.detail).order_by(t.AuditEntry.id)).scalars().all()
    finally:
        engine.dispose()
    return [int(d["epoch"]) for d in details if isinstance(d, dict) and "epoch" in d]


# ---- the test ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    kind: str
    fleet: list[str]
    threads: int
    per_thread: int


CASES = {
    "sim": Case("sim", ["--fleet", "lab", "--sim-speedup", "60"], threads=4, per_thread=40),
    "local": Case("local", ["--fleet", "local", "--local-gpus", "4"], threads=4, per_thread=15),
}


@pytest.mark.parametrize("how", ["sigkill", "sigstop"])
@pytest.mark.parametrize("kind", ["sim", "local"])
def test_leader_fails_during_a_burst(
    pg_url: str, tmp_path: Path, kind: str, how: str, job_account: str, job_dir: Path
) -> None:
    case = CASES[kind]
    runs_log = job_dir / "runs.log"
    if kind == "sim":  # 60 s of simulated run time: 1 s at speedup 60
        body: dict[str, Any] = {"project": "vision-lab", "gpus": 1, "time_limit_s": 600, "runtime_estimate_s": 60}
    else:
        record = f'echo "$KFABRIC_JOB_ID $KFABRIC_ATTEMPT" >> {shlex.quote(str(runs_log))}; sleep 0.3'
        body = {"project": "default", "gpus": 1, "time_limit_s": 60, "command": record}
    with cluster_of_three(pg_url, tmp_path, case.fleet) as cluster:
        httpx.patch(
            f"{cluster.servers[0].base}/v1/users/admin", json={"posix_user": job_account},
            headers=_auth(cluster.token), timeout=10,
        ).raise_for_status()  # fmt: skip
        leader, epoch, _ = cluster.leader()
        burst = Burst(cluster, body, deadline=time.monotonic() + 90)
        threads = [threading.Thread(target=burst.run, args=(k, case.per_thread)) for k in range(case.threads)]
        for th in threads:
            th.start()
        total = case.threads * case.per_thread
        wait_until = time.monotonic() + 30
        while len(burst.acked) < total // 3 and not burst.errors and time.monotonic() < wait_until:
            time.sleep(0.005)
        acked_at_failure = len(burst.acked)
        failed_at_wall, failed_at = time.time(), time.monotonic()
        leader.signal(signal.SIGKILL if how == "sigkill" else signal.SIGSTOP)

        new_leader, new_epoch, _ = cluster.leader(newer_than=epoch, timeout_s=TTL_S + RENEW_S + 15)
        takeover_s = time.monotonic() - failed_at
        while (cluster.status()["last_cycle_s"] or 0) < failed_at_wall:
            assert time.monotonic() - failed_at < 30, "the new leader ran no cycle"
            time.sleep(0.02)
        first_cycle_s = time.monotonic() - failed_at
        woke = ""
        if how == "sigstop":
            time.sleep(1.0)  # the new leader acts (launches, audits) while the old one sleeps
            leader.signal(signal.SIGCONT)
            deadline = time.monotonic() + 10
            while True:  # it comes back as a standby, heartbeating
                st = cluster.status()
                mine = [s for s in st["standbys"] if s["pid"] == leader.proc.pid and not s["stale"]]  # type: ignore[union-attr]
                if mine and mine[0]["role"] == "standby" and st["lease"]["epoch"] == new_epoch:
                    break
                assert time.monotonic() < deadline, f"the resumed leader is no standby: {st}\n{leader.tail()}"
                time.sleep(0.1)
            woke = "; it woke: " + (
                "caught mid-tick (NotLeader)" if "stopped acting" in leader.log.read_text() else "idle"
            )

        for th in threads:
            th.join(timeout=90)
        assert not any(th.is_alive() for th in threads) and not burst.errors, burst.errors
        final = cluster.wait_final(set(burst.acked.values()), timeout_s=60)
        lost = sorted(k for k, job in burst.acked.items() if job not in final)
        launches = _launches(kind, cluster.state_dir)
        twice = _twice(launches)
        if kind == "local":
            ran = Counter(int(line.split()[0]) for line in runs_log.read_text().splitlines())
            twice += [f"job {j} ran {n} times" for j, n in ran.items() if n > 1]
        print(
            f"\n[{kind}/{how}] {total} jobs, {acked_at_failure} acknowledged before the leader failed, "
            f"{burst.retries} client retries; takeover {takeover_s:.2f} s (lease epoch {epoch} -> {new_epoch}), "
            f"first cycle of the new leader {first_cycle_s:.2f} s after the failure (TTL {TTL_S:g} s, renew "
            f"{RENEW_S:g} s); acknowledged jobs lost: {len(lost)}; jobs launched twice: {len(twice)}{woke}"
        )
        assert 0 < acked_at_failure < total, "the leader did not fail mid-burst"
        assert len(set(burst.acked.values())) == total and not lost, lost
        assert not twice, twice
        assert Counter(j["state"] for j in final.values()) == Counter({"succeeded": total})
        assert {x.job for x in launches} == set(final)
        # fencing: nothing of the old epoch after the new epoch began, in the audit log or at the backend
        audit_epochs = _audit_epochs(pg_url)
        assert audit_epochs == sorted(audit_epochs) and new_epoch in audit_epochs, "an old epoch acted after takeover"
        launch_epochs = [x.epoch for x in launches]
        assert launch_epochs == sorted(launch_epochs), "a launch of an old epoch after the new epoch's first"
        assert new_leader is not leader
