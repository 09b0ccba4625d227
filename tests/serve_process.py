"""A real ``kfabric serve`` process for tests that drive it as users do (HTTP, the CLI, a browser): started in
a folder of its own on a free port, waited for until ``/healthz`` answers, and stopped at the end. The helpers
that need one (``local_server.serve_local``, ``web/browsing.serve_lab``) add what is theirs around it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def kfabric_serve(
    top: Path, *args: str, timeout_s: float = 60.0, env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``kfabric serve ARGS --port P`` run in ``top`` (its output in ``top/server.log``; ``env`` instead of this
    process's environment); yields its URL and process once it answers. At the end its process group gets
    SIGTERM, and SIGKILL if it has not stopped in 20 s."""
    port = free_port()
    cmd = [sys.executable, "-m", "kfabric.cli.main", "serve", *args, "--port", str(port)]
    log = open(top / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=top)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, (top / "server.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, (top / "server.log").read_text()
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def kill_runners(state: Path) -> None:
    """Kill what the ``local`` backend's job runners left running under ``state`` (they outlive the server)."""
    for pid_file in (state / "local" / "jobs").glob("*/pid"):
        text = pid_file.read_text().strip()
        with contextlib.suppress(OSError):
            if text.isdigit() and str(pid_file.parent) in Path(f"/proc/{text}/cmdline").read_text(errors="replace"):
                os.killpg(int(text), signal.SIGKILL)
