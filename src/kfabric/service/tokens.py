"""API tokens as people manage them: create (the secret is returned once), list, revoke, rotate.

Who may: anyone for their own tokens; an operator for anyone's; an org-admin for the org-admins and members of
their organization. Everyone else's tokens and users are :class:`NotFound` (tenants never learn of each other's
users). Every change is audited; neither the secret nor its hash ever leaves this module's answers."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import Conflict, NotFound, ValidationError, require
from kfabric.service import audit
from kfabric.service.actors import Actor, Role
from kfabric.service.auth import PREFIX_LEN, TOKEN_PREFIX, issue
from kfabric.store import tables as t

#: live (not revoked, not expired) tokens one user may hold
MAX_ACTIVE_TOKENS = 100
#: the longest lifetime a token may be given
MAX_LIFETIME_S = 10 * 365 * 86_400.0
#: the most tokens one list answer holds (pages with ``after_id``)
MAX_PAGE = 1000
_SCOPE_FIX = "you manage your own tokens; org-admins also their organization's users', operators everyone's"
_LIST_FIX = "`kfabric token list` shows the ids and prefixes of your tokens (--user NAME for another user's)"


@dataclass(frozen=True, slots=True)
class TokenView:
    """What may be shown about a token: never its secret or hash."""

    id: int
    user: str
    name: str
    prefix: str
    created_at_s: float
    expires_at_s: float | None
    last_used_s: float | None
    revoked: bool
    revoked_at_s: float | None

    def state(self, now_s: float) -> str:
        if self.revoked:
            return "revoked"
        if self.expires_at_s is not None and self.expires_at_s <= now_s:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class Revocation:
    token: TokenView
    #: the revoked token's hash, for the caller to drop from its authentication cache (never shown)
    token_hash: str
    #: False when the token was revoked already (nothing changed, nothing audited)
    changed: bool


@dataclass(frozen=True, slots=True)
class Rotation:
    token: TokenView
    secret: str
    replaced: Revocation


def view(row: t.Token, user: str) -> TokenView:
    return TokenView(
        row.id,
        user,
        row.name,
        row.prefix,
        row.created_at_s,
        row.expires_at_s,
        row.last_used_s,
        row.revoked,
        row.revoked_at_s,
    )


def manages(actor: Actor, user: t.User) -> bool:
    """Whether ``actor`` may see and change ``user``'s tokens."""
    if user.id == actor.user_id or actor.is_operator:
        return True
    tenant_roles = (Role.ORG_ADMIN.value, Role.MEMBER.value)  # never an operator placed in an organization
    return (
        actor.role is Role.ORG_ADMIN
        and user.organization_id is not None
        and user.organization_id == actor.organization_id
        and user.role in tenant_roles
    )


def _target_user(s: Session, actor: Actor, name: str | None) -> t.User:
    if name is None or name == actor.name:
        me = s.get(t.User, actor.user_id)
        if me is None:
            raise NotFound("user", actor.name)
        return me
    user = s.scalars(select(t.User).where(t.User.name == name)).first()
    if user is None or not manages(actor, user):
        raise NotFound("user", name, _SCOPE_FIX)
    return user


def _live(now_s: float) -> ColumnElement[bool]:
    """The condition of a token that still works at ``now_s``."""
    return and_(t.Token.revoked.is_(False), or_(t.Token.expires_at_s.is_(None), t.Token.expires_at_s > now_s))


def _check_expiry(expires_at_s: float | None, now_s: float) -> None:
    if expires_at_s is None:
        return
    fix = "give a future date or a duration such as 30d (kfabric token create --expires 30d)"
    require(expires_at_s > now_s, "token.expires", "the expiry is not in the future", fix)
    require(expires_at_s - now_s <= MAX_LIFETIME_S, "token.expires", "the expiry is more than 10 years away", fix)


def create(
    sessions: sessionmaker[Session],
    actor: Actor,
    now_s: float,
    name: str = "",
    user: str | None = None,
    expires_at_s: float | None = None,
) -> tuple[TokenView, str]:
    """A new token for ``user`` (default: the caller) and its secret, which is shown only this once."""
    _check_expiry(expires_at_s, now_s)
    with sessions.begin() as s:
        owner = _target_user(s, actor, user)
        live = s.scalar(select(func.count()).select_from(t.Token).where(t.Token.user_id == owner.id, _live(now_s)))
        if int(live or 0) >= MAX_ACTIVE_TOKENS:
            raise Conflict(
                f"user {owner.name!r}",
                f"holds {live} live tokens, the most allowed",
                "revoke unused ones: `kfabric token list`, then `kfabric token revoke ID`",
            )
        row, secret = issue(s, owner, now_s, name, expires_at_s)
        s.flush()
        detail = {"user": owner.name, "name": name, "prefix": row.prefix, "expires_at_s": expires_at_s}
        audit.record(s, actor.name, "token.create", "token", row.id, now_s, owner.organization_id, detail)
        return view(row, owner.name), secret


def list_tokens(
    sessions: sessionmaker[Session],
    actor: Actor,
    now_s: float,
    user: str | None = None,
    include_inactive: bool = False,
    after_id: int = 0,
    limit: int = MAX_PAGE,
) -> list[TokenView]:
    """``user``'s tokens (default: the caller's), oldest first; revoked and expired ones only with
    ``include_inactive``."""
    with sessions() as s:
        owner = _target_user(s, actor, user)
        query = select(t.Token).where(t.Token.user_id == owner.id, t.Token.id > after_id)
        if not include_inactive:
            query = query.where(_live(now_s))
        rows = s.scalars(query.order_by(t.Token.id).limit(max(1, min(limit, MAX_PAGE)))).all()
        return [view(r, owner.name) for r in rows]


def _find(s: Session, actor: Actor, ref: str) -> tuple[t.Token, t.User]:
    """The token named by ``ref`` (an id or a prefix) among those ``actor`` manages, locked for update."""
    ref = ref.strip()
    query = select(t.Token, t.User).join(t.User, t.User.id == t.Token.user_id)
    if ref.isascii() and ref.isdigit() and len(ref) <= 18:
        query = query.where(t.Token.id == int(ref))
    elif ref.startswith(TOKEN_PREFIX) and len(ref) == PREFIX_LEN:
        query = query.where(t.Token.prefix == ref)
    elif ref.startswith(TOKEN_PREFIX) and len(ref) > PREFIX_LEN:
        raise ValidationError("token", "that is a whole secret, not an id or a prefix", f"pass {ref[:PREFIX_LEN]}")
    else:
        raise ValidationError("token", f"{ref[:40]!r} is neither a token id nor a prefix", _LIST_FIX)
    found = [(tok, u) for tok, u in s.execute(query.with_for_update(of=t.Token)).all() if manages(actor, u)]
    if not found:
        raise NotFound("token", ref, _LIST_FIX)
    if len(found) > 1:
        raise Conflict(f"token {ref}", f"the prefix matches {len(found)} tokens", f"pass the id instead; {_LIST_FIX}")
    return found[0]


def _revoke_row(s: Session, actor: Actor, row: t.Token, owner: t.User, now_s: float, why: str) -> Revocation:
    if row.revoked:
        return Revocation(view(row, owner.name), row.token_hash, False)
    row.revoked = True
    row.revoked_at_s = now_s
    detail = {"user": owner.name, "name": row.name, "prefix": row.prefix, "why": why}
    audit.record(s, actor.name, "token.revoke", "token", row.id, now_s, owner.organization_id, detail)
    return Revocation(view(row, owner.name), row.token_hash, True)


def revoke(sessions: sessionmaker[Session], actor: Actor, ref: str, now_s: float) -> Revocation:
    """Revoke the token ``ref`` (an id, or the prefix that lists show). Revoking a revoked token changes nothing.
    The caller drops ``token_hash`` from any authentication cache it keeps."""
    with sessions.begin() as s:
        row, owner = _find(s, actor, ref)
        return _revoke_row(s, actor, row, owner, now_s, "revoked")


def rotate(sessions: sessionmaker[Session], actor: Actor, ref: str, now_s: float) -> Rotation:
    """Replace the token ``ref`` by a new one with the same name and lifetime (an expiring token gets the same
    span again from now) and revoke it, in one transaction. A revoked token cannot be rotated."""
    with sessions.begin() as s:
        old, owner = _find(s, actor, ref)
        if old.revoked:
            raise Conflict(
                f"token {old.id}", "is revoked, so it cannot be rotated", "create a new one: `kfabric token create`"
            )
        lifetime = None if old.expires_at_s is None else old.expires_at_s - old.created_at_s
        row, secret = issue(s, owner, now_s, old.name, None if lifetime is None else now_s + lifetime)
        s.flush()
        replaced = _revoke_row(s, actor, old, owner, now_s, f"rotated to token {row.id}")
        detail = {"user": owner.name, "name": row.name, "prefix": row.prefix, "replaces": old.id}
        audit.record(s, actor.name, "token.rotate", "token", row.id, now_s, owner.organization_id, detail)
        return Rotation(view(row, owner.name), secret, replaced)
