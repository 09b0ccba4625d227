"""Request dependencies: the service runtime and the authenticated caller."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from kfabric.service.actors import Actor
from kfabric.service.auth import TokenAuth, check_token, hash_token, note_use
from kfabric.service.runtime import Runtime

log = logging.getLogger("kfabric.api")
bearer = HTTPBearer(auto_error=False, description="an API token: kf_...")

#: seconds an authenticated token is remembered: a token revoked by another process (or membership changed)
#: stops working (applies) after at most this; revocations through this process drop the entry at once, and
#: expiry is checked on every hit
AUTH_CACHE_S = 2.0


@dataclass(frozen=True, slots=True)
class _Entry:
    auth: TokenAuth
    until: float  # monotonic deadline
    clock: Callable[[], float]  # the runtime's clock, against which the token's expiry is checked


class _AuthCache:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic  # replaceable, so that tests move time without sleeping
        self._lock = threading.Lock()
        self._items: dict[str, _Entry] = {}

    def get(self, key: str) -> Actor | None:
        with self._lock:
            hit = self._items.get(key)
        if hit is None:
            return None
        if hit.until < self.monotonic() or hit.auth.expired(hit.clock()):
            self.forget(key)
            return None
        return hit.auth.actor

    def put(self, key: str, auth: TokenAuth, clock: Callable[[], float]) -> None:
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[key] = _Entry(auth, self.monotonic() + AUTH_CACHE_S, clock)

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


_cache = _AuthCache()


def forget_token(token_hash: str) -> None:
    """Drop a token from this process's authentication cache (after its revocation committed)."""
    _cache.forget(token_hash)


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


@dataclass(frozen=True, slots=True)
class Ctx:
    rt: Runtime
    actor: Actor

    @property
    def now(self) -> float:
        return self.rt.clock()


def cached_actor(authorization: str | None) -> Actor | None:
    """The caller of an ``Authorization`` header if it is a bearer token authenticated less than
    :data:`AUTH_CACHE_S` ago (what :func:`ctx` would find); None otherwise."""
    scheme, token = get_authorization_scheme_param(authorization)
    if not (scheme and token) or scheme.lower() != "bearer":
        return None
    return _cache.get(hash_token(token))


def _authenticate(rt: Runtime, token: str | None) -> TokenAuth:
    """Check the token in the store; record its use at most once a minute (best effort: a failed write is logged
    and the request goes on)."""
    now = rt.clock()
    with rt.sessions() as s:
        auth = check_token(s, token, now)
        try:
            if note_use(s, auth, now):
                s.commit()
        except SQLAlchemyError as exc:
            s.rollback()
            log.warning("could not record the use of token %d: %s", auth.token_id, exc)
        return auth


async def ctx(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Ctx:
    """The caller. Async, so that a cached token costs no thread hand-off; a lookup runs in the thread pool."""
    rt = runtime(request)
    token = creds.credentials if creds else None
    key = hash_token(token) if token else ""
    actor = _cache.get(key) if token else None
    if actor is None:
        auth = await run_in_threadpool(_authenticate, rt, token)
        _cache.put(key, auth, rt.clock)
        actor = auth.actor
    return Ctx(rt, actor)


Caller = Annotated[Ctx, Depends(ctx)]
