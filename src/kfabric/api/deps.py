"""Request dependencies: the service runtime and the authenticated caller."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool

from kfabric.service.actors import Actor
from kfabric.service.auth import authenticate, hash_token
from kfabric.service.runtime import Runtime

bearer = HTTPBearer(auto_error=False, description="an API token: kf_...")

#: seconds an authenticated token is remembered (revocations and membership changes apply after at most this)
AUTH_CACHE_S = 2.0


class _AuthCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[float, Actor]] = {}

    def get(self, key: str) -> Actor | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None or hit[0] < time.monotonic():
                return None
            return hit[1]

    def put(self, key: str, actor: Actor) -> None:
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[key] = (time.monotonic() + AUTH_CACHE_S, actor)


_cache = _AuthCache()


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


def _authenticate(rt: Runtime, token: str | None) -> Actor:
    with rt.sessions() as s:
        return authenticate(s, token)


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
        actor = await run_in_threadpool(_authenticate, rt, token)
        _cache.put(key, actor)
    return Ctx(rt, actor)


Caller = Annotated[Ctx, Depends(ctx)]
