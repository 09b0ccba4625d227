"""Issue 19, output and script snapshots on the ``local`` backend: Slurm's ``-o/-e`` patterns, the default
``kfabric-%j.out``, standard error joining standard output, the stored script run (never the file on disk), files
created as the job's account (never by root), and ``kfabric job log`` (tail, follow) through a real ``kfabric serve``.

Jobs run as the throwaway account ``JOB_ACCOUNT`` (the ``job_account`` fixture) in directories it owns (``job_dir``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfabric.backends.base import LaunchSpec, NodeGpus, RunReport, RunState
from kfabric.backends.local import LocalBackend
from kfabric.backends.local_runner import interpreter_of
from kfabric.model.errors import ValidationError
from kfabric.service import job_output
from kfabric.service.job_output import NO_ARRAY_TASK, PatternFields, check_pattern, expand, output_paths
from local_server import LocalServer, serve_local, wait_job
from posix_accounts import IS_ROOT, JOB_ACCOUNT

# --------------------------------------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("kfabric-%j.out", "kfabric-42.out"),
        ("%x_%u_%N.log", "train_alice_gpu-a-01.log"),
        ("%A_%a.out", f"42_{NO_ARRAY_TASK}.out"),  # outside an array, as Slurm: %A is the job, %a NO_VAL
        ("100%%-%j", "100%-42"),
        ("%5j.out", "00042.out"),
    ],
)
def test_patterns_outside_an_array(pattern: str, expected: str) -> None:
    fields = PatternFields(42, "train", "alice", "gpu-a-01")
    assert expand(pattern, fields) == expected


def test_patterns_of_an_array_task_and_a_name_with_a_slash() -> None:
    fields = PatternFields(57, "sweep/lr", "bob", "n1", array_job_id=50, array_task_id=7)
    assert expand("%A_%a-%j-%3a-%x", fields) == "50_7-57-007-sweep_lr"


@pytest.mark.parametrize(
    "pattern", ["out-%q", "trailing-%", "%3%", ""], ids=["unknown", "trailing", "width-on-percent", "empty"]
)
def test_a_pattern_kfabric_does_not_know_is_refused_with_the_list(pattern: str) -> None:
    with pytest.raises(ValidationError, match=r"job\.output") as err:
        check_pattern(pattern, "job.output")
    assert err.value.fix


def test_default_file_and_stderr_joining_stdout() -> None:
    fields = PatternFields(7, "j", "alice", "local")
    assert output_paths({}, fields, "/home/alice/run") == ("/home/alice/run/kfabric-7.out",) * 2
    out, err = output_paths({"output": "logs/%j.out", "error": "/scratch/%u/%j.err"}, fields, "/w")
    assert (out, err) == ("/w/logs/7.out", "/scratch/alice/7.err")


@pytest.mark.parametrize(
    ("script", "argv"),
    [
        (b"#!/usr/bin/env python3\nprint(1)\n", ["/usr/bin/env", "python3"]),
        (b"#! /bin/sh -eu \necho\n", ["/bin/sh", "-eu"]),
        (b"echo no shebang\n", ["/bin/bash"]),
    ],
)
def test_interpreter_of_a_script(script: bytes, argv: list[str]) -> None:
    assert interpreter_of(script) == argv


# --------------------------------------------------------------------------------------------- the backend


def spec(job_id: str, job_dir: Path, *, script: str = "", command: str = "", out: str = "", err: str = "",
         open_mode: str = "truncate") -> LaunchSpec:  # fmt: skip
    return LaunchSpec(
        job_id, 1, job_id, command, (NodeGpus("local", ()),), 30.0, (), str(job_dir), user="tester",
        posix_user=JOB_ACCOUNT, script=script, stdout_path=out, stderr_path=err or out, open_mode=open_mode,
    )  # fmt: skip


def wait_final(backend: LocalBackend, job_id: str, timeout_s: float = 15.0) -> RunReport:
    deadline = time.monotonic() + timeout_s
    while True:
        found = next((r for r in backend.poll() if r.job_id == job_id), None)
        if found is not None and found.state.final:
            return found
        assert time.monotonic() < deadline, f"{job_id} not final after {timeout_s} s: {found}"
        time.sleep(0.02)


@pytest.fixture
def backend(tmp_path: Path, job_account: str) -> Iterator[LocalBackend]:
    state = tmp_path / "state"
    yield LocalBackend(state, gpus=1, kill_grace_s=1.0)
    for pid_file in state.glob("jobs/*/pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def test_the_stored_script_runs_with_its_interpreter_not_the_file_on_disk(backend: LocalBackend, job_dir: Path) -> None:
    on_disk = job_dir / "train.sh"
    on_disk.write_text("#!/bin/bash\necho EDITED-AFTER-SUBMIT\n")
    stored = '#!/usr/bin/env python3\nimport os, sys\nprint("python", os.environ["KFABRIC_JOB_ID"], sys.argv[0])\n'
    out = job_dir / "py.out"
    backend.launch(spec("py", job_dir, script=stored, command=str(on_disk), out=str(out)))
    done = wait_final(backend, "py")
    assert done.state is RunState.SUCCEEDED, (done.message, out.read_text() if out.exists() else "")
    words = out.read_text().split()
    assert words[:2] == ["python", "py"] and words[2].startswith("/proc/self/fd/")
    assert "EDITED" not in out.read_text()
    assert done.outputs == {"stdout": str(out), "stderr": str(out)}


def test_a_script_without_a_shebang_runs_under_bash(backend: LocalBackend, job_dir: Path) -> None:
    out = job_dir / "bash.out"
    backend.launch(spec("sh", job_dir, script='[[ -n "$BASH_VERSION" ]] && echo bash-it-is\nexit 3\n', out=str(out)))
    done = wait_final(backend, "sh")
    assert (done.state, done.exit_code) == (RunState.FAILED, 3)
    assert out.read_text() == "bash-it-is\n"


def test_stderr_joins_stdout_unless_error_is_given(backend: LocalBackend, job_dir: Path) -> None:
    script = "echo to-out\necho to-err >&2\n"
    joined = job_dir / "joined.out"
    backend.launch(spec("a", job_dir, script=script, out=str(joined)))
    out, err = job_dir / "split.out", job_dir / "split.err"
    backend.launch(spec("b", job_dir, script=script, out=str(out), err=str(err)))
    assert wait_final(backend, "a").state is RunState.SUCCEEDED
    assert wait_final(backend, "b").state is RunState.SUCCEEDED
    assert joined.read_text() == "to-out\nto-err\n"
    assert (out.read_text(), err.read_text()) == ("to-out\n", "to-err\n")


@pytest.mark.parametrize(("mode", "expected"), [("truncate", "new\n"), ("append", "old\nnew\n")])
def test_open_mode(backend: LocalBackend, job_dir: Path, mode: str, expected: str) -> None:
    out = job_dir / "mode.out"
    backend.launch(spec("old", job_dir, command="echo old", out=str(out)))
    assert wait_final(backend, "old").state is RunState.SUCCEEDED
    backend.launch(spec("new", job_dir, command="echo new", out=str(out), open_mode=mode))
    assert wait_final(backend, "new").state is RunState.SUCCEEDED
    assert out.read_text() == expected


def test_output_files_belong_to_the_job_account(backend: LocalBackend, job_dir: Path) -> None:
    out = job_dir / "sub" / "mine.out"
    out.parent.mkdir()
    if IS_ROOT:
        os.chown(out.parent, *_ids(JOB_ACCOUNT))
    backend.launch(spec("own", job_dir, command="echo hi", out=str(out)))
    assert wait_final(backend, "own").state is RunState.SUCCEEDED
    assert out.stat().st_uid == _ids(JOB_ACCOUNT)[0]
    assert out.stat().st_mode & 0o077 == 0  # the job's umask (077): no one else reads it


@pytest.mark.skipif(not IS_ROOT, reason="only root could create a file where the job's account may not")
def test_root_never_creates_a_file_at_a_path_the_account_may_not_write(
    backend: LocalBackend, job_dir: Path, tmp_path: Path
) -> None:
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    target = private / "victim.conf"
    target.write_text("root's data\n")
    trap = job_dir / "trap.out"
    trap.symlink_to(target)  # the job's own link, pointing where only root may write
    backend.launch(spec("t1", job_dir, command="echo pwned", out=str(trap)))
    backend.launch(spec("t2", job_dir, command="echo pwned", out=str(private / "new.out")))
    for job in ("t1", "t2"):
        done = wait_final(backend, job)
        assert done.state is RunState.FAILED and "cannot open its output file" in done.message, done.message
        assert "Permission denied" in done.message
    assert target.read_text() == "root's data\n"
    assert not (private / "new.out").exists()


def _ids(account: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(account)
    return entry.pw_uid, entry.pw_gid


# --------------------------------------------------------------------------------------------- through kfabric serve


SNAPSHOT = '#!/bin/bash\necho "snapshot $SLURM_JOB_ID $KFABRIC_JOB_ID $SLURM_SUBMIT_DIR"\necho oops >&2\nexit 2\n'


@pytest.fixture(scope="module")
def server(job_account: str) -> Iterator[LocalServer]:
    with serve_local(job_account) as srv:
        yield srv


def test_submit_a_script_then_edit_it_runs_the_snapshot_with_the_default_output(
    server: LocalServer, job_dir: Path
) -> None:
    with server.client() as op:
        job = op.submit(
            "default", gpus=1, time_limit_s=60, workdir=str(job_dir),
            script=SNAPSHOT,
        )  # fmt: skip
        done = wait_job(op, job["id"])
    expected = str(job_dir / f"kfabric-{job['id']}.out")
    assert (done["state"], done["stdout_path"], done["stderr_path"]) == ("failed", expected, expected)
    assert Path(expected).read_text() == f"snapshot {job['id']} {job['id']} {job_dir}\noops\n"
    shown = server.cli("job", "show", str(job["id"]))
    assert shown.returncode == 0, shown.stderr
    flat = " ".join(shown.stdout.split())
    assert expected in flat and "last lines of standard error" in flat and "oops" in flat


def test_patterns_resolve_at_launch_and_job_log_reads_tails_and_follows(server: LocalServer, job_dir: Path) -> None:
    script = "#!/bin/bash\nfor i in $(seq 1 40); do echo line-$i; sleep 0.05; done\necho bad >&2\n"
    with server.client() as op:
        job = op.submit(
            "default", gpus=1, time_limit_s=60, workdir=str(job_dir), name="follow",
            script=script, output="%x-%j-%N.out", error="err/%j.err",
        )  # fmt: skip
        (job_dir / "err").mkdir()
        if IS_ROOT:
            os.chown(job_dir / "err", *_ids(JOB_ACCOUNT))
        running = wait_job(op, job["id"], ("running", *("succeeded", "failed")))
        follow = subprocess.Popen(
            [sys.executable, "-m", "kfabric.cli.main", "job", "log", str(job["id"]), "-f"],
            env={**os.environ, "KFABRIC_URL": server.url, "KFABRIC_TOKEN": server.operator_token},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        followed, complaints = follow.communicate(timeout=60)
        done = wait_job(op, job["id"])
        tail = op.job_log(job["id"], tail_lines=3)
        err = op.job_log(job["id"], "err")
    assert running["stdout_path"] == str(job_dir / f"follow-{job['id']}-local.out")
    assert done["state"] == "succeeded"
    assert follow.returncode == 0, complaints
    assert followed == "".join(f"line-{i}\n" for i in range(1, 41))  # every line once, in order, then it stopped
    assert tail["data"] == "line-38\nline-39\nline-40\n" and tail["eof"] and tail["final"]
    assert (err["path"], err["data"]) == (str(job_dir / "err" / f"{job['id']}.err"), "bad\n")
    tailed = server.cli("job", "log", str(job["id"]), "--tail", "2")
    assert tailed.stdout == "line-39\nline-40\n"
    errs = server.cli("job", "log", str(job["id"]), "--err")
    assert errs.stdout == "bad\n"


def test_an_output_path_the_account_cannot_write_fails_the_job_saying_so(server: LocalServer) -> None:
    with server.client() as op:
        job = op.submit("default", gpus=1, time_limit_s=60, command="echo hi", output="/proc/kfabric-%j.out")
        done = wait_job(op, job["id"])
    assert done["state"] == "failed"
    assert "cannot open its output file '/proc/kfabric-" in done["reason"], done["reason"]


def test_log_reads_are_paged(server: LocalServer, job_dir: Path) -> None:
    with server.client() as op:
        job = op.submit(
            "default", gpus=1, time_limit_s=60, workdir=str(job_dir),
            command="head -c 3000000 /dev/zero | tr '\\0' x",
        )  # fmt: skip
        assert wait_job(op, job["id"])["state"] == "succeeded"
        first = op.job_log(job["id"], max_bytes=job_output.MAX_READ_BYTES)
        assert (first["size"], len(first["data"]), first["eof"]) == (3_000_000, job_output.MAX_READ_BYTES, False)
        total, offset = 0, 0
        while True:
            part = op.job_log(job["id"], offset=offset)
            assert len(part["data"]) <= job_output.DEFAULT_READ_BYTES
            total += len(part["data"])
            offset = part["next_offset"]
            if part["eof"]:
                break
    assert total == 3_000_000
