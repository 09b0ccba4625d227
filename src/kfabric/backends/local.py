"""The local backend: runs each attempt as a process group on this machine.

State lives in files under ``state_dir/jobs/JOB_ID.ATTEMPT/`` so that a restarted controller (a new
:class:`LocalBackend` on the same ``state_dir``) finds every attempt, running or finished:

=============  ============================================================================================
``spec.json``  what to run (the :class:`~kfabric.backends.base.LaunchSpec`, the GPU indices, the kill grace, the
               account it runs as and its whole environment)
``pid``        the runner's pid, which is also the job's process group id (``none``: claimed, never started)
``started``    when the runner started the job (seconds since the epoch)
``cancel``     a cancel was asked for, with its grace
``result.json``  the final record: ``state``, ``exit_code``, ``ended_at_s``, ``message``
``script``     the batch script stored at submit, when the job has one (the runner hands it to the job)
``stdout``     the job's standard output and ``stderr`` its standard error when the spec names no output file;
               otherwise what went wrong before the job started (e.g. an output file it could not create)
=============  ============================================================================================

Output (``LaunchSpec.stdout_path``/``stderr_path``, Slurm's ``-o``/``-e`` resolved by the controller): the runner
creates (truncates, or appends to with ``open_mode=append``) the files *after* switching to the job's account and
entering its workdir, so the kernel checks the account's own rights and root never creates a file at a path a user
chose. The same path twice is one file (standard error joins standard output, Slurm's default).

The attempt directory is created with :func:`os.mkdir`, which fails when it exists: that is what makes
:meth:`LocalBackend.launch` idempotent, across controller crashes too. A runner
(:mod:`kfabric.backends.local_runner`) started in a new session watches the job, enforces its time limit and
writes ``result.json``, so jobs keep running, and end on time, while the controller is down.

The runner records its start time with the wall clock; ``clock`` (default :func:`time.time`) must agree with it.

Identity (``backends/identity.py``): the job runs as the POSIX account mapped to its user (uid, gid and every group
of the account) when the server is root, as the server's own account otherwise; a user without a usable account
is refused at launch (a ``ValueError`` naming the fix). The job gets a clean environment (:func:`job_env`), starts in
its declared workdir or its account's home (entered as the account), and cannot read the attempt directories:
``jobs/`` and each attempt directory are 0700 and every file in them 0600, owned by the server's account; the
runner opens ``stdout``/``stderr`` and hands the job the open files.

Fencing (``backends/fencing.py``): ``state_dir/fence.d`` holds the highest lease epoch any controller fenced it with
(:meth:`LocalBackend.fence`, called at takeover). A backend object whose epoch is lower refuses launch and
terminate with ``Fenced``; a launch checks again once ``spec.json`` is written and, if the fence rose meanwhile,
claims the attempt as lost before its runner starts (the new leader requeues it). ``spec.json`` records the epoch
an attempt was launched under.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfabric.backends.base import BackendUnavailable, LaunchSpec, NodeFact, RunReport, RunState
from kfabric.backends.fencing import EpochGuard, Fenced, FileFence
from kfabric.backends.identity import Account, IdentityRefused, account_for, job_env, server_is_root, workdir_problem
from kfabric.backends.local_runner import (
    CANCEL,
    DEFAULT_KILL_GRACE_S,
    NO_RUNNER,
    PID,
    RESULT,
    SCRIPT,
    SPEC,
    STARTED,
    STDERR,
    STDOUT,
    group_members,
    is_zombie,
    kill_group_except,
    open_private,
    proc_available,
    publish_once,
    write_atomic,
)
from kfabric.backends.nvidia_health import HEALTH_EVERY_S, gpu_health

#: an attempt without a ``pid`` file is taken as starting for this long, then as lost
LAUNCH_GRACE_S = 30.0
#: a runner still alive this long after a cancel's grace ran out is killed by the backend itself
CANCEL_ESCALATE_S = 5.0
_RUNNER_MODULE = "kfabric.backends.local_runner"

#: runners this process started, by pid, so they are reaped (no zombies) whichever backend instance polls
_RUNNERS: dict[int, subprocess.Popen[bytes]] = {}


def detect_gpus() -> int:
    """How many GPUs ``nvidia-smi`` lists on this machine (0 when it is missing or fails)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in done.stdout.splitlines() if line.strip())


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {"state": RunState.LOST.value, "message": f"unreadable {path.name}"}
    return value if isinstance(value, dict) else {"state": RunState.LOST.value, "message": f"bad {path.name}"}


def _parse_pid(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return int(text.strip())


def _parse_key(name: str) -> tuple[str, int] | None:
    job_id, dot, attempt = name.rpartition(".")
    if not dot or not job_id or not attempt.isdigit() or name.startswith("."):
        return None
    return job_id, int(attempt)


def _cmdline(pid: int) -> list[str] | None:
    """The command line of ``pid`` from /proc, or None where it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


class LocalBackend:
    """Runs attempts on this machine; see the module docstring. ``node`` is the only node it accepts."""

    name = "local"
    #: jobs write output files (``LaunchSpec.stdout_path``), created by the job's account
    output_files = True

    def __init__(
        self,
        state_dir: Path,
        node: str = "local",
        gpus: int | None = None,
        clock: Callable[[], float] = time.time,
        kill_grace_s: float = DEFAULT_KILL_GRACE_S,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.jobs_dir = self.state_dir / "jobs"
        self.node = node
        self.detected_gpus = detect_gpus() if gpus is None else gpus
        self.clock = clock
        #: seconds between SIGTERM and SIGKILL when a job reaches its time limit
        self.kill_grace_s = kill_grace_s
        self._guard = EpochGuard(self.name, FileFence(self.state_dir / "fence.d"))
        #: attempt directory name -> its output files (read once from spec.json)
        self._outputs: dict[str, dict[str, str]] = {}

    def fence(self, epoch: int) -> None:
        """Act for lease ``epoch`` from now on; backend objects of older epochs refuse launch and terminate."""
        try:
            self._private_dirs()
            self._guard.raise_to(epoch)
        except OSError as exc:
            raise BackendUnavailable(f"cannot raise the fence {self.state_dir / 'fence.d'}: {exc}") from exc

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
        return self.jobs_dir / f"{job_id}.{attempt}"

    # ------------------------------------------------------------------------------------------- launch

    def _gpus_of(self, spec: LaunchSpec) -> list[int]:
        if not spec.job_id or spec.job_id.startswith(".") or "/" in spec.job_id or "\0" in spec.job_id:
            raise ValueError(f"job id {spec.job_id!r} cannot name a directory")
        if spec.attempt < 0:
            raise ValueError(f"attempt {spec.attempt} of job {spec.job_id!r} is negative")
        gpus: list[int] = []
        for part in spec.nodes:
            if part.node != self.node:
                raise ValueError(
                    f"local backend runs on node {self.node!r}; attempt {spec.key} names node {part.node!r}"
                )
            gpus.extend(part.gpus)
        bad = [g for g in gpus if not 0 <= g < self.detected_gpus]
        if bad:
            raise ValueError(f"attempt {spec.key} asks for GPUs {bad}; node {self.node!r} has {self.detected_gpus}")
        return list(dict.fromkeys(gpus))

    def _identity(self, spec: LaunchSpec) -> tuple[Account, str]:
        """The account the attempt runs as and the directory it starts in (IdentityRefused: it cannot run)."""
        account = account_for(spec.user or f"of job {spec.job_id}", spec.posix_user)
        workdir = spec.workdir or account.home
        problem = workdir_problem(workdir, account)
        if problem:
            fix = "pass a --workdir the account can enter" if spec.workdir else "create the home or pass --workdir"
            owner = "" if spec.workdir else f" (the home of {account.name!r})"
            raise IdentityRefused(f"job {spec.job_id} cannot start as {account.name!r}: {problem}{owner}; {fix}")
        return account, workdir

    def _private_dirs(self) -> None:
        """``state_dir`` and ``jobs/``, 0700 (jobs never see another attempt's files)."""
        for path in (self.state_dir, self.jobs_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.stat().st_mode & 0o077:
                path.chmod(0o700)

    def launch(self, spec: LaunchSpec) -> None:
        self._guard.check()
        self._launch(spec)

    def _launch(self, spec: LaunchSpec) -> None:
        gpus = self._gpus_of(spec)
        where = self.attempt_dir(spec.job_id, spec.attempt)
        if where.exists():
            return  # launched before: never started twice, whatever its user's account is now
        account, workdir = self._identity(spec)
        try:
            self._private_dirs()
        except OSError as exc:
            raise BackendUnavailable(f"cannot create {self.jobs_dir}: {exc}") from exc
        try:
            os.mkdir(where, 0o700)
        except FileExistsError:
            return  # launched before (maybe by a controller that crashed since): never start it twice
        except OSError as exc:
            raise BackendUnavailable(f"cannot create {where}: {exc}") from exc
        record = {
            "job_id": spec.job_id,
            "attempt": spec.attempt,
            "name": spec.name,
            "command": spec.command,
            "nodes": [
                {"node": p.node, "gpus": list(p.gpus), "gpu_milli": p.gpu_milli, "cpu_milli": p.cpu_milli}
                for p in spec.nodes
            ],
            "gpus": gpus,
            "time_limit_s": spec.time_limit_s,
            "env": dict(spec.env),
            "environment": job_env(account, spec.env, self._forced_env(spec, gpus)),
            "workdir": workdir,
            "script": bool(spec.script),
            "stdout_path": spec.stdout_path,
            "stderr_path": spec.stderr_path or spec.stdout_path,
            "open_mode": spec.open_mode,
            "run_as": self._run_as(account),
            "kill_grace_s": self.kill_grace_s,
            "launched_at_s": self.clock(),
            "epoch": self._guard.epoch or 0,
        }
        try:
            if spec.script:
                write_atomic(where / SCRIPT, spec.script)  # the stored copy; the runner hands it to the job
            write_atomic(where / SPEC, json.dumps(record))
            self._recheck_fence(where)
            with open_private(where / "runner.log") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", _RUNNER_MODULE, str(where)],
                    cwd=where,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            shutil.rmtree(where, ignore_errors=True)  # no runner started: leave no trace, a retry starts afresh
            raise BackendUnavailable(f"cannot start the runner of {spec.key}: {exc}") from exc
        _RUNNERS[proc.pid] = proc

    def _recheck_fence(self, where: Path) -> None:
        """The fence rose while the attempt was being created: claim it (no runner will start it) as lost, so the
        new leader requeues it, and refuse."""
        try:
            self._guard.check()
        except Fenced:
            if publish_once(where / PID, NO_RUNNER):
                self._publish(where, RunState.LOST, "withdrawn: launched by a fenced controller")
            raise

    @staticmethod
    def _forced_env(spec: LaunchSpec, gpus: list[int]) -> dict[str, str]:
        return {
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),
            "KFABRIC_JOB_ID": spec.job_id,
            "KFABRIC_ATTEMPT": str(spec.attempt),
        }

    @staticmethod
    def _run_as(account: Account) -> dict[str, object] | None:
        """What the runner switches to before it starts the job (None: a server that is not root runs jobs as
        itself, which :func:`account_for` checked is the mapped account)."""
        if not server_is_root():
            return None
        return {"user": account.name, "uid": account.uid, "gid": account.gid, "groups": list(account.groups)}

    # ------------------------------------------------------------------------------------------- terminate

    def terminate(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None:
        self._guard.check()
        self._terminate(job_id, attempt, grace_s)

    def _terminate(self, job_id: str, attempt: int, grace_s: float) -> None:
        where = self.attempt_dir(job_id, attempt)
        try:
            if not where.is_dir() or (where / RESULT).exists():
                return
            underway = (where / CANCEL).exists()
            if underway and grace_s > 0:
                return  # cancelled before: its grace runs from then, a repeat changes nothing
            if not underway:
                write_atomic(where / CANCEL, json.dumps({"grace_s": grace_s, "at_s": self.clock()}))
            pid_text = _read_text(where / PID)
            if pid_text is None:
                if publish_once(where / PID, NO_RUNNER):  # the runner has not claimed it: it never will now
                    self._publish(where, RunState.CANCELLED, "cancelled before the job started")
                    return
                pid_text = _read_text(where / PID)
            pid = _parse_pid(pid_text)
            if pid is None or not self._runner_alive(pid, where):
                if pid is not None:
                    self._kill_leftovers(pid, job_id, attempt)
                self._publish(where, RunState.CANCELLED, "cancelled; its runner was gone")
                return
            if not underway:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)  # the job's whole group gets it; the runner then waits the grace
            if grace_s <= 0:
                if proc_available():
                    kill_group_except(pid, signal.SIGKILL, keep=pid)  # the runner reaps the job and records it
                else:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    self._publish(where, RunState.CANCELLED, "cancelled")
        except OSError as exc:
            raise BackendUnavailable(f"cannot terminate {job_id}.{attempt}: {exc}") from exc

    # ------------------------------------------------------------------------------------------- poll

    def poll(self) -> list[RunReport]:
        try:
            with os.scandir(self.jobs_dir) as listing:
                entries = sorted(e.name for e in listing if e.is_dir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendUnavailable(f"cannot read {self.jobs_dir}: {exc}") from exc
        reports = []
        try:
            for name in entries:
                key = _parse_key(name)
                if key is not None:
                    reports.append(self._report(self.jobs_dir / name, *key))
        except OSError as exc:
            raise BackendUnavailable(f"cannot read {self.jobs_dir}: {exc}") from exc
        for pid, proc in list(_RUNNERS.items()):
            if proc.poll() is not None:
                del _RUNNERS[pid]
        return reports

    def nodes(self) -> list[NodeFact]:
        """This machine's GPU health from ``nvidia-smi`` (:mod:`kfabric.backends.nvidia_health`: a missing or
        unhealthy GPU drains the node, a driver nvidia-smi cannot reach takes it down; no nvidia-smi: up), read at
        most every ``HEALTH_EVERY_S`` seconds of ``clock`` (the controller calls this inside its transaction)."""
        now = self.clock()
        last: tuple[float, NodeFact] | None = getattr(self, "_health", None)
        if last is None or not 0 <= now - last[0] < HEALTH_EVERY_S:
            last = (now, gpu_health(self.node, self.detected_gpus))
            self._health = last
        return [last[1]]

    def forget(self, job_id: str, attempt: int) -> bool:
        """Delete a finished attempt's directory (once the controller recorded its result).

        Returns whether it was deleted; a running or unknown attempt is left alone. A forgotten attempt is
        unknown to the backend: launching the same ``(job_id, attempt)`` again would run it again.
        """
        where = self.attempt_dir(job_id, attempt)
        if not (where / RESULT).exists():
            return False
        shutil.rmtree(where, ignore_errors=True)
        self._outputs.pop(where.name, None)
        return True

    # ------------------------------------------------------------------------------------------- internals

    def _report(self, where: Path, job_id: str, attempt: int) -> RunReport:
        outputs = self._outputs.get(where.name)
        if outputs is None:
            record = _read_json(where / SPEC) or {}
            out = str(record.get("stdout_path") or where / STDOUT)
            outputs = {"stdout": out, "stderr": str(record.get("stderr_path") or where / STDERR)}
            if record:
                self._outputs[where.name] = outputs
        try:
            started: float | None = float(_read_text(where / STARTED) or "")
        except ValueError:
            started = None
        result = _read_json(where / RESULT)
        if result is None:
            result = self._settle(where, job_id, attempt)
        if result is None:
            return RunReport(job_id, attempt, RunState.RUNNING, started_at_s=started, outputs=outputs)
        try:
            state = RunState(result.get("state"))
        except ValueError:
            state = RunState.LOST
        exit_code = result.get("exit_code")
        ended = result.get("ended_at_s")
        return RunReport(
            job_id,
            attempt,
            state,
            started_at_s=started,
            ended_at_s=float(ended) if ended is not None else None,
            exit_code=int(exit_code) if exit_code is not None else None,
            message=str(result.get("message", "")),
            outputs=outputs,
        )

    def _settle(self, where: Path, job_id: str, attempt: int) -> dict[str, Any] | None:
        """For an attempt without a result: None while it runs, else the result it gets now (lost, cancelled)."""
        pid_text = _read_text(where / PID)
        if pid_text is None:
            if self.clock() - self._launched_at(where) < LAUNCH_GRACE_S:
                return None  # just launched; the runner is starting
            if publish_once(where / PID, NO_RUNNER):  # from now on the runner, should it start late, gives up
                self._publish(where, RunState.LOST, f"the runner did not start within {LAUNCH_GRACE_S:g} s")
                return _read_json(where / RESULT)
            pid_text = _read_text(where / PID)
        pid = _parse_pid(pid_text)
        if pid is not None and self._runner_alive(pid, where):
            if not self._cancel_overdue(where):
                return None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self._publish(where, RunState.CANCELLED, "cancelled; killed outright once its grace ran out")
            return _read_json(where / RESULT)
        result = _read_json(where / RESULT)  # the runner may have published it just before it exited
        if result is not None:
            return result
        if pid is not None:
            self._kill_leftovers(pid, job_id, attempt)
        if (where / CANCEL).exists():
            self._publish(where, RunState.CANCELLED, "cancelled; its runner vanished")
        else:
            self._publish(where, RunState.LOST, "the runner vanished without an exit record")
        return _read_json(where / RESULT)

    def _publish(self, where: Path, state: RunState, message: str) -> None:
        record = {"state": state.value, "exit_code": None, "ended_at_s": self.clock(), "message": message}
        publish_once(where / RESULT, json.dumps(record))

    def _launched_at(self, where: Path) -> float:
        spec = _read_json(where / SPEC)
        if spec is not None and isinstance(spec.get("launched_at_s"), int | float):
            return float(spec["launched_at_s"])
        return where.stat().st_mtime

    def _cancel_overdue(self, where: Path) -> bool:
        cancel = _read_json(where / CANCEL)
        if cancel is None:
            return False
        try:
            due = float(cancel["at_s"]) + float(cancel.get("grace_s", 0.0)) + CANCEL_ESCALATE_S
        except (KeyError, TypeError, ValueError):
            return False
        return self.clock() > due

    def _runner_alive(self, pid: int, where: Path) -> bool:
        """Whether the runner ``pid`` of the attempt in ``where`` still runs (reaping it if it is our child)."""
        proc = _RUNNERS.get(pid)
        if proc is not None:
            if proc.poll() is not None:
                del _RUNNERS[pid]
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # another user's process: the pid was reused
        if is_zombie(pid):
            return False
        cmdline = _cmdline(pid)
        return cmdline is None or str(where) in cmdline  # a different command line: the pid was reused

    def _kill_leftovers(self, pgid: int, job_id: str, attempt: int) -> None:
        """SIGKILL what is left of a job whose runner vanished, so its GPUs are free for the next attempt.

        Only processes of the group that carry the attempt's ``KFABRIC_JOB_ID``/``KFABRIC_ATTEMPT`` (or, forked
        but not yet the job, the runner's command line) are killed, as the group id may have been reused; without
        /proc nothing is killed.
        """
        where = str(self.attempt_dir(job_id, attempt))
        marks = (f"KFABRIC_JOB_ID={job_id}".encode(), f"KFABRIC_ATTEMPT={attempt}".encode())
        for pid in group_members(pgid, live_only=True):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if all(mark in environ for mark in marks) or where in (_cmdline(pid) or []):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
