"""/v1/projects/{name}/webhook-secret: the secret that signs a project's job webhooks (``--notify URL``), shown to
the project's admins (operators, the admins of its organization); made on first use, replaced with ``rotate``.
Both are audited (the secret itself never goes into the audit log)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from kfabric.api.deps import Caller
from kfabric.model.errors import NotFound, PermissionDenied
from kfabric.service import audit, notifications
from kfabric.service.actors import Actor, Role
from kfabric.store import tables as t

router = APIRouter(prefix="/v1", tags=["notifications"])


def _secret(c: Caller, name: str, rotate: bool) -> dict[str, Any]:
    with c.rt.sessions.begin() as s:
        project = s.scalar(select(t.Project).where(t.Project.name == name))
        if project is None or not c.actor.sees_project(project.id, project.organization_id):
            raise NotFound("project", name)
        _require_admin(c.actor, project)
        secret = notifications.webhook_secret(s, project.id, rotate=rotate)
        action = "project.webhook_secret.rotate" if rotate else "project.webhook_secret.show"
        audit.record(s, c.actor.name, action, "project", project.id, c.now, project.organization_id, {"name": name})
    return {
        "project": name,
        "secret": secret,
        "signature_header": notifications.SIGNATURE_HEADER,
        "timestamp_header": notifications.TIMESTAMP_HEADER,
        "scheme": "sha256=HMAC-SHA256(secret, TIMESTAMP + '.' + BODY), hex",
    }


def _require_admin(actor: Actor, project: t.Project) -> None:
    if actor.role is Role.OPERATOR:
        return
    if actor.role is Role.ORG_ADMIN and actor.organization_id == project.organization_id:
        return
    raise PermissionDenied(
        f"see the webhook secret of project {project.name}",
        "only operators and the admins of the project's organization may; ask one of them",
    )


@router.get("/projects/{name}/webhook-secret")
def show_webhook_secret(name: str, c: Caller) -> dict[str, Any]:
    return _secret(c, name, rotate=False)


@router.post("/projects/{name}/webhook-secret/rotate")
def rotate_webhook_secret(name: str, c: Caller) -> dict[str, Any]:
    return _secret(c, name, rotate=True)
