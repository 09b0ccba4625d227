"""API tokens: random secrets handed out once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from kfabric.model.errors import Unauthenticated
from kfabric.service.actors import Actor, Role
from kfabric.store import tables as t

TOKEN_PREFIX = "kf_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, user: t.User, now_s: float) -> str:
    """A new token for ``user`` (added to the session; the caller commits). The secret is returned once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(t.Token(user_id=user.id, token_hash=hash_token(token), prefix=token[:10], created_at_s=now_s))
    return token


def actor_for(session: Session, user: t.User) -> Actor:
    projects = frozenset(
        session.scalars(select(t.ProjectMember.project_id).where(t.ProjectMember.user_id == user.id)).all()
    )
    return Actor(user.id, user.name, Role(user.role), user.organization_id, projects, user.owner)


def authenticate(session: Session, token: str | None) -> Actor:
    if not token:
        raise Unauthenticated("no API token given")
    row = session.execute(
        select(t.User)
        .join(t.Token, t.Token.user_id == t.User.id)
        .where(t.Token.token_hash == hash_token(token), t.Token.revoked.is_(False))
    ).scalar_one_or_none()
    if row is None:
        raise Unauthenticated("unknown or revoked API token", "ask an operator for a new one: kfabric token create")
    return actor_for(session, row)
