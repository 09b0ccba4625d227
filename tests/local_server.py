"""A real ``kfabric serve --fleet local`` for tests whose jobs run and write output (issue 19: ``-o/-e``, ``job log``).

The server runs as this process's account (root here and in CI: jobs then run as :data:`posix_accounts.JOB_ACCOUNT`,
which the ``job_account`` fixture creates); its state folder is private to it. :func:`serve_local` yields a
:class:`LocalServer` whose operator is mapped to the job account.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfabric.client import Client
from serve_process import kfabric_serve, kill_runners

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
    args = ("--fleet", "local", "--local-gpus", str(gpus), "--tick", "0.2", "--state-dir", str(state),
            "--log-level", "warning")  # fmt: skip
    try:
        with kfabric_serve(top, *args, timeout_s=30) as (url, proc):
            server = LocalServer(top, state, url, proc)
            with server.client() as op:
                op.set_posix_user("admin", account)
            yield server
    finally:
        kill_runners(state)
        subprocess.run(["rm", "-rf", str(top)], check=False)
