"""/v1/whoami, /v1/organizations, /v1/projects, /v1/users."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kfabric.api.deps import Caller
from kfabric.api.schemas import OrganizationCreate, ProjectCreate, UserCreate, UserCreated, UserUpdate
from kfabric.service import posix, tenancy, tenancy_queries

router = APIRouter(prefix="/v1", tags=["tenancy"])


@router.get("/whoami")
def whoami(c: Caller) -> dict[str, Any]:
    return tenancy_queries.whoami(c.rt.sessions, c.actor)


@router.get("/organizations")
def list_organizations(c: Caller) -> list[dict[str, Any]]:
    return tenancy_queries.organizations(c.rt.sessions, c.actor)


@router.post("/organizations", status_code=201)
def create_organization(body: OrganizationCreate, c: Caller) -> dict[str, Any]:
    o = tenancy.create_organization(c.rt.sessions, c.actor, body.name, body.kind, body.region, body.flags, c.now)
    return tenancy_queries.organization_view(o)


@router.get("/projects")
def list_projects(c: Caller) -> list[dict[str, Any]]:
    return tenancy_queries.projects(c.rt.sessions, c.actor)


@router.post("/projects", status_code=201)
def create_project(body: ProjectCreate, c: Caller) -> dict[str, Any]:
    p = tenancy.create_project(c.rt.sessions, c.actor, body.name, body.organization, c.now)
    return {"id": p.id, "name": p.name, "organization": body.organization}


@router.post("/users", status_code=201, response_model=UserCreated)
def create_user(body: UserCreate, c: Caller) -> UserCreated:
    """Create a user and its first API token (shown only in this answer)."""
    user, token = tenancy.create_user(
        c.rt.sessions, c.actor, body.name, body.role, c.now, body.organization, body.projects, body.owner,
        body.posix_user,
    )  # fmt: skip
    return UserCreated(id=user.id, name=user.name, role=user.role, token=token, posix_user=user.posix_user)


@router.patch("/users/{name}")
def update_user(name: str, body: UserUpdate, c: Caller) -> dict[str, Any]:
    """Map a user to the POSIX account its jobs run as (operators; org-admins for their organization's users)."""
    user = posix.set_posix_user(c.rt.sessions, c.actor, name, body.posix_user, c.now)
    return {"id": user.id, "name": user.name, "role": user.role, "posix_user": user.posix_user}
