"""The webhook secret of a project (``/v1/projects/{name}/webhook-secret``): shown to the project's admins
(operators, the admins of its organization), made on first use, replaced with ``rotate``. Both are audited (the
secret itself never goes into the audit log)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import NotFound, PermissionDenied
from kfabric.service import audit, notifications
from kfabric.service.actors import Actor, Role
from kfabric.store import tables as t


def webhook_secret(
    sessions: sessionmaker[Session], actor: Actor, name: str, rotate: bool, now_s: float
) -> dict[str, Any]:
    """The project's secret and how receivers check a signature with it (one transaction with its audit entry)."""
    with sessions.begin() as s:
        project = s.scalar(select(t.Project).where(t.Project.name == name))
        if project is None or not actor.sees_project(project.id, project.organization_id):
            raise NotFound("project", name)
        _require_admin(actor, project)
        secret = notifications.webhook_secret(s, project.id, rotate=rotate)
        action = "project.webhook_secret.rotate" if rotate else "project.webhook_secret.show"
        audit.record(s, actor.name, action, "project", project.id, now_s, project.organization_id, {"name": name})
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
