"""A real ``kfabric serve --fleet local`` for tests whose jobs run and write output (issue 19: ``-o/-e``, ``job log``).

The server runs as this process's account (root here and in CI: jobs then run as :data:`posix_accounts.JOB_ACCOUNT`,
which the ``job_account`` fixture creates); its state folder is private to it. :func:`serve_local` yields a
:class:`LocalServer` whose operator is mapped to the job account.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kfabric.client import Client

FINAL = ("succeeded", "failed", "cancelled", "timeout")


@dataclass
class LocalServer:
    top: Path
    state: Path
    url: str
    proc: subprocess.Popen[bytes]

    @property
    def operator_token(self) -> str:
        return (self.state / "operator.token").read_text().strip()

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token or self.operator_token)

    def cli(self, *args: str, token: str | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """``kfabric ARGS`` against this server, as a user would run it."""
        env = {**os.environ, "KFABRIC_URL": self.url, "KFABRIC_TOKEN": token or self.operator_token}
        return subprocess.run(
            [sys.executable, "-m", "kfabric.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_job(client: Client, job_id: int, states: tuple[str, ...] = FINAL, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = client.job(job_id)
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}: {job['reason']}"
        time.sleep(0.1)


@contextlib.contextmanager
def serve_local(account: str, gpus: int = 2) -> Iterator[LocalServer]:
    top = Path(tempfile.mkdtemp(prefix="kfabric-output-", dir="/tmp"))
    top.chmod(0o755)
    state = top / ".kfabric"
    port = _free_port()
    cmd = [
        sys.executable, "-m", "kfabric.cli.main", "serve", "--fleet", "local", "--local-gpus", str(gpus),
        "--tick", "0.2", "--port", str(port), "--state-dir", str(state), "--log-level", "warning",
    ]  # fmt: skip
    log = open(top / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=top)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (top / "server.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, (top / "server.log").read_text()
            time.sleep(0.05)
        server = LocalServer(top, state, f"http://127.0.0.1:{port}", proc)
        with server.client() as op:
            op.set_posix_user("admin", account)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        log.close()
        for pid_file in (state / "local" / "jobs").glob("*/pid"):
            text = pid_file.read_text().strip()
            with contextlib.suppress(OSError):
                if text.isdigit() and str(pid_file.parent) in Path(f"/proc/{text}/cmdline").read_text(errors="replace"):
                    os.killpg(int(text), signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(top)], check=False)
