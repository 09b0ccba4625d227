"""The per-attempt runner of the local backend: ``python -m kfabric.backends.local_runner ATTEMPT_DIR``.

:class:`~kfabric.backends.local.LocalBackend` starts one runner per attempt, in a new session, so the runner
is the leader of its own process group and outlives the controller. The runner:

1. reads ``spec.json`` and claims the attempt by creating the ``pid`` file exclusively. Whoever creates ``pid``
   first owns the attempt: if the controller already declared it lost (or another runner claimed it), the runner
   exits without starting anything, so an attempt never runs twice;
2. runs ``/bin/sh -c COMMAND`` — or the job's stored script (``script``), with its ``#!`` interpreter (default
   ``/bin/bash``), from a sealed in-memory copy — in its own process group (``killpg`` on the runner's pid reaches
   the whole job),
   as the account in ``run_as`` (uid, gid, groups; the runner itself stays the server's account), in ``workdir``
   (entered after the switch, so as the account), with exactly the environment ``spec.json`` lists and its
   stdout/stderr going to the output files of the spec (``stdout_path``/``stderr_path``, opened as the account
   after the switch) or, when it names none, to files the runner opened (0600) in the attempt directory;
3. enforces the time limit itself (it holds while the controller is down): SIGTERM to the group, then SIGKILL
   after a grace period;
4. on a SIGTERM from outside (a cancel), forwards it to the job, waits the grace written in the ``cancel`` marker,
   then kills what is left;
5. when the job's shell has ended, kills whatever is left of the group, reaps it (the runner is a child subreaper
   on Linux, so orphaned job processes are reaped even where PID 1 does not reap), and publishes ``result.json``.

Every record is written atomically (a temporary file, then a rename or a link). ``pid`` and ``result.json`` are
published with :func:`publish_once`, which never overwrites: the first writer wins.

This module imports nothing from kfabric so that a runner starts fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

#: the files of an attempt directory
SPEC, PID, STARTED, RESULT, CANCEL, STDOUT, STDERR, SCRIPT = (
    "spec.json",
    "pid",
    "started",
    "result.json",
    "cancel",
    "stdout",
    "stderr",
    "script",
)
#: the interpreter of a script without a ``#!`` line
DEFAULT_INTERPRETER = "/bin/bash"
#: what a start-up failure in the job's process writes (to the attempt's private ``stderr``) before it gives up
_FAILURE_MARK = "kfabric: "
#: what the ``pid`` file holds when the controller claimed an attempt whose runner never started
NO_RUNNER = "none"
#: seconds between SIGTERM and SIGKILL at the time limit, unless spec.json says otherwise
DEFAULT_KILL_GRACE_S = 5.0
#: how long the runner waits for killed processes to disappear before it publishes the result anyway
_REAP_DEADLINE_S = 3.0
_TICK_S = 0.05
_PR_SET_CHILD_SUBREAPER = 36
_PROC = Path("/proc")


# --------------------------------------------------------------------------------------------- shared helpers


def open_private(path: Path) -> IO[bytes]:
    """Open ``path`` for writing (created or truncated), readable by its owner only (0600, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def _write_private(path: Path, text: str) -> None:
    with open_private(path) as out:
        out.write(text.encode())


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600) so that readers see the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_private(tmp, text)
    os.replace(tmp, path)


def publish_once(path: Path, text: str) -> bool:
    """Create ``path`` (0600) with ``text`` atomically unless it exists. Returns whether this call created it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    _write_private(tmp, text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def exit_code_of(returncode: int) -> int:
    """A Popen return code as a shell reports it: killed by signal N → 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def proc_available() -> bool:
    """Whether /proc can be used to list processes (Linux)."""
    return (_PROC / "self" / "stat").exists()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of ``pid`` from /proc, or None when it is gone."""
    try:
        data = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    return fields[0], int(fields[2])


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but was not reaped yet (False when unknown)."""
    st = _stat(pid)
    return st is not None and st[0] == "Z"


def group_members(pgid: int, *, live_only: bool = False) -> list[int]:
    """Pids in process group ``pgid`` (from /proc; empty where /proc is missing). ``live_only`` drops zombies."""
    pids = []
    try:
        entries = list(os.scandir(_PROC))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        st = _stat(int(entry.name))
        if st is None or st[1] != pgid or (live_only and st[0] == "Z"):
            continue
        pids.append(int(entry.name))
    return pids


def kill_group_except(pgid: int, sig: int, keep: int) -> None:
    """Send ``sig`` to every process of group ``pgid`` except ``keep`` (needs /proc)."""
    for pid in group_members(pgid, live_only=True):
        if pid != keep:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


# --------------------------------------------------------------------------------------------- the job's process


def interpreter_of(script: bytes) -> list[str]:
    """The interpreter (and its one argument, as Linux reads a ``#!`` line) that runs ``script``; a script without
    ``#!`` runs with :data:`DEFAULT_INTERPRETER`."""
    if not script.startswith(b"#!"):
        return [DEFAULT_INTERPRETER]
    line = script[2:].split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line:
        return [DEFAULT_INTERPRETER]
    parts = line.split(None, 1)
    return [parts[0], parts[1].strip()] if len(parts) == 2 else [parts[0]]


def _sealed_copy(data: bytes, name: str) -> int:
    """A read-only in-memory file holding ``data`` (sealed: no one can change it), as an inheritable descriptor."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fail_start(message: str) -> None:
    """In the job's process before exec: say what failed (on the attempt's private stderr), then give up."""
    with contextlib.suppress(OSError):
        os.write(2, f"{_FAILURE_MARK}{message}\n".encode(errors="replace"))
    raise RuntimeError(message)


def _as_the_job(spec: dict[str, Any]) -> Callable[[], None] | None:
    """What the job's process does after it became the job's account, before exec: enter the workdir, then create
    (or truncate, or append to) the output files, so the kernel checks the account's rights, never root's."""
    workdir = str(spec.get("workdir") or "")
    out_path = str(spec.get("stdout_path") or "")
    err_path = str(spec.get("stderr_path") or "") or out_path
    if not workdir and not out_path:
        return None
    mode = os.O_APPEND if spec.get("open_mode") == "append" else os.O_TRUNC
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOCTTY | mode

    def enter() -> None:
        if workdir:
            try:
                os.chdir(workdir)
            except OSError as exc:
                _fail_start(f"cannot enter its workdir {workdir!r}: {exc.strerror}")
        if not out_path:
            return
        opened: dict[str, int] = {}
        for path in dict.fromkeys((out_path, err_path)):
            try:
                opened[path] = os.open(path, flags, 0o666)
            except OSError as exc:
                _fail_start(f"cannot open its output file {path!r}: {exc.strerror}")
        os.dup2(opened[out_path], 1)
        os.dup2(opened[err_path], 2)
        for fd in opened.values():
            if fd > 2:
                os.close(fd)

    return enter


# --------------------------------------------------------------------------------------------- the runner


class Runner:
    """Runs one attempt; see the module docstring."""

    def __init__(self, attempt_dir: Path) -> None:
        self.dir = attempt_dir
        self.pid = os.getpid()
        #: set by a SIGTERM that the runner did not send itself
        self.outside_term = False
        #: whether that SIGTERM came after the job's shell started (and so reached its process group)
        self.term_reached_job = False
        #: why the runner is stopping the job itself ("timeout" or "cancel"), None while it runs freely
        self.stopping: str | None = None
        self.child: subprocess.Popen[bytes] | None = None

    # ----------------------------------------------------------------------------------- signals and records

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping is None and not self.outside_term:
            self.outside_term = True
            self.term_reached_job = self.child is not None

    def _publish_result(self, state: str, exit_code: int | None, message: str = "") -> None:
        record = {"state": state, "exit_code": exit_code, "ended_at_s": time.time(), "message": message}
        publish_once(self.dir / RESULT, json.dumps(record))

    def _cancel_grace_s(self) -> float:
        try:
            return float(json.loads((self.dir / CANCEL).read_text()).get("grace_s", 0.0))
        except (OSError, ValueError, AttributeError):
            return 0.0

    # ----------------------------------------------------------------------------------- the job

    def _env(self, spec: dict[str, Any]) -> dict[str, str]:
        """Exactly the environment the backend wrote (never the runner's, which is the server's)."""
        env = {str(k): str(v) for k, v in (spec.get("environment") or spec.get("env") or {}).items()}
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.get("gpus", []))
        env["KFABRIC_JOB_ID"] = str(spec["job_id"])
        env["KFABRIC_ATTEMPT"] = str(spec["attempt"])
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        return env

    @staticmethod
    def _identity(spec: dict[str, Any]) -> dict[str, Any]:
        """Popen's ``user``/``group``/``extra_groups``/``umask`` for the job, and a ``preexec_fn`` that, after the
        switch, enters its workdir and opens its output files (Popen's ``cwd`` would enter it as the runner, before
        the switch; a file the runner opened would be created by root at a path the user chose)."""
        run_as = spec.get("run_as")
        how: dict[str, Any] = {"umask": 0o077, "preexec_fn": _as_the_job(spec)}
        if run_as:
            how.update(user=int(run_as["uid"]), group=int(run_as["gid"]), extra_groups=list(run_as["groups"]))
        return how

    def _start_failure(self, spec: dict[str, Any], exc: Exception) -> str:
        who = (spec.get("run_as") or {}).get("user", "the server's account")
        if isinstance(exc, subprocess.SubprocessError) and "preexec_fn" in str(exc):
            try:
                said = (self.dir / STDERR).read_text(errors="replace").splitlines()
            except OSError:
                said = []
            told = [line.removeprefix(_FAILURE_MARK) for line in said if line.startswith(_FAILURE_MARK)]
            if told:
                return f"could not start the job as {who!r}: {told[-1]}"
            return f"could not start the job: account {who!r} cannot enter its workdir {spec.get('workdir')!r}"
        return f"could not start the job as {who!r}: {exc}"

    def _argv(self, spec: dict[str, Any]) -> tuple[list[str], tuple[int, ...]]:
        """What the job execs, and the descriptors it inherits: ``/bin/sh -c COMMAND``, or the stored script run by
        its ``#!`` interpreter (default ``/bin/bash``) from a sealed in-memory copy (``/proc/self/fd/N``): the job's
        account cannot open the attempt directory, and nothing the job does changes the script it runs."""
        if not spec.get("script"):
            return ["/bin/sh", "-c", str(spec["command"])], ()
        text = (self.dir / SCRIPT).read_bytes()
        fd = _sealed_copy(text, f"kfabric-{spec['job_id']}.{spec['attempt']}")
        return [*interpreter_of(text), f"/proc/self/fd/{fd}"], (fd,)

    def _group_alive(self) -> bool:
        """Whether the job still has live processes (its shell, or others of the group where /proc tells)."""
        if self.child is not None and self.child.poll() is None:
            return True
        return any(pid != self.pid for pid in group_members(self.pid, live_only=True))

    def _reap(self) -> None:
        """Reap exited children (the shell is reaped by Popen first, so its status is not stolen)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _stop(self, reason: str, grace_s: float, *, send_term: bool = True) -> None:
        """SIGTERM the job's group (unless it got one already), give it ``grace_s`` to end, then SIGKILL the rest."""
        self.stopping = reason
        if send_term:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)  # reaches the runner too; _on_sigterm ignores it now
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self._group_alive():
            time.sleep(_TICK_S)
        self._kill_rest()

    def _kill_rest(self) -> None:
        """SIGKILL every process of the group but the runner, and reap them."""
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.kill()
        kill_group_except(self.pid, signal.SIGKILL, keep=self.pid)
        if self.child is not None:
            self.child.wait()
        deadline = time.monotonic() + _REAP_DEADLINE_S
        while True:
            self._reap()
            rest = [pid for pid in group_members(self.pid) if pid != self.pid]
            if not rest or time.monotonic() >= deadline:
                return
            kill_group_except(self.pid, signal.SIGKILL, keep=self.pid)
            time.sleep(_TICK_S / 5)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            spec = json.loads((self.dir / SPEC).read_text())
        except (OSError, ValueError) as exc:
            if publish_once(self.dir / PID, str(self.pid)):
                self._publish_result("failed", None, f"runner could not read {SPEC}: {exc}")
            return 1
        if not publish_once(self.dir / PID, str(self.pid)):
            return 0  # claimed already: another runner runs it, or the controller declared it lost
        if (self.dir / RESULT).exists():
            return 0
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

        started = time.monotonic()
        time_limit_s = float(spec.get("time_limit_s", float("inf")))
        kill_grace_s = float(spec.get("kill_grace_s", DEFAULT_KILL_GRACE_S))
        passed: tuple[int, ...] = ()
        try:
            argv, passed = self._argv(spec)
            with open_private(self.dir / STDOUT) as out, open_private(self.dir / STDERR) as err:
                self.child = subprocess.Popen(
                    argv,
                    env=self._env(spec),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    pass_fds=passed,
                    **self._identity(spec),
                )
        except (OSError, KeyError, ValueError, subprocess.SubprocessError) as exc:
            self._publish_result("failed", None, self._start_failure(spec, exc))
            return 1
        finally:
            for fd in passed:
                os.close(fd)
        write_atomic(self.dir / STARTED, repr(time.time()))

        while True:
            try:
                returncode = self.child.wait(timeout=_TICK_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.outside_term and self.stopping is None:
                self._stop("cancel", self._cancel_grace_s(), send_term=not self.term_reached_job)
            elif self.stopping is None and time.monotonic() - started >= time_limit_s:
                self._stop("timeout", kill_grace_s)
        self._kill_rest()  # the shell ended: nothing of the job may outlive it
        exit_code = exit_code_of(returncode)

        if self.stopping == "timeout":
            self._publish_result("timeout", exit_code, f"time limit of {time_limit_s:g} s reached")
        elif self.outside_term and (self.dir / CANCEL).exists():
            self._publish_result("cancelled", exit_code, "cancelled")
        elif self.outside_term:
            self._publish_result("lost", exit_code, "terminated by a SIGTERM that was not a kfabric cancel")
        elif returncode == 0:
            self._publish_result("succeeded", 0)
        else:
            self._publish_result("failed", exit_code, f"exit code {exit_code}")
        return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m kfabric.backends.local_runner ATTEMPT_DIR", file=sys.stderr)
        return 2
    return Runner(Path(args[0])).run()


if __name__ == "__main__":
    sys.exit(main())
