"""API tokens: random secrets handed out once; only their SHA-256 is stored. A token is valid while it is not
revoked and not past its expiry; its last use is written at most once per :data:`LAST_USED_RESOLUTION_S`."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from kfabric.model.errors import Unauthenticated
from kfabric.service.actors import Actor, Role
from kfabric.store import tables as t

TOKEN_PREFIX = "kf_"
#: characters of a token kept in the clear (``kf_`` and 7 more) to name it to people
PREFIX_LEN = 10
#: a token's ``last_used_s`` is written at most this often (a busy token costs a write a minute, not a request)
LAST_USED_RESOLUTION_S = 60.0
#: what a caller whose token no longer works can do
NEW_TOKEN_FIX = (
    "run `kfabric token create` with another valid token, or ask an operator or your organization's admin "
    "for one: `kfabric token create --user YOUR_NAME`"
)
UNKNOWN_TOKEN_FIX = (
    "check KFABRIC_TOKEN or --token (the whole kf_... secret); a user's first token is printed by "
    "`kfabric user create`, more by `kfabric token create`"
)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def issue(
    session: Session, user: t.User, now_s: float, name: str = "", expires_at_s: float | None = None
) -> tuple[t.Token, str]:
    """A new token row for ``user`` (added to the session; the caller commits) and its secret, returned once."""
    secret = new_secret()
    row = t.Token(
        user_id=user.id,
        token_hash=hash_token(secret),
        prefix=secret[:PREFIX_LEN],
        created_at_s=now_s,
        revoked=False,
        name=name,
        expires_at_s=expires_at_s,
    )
    session.add(row)
    return row, secret


def issue_token(session: Session, user: t.User, now_s: float) -> str:
    """A new token for ``user`` without a name or expiry (the caller commits). The secret is returned once."""
    return issue(session, user, now_s)[1]


def actor_for(session: Session, user: t.User) -> Actor:
    projects = frozenset(
        session.scalars(select(t.ProjectMember.project_id).where(t.ProjectMember.user_id == user.id)).all()
    )
    return Actor(user.id, user.name, Role(user.role), user.organization_id, projects, user.owner)


def utc_text(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """A token found valid: who it belongs to, and what the API cache must re-check on every hit."""

    actor: Actor
    token_id: int
    expires_at_s: float | None
    last_used_s: float | None

    def expired(self, now_s: float) -> bool:
        return self.expires_at_s is not None and self.expires_at_s <= now_s


def check_token(session: Session, token: str | None, now_s: float) -> TokenAuth:
    """The valid token ``token``, or :class:`Unauthenticated` saying whether it is unknown, revoked or expired."""
    if not token:
        raise Unauthenticated("no API token given")
    found = session.execute(
        select(t.Token, t.User)
        .join(t.User, t.User.id == t.Token.user_id)
        .where(t.Token.token_hash == hash_token(token))
    ).one_or_none()
    if found is None:
        raise Unauthenticated("unknown API token", UNKNOWN_TOKEN_FIX)
    row, user = found
    if row.revoked:
        when = f" at {utc_text(row.revoked_at_s)}" if row.revoked_at_s is not None else ""
        raise Unauthenticated(f"API token {row.prefix}... (id {row.id}) was revoked{when}", NEW_TOKEN_FIX)
    if row.expires_at_s is not None and row.expires_at_s <= now_s:
        raise Unauthenticated(
            f"API token {row.prefix}... (id {row.id}) expired at {utc_text(row.expires_at_s)}", NEW_TOKEN_FIX
        )
    return TokenAuth(actor_for(session, user), row.id, row.expires_at_s, row.last_used_s)


def authenticate(session: Session, token: str | None, now_s: float | None = None) -> Actor:
    """The caller holding ``token`` (expiry checked against ``now_s``, default the wall clock)."""
    return check_token(session, token, time.time() if now_s is None else now_s).actor


def note_use(session: Session, auth: TokenAuth, now_s: float) -> bool:
    """Record that the token was used at ``now_s`` if its stored last use is older than
    :data:`LAST_USED_RESOLUTION_S` (in the caller's transaction; the caller commits). True when it wrote."""
    if auth.last_used_s is not None and now_s - auth.last_used_s < LAST_USED_RESOLUTION_S:
        return False
    stale = now_s - LAST_USED_RESOLUTION_S
    result = session.execute(
        update(t.Token)
        .where(t.Token.id == auth.token_id, or_(t.Token.last_used_s.is_(None), t.Token.last_used_s <= stale))
        .values(last_used_s=now_s)
    )
    return bool(getattr(result, "rowcount", 0))
