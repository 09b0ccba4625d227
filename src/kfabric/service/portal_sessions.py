"""The portal's browser sessions, kept server-side in ``web_sessions`` (the pages reach them through
``kfabric.web.sessions``).

The cookie carries a random id; the store keeps only its SHA-256, the token the browser signed in with, a CSRF
secret and the user's language and time zone. A session stands for its token: it ends when the token is revoked or
expires, when the user signs out, after :data:`IDLE_S` without a request and at the latest :data:`ABSOLUTE_S` after
sign-in. Sign-in and sign-out are audited.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from kfabric.service import audit
from kfabric.service.actors import Actor
from kfabric.service.auth import actor_for, check_token
from kfabric.store import tables as t

#: a session ends after this long without a request
IDLE_S = 30 * 60.0
#: and at the latest this long after sign-in (or when its token expires, if sooner)
ABSOLUTE_S = 12 * 3600.0
#: ``last_seen_s`` is written at most this often (a busy page costs a write a minute, not a request)
TOUCH_S = 60.0


def id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class WebSession:
    """A live session: who it is, and what the page needs from the row."""

    id_hash: str
    actor: Actor
    token_id: int | None
    csrf: str
    lang: str
    tz: str


def begin(
    sessions: sessionmaker[Session], token: str, now_s: float, lang: str = "", tz: str = ""
) -> tuple[str, WebSession]:
    """Check ``token`` (raises :class:`~kfabric.model.errors.Unauthenticated` saying why it does not work) and
    open a session for it; returns the session id (for the cookie, never stored) and the session."""
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    with sessions.begin() as s:
        auth = check_token(s, token, now_s)
        expires = now_s + ABSOLUTE_S
        if auth.expires_at_s is not None:
            expires = min(expires, auth.expires_at_s)
        row = t.WebSession(
            id_hash=id_hash(session_id),
            user_id=auth.actor.user_id,
            token_id=auth.token_id,
            csrf=csrf,
            created_at_s=now_s,
            expires_at_s=expires,
            last_seen_s=now_s,
            lang=lang,
            tz=tz,
        )
        s.add(row)
        _sweep(s, now_s)
        detail = {"token_id": auth.token_id, "expires_at_s": expires}
        audit.record(s, auth.actor.name, "web.signin", "user", auth.actor.user_id, now_s, auth.actor.organization_id,
                     detail)  # fmt: skip
        return session_id, WebSession(row.id_hash, auth.actor, auth.token_id, csrf, lang, tz)


def _sweep(s: Session, now_s: float) -> None:
    """Drop sessions that ended by time (expired, or idle too long): no row outlives its use by long."""
    s.execute(delete(t.WebSession).where(or_(t.WebSession.expires_at_s <= now_s,
                                              t.WebSession.last_seen_s <= now_s - IDLE_S)))  # fmt: skip


def _ended(row: t.WebSession, token: t.Token | None, now_s: float) -> bool:
    """The session ended by time (absolute or idle) or with its token (revoked, expired, gone)."""
    return (
        now_s >= row.expires_at_s
        or now_s - row.last_seen_s > IDLE_S
        or token is None
        or token.revoked
        or (token.expires_at_s is not None and token.expires_at_s <= now_s)
    )


def lookup(sessions: sessionmaker[Session], session_id: str, now_s: float) -> WebSession | None:
    """The live session of ``session_id``, or None when there is none or it ended (the row is then removed)."""
    if not session_id or len(session_id) > 100:
        return None
    key = id_hash(session_id)
    with sessions() as s:
        found = s.execute(
            select(t.WebSession, t.User, t.Token)
            .join(t.User, t.User.id == t.WebSession.user_id)
            .outerjoin(t.Token, t.Token.id == t.WebSession.token_id)
            .where(t.WebSession.id_hash == key)
        ).one_or_none()
        if found is None:
            return None
        row, user, token = found
        if _ended(row, token, now_s):
            s.execute(delete(t.WebSession).where(t.WebSession.id_hash == key))
            s.commit()
            return None
        if now_s - row.last_seen_s >= TOUCH_S:
            s.execute(update(t.WebSession).where(t.WebSession.id_hash == key).values(last_seen_s=now_s))
            s.commit()
        return WebSession(key, actor_for(s, user), row.token_id, row.csrf, row.lang, row.tz)


def end(sessions: sessionmaker[Session], web: WebSession, now_s: float) -> None:
    """Sign out: the row is deleted (the cookie no longer opens anything) and the sign-out audited."""
    with sessions.begin() as s:
        gone = s.execute(delete(t.WebSession).where(t.WebSession.id_hash == web.id_hash))
        if getattr(gone, "rowcount", 0):
            audit.record(s, web.actor.name, "web.signout", "user", web.actor.user_id, now_s,
                         web.actor.organization_id)  # fmt: skip


def set_preferences(sessions: sessionmaker[Session], web: WebSession, lang: str | None, tz: str | None) -> None:
    values: dict[str, str] = {}
    if lang is not None:
        values["lang"] = lang
    if tz is not None:
        values["tz"] = tz
    if values:
        with sessions.begin() as s:
            s.execute(update(t.WebSession).where(t.WebSession.id_hash == web.id_hash).values(**values))
