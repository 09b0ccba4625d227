"""Who a job runs as: the POSIX account mapped to its kfabric user, and the clean environment it gets.

Every kfabric user maps to one POSIX account (``users.posix_user``, set with ``kfabric user set-posix``). A backend
turns that name into an :class:`Account` with :func:`account_for` when it launches an attempt and refuses the
launch (an :class:`IdentityRefused`, a ``ValueError``: the controller fails the job with the message) when:

* the user has no mapping, or the name is not a portable POSIX user name;
* the account does not exist on this machine, or is uid 0 (jobs never run as root);
* this server is not root and the account is not the server's own (only root can start work as someone else).

The job's environment is never the server's: it is :func:`job_env`, the declared variables over a short
allow-list (``PATH``, ``HOME``, ``SHELL``, ``USER``, ``LOGNAME``, and ``LANG``/``LC_ALL``/``TZ`` when set here),
with ``USER``/``LOGNAME`` and the backend's own variables (``CUDA_VISIBLE_DEVICES``, ``KFABRIC_JOB_ID``,
``KFABRIC_ATTEMPT``) forced last.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: a portable POSIX user name (letters, digits, ``.``, ``_``, ``-``; not starting with ``-``, ``.`` or a digit)
POSIX_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
#: the job's ``PATH`` unless it declares one
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
#: variables passed from the server's environment to jobs, only when set (locale and time zone)
PASSED_IF_SET = ("LANG", "LC_ALL", "TZ")
#: variables a job cannot declare: who it is, and what the backend sets
FORCED = ("USER", "LOGNAME", "CUDA_VISIBLE_DEVICES", "KFABRIC_JOB_ID", "KFABRIC_ATTEMPT")


class IdentityRefused(ValueError):
    """A job cannot run as the account its user maps to; the message says why and how to fix it."""


@dataclass(frozen=True, slots=True)
class Account:
    """A POSIX account as the system database knows it (``groups``: every group, the primary one included)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str


def how_to_map(user: str) -> str:
    return f"an operator (or an org-admin of the user's organization) runs: kfabric user set-posix {user} ACCOUNT"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a job's POSIX account (None when it can, as far as the name tells)."""
    if not POSIX_NAME.match(name):
        return (
            f"{name!r} is not a portable POSIX user name (1-32 letters, digits, '.', '_', '-', "
            "starting with a letter or '_')"
        )
    if name == "root":
        return "jobs never run as root"
    return None


def lookup(name: str) -> Account | None:
    """The account named ``name`` on this machine, or None."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    groups = tuple(dict.fromkeys([entry.pw_gid, *os.getgrouplist(name, entry.pw_gid)]))
    return Account(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/", entry.pw_shell or "/bin/sh")


def server_account() -> str:
    """The name of the account this process runs as (its uid as text when the system does not know it)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def server_is_root() -> bool:
    return os.geteuid() == 0


def account_for(user: str, posix_user: str) -> Account:
    """The account a job of kfabric user ``user`` runs as; :class:`IdentityRefused` says why it cannot run."""
    if not posix_user:
        raise IdentityRefused(f"user {user} has no POSIX account to run jobs as; {how_to_map(user)}")
    problem = name_problem(posix_user)
    if problem:
        raise IdentityRefused(f"user {user} maps to POSIX account {posix_user!r}: {problem}; {how_to_map(user)}")
    account = lookup(posix_user)
    if account is None:
        raise IdentityRefused(
            f"user {user} maps to POSIX account {posix_user!r}, which does not exist on this machine; "
            f"create it (useradd {posix_user}) or map another: {how_to_map(user)}"
        )
    if account.uid == 0:
        raise IdentityRefused(
            f"user {user} maps to POSIX account {posix_user!r}, which has uid 0; jobs never run as root: "
            f"{how_to_map(user)} with a non-root account"
        )
    if not server_is_root() and account.uid != os.geteuid():
        me = server_account()
        raise IdentityRefused(
            f"user {user} maps to POSIX account {posix_user!r}, but this server runs as {me!r} (not root) and can "
            f"start jobs only as {me!r}; run the server as root, or map the user to {me!r}: "
            f"kfabric user set-posix {user} {me}"
        )
    return account


def job_env(
    account: Account,
    declared: Iterable[tuple[str, str]],
    forced: Mapping[str, str],
    server_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of a job: the allow-list, then what it declared, then ``forced`` and its identity."""
    source = os.environ if server_env is None else server_env
    env = {"PATH": DEFAULT_PATH, "HOME": account.home, "SHELL": account.shell}
    env.update({k: source[k] for k in PASSED_IF_SET if source.get(k)})
    env.update({k: v for k, v in declared if k not in FORCED})
    env.update({"USER": account.name, "LOGNAME": account.name})
    env.update(forced)
    return env


def _may_enter(st: os.stat_result, account: Account) -> bool:
    if account.uid == st.st_uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in account.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def workdir_problem(path: str, account: Account) -> str | None:
    """Why ``account`` cannot work in ``path`` (None when it can, by the permission bits; ACLs are not read: the
    job's own ``chdir``, made as the account, is the final word)."""
    if not os.path.isabs(path):
        return f"workdir {path!r} is not an absolute path"
    real = Path(os.path.realpath(path))
    if not real.is_dir():
        return f"workdir {path!r} is not a directory on this machine"
    for part in [*reversed(real.parents), real]:
        try:
            st = part.stat()
        except OSError as exc:
            return f"workdir {path!r}: cannot read {part}: {exc.strerror}"
        if not _may_enter(st, account):
            return f"workdir {path!r}: account {account.name!r} may not enter {part}"
    return None
