"""/v1/status: which server leads, the standbys, the controller lease and the last cycle (``kfabric status``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kfabric.api.deps import Caller
from kfabric.service.actors import Role
from kfabric.service.leadership import status as lease_status

router = APIRouter(prefix="/v1", tags=["ops"])
#: roles that see where the servers run (host, pid, URL); every other authenticated user sees the rest
PRIVATE_ROLES = (Role.OPERATOR, Role.PROVIDER)


@router.get("/status")
def status(c: Caller) -> dict[str, Any]:
    """The leader (server id, since when), the standbys with their last heartbeat (``stale`` when not heard from
    for three renew intervals), the lease's epoch and expiry, and the last cycle's time and age. Any authenticated
    user may read it (it holds no tenant data); host, pid and URL of each server only operators and providers."""
    with c.rt.sessions() as s:
        return lease_status(s, c.now, c.rt.lease_settings, private=c.actor.role in PRIVATE_ROLES)
