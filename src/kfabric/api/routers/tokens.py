"""/v1/tokens: create (the secret is in that answer only), list, revoke, rotate. Lists never show a secret or a
hash; tokens of users the caller does not manage are 404. A revocation drops the token from this process's
authentication cache at once (other processes: within ``AUTH_CACHE_S``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from kfabric.api.deps import Caller, forget_token
from kfabric.api.schemas import Name, Seconds, ShortText, Strict
from kfabric.model.errors import ValidationError
from kfabric.service import tokens
from kfabric.service.tokens import Revocation, TokenView

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])

#: a token named in a path: its id or its prefix (``kf_`` and 7 more characters), never the secret
TokenRef = Annotated[str, Path(min_length=1, max_length=18, pattern=r"^[A-Za-z0-9_-]+$")]


class TokenCreate(Strict):
    """At most one of ``expires_in_s`` (from the server's now) and ``expires_at_s`` (POSIX seconds)."""

    name: ShortText = ""
    user: Name | None = None
    expires_in_s: Seconds | None = None
    expires_at_s: Annotated[float, Field(gt=0, le=1e11)] | None = None


class TokenPublic(BaseModel):
    id: int
    user: str
    name: str
    prefix: str
    created_at_s: float
    expires_at_s: float | None
    last_used_s: float | None
    revoked: bool
    revoked_at_s: float | None
    #: active, expired or revoked
    state: str


class TokenCreated(TokenPublic):
    #: the secret: shown in this answer only
    token: str
    #: the id of the token this one replaced (rotation)
    replaces: int | None = None


def public(v: TokenView, now_s: float) -> TokenPublic:
    return TokenPublic(
        id=v.id,
        user=v.user,
        name=v.name,
        prefix=v.prefix,
        created_at_s=v.created_at_s,
        expires_at_s=v.expires_at_s,
        last_used_s=v.last_used_s,
        revoked=v.revoked,
        revoked_at_s=v.revoked_at_s,
        state=v.state(now_s),
    )


def created(v: TokenView, secret: str, now_s: float, replaces: int | None = None) -> TokenCreated:
    return TokenCreated(**public(v, now_s).model_dump(), token=secret, replaces=replaces)


def _expiry(body: TokenCreate, now_s: float) -> float | None:
    if body.expires_in_s is not None and body.expires_at_s is not None:
        raise ValidationError("expires_at_s", "both expires_in_s and expires_at_s given", "send one of them")
    if body.expires_in_s is not None:
        return now_s + body.expires_in_s
    return body.expires_at_s


@router.post("", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, c: Caller) -> TokenCreated:
    """A new token for the caller, or for ``user`` (operators: anyone; org-admins: their organization's users).
    The secret is in this answer only."""
    now = c.now
    v, secret = tokens.create(c.rt.sessions, c.actor, now, body.name, body.user, _expiry(body, now))
    return created(v, secret, now)


@router.get("", response_model=list[TokenPublic])
def list_tokens(
    c: Caller,
    user: Annotated[str | None, Query(max_length=200)] = None,
    include_all: Annotated[bool, Query(alias="all", description="also revoked and expired tokens")] = False,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=tokens.MAX_PAGE)] = tokens.MAX_PAGE,
) -> list[TokenPublic]:
    """The caller's tokens, or ``user``'s; live ones only unless ``all``. Never a secret or a hash."""
    now = c.now
    rows = tokens.list_tokens(c.rt.sessions, c.actor, now, user, include_all, after_id, limit)
    return [public(v, now) for v in rows]


def _revoked(r: Revocation, now_s: float) -> TokenPublic:
    forget_token(r.token_hash)
    return public(r.token, now_s)


@router.delete("/{ref}", response_model=TokenPublic)
def delete_token(ref: TokenRef, c: Caller) -> TokenPublic:
    """Revoke a token by id or prefix (same as ``POST /v1/tokens/{ref}/revoke``)."""
    now = c.now
    return _revoked(tokens.revoke(c.rt.sessions, c.actor, ref, now), now)


@router.post("/{ref}/revoke", response_model=TokenPublic)
def revoke_token(ref: TokenRef, c: Caller) -> TokenPublic:
    """Revoke a token by id or prefix; it stops working at once on this server. Revoking twice changes nothing."""
    now = c.now
    return _revoked(tokens.revoke(c.rt.sessions, c.actor, ref, now), now)


@router.post("/{ref}/rotate", status_code=201, response_model=TokenCreated)
def rotate_token(ref: TokenRef, c: Caller) -> TokenCreated:
    """A new secret with the old token's name and lifetime; the old token is revoked in the same transaction."""
    now = c.now
    r = tokens.rotate(c.rt.sessions, c.actor, ref, now)
    forget_token(r.replaced.token_hash)
    return created(r.token, r.secret, now, replaces=r.replaced.token.id)
