"""Issue 15, hole 1 on real Slurm 22.05: kfabric (root) submits each job as its user's POSIX account
(``sbatch --uid/--gid``) with ``--export`` that never carries kfabric's environment. A hostile job tries to read
another account's running job (its output), kfabric's private state folder, the cluster's munge key and kfabric's
own environment; it must be denied every one, run as its mapped uid, and see none of kfabric's secrets. A job of
a user without an account is refused at launch with the fix.

Starts a private one-node cluster (``tests/backends/slurm/slurm_lab.py``); skipped without Slurm or root, unless
``KFABRIC_REQUIRE_SLURM=1``.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfabric.backends.base import RunState
from kfabric.backends.identity import FORCED, PASSED_IF_SET, lookup
from kfabric.cli.serve_cmd import private_state_dir
from posix_accounts import IS_ROOT, NOT_ROOT, account_name, create_account, delete_account

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends" / "slurm"))
from slurm_lab import (
    SCRIPTS,
    SLURM_MISSING,
    SlurmLab,
    port_base,
    spec,
    start_lab,
    stop_lab,
    unavailable,
    wait_state,
)

SECRET = "kfabric-slurm-secret-5b1e"


@pytest.fixture(scope="module")
def lab() -> Iterator[SlurmLab]:
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        unavailable(SLURM_MISSING)
    if not IS_ROOT:
        unavailable(NOT_ROOT)
    if not (SCRIPTS / "start-slurm.sh").exists():
        unavailable(f"{SCRIPTS}/start-slurm.sh not found (set KFABRIC_SLURM_SCRIPTS)")
    root = Path(tempfile.mkdtemp(prefix="kfabric-slurm-id-", dir="/tmp"))
    root.chmod(0o755)  # munged needs every parent of its socket world-executable
    started = start_lab("ident", 1, port_base(set()), root)
    try:
        yield started
    finally:
        stop_lab(started)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def accounts() -> Iterator[tuple[str, str]]:
    names = (account_name("svictim"), account_name("sattack"))
    try:
        for name in names:
            create_account(name)
        yield names
    finally:
        for name in names:
            delete_account(name)


@pytest.fixture
def state() -> Iterator[Path]:
    """kfabric's state folder as ``kfabric serve`` leaves it (0700, files 0600), where every account can reach it."""
    top = Path(tempfile.mkdtemp(prefix="kfabric-state-", dir="/tmp"))
    top.chmod(0o755)
    where = top / ".kfabric"
    where.mkdir(mode=0o755)
    (where / "operator.token").write_text("kf_operator_token\n")
    (where / "kfabric.db").write_text("not really sqlite\n")
    private_state_dir(where)
    yield where
    shutil.rmtree(top, ignore_errors=True)


def test_a_hostile_slurm_job_reads_nothing_and_inherits_nothing(
    lab: SlurmLab, accounts: tuple[str, str], state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim, attacker = accounts
    monkeypatch.setenv("KFABRIC_TEST_SECRET", SECRET)
    monkeypatch.setenv("LANG", "C.UTF-8")
    backend = lab.backend()
    as_victim = dataclasses.replace(spec("victim", "echo victim-output-91c2; sleep 60", ["node1"]), posix_user=victim)
    backend.launch(as_victim)
    wait_state(backend, "victim", {RunState.RUNNING}, timeout_s=60)
    victim_out = Path(lab.config.workdir_root) / "victim.1" / "stdout"
    targets = [victim_out, state / "operator.token", state / "kfabric.db", lab.dir / "munge" / "munge.key"]
    targets.append(Path(f"/proc/{os.getpid()}/environ"))
    tries = "; ".join(
        f'printf "TRY %s: %s\\n" {shlex.quote(str(p))} "$(cat {shlex.quote(str(p))} 2>&1 >/dev/null || true)"'
        for p in targets
    )
    command = f'{tries}; ls {shlex.quote(str(state))} 2>&1; echo "ID $(id -u) $(id -g)"; echo ENV; env'
    hostile = dataclasses.replace(spec("hostile", command, ["node1"], env=(("FOO", "bar"),)), posix_user=attacker)
    backend.launch(hostile)
    done = wait_state(backend, "hostile", {s for s in RunState if s.final}, timeout_s=90)
    out = Path(done.outputs["stdout"]).read_text()
    assert done.state is RunState.SUCCEEDED, (done.message, out)

    tries_seen = dict(line[4:].split(": ", 1) for line in out.splitlines() if line.startswith("TRY "))
    assert len(tries_seen) == len(targets) and all("Permission denied" in e for e in tries_seen.values()), out
    assert f"cannot open directory '{state}': Permission denied" in out
    account = lookup(attacker)
    assert account is not None
    assert f"ID {account.uid} {account.gid}" in out.splitlines()
    env = dict(line.split("=", 1) for line in out.split("\nENV\n", 1)[1].splitlines() if "=" in line)
    assert SECRET not in out
    assert (env["USER"], env["HOME"], env["FOO"]) == (attacker, account.home, "bar")
    assert (env["KFABRIC_JOB_ID"], env["KFABRIC_ATTEMPT"], env["LANG"]) == ("hostile", "1", "C.UTF-8")
    assert {*FORCED, *PASSED_IF_SET} - {"LC_ALL", "TZ"} <= set(env)
    owner, where = lookup(victim), victim_out.parent
    assert owner is not None and (where.stat().st_uid, where.stat().st_mode & 0o777) == (owner.uid, 0o700)
    backend.terminate("victim", 1)


@pytest.mark.parametrize(
    ("posix_user", "reason"),
    [("", "has no POSIX account to run jobs as"), ("root", "jobs never run as root"), ("kf-nosuch", "does not exist")],
    ids=["unmapped", "root", "missing"],
)
def test_a_slurm_job_without_a_usable_account_is_refused(lab: SlurmLab, posix_user: str, reason: str) -> None:
    backend = lab.backend()
    refused = dataclasses.replace(spec(f"refused-{posix_user or 'none'}", "true", ["node1"]), posix_user=posix_user)
    with pytest.raises(ValueError, match=reason) as caught:
        backend.launch(refused)
    assert "kfabric user set-posix tester ACCOUNT" in str(caught.value)
    assert lab.jobs_named(f"kf-{refused.job_id}.1") == []
