"""Mapping kfabric users to POSIX accounts (``users.posix_user``): who may set it, and which names are refused.

* Operators map any user to any account but root (or any account with uid 0).
* Org-admins map users of their own organization, to an account that is not a system account (uid below
  :data:`FIRST_TENANT_UID` where it exists here) and that no user outside their organization is mapped to: an
  org-admin cannot borrow another tenant's (or the service's) files through a job.
* The account need not exist when it is mapped (it may be created later, or exist only on a Slurm cluster's nodes);
  a job whose account does not exist where it launches is refused then, with the fix.

Every change is audited (``user.posix``, with the old and the new account).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.backends.identity import lookup, name_problem, server_account, server_is_root
from kfabric.model.errors import NotFound, PermissionDenied, ValidationError
from kfabric.service import audit
from kfabric.service.actors import Actor, Role
from kfabric.store import tables as t

#: the lowest uid an org-admin may map to (Debian's UID_MIN): below it are system accounts
FIRST_TENANT_UID = 1000
WHERE = "user.posix_user"


def check_name(name: str) -> None:
    """ValidationError unless ``name`` may be any user's POSIX account (portable, not root, not uid 0 here)."""
    problem = name_problem(name)
    if problem:
        raise ValidationError(WHERE, problem, "pass the name of an existing non-root account, e.g. alice")
    account = lookup(name)
    if account is not None and account.uid == 0:
        raise ValidationError(WHERE, f"account {name!r} has uid 0; jobs never run as root", "map a non-root account")


def _check_tenant_choice(s: Session, actor: Actor, name: str) -> None:
    """An org-admin's choice: no system account, none that a user outside the organization is mapped to."""
    account = lookup(name)
    if account is not None and account.uid < FIRST_TENANT_UID:
        raise PermissionDenied(
            f"map a user to {name!r}",
            f"it is a system account (uid {account.uid} < {FIRST_TENANT_UID}); only operators map those",
            f"pick a personal account (uid {FIRST_TENANT_UID} or more), or ask an operator",
        )
    others = s.scalars(
        select(t.User.id).where(
            t.User.posix_user == name,
            (t.User.organization_id != actor.organization_id) | t.User.organization_id.is_(None),
        )
    ).first()
    if others is not None:
        raise PermissionDenied(
            f"map a user to {name!r}", "the account is used outside your organization", "ask an operator"
        )


def check_choice(s: Session, actor: Actor, name: str, organization_id: int | None) -> None:
    """Whether ``actor`` may map a user of ``organization_id`` to ``name`` (raises when not)."""
    check_name(name)
    if actor.is_operator:
        return
    if actor.role is not Role.ORG_ADMIN or organization_id is None or organization_id != actor.organization_id:
        raise PermissionDenied(
            "set POSIX accounts",
            "operators map any user; org-admins only users of their own organization",
            "ask an operator or your organization's admin",
        )
    _check_tenant_choice(s, actor, name)


def set_posix_user(sessions: sessionmaker[Session], actor: Actor, user: str, posix_user: str, now_s: float) -> t.User:
    """Map ``user`` to the POSIX account ``posix_user`` ("" removes the mapping: the user's jobs are refused)."""
    with sessions.begin() as s:
        row = s.scalars(select(t.User).where(t.User.name == user)).first()
        if row is None or not (actor.is_operator or _sees_user(actor, row)):
            raise NotFound("user", user)
        if posix_user:
            check_choice(s, actor, posix_user, row.organization_id)
        elif not (actor.is_operator or actor.role is Role.ORG_ADMIN):
            raise PermissionDenied(
                "set POSIX accounts", "operators and org-admins map users to accounts", "ask an operator"
            )
        old, row.posix_user = row.posix_user, posix_user
        detail = {"name": row.name, "posix_user": posix_user, "previous": old}
        audit.record(s, actor.name, "user.posix", "user", row.id, now_s, row.organization_id, detail)
        s.flush()
        return row


def _sees_user(actor: Actor, row: t.User) -> bool:
    return actor.is_tenant and row.organization_id is not None and row.organization_id == actor.organization_id


def first_operator_account() -> str:
    """The account the first operator maps to: the server's own when it is not root (so ``kfabric serve --fleet
    local`` runs the operator's jobs as whoever started it); none when root (an operator maps it explicitly)."""
    return "" if server_is_root() else server_account()
