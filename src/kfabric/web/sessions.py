"""Browser sessions: the portal's name for the session store, which lives in the service layer
(:mod:`kfabric.service.portal_sessions`: the cookie's id is never stored, only its SHA-256; a session ends with its
token, on sign-out, after :data:`IDLE_S` idle and at the latest :data:`ABSOLUTE_S` after sign-in)."""

from __future__ import annotations

from kfabric.service.portal_sessions import (
    ABSOLUTE_S,
    IDLE_S,
    TOUCH_S,
    WebSession,
    begin,
    end,
    id_hash,
    lookup,
    set_preferences,
)

__all__ = ["ABSOLUTE_S", "IDLE_S", "TOUCH_S", "WebSession", "begin", "end", "id_hash", "lookup", "set_preferences"]
