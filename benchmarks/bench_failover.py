"""Failover and shared-store throughput: real ``kfabric serve`` processes against one PostgreSQL.

    .venv/bin/python benchmarks/bench_failover.py                        # private PostgreSQL, TTL 10 s, 10 kills
    .venv/bin/python benchmarks/bench_failover.py --lease-ttl 3 --kills 5 --db postgresql+psycopg://USER@HOST/DB

1. Takeover: two servers (lab fleet, sim backend, one state folder); the leader is killed with SIGKILL, the time
   until the survivor's ``/v1/status`` names a new leader at a higher epoch is taken, and the killed server is
   started again (a standby) before the next kill. Prints min/median/max over ``--kills`` kills, and the same for
   the new leader's first cycle (its heartbeat carries the cycle time: up to one renew interval late).
2. Submissions/s: ``--clients`` threads submit ``--jobs`` jobs (one GPU, idempotent client keys) spread over the
   APIs of one server, then of two servers; both against the same store (the controller schedules meanwhile).

Without ``--db`` a private PostgreSQL is started (``tests/pg_server.py``; it needs PostgreSQL installed). Run by
hand; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(self, name: str, db: str, state: Path, ttl: float, env: dict[str, str]) -> None:
        self.name, self.db, self.state, self.ttl, self.env = name, db, state, ttl, env
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "kfabric.cli.main", "serve", "--db", self.db, "--fleet", "lab",
            "--sim-speedup", "60", "--tick", "0.5", "--lease-ttl", str(self.ttl), "--port", str(self.port),
            "--state-dir", str(self.state), "--log-level", "error",
        ]  # fmt: skip
        log = open(self.state.parent / f"{self.name}.log", "ab")  # noqa: SIM115 (kept by the process)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start (log {self.state.parent / self.name}.log)")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None


def _status(server: Server, token: str) -> dict[str, Any]:
    r = httpx.get(f"{server.base}/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    r.raise_for_status()
    answer: dict[str, Any] = r.json()
    return answer


def _leader(servers: list[Server], token: str, newer_than: int) -> tuple[Server, int]:
    while True:
        for server in servers:
            if server.proc is None:
                continue
            with contextlib.suppress(httpx.HTTPError):
                st = _status(server, token)
                if st["leader"] is not None and st["lease"]["epoch"] > newer_than:
                    pid = st["leader"]["pid"]
                    return next(s for s in servers if s.proc is not None and s.proc.pid == pid), st["lease"]["epoch"]
        time.sleep(0.02)


def takeovers(servers: list[Server], token: str, kills: int) -> tuple[list[float], list[float]]:
    lease_s, cycle_s = [], []
    leader, epoch = _leader(servers, token, 0)
    for k in range(kills):
        time.sleep(1.0 + (k % 3))  # kill at different points of the renew interval
        wall, t0 = time.time(), time.monotonic()
        leader.kill()
        new, epoch = _leader(servers, token, epoch)
        lease_s.append(time.monotonic() - t0)
        while (_status(new, token)["last_cycle_s"] or 0) < wall:
            time.sleep(0.02)
        cycle_s.append(time.monotonic() - t0)
        print(f"  kill {k + 1}: lease taken after {lease_s[-1]:.2f} s, first cycle seen after {cycle_s[-1]:.2f} s")
        leader.start()  # back as a standby
        leader = new
    return lease_s, cycle_s


def submissions(servers: list[Server], token: str, jobs: int, clients: int, tag: str) -> float:
    per = jobs // clients
    body = {"project": "vision-lab", "gpus": 1, "time_limit_s": 3600, "runtime_estimate_s": 3000}

    def client(k: int) -> None:
        with httpx.Client(base_url=servers[k % len(servers)].base, headers={"Authorization": f"Bearer {token}"}) as c:
            for i in range(per):
                r = c.post("/v1/jobs", json={**body, "client_key": f"{tag}-{k}-{i}"}, timeout=30)
                r.raise_for_status()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return per * clients / (time.perf_counter() - t0)


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from pg_server import PgServer

    with PgServer() as pg:
        yield pg.create_database("bench_failover")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", help="PostgreSQL URL of an empty database (default: a private server)")
    p.add_argument("--lease-ttl", type=float, default=10.0)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kfabric-bench-failover-"))
    state = tmp / "state"
    env = {**os.environ, "KFABRIC_AUDIT_KEY_FILE": str(tmp / "audit.key")}
    with database(args.db) as url:
        servers = [Server(f"server-{i}", url, state, args.lease_ttl, env) for i in (1, 2)]
        try:
            servers[0].start()
            token = (state / "operator.token").read_text().strip()
            servers[1].start()
            print(f"takeover: 2 servers, lease TTL {args.lease_ttl:g} s (renew every {args.lease_ttl / 3:.2f} s)")
            lease_s, cycle_s = takeovers(servers, token, args.kills)
            for what, xs in (("lease taken", lease_s), ("first cycle seen", cycle_s)):
                print(
                    f"{what} over {len(xs)} kills: min {min(xs):.2f} s, median {statistics.median(xs):.2f} s, "
                    f"max {max(xs):.2f} s"
                )
            one = submissions(servers[:1], token, args.jobs, args.clients, "one")
            two = submissions(servers, token, args.jobs, args.clients, "two")
            print(f"submissions: {args.clients} clients, {args.jobs} jobs: one API server {one:.0f}/s, two {two:.0f}/s")
        finally:
            for server in servers:
                server.kill()


if __name__ == "__main__":
    main()
