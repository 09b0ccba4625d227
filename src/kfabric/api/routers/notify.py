"""/v1/projects/{name}/webhook-secret: the secret that signs a project's job webhooks (``--notify URL``), shown to
the project's admins (operators, the admins of its organization); made on first use, replaced with ``rotate``.
Both are audited (the secret itself never goes into the audit log): service/notify_queries.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kfabric.api.deps import Caller
from kfabric.service import notify_queries

router = APIRouter(prefix="/v1", tags=["notifications"])


@router.get("/projects/{name}/webhook-secret")
def show_webhook_secret(name: str, c: Caller) -> dict[str, Any]:
    return notify_queries.webhook_secret(c.rt.sessions, c.actor, name, False, c.now)


@router.post("/projects/{name}/webhook-secret/rotate")
def rotate_webhook_secret(name: str, c: Caller) -> dict[str, Any]:
    return notify_queries.webhook_secret(c.rt.sessions, c.actor, name, True, c.now)
