"""Issue 15, hole 1: a job must not become the operator. ``kfabric serve --fleet local`` runs as root with a secret
in its environment; a hostile member's job tries to read the operator token, the SQLite store, another tenant's
running job (its spec, its output, its environment) and the server's environment, and dumps its own environment.
Every read must fail with "Permission denied", the job must run as its user's POSIX account with a clean
environment, and a user without a usable account must see its job fail with the command that fixes it.

Needs root (it creates throwaway accounts with useradd and deletes them at the end); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kfabric.backends import identity
from kfabric.client import ApiError, Client
from kfabric.model.errors import ValidationError
from kfabric.service import posix
from posix_accounts import IS_ROOT, NOT_ROOT, account_name, create_account, delete_account
from serve_process import kfabric_serve, kill_runners

pytestmark = pytest.mark.skipif(not IS_ROOT, reason=NOT_ROOT)

SECRET = f"kfabric-server-secret-{secrets.token_hex(8)}"
FINAL = ("succeeded", "failed", "cancelled", "timeout")
#: what a job's environment may hold: the allow-list, what sh adds itself, and what the test job declares
ALLOWED_ENV = {
    *identity.FORCED,
    "PATH",
    "HOME",
    "SHELL",
    *identity.PASSED_IF_SET,
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "SLURM_JOB_ID",
    "SLURM_JOB_NAME",
    "SLURM_SUBMIT_DIR",
}  # issue 19: kfabric's own ids, for Slurm scripts
DECLARED = {"FOO": "bar", "USER": "root", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "KFABRIC_JOB_ID": "999"}


@dataclass(frozen=True)
class Accounts:
    victim: str
    attacker: str
    spare: str


@dataclass
class Server:
    state: Path
    url: str
    proc: subprocess.Popen[bytes]

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token or (self.state / "operator.token").read_text().strip())


@pytest.fixture(scope="module")
def accounts() -> Iterator[Accounts]:
    made = Accounts(account_name("victim"), account_name("attacker"), account_name("spare"))
    try:
        for name in (made.victim, made.attacker):
            create_account(name)
        yield made
    finally:
        for name in (made.victim, made.attacker):
            delete_account(name)


@pytest.fixture(scope="module")
def server(accounts: Accounts) -> Iterator[Server]:
    """``kfabric serve --fleet local`` as root, its state folder where every account can reach it (so only its own
    permissions stand between a job and the store) and created 0755 with a world-readable file in it beforehand."""
    top = Path(tempfile.mkdtemp(prefix="kfabric-identity-", dir="/tmp"))
    top.chmod(0o755)
    state = top / ".kfabric"
    state.mkdir(mode=0o755)
    (state / "left-over.txt").write_text("from before\n")
    (state / "left-over.txt").chmod(0o644)
    env = {**os.environ, "KFABRIC_TEST_SECRET": SECRET}
    args = ("--fleet", "local", "--local-gpus", "4", "--tick", "0.2", "--state-dir", str(state), "--log-level",
            "warning")  # fmt: skip
    try:
        with kfabric_serve(top, *args, timeout_s=30, env=env) as (url, proc):
            yield Server(state, url, proc)
    finally:
        kill_runners(state)
        subprocess.run(["rm", "-rf", str(top)], check=False)


@pytest.fixture(scope="module")
def tokens(server: Server, accounts: Accounts) -> dict[str, str]:
    """Members of the local organization: the victim and the attacker (each mapped to an account of their own), and
    ``ghost`` (mapped to nothing)."""
    with server.client() as op:
        out = {}
        for user, account in (("victim", accounts.victim), ("attacker", accounts.attacker), ("ghost", "")):
            made = op.create_user(user, "member", "local", ["default"], posix_user=account)
            assert made["posix_user"] == account
            out[user] = made["token"]
        return out


def wait_job(client: Client, job_id: int, states: tuple[str, ...] = FINAL, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = client.job(job_id)
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}: {job['reason']}"
        time.sleep(0.1)


def hostile_command(state: Path, victim_dir: Path, victim_out: Path, pids: list[int]) -> str:
    """Try every read; print ``TRY path: error`` (``OK`` when it worked), then the job's identity and environment."""
    targets = [
        state / "operator.token",
        state / "kfabric.db",
        state / "kfabric.db-wal",
        state / "left-over.txt",
        victim_dir / "spec.json",
        victim_dir / "stdout",
        victim_out,  # the victim's -o file (issue 19: kfabric-ID.out in its home, created by the victim's account)
        *(Path(f"/proc/{pid}/environ") for pid in pids),
    ]
    tries = "; ".join(
        f'printf "TRY %s: %s\\n" {shlex.quote(str(p))} "$(cat {shlex.quote(str(p))} 2>&1 >/dev/null || true)"'
        for p in targets
    )
    steal = f"cat {shlex.quote(str(state / 'operator.token'))} > stolen.txt 2>/dev/null"
    return f'{tries}; {steal}; echo "ID $(id -u) $(id -g)"; echo "PWD $(pwd)"; echo ENV; env'


def test_the_state_folder_is_private(server: Server, tokens: dict[str, str]) -> None:
    loose = []
    for root, dirs, files in os.walk(server.state):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(root, name))
            if st.st_mode & 0o077:
                loose.append(f"{os.path.join(root, name)} {oct(st.st_mode & 0o777)}")
    assert server.state.stat().st_mode & 0o777 == 0o700
    assert (server.state / "operator.token").stat().st_mode & 0o777 == 0o600
    assert loose == []


def test_a_hostile_job_reads_nothing_and_inherits_nothing(
    server: Server, tokens: dict[str, str], accounts: Accounts
) -> None:
    victim, attacker = server.client(tokens["victim"]), server.client(tokens["attacker"])
    v = victim.submit("default", gpus=1, time_limit_s=120, command="echo victim-output-7f3a; sleep 60")
    victim_out = Path(wait_job(victim, v["id"], ("running",))["stdout_path"])
    victim_dir = server.state / "local" / "jobs" / f"{v['id']}.1"
    while not victim_out.exists() or "victim-output-7f3a" not in victim_out.read_text():
        time.sleep(0.05)
    runner = int((victim_dir / "pid").read_text())
    victim_job = [p for p in _children(runner)]
    assert victim_job, "the victim's job has no process"
    pids = [server.proc.pid, runner, *victim_job]
    command = hostile_command(server.state, victim_dir, victim_out, pids)
    job = attacker.submit("default", gpus=1, time_limit_s=60, command=command, env=DECLARED)
    done = wait_job(attacker, job["id"])
    out = Path(done["stdout_path"]).read_text()
    assert done["state"] == "succeeded", (done["reason"], out)

    tries = dict(line[4:].split(": ", 1) for line in out.splitlines() if line.startswith("TRY "))
    assert tries and all("Permission denied" in error for error in tries.values()), tries
    uid, gid = _ids(accounts.attacker)
    assert f"ID {uid} {gid}" in out.splitlines()
    assert f"PWD {os.path.expanduser('~' + accounts.attacker)}" in out.splitlines()
    env = dict(line.split("=", 1) for line in out.split("\nENV\n", 1)[1].splitlines() if "=" in line)
    assert SECRET not in out
    assert set(env) <= ALLOWED_ENV | {"FOO"}, sorted(set(env) - ALLOWED_ENV)
    assert (env["FOO"], env["USER"], env["LOGNAME"]) == ("bar", accounts.attacker, accounts.attacker)
    assert (env["KFABRIC_JOB_ID"], env["KFABRIC_ATTEMPT"]) == (str(job["id"]), "1")
    assert env["CUDA_VISIBLE_DEVICES"] != DECLARED["CUDA_VISIBLE_DEVICES"]
    assert len(env["CUDA_VISIBLE_DEVICES"].split(",")) == 1
    stolen = Path(env["HOME"]) / "stolen.txt"
    assert not stolen.exists() or stolen.read_text() == ""
    victim.cancel(v["id"])
    wait_job(victim, v["id"])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def _ids(account: str) -> tuple[int, int]:
    found = identity.lookup(account)
    assert found is not None
    return found.uid, found.gid


@pytest.mark.parametrize(
    ("who", "posix_user", "reason"),
    [
        ("ghost", None, "user ghost has no POSIX account to run jobs as; an operator"),
        ("ghost", "MISSING", "which does not exist on this machine; create it"),
        ("admin", None, "user admin has no POSIX account"),
    ],
    ids=["unmapped-member", "missing-account", "root-server-operator-unmapped"],
)
def test_a_job_without_a_usable_account_fails_with_the_fix(
    server: Server, tokens: dict[str, str], accounts: Accounts, who: str, posix_user: str | None, reason: str
) -> None:
    with server.client() as op:
        if posix_user is not None:
            op.set_posix_user(who, accounts.spare if posix_user == "MISSING" else posix_user)
        client = server.client(tokens.get(who))
        job = client.submit("default", gpus=1, time_limit_s=60, command="touch /tmp/should-not-run")
        done = wait_job(client, job["id"])
        if posix_user is not None:
            op.set_posix_user(who, "")
    assert done["state"] == "failed"
    assert reason in done["reason"], done["reason"]
    assert f"kfabric user set-posix {who} ACCOUNT" in done["reason"]
    assert done["started_at_s"] is None


def test_mapping_changes_are_audited_and_shown_by_the_cli(
    server: Server, tokens: dict[str, str], accounts: Accounts, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from kfabric.cli.main import main

    monkeypatch.setenv("KFABRIC_URL", server.url)
    monkeypatch.setenv("KFABRIC_TOKEN", (server.state / "operator.token").read_text().strip())
    assert main(["user", "create", "cli-made", "--role", "member", "--organization", "local"]) == 0
    assert main(["user", "set-posix", "cli-made", accounts.spare]) == 0
    assert f"User cli-made's jobs run as POSIX account {accounts.spare}" in capsys.readouterr().out
    assert main(["user", "set-posix", "cli-made", "root"]) == 2
    assert "jobs never run as root" in capsys.readouterr().err
    with server.client() as op:
        entries = [e for e in op.audit(action="user.posix") if e["detail"].get("name") == "cli-made"]
    assert [e["detail"]["posix_user"] for e in entries] == [accounts.spare]


# ---- who may map whom, to what ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_org(server: Server) -> dict[str, str]:
    """A second organization ``other`` with an org-admin and a member (neither mapped)."""
    with server.client() as op:
        op.create_organization("other", "university")
        admin = op.create_user("other-admin", "org-admin", "other")["token"]
        member = op.create_user("other-member", "member", "other")["token"]
    return {"admin": admin, "member": member}


@pytest.mark.parametrize(
    ("actor", "user", "account", "status"),
    [
        ("operator", "other-member", "root", 422),
        ("operator", "other-member", "-rf", 422),
        ("operator", "other-member", "a b", 422),
        ("operator", "other-member", "x" * 33, 422),
        ("admin", "other-member", "daemon", 403),  # a system account (uid < 1000): operators only
        ("admin", "other-member", "VICTIM", 403),  # used by a user of another organization
        ("admin", "victim", "SPARE", 404),  # a user of another organization: not even visible
        ("member", "other-member", "SPARE", 403),
        ("admin", "other-member", "FRESH", 200),
        ("operator", "other-member", "daemon", 200),
    ],
    ids=["root", "leading-dash", "space", "too-long", "admin-system-account", "admin-other-tenants-account",
         "admin-other-org-user", "member", "admin-own-member", "operator-system-account"],
)  # fmt: skip
def test_who_may_map_whom(
    server: Server,
    tokens: dict[str, str],
    other_org: dict[str, str],
    accounts: Accounts,
    actor: str,
    user: str,
    account: str,
    status: int,
) -> None:
    names = {"VICTIM": accounts.victim, "SPARE": accounts.spare, "FRESH": account_name("fresh")}
    name = names.get(account, account)
    with server.client(other_org.get(actor)) as client:
        try:
            answer = client.set_posix_user(user, name)
        except ApiError as exc:
            assert exc.status == status, exc
            assert exc.fix or exc.message
            return
    assert status == 200 and answer["posix_user"] == name


@pytest.mark.parametrize(
    ("posix_user", "problem"),
    [("", "has no POSIX account"), ("root", "never run as root"), ("UID0", "has uid 0"), ("nosuch-kf", "not exist")],
    ids=["none", "root", "another-uid-0", "missing"],
)
def test_account_for_refuses(monkeypatch: pytest.MonkeyPatch, posix_user: str, problem: str) -> None:
    real = identity.lookup
    fake_root = identity.Account("UID0", 0, 0, (0,), "/", "/bin/sh")
    monkeypatch.setattr(identity, "lookup", lambda name: fake_root if name == "UID0" else real(name))
    with pytest.raises(identity.IdentityRefused, match=problem) as caught:
        identity.account_for("alice", posix_user)
    assert "kfabric user set-posix alice" in str(caught.value)


def test_a_uid_0_account_cannot_be_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_root = identity.Account("toor", 0, 0, (0,), "/", "/bin/sh")
    monkeypatch.setattr(posix, "lookup", lambda name: fake_root)
    with pytest.raises(ValidationError, match="uid 0"):
        posix.check_name("toor")


def test_a_server_that_is_not_root_runs_only_its_own_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(identity, "server_account", lambda: "svc")
    monkeypatch.setattr(posix, "server_account", lambda: "svc")
    nobody = identity.lookup("nobody")
    assert nobody is not None and nobody.uid != 4242
    with pytest.raises(identity.IdentityRefused, match="runs as 'svc' \\(not root\\)") as caught:
        identity.account_for("alice", "nobody")
    assert "kfabric user set-posix alice svc" in str(caught.value)
    assert posix.first_operator_account() == "svc"
