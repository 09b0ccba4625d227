"""Who is calling, and what they may see. Tenants (org-admins, members) see only their organization's objects;
members only their projects' jobs and usage. Operators see everything; reviewers see programs, applications
and reviews; providers see the fleet and usage on their owner's sites."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kfabric.model.errors import NotFound, PermissionDenied, choice_of


class Role(Enum):
    OPERATOR = "operator"
    REVIEWER = "reviewer"
    ORG_ADMIN = "org-admin"
    MEMBER = "member"
    PROVIDER = "provider"

    @classmethod
    def parse(cls, text: str, where: str = "role") -> Role:
        return choice_of(cls, text, where, "role")


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: int
    name: str
    role: Role
    organization_id: int | None = None
    project_ids: frozenset[int] = frozenset()
    owner: str = ""

    @property
    def is_operator(self) -> bool:
        return self.role is Role.OPERATOR

    @property
    def is_tenant(self) -> bool:
        return self.role in (Role.ORG_ADMIN, Role.MEMBER)

    def sees_project(self, project_id: int, organization_id: int) -> bool:
        if self.role is Role.OPERATOR:
            return True
        if self.role is Role.ORG_ADMIN:
            return organization_id == self.organization_id
        if self.role is Role.MEMBER:
            return project_id in self.project_ids
        return False

    def sees_organization(self, organization_id: int) -> bool:
        if self.role in (Role.OPERATOR, Role.REVIEWER):
            return True
        return self.is_tenant and organization_id == self.organization_id

    def require_operator(self, action: str) -> None:
        if self.role is not Role.OPERATOR:
            raise PermissionDenied(action, f"needs the operator role; you are {self.role.value}")

    def require_visible_project(self, project_id: int, organization_id: int, name: object) -> None:
        if not self.sees_project(project_id, organization_id):
            raise NotFound("project", name)
