"""The local backend: real process groups on this machine, driven through the Backend protocol.

Every test waits by polling with a short sleep up to a deadline of a few seconds; none sleeps long. Jobs run as the
throwaway account ``JOB_ACCOUNT`` (the ``job_account`` fixture; tests/security/test_job_identity.py attacks it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kfabric.backends.base import Backend, BackendUnavailable, LaunchSpec, NodeGpus, RunReport, RunState
from kfabric.backends.local import CANCEL_ESCALATE_S, LAUNCH_GRACE_S, LocalBackend, detect_gpus
from kfabric.backends.local_runner import exit_code_of, group_members, proc_available
from posix_accounts import JOB_ACCOUNT

needs_proc = pytest.mark.skipif(not proc_available(), reason="needs /proc to list a process group")


def spec(
    job_id: str,
    command: str,
    *,
    attempt: int = 0,
    gpus: tuple[int, ...] = (),
    node: str = "local",
    time_limit_s: float = 30.0,
    env: tuple[tuple[str, str], ...] = (),
    workdir: str = "",
) -> LaunchSpec:
    nodes = (NodeGpus(node, gpus),)
    return LaunchSpec(
        job_id, attempt, job_id, command, nodes, time_limit_s, env, workdir, user="tester", posix_user=JOB_ACCOUNT
    )


def find(backend: LocalBackend, job_id: str, attempt: int = 0) -> RunReport | None:
    return next((r for r in backend.poll() if (r.job_id, r.attempt) == (job_id, attempt)), None)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def wait_final(backend: LocalBackend, job_id: str, attempt: int = 0, timeout_s: float = 10.0) -> RunReport:
    deadline = time.monotonic() + timeout_s
    while True:
        found = find(backend, job_id, attempt)
        if found is not None and found.state.final:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id}.{attempt} not final after {timeout_s} s: {found}")
        time.sleep(0.02)


def runner_pid(backend: LocalBackend, job_id: str, attempt: int = 0) -> int:
    """The runner's pid (= the job's process group), once the job has started."""
    where = backend.attempt_dir(job_id, attempt)
    wait_until(lambda: (where / "started").exists(), what=f"{job_id}.{attempt} to start")
    return int((where / "pid").read_text())


def text(path: Path) -> str:
    """The file's text, or "" before it exists."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def group_gone(backend: LocalBackend, pgid: int) -> bool:
    """Whether no process of group ``pgid`` is left (polling first, as a controller does, reaps the runner)."""
    backend.poll()
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def state_dir(tmp_path: Path, job_account: str) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    # whatever a failed test left running: kill it, so no test leaks processes
    for pid_file in state.glob("jobs/*/pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


@pytest.fixture
def backend(state_dir: Path) -> LocalBackend:
    return LocalBackend(state_dir, gpus=4, kill_grace_s=1.0)


def test_it_is_a_backend(backend: LocalBackend) -> None:
    as_protocol: Backend = backend
    assert as_protocol.name == "local"
    assert backend.poll() == []


@pytest.mark.parametrize(
    ("command", "env", "state", "exit_code", "stdout", "stderr"),
    [
        ("echo hello", (), RunState.SUCCEEDED, 0, "hello\n", ""),
        ("exit 3", (), RunState.FAILED, 3, "", ""),
        ("echo oops >&2; exit 1", (), RunState.FAILED, 1, "", "oops\n"),
        ("kill -9 $$", (), RunState.FAILED, 137, "", ""),
        ('echo "$FOO $KFABRIC_JOB_ID $KFABRIC_ATTEMPT"', (("FOO", "bar"),), RunState.SUCCEEDED, 0, "bar j 0\n", ""),
    ],
    ids=["succeeds", "exit-3", "stderr", "killed-by-signal", "env"],
)
def test_end_state_exit_code_and_outputs(
    backend: LocalBackend,
    command: str,
    env: tuple[tuple[str, str], ...],
    state: RunState,
    exit_code: int,
    stdout: str,
    stderr: str,
) -> None:
    before = time.time()
    backend.launch(spec("j", command, env=env))
    done = wait_final(backend, "j")
    assert (done.state, done.exit_code) == (state, exit_code), done.message
    assert Path(done.outputs["stdout"]).read_text() == stdout
    assert Path(done.outputs["stderr"]).read_text() == stderr
    assert done.started_at_s is not None and done.ended_at_s is not None
    assert before <= done.started_at_s <= done.ended_at_s <= time.time()


@pytest.mark.parametrize(
    ("gpus", "visible"),
    [((1, 3), "1,3"), ((0,), "0"), ((), ""), ((2, 0, 2), "2,0")],
    ids=["two", "one", "none", "order-kept-duplicates-dropped"],
)
def test_cuda_visible_devices_is_the_assignment(backend: LocalBackend, gpus: tuple[int, ...], visible: str) -> None:
    backend.launch(spec("j", 'echo "[$CUDA_VISIBLE_DEVICES]"', gpus=gpus))
    done = wait_final(backend, "j")
    assert done.state is RunState.SUCCEEDED
    assert Path(done.outputs["stdout"]).read_text() == f"[{visible}]\n"


@pytest.mark.parametrize("workdir", ["HERE", ""], ids=["given", "default-home"])
def test_workdir(backend: LocalBackend, job_dir: Path, workdir: str) -> None:
    backend.launch(spec("j", "pwd", workdir=str(job_dir) if workdir else ""))
    done = wait_final(backend, "j")
    assert done.state is RunState.SUCCEEDED, done.message
    expected = str(job_dir) if workdir else os.path.expanduser(f"~{JOB_ACCOUNT}")
    assert Path(done.outputs["stdout"]).read_text() == expected + "\n"


@pytest.mark.parametrize(
    ("workdir", "match"),
    [("MISSING", "not a directory"), ("relative", "not an absolute path")],
    ids=["missing", "relative"],
)
def test_a_workdir_the_account_cannot_use_is_refused(
    backend: LocalBackend, job_dir: Path, workdir: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        backend.launch(spec("j", "pwd", workdir=str(job_dir / "missing") if workdir == "MISSING" else workdir))
    assert backend.poll() == []


@pytest.mark.parametrize(
    "command",
    ["sleep 30", "trap '' TERM; sleep 30"],
    ids=["ends-on-sigterm", "ignores-sigterm-gets-killed"],
)
def test_time_limit(backend: LocalBackend, command: str) -> None:
    started = time.monotonic()
    backend.launch(spec("j", command, time_limit_s=1.0))
    done = wait_final(backend, "j", timeout_s=6.0)
    assert done.state is RunState.TIMEOUT
    assert "time limit" in done.message
    assert time.monotonic() - started < 6.0
    pgid = int((backend.attempt_dir("j", 0) / "pid").read_text())
    wait_until(lambda: group_gone(backend, pgid), timeout_s=3.0, what="the timed-out group to disappear")


@pytest.mark.parametrize("grace_s", [0.0, 2.0], ids=["kill-now", "with-grace"])
def test_cancel_kills_the_whole_group(backend: LocalBackend, grace_s: float) -> None:
    backend.launch(spec("j", "sleep 30 & echo started; wait"))
    pgid = runner_pid(backend, "j")
    stdout = backend.attempt_dir("j", 0) / "stdout"
    wait_until(lambda: text(stdout) == "started\n", what="the background child")
    if proc_available():
        assert len(group_members(pgid, live_only=True)) >= 3  # runner, shell, sleep

    backend.terminate("j", 0, grace_s=grace_s)
    done = wait_final(backend, "j", timeout_s=5.0)
    assert done.state is RunState.CANCELLED
    wait_until(lambda: group_gone(backend, pgid), timeout_s=3.0, what="every process of the group to disappear")


def test_grace_lets_the_job_checkpoint(backend: LocalBackend) -> None:
    command = "trap 'echo checkpoint; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
    backend.launch(spec("j", command))
    runner_pid(backend, "j")
    stdout = backend.attempt_dir("j", 0) / "stdout"
    wait_until(lambda: text(stdout) == "ready\n", what="the trap to be set")
    backend.terminate("j", 0, grace_s=5.0)
    done = wait_final(backend, "j", timeout_s=5.0)
    assert (done.state, done.exit_code) == (RunState.CANCELLED, 0)
    assert stdout.read_text() == "ready\ncheckpoint\n"


def test_a_second_terminate_without_grace_kills_now(backend: LocalBackend) -> None:
    backend.launch(spec("j", "trap '' TERM; echo ready; sleep 30"))
    pgid = runner_pid(backend, "j")
    stdout = backend.attempt_dir("j", 0) / "stdout"
    wait_until(lambda: text(stdout) == "ready\n", what="the trap to be set")
    backend.terminate("j", 0, grace_s=60.0)
    backend.terminate("j", 0, grace_s=60.0)  # a repeat changes nothing
    time.sleep(0.3)
    running = find(backend, "j")
    assert running is not None and running.state is RunState.RUNNING  # it ignores SIGTERM, within its grace
    backend.terminate("j", 0)
    done = wait_final(backend, "j", timeout_s=5.0)
    assert (done.state, done.exit_code) == (RunState.CANCELLED, 137)
    wait_until(lambda: group_gone(backend, pgid), timeout_s=3.0, what="every process of the group to disappear")


def test_a_cancel_past_its_grace_is_forced_by_poll(state_dir: Path) -> None:
    now = [time.time()]
    backend = LocalBackend(state_dir, gpus=4, clock=lambda: now[0])
    backend.launch(spec("j", "trap '' TERM; echo ready; sleep 30"))
    pgid = runner_pid(backend, "j")
    stdout = backend.attempt_dir("j", 0) / "stdout"
    wait_until(lambda: text(stdout) == "ready\n", what="the trap to be set")
    backend.terminate("j", 0, grace_s=60.0)
    now[0] += 60.0
    running = find(backend, "j")
    assert running is not None and running.state is RunState.RUNNING  # the runner has a little longer
    now[0] += CANCEL_ESCALATE_S + 1.0
    done = find(backend, "j")
    assert done is not None and done.state is RunState.CANCELLED
    assert "grace ran out" in done.message
    if proc_available():
        wait_until(lambda: group_members(pgid, live_only=True) == [], timeout_s=3.0, what="the group to die")


def test_launch_twice_runs_once(backend: LocalBackend, state_dir: Path, job_dir: Path) -> None:
    log = job_dir / "runs.log"
    job = spec("j", f"echo run >> {log}")
    backend.launch(job)
    backend.launch(job)
    wait_final(backend, "j")
    backend.launch(job)  # finished: still nothing
    LocalBackend(state_dir, gpus=4).launch(job)  # a restarted controller relaunching: nothing
    time.sleep(0.2)
    assert log.read_text() == "run\n"
    assert len(backend.poll()) == 1


def test_terminate_unknown_or_finished_is_a_no_op(backend: LocalBackend) -> None:
    backend.terminate("unknown", 0)
    backend.terminate("unknown", 0, grace_s=3.0)
    assert backend.poll() == []
    backend.launch(spec("j", "echo hi"))
    done = wait_final(backend, "j")
    backend.terminate("j", 0)
    backend.terminate("j", 0, grace_s=1.0)
    assert find(backend, "j") == done
    assert not (backend.attempt_dir("j", 0) / "cancel").exists()


def test_a_restarted_controller_sees_the_job_and_its_result(state_dir: Path, job_dir: Path) -> None:
    go = job_dir / "go"
    first = LocalBackend(state_dir, gpus=4)
    first.launch(spec("j", f"echo start; while [ ! -f {go} ]; do sleep 0.05; done; echo done"))
    runner_pid(first, "j")
    del first  # the controller crashes; the job runs on

    second = LocalBackend(state_dir, gpus=4)
    running = find(second, "j")
    assert running is not None and running.state is RunState.RUNNING
    assert running.started_at_s is not None
    go.touch()
    done = wait_final(second, "j")
    assert (done.state, done.exit_code) == (RunState.SUCCEEDED, 0)
    assert done.started_at_s == running.started_at_s
    assert Path(done.outputs["stdout"]).read_text() == "start\ndone\n"
    assert find(LocalBackend(state_dir, gpus=4), "j") == done


def test_a_runner_killed_outright_is_lost(backend: LocalBackend) -> None:
    backend.launch(spec("j", "sleep 30"))
    pid = runner_pid(backend, "j")
    os.kill(pid, signal.SIGKILL)
    done = wait_final(backend, "j", timeout_s=5.0)
    assert done.state is RunState.LOST
    assert "vanished" in done.message
    assert find(backend, "j") == done  # the verdict is recorded, not recomputed
    if proc_available():  # what the runner left behind is killed, freeing its GPUs
        wait_until(lambda: group_members(pid, live_only=True) == [], timeout_s=3.0, what="the leftovers to die")


def test_an_outside_sigterm_is_not_a_cancel(backend: LocalBackend) -> None:
    backend.launch(spec("j", "sleep 30"))
    pid = runner_pid(backend, "j")
    os.killpg(pid, signal.SIGTERM)  # e.g. the machine shutting down
    done = wait_final(backend, "j", timeout_s=5.0)
    assert done.state is RunState.LOST
    assert "not a kfabric cancel" in done.message


def test_a_launch_whose_runner_never_started(state_dir: Path) -> None:
    """The controller crashed between creating the attempt dir and starting the runner."""
    now = [time.time()]
    backend = LocalBackend(state_dir, gpus=4, clock=lambda: now[0])
    where = backend.attempt_dir("j", 0)
    where.parent.mkdir(parents=True)
    where.mkdir()
    found = find(backend, "j")
    assert found is not None and found.state is RunState.RUNNING  # just launched, as far as anyone knows

    now[0] += LAUNCH_GRACE_S + 1
    lost = find(backend, "j")
    assert lost is not None and lost.state is RunState.LOST
    assert "did not start" in lost.message

    # a runner that starts after all must not run the job now that it was declared lost
    (where / "spec.json").write_text(json.dumps({"job_id": "j", "attempt": 0, "command": "echo ran"}))
    subprocess.run([sys.executable, "-m", "kfabric.backends.local_runner", str(where)], check=True, timeout=10)
    assert not (where / "stdout").exists()
    assert find(backend, "j") == lost


@pytest.mark.parametrize(
    ("job", "match"),
    [
        (spec("j", "true", node="elsewhere"), "elsewhere"),
        (spec("j", "true", gpus=(4,)), "GPUs"),
        (spec("../j", "true"), "directory"),
        (spec("j", "true", attempt=-1), "negative"),
    ],
    ids=["other-node", "gpu-out-of-range", "path-in-id", "negative-attempt"],
)
def test_launch_rejects_what_it_cannot_run(backend: LocalBackend, job: LaunchSpec, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        backend.launch(job)
    assert backend.poll() == []


def test_an_unusable_state_dir_is_unavailable(tmp_path: Path, job_account: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    backend = LocalBackend(blocker, gpus=0)
    with pytest.raises(BackendUnavailable):
        backend.launch(spec("j", "true"))
    with pytest.raises(BackendUnavailable):
        backend.poll()


def test_forget_deletes_only_finished_attempts(backend: LocalBackend) -> None:
    backend.launch(spec("done", "true"))
    backend.launch(spec("running", "sleep 30"))
    wait_final(backend, "done")
    assert backend.forget("running", 0) is False
    assert backend.forget("done", 0) is True
    assert backend.forget("unknown", 0) is False
    assert not backend.attempt_dir("done", 0).exists()
    assert [r.job_id for r in backend.poll()] == ["running"]
    backend.terminate("running", 0)
    assert wait_final(backend, "running").state is RunState.CANCELLED


def test_detect_gpus_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == 0
    assert LocalBackend(tmp_path / "state").detected_gpus == 0


def test_detect_gpus_counts_the_listed_indices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == 3


@pytest.mark.parametrize(("returncode", "code"), [(0, 0), (3, 3), (-9, 137), (-15, 143)])
def test_exit_codes_read_as_a_shell_reads_them(returncode: int, code: int) -> None:
    assert exit_code_of(returncode) == code
