"""Organizations, projects, users and tokens; seeding a new store from a scenario; the first operator."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import Conflict, NotFound, PermissionDenied, ValidationError
from kfabric.model.tenancy import Organization, OrgKind, Project
from kfabric.scenarios.loader import Scenario
from kfabric.service import audit, posix
from kfabric.service.actors import Actor, Role
from kfabric.service.auth import issue_token
from kfabric.service.programs import rules_to_json
from kfabric.store import tables as t


def day_s(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def seed_from_scenario(sessions: sessionmaker[Session], scenario: Scenario, document: str, now_s: float) -> bool:
    """Store the fleet document and the scenario's organizations, projects, programs and grants, once.
    Returns False (and changes nothing) when the store already holds a fleet."""
    with sessions.begin() as s:
        if s.scalar(select(func.count()).select_from(t.FleetSource)):
            return False
        s.add(t.FleetSource(name=scenario.name, document=document, loaded_at_s=now_s, active=True))
        orgs: dict[str, t.Organization] = {}
        for o in scenario.organizations:
            orgs[o.name] = t.Organization(name=o.name, kind=o.kind.value, region=o.region, flags=sorted(o.flags))
            s.add(orgs[o.name])
        s.flush()
        projects: dict[str, t.Project] = {}
        for p in scenario.projects:
            projects[p.name] = t.Project(name=p.name, organization_id=orgs[p.organization].id)
            s.add(projects[p.name])
        programs: dict[str, t.Program] = {}
        for g in scenario.programs:
            programs[g.name] = t.Program(
                name=g.name, description=g.description, owner=g.owner, weight=g.weight, rules=rules_to_json(g.rules)
            )
            s.add(programs[g.name])
        s.flush()
        for gr in scenario.grants:
            s.add(
                t.Grant(
                    name=gr.id,
                    program_id=programs[gr.program].id,
                    project_id=projects[gr.project].id,
                    start_s=day_s(gr.start),
                    end_s=day_s(gr.end),
                    reserved_model=gr.reserved_model,
                    reserved_gpus=gr.reserved_gpus,
                    credit_su_hours=gr.credit_su_hours,
                    weight=gr.weight,
                )
            )
        audit.record(s, "kfabric", "fleet.seed", "fleet", scenario.name, now_s, detail={"scenario": scenario.name})
    return True


def ensure_operator(sessions: sessionmaker[Session], now_s: float, name: str = "admin") -> str | None:
    """Create the first operator and return its token, or None when an operator exists already."""
    with sessions.begin() as s:
        if s.scalar(select(func.count()).select_from(t.User).where(t.User.role == Role.OPERATOR.value)):
            return None
        user = t.User(name=name, role=Role.OPERATOR.value, posix_user=posix.first_operator_account())
        s.add(user)
        s.flush()
        token = issue_token(s, user, now_s)
        detail = {"name": name, "role": "operator", "posix_user": user.posix_user}
        audit.record(s, "kfabric", "user.create", "user", user.id, now_s, detail=detail)
        return token


def create_organization(
    sessions: sessionmaker[Session], actor: Actor, name: str, kind: str, region: str, flags: list[str], now_s: float
) -> t.Organization:
    actor.require_operator("create organizations")
    Organization(name, OrgKind.parse(kind), region, frozenset(flags))  # the model checks the name and the kind
    with sessions.begin() as s:
        if s.scalars(select(t.Organization).where(t.Organization.name == name)).first():
            raise Conflict(f"organization {name!r}", "exists already", "pick another name")
        org = t.Organization(name=name, kind=kind, region=region, flags=sorted(flags))
        s.add(org)
        s.flush()
        audit.record(s, actor.name, "organization.create", "organization", org.id, now_s, org.id, {"name": name})
        return org


def tenant_name(actor: Actor, kind: str, name: str, org: t.Organization | None) -> str:
    """The stored name of a project or user. User and project names are one namespace across the fleet, so a
    name an org-admin creates is qualified with its organization (``NAME@ORG``): a tenant can only ever collide
    with its own organization's names, and a 409 never tells it that another tenant holds a name. A name that
    ends in ``@X`` belongs to organization X, whoever creates it."""
    base, at, suffix = name.rpartition("@")
    if at:
        if org is None or suffix != org.name:
            owner = f"organization {org.name!r}" if org is not None else "no organization"
            raise ValidationError(f"{kind}.name", f"{name!r} names organization {suffix!r}, but this {kind} is in "
                                  f"{owner}", f"use {base}@{org.name}" if org else f"drop '@{suffix}'")  # fmt: skip
        return name
    if actor.is_tenant and org is not None:
        return f"{name}@{org.name}"
    return name


def create_project(
    sessions: sessionmaker[Session], actor: Actor, name: str, organization: str, now_s: float
) -> t.Project:
    """Create a project; an org-admin's project is named ``NAME@ORG`` (:func:`tenant_name`)."""
    with sessions.begin() as s:
        org = s.scalars(select(t.Organization).where(t.Organization.name == organization)).first()
        if org is None or not actor.sees_organization(org.id):
            raise NotFound("organization", organization)
        if not (actor.is_operator or (actor.role is Role.ORG_ADMIN and actor.organization_id == org.id)):
            raise PermissionDenied("create projects", "only operators and the organization's admins create projects")
        name = tenant_name(actor, "project", name, org)
        Project(name, org.name)  # the model checks the name
        if s.scalars(select(t.Project).where(t.Project.name == name)).first():
            raise Conflict(f"project {name!r}", "exists already", "pick another name")
        project = t.Project(name=name, organization_id=org.id)
        s.add(project)
        s.flush()
        audit.record(s, actor.name, "project.create", "project", project.id, now_s, org.id, {"name": name})
        return project


def create_user(
    sessions: sessionmaker[Session],
    actor: Actor,
    name: str,
    role: str,
    now_s: float,
    organization: str | None = None,
    projects: list[str] | None = None,
    owner: str = "",
    posix_user: str = "",
) -> tuple[t.User, str]:
    """Create a user and its first token (returned once). Operators create anyone; org-admins create members
    of their own organization. ``posix_user``: the account its jobs run as (``service/posix.py``)."""
    r = Role.parse(role, "user.role")
    with sessions.begin() as s:
        org = None
        if organization is not None:
            org = s.scalars(select(t.Organization).where(t.Organization.name == organization)).first()
            if org is None or not actor.sees_organization(org.id):
                raise NotFound("organization", organization)
        if not actor.is_operator:
            ok = actor.role is Role.ORG_ADMIN and r is Role.MEMBER and org is not None
            if not ok or org is None or org.id != actor.organization_id:
                raise PermissionDenied("create users", "org-admins create only members of their own organization")
        if r in (Role.ORG_ADMIN, Role.MEMBER) and org is None:
            raise ValidationError("user.organization", f"a {r.value} belongs to an organization", "pass organization")
        name = tenant_name(actor, "user", name, org)
        if s.scalars(select(t.User).where(t.User.name == name)).first():
            raise Conflict(f"user {name!r}", "exists already", "pick another name")
        if posix_user:
            posix.check_choice(s, actor, posix_user, org.id if org else None)
        user = t.User(
            name=name, role=r.value, organization_id=org.id if org else None, owner=owner, posix_user=posix_user
        )
        s.add(user)
        s.flush()
        for pname in projects or []:
            names = [pname, f"{pname}@{org.name}"] if org is not None and "@" not in pname else [pname]
            project = s.scalars(select(t.Project).where(t.Project.name.in_(names)).order_by(t.Project.id)).first()
            if project is None or org is None or project.organization_id != org.id:
                raise NotFound("project", pname, "projects must belong to the user's organization")
            s.add(t.ProjectMember(project_id=project.id, user_id=user.id))
        token = issue_token(s, user, now_s)
        org_id = org.id if org else None
        detail = {"name": name, "role": r.value, "posix_user": posix_user}
        audit.record(s, actor.name, "user.create", "user", user.id, now_s, org_id, detail)
        return user, token
