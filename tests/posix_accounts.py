"""Throwaway POSIX accounts for tests whose jobs really run (the ``local`` and ``slurm`` backends run every job as
the account its user maps to, never as root).

As root (here and in CI) the accounts are created with ``useradd`` (names carry this process's pid, so parallel
runs do not share them) and deleted with ``userdel -r`` at the end of the session (``tests/conftest.py``). As
another user, jobs can run only as that user: :data:`JOB_ACCOUNT` is then the current account and nothing is
created.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from kfabric.store import tables as t

IS_ROOT = os.geteuid() == 0
#: the account test jobs run as (created by the ``job_account`` fixture when root)
JOB_ACCOUNT = f"kfj{os.getpid()}" if IS_ROOT else getpass.getuser()
NOT_ROOT = "creating POSIX accounts needs root (useradd); run the suite as root, as CI does"


def account_name(tag: str) -> str:
    """A throwaway account name for ``tag`` (short: POSIX names stop at 32 characters)."""
    return f"kf{tag[:8]}{os.getpid()}"


def create_account(name: str) -> None:
    """``useradd`` a login account with a home of its own and a group of its own (root only; once per name)."""
    if subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode == 0:
        return
    subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", name], check=True, timeout=30)


def delete_account(name: str) -> None:
    subprocess.run(["userdel", "--remove", name], capture_output=True, check=False, timeout=30)


def account_dir(name: str) -> Path:
    """A fresh directory only ``name`` may use (0700, its own), under /tmp so that the account can reach it."""
    where = Path(tempfile.mkdtemp(prefix=f"kfabric-{name}-", dir="/tmp"))
    if IS_ROOT:
        shutil.chown(where, name, name)
    where.chmod(0o700)
    return where


def map_users(sessions: sessionmaker[Session], account: str = JOB_ACCOUNT, *names: str) -> None:
    """Map users ``names`` (every user when none is named) to the POSIX ``account`` straight in the store."""
    with sessions.begin() as s:
        query = update(t.User).values(posix_user=account)
        s.execute(query.where(t.User.name.in_(names)) if names else query)
