"""What the tenancy routes read (``/v1/whoami``, ``/v1/organizations``, ``/v1/projects``), as the API's JSON
objects, limited to what the caller may see."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.service.actors import Actor, Role
from kfabric.store import tables as t


def whoami(sessions: sessionmaker[Session], actor: Actor) -> dict[str, Any]:
    """The caller: name, role, organization and the names of its projects."""
    with sessions() as s:
        org = s.get(t.Organization, actor.organization_id) if actor.organization_id else None
        projects = list(s.scalars(select(t.Project.name).where(t.Project.id.in_(actor.project_ids))).all())
    return {"name": actor.name, "role": actor.role.value, "organization": org.name if org else None,
            "projects": projects}  # fmt: skip


def organization_view(o: t.Organization) -> dict[str, Any]:
    return {"id": o.id, "name": o.name, "kind": o.kind, "region": o.region, "flags": o.flags}


def organizations(sessions: sessionmaker[Session], actor: Actor) -> list[dict[str, Any]]:
    """The organizations the caller sees, by name."""
    with sessions() as s:
        rows = s.scalars(select(t.Organization).order_by(t.Organization.name)).all()
        return [organization_view(o) for o in rows if actor.sees_organization(o.id)]


def projects(sessions: sessionmaker[Session], actor: Actor) -> list[dict[str, Any]]:
    """The projects the caller sees (operators and reviewers: all), by name, with their organization's name."""
    with sessions() as s:
        rows = s.execute(
            select(t.Project, t.Organization.name)
            .join(t.Organization, t.Organization.id == t.Project.organization_id)
            .order_by(t.Project.name)
        ).all()
        visible = actor.role in (Role.OPERATOR, Role.REVIEWER)
        return [
            {"id": p.id, "name": p.name, "organization": org}
            for p, org in rows
            if visible or actor.sees_project(p.id, p.organization_id)
        ]
