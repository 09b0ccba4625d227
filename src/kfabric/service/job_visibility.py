"""Which jobs a caller sees: the one rule every job list applies (the API's ``GET /v1/jobs``, the portal's queue,
``kfabric queue``), written once so that they cannot drift. Operators see every job; an org-admin the jobs of its
organization's projects; a member the jobs of the projects it belongs to; reviewers and providers no job. It is
the SQL form of ``Actor.sees_project``, which answers the same question for one job (``jobs.visible_job``:
``GET /v1/jobs/{id}`` and the portal's job page); tests/security/test_job_visibility_one_rule.py checks that
every route answers the same set for every kind of caller."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, select, true

from kfabric.service.actors import Actor, Role
from kfabric.store import tables as t

Q = TypeVar("Q", bound="Select[*tuple[Any, ...]]")


def project_condition(actor: Actor) -> ColumnElement[bool] | None:
    """The projects whose jobs ``actor`` sees, as a condition on ``t.Project`` (operators: ``true``); None when
    the caller's role sees no project."""
    if actor.role is Role.OPERATOR:
        return true()
    if actor.role is Role.ORG_ADMIN and actor.organization_id is not None:
        return t.Project.organization_id == actor.organization_id
    if actor.role is Role.MEMBER:
        return t.Project.id.in_(sorted(actor.project_ids))
    return None


def job_condition(actor: Actor) -> ColumnElement[bool] | None:
    """The jobs ``actor`` sees, as a condition on ``t.Job`` alone (it needs no join: a query that forgot to join
    the project cannot widen it; operators: ``true``); None when the caller's role sees no job."""
    if actor.role is Role.OPERATOR:
        return true()
    if actor.role is Role.ORG_ADMIN and actor.organization_id is not None:
        org_projects = select(t.Project.id).where(t.Project.organization_id == actor.organization_id)
        return t.Job.project_id.in_(org_projects.scalar_subquery())
    if actor.role is Role.MEMBER:
        return t.Job.project_id.in_(sorted(actor.project_ids))
    return None


def scoped_jobs(q: Q, actor: Actor) -> Q | None:
    """``q`` (any select over ``t.Job``) limited to the jobs ``actor`` sees; None when the caller's role sees no
    job (callers answer an empty list without asking the store)."""
    if actor.role is Role.OPERATOR:
        return q
    where = job_condition(actor)
    return q.where(where) if where is not None else None


def scoped_projects(q: Q, actor: Actor) -> Q | None:
    """``q`` (any select over ``t.Project``) limited to the projects whose jobs ``actor`` sees (the portal's project
    filter); None when the caller's role sees none."""
    if actor.role is Role.OPERATOR:
        return q
    where = project_condition(actor)
    return q.where(where) if where is not None else None
