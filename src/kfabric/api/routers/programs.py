"""/v1/programs, /v1/applications (with reviews and decisions), /v1/grants."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import Field
from sqlalchemy import select

from kfabric.api.deps import Caller
from kfabric.api.schemas import (
    ApplicationCreate,
    DecisionCreate,
    GrantCreate,
    ProgramCreate,
    ReviewCreate,
    ShortText,
    Strict,
    Text,
)
from kfabric.service import credit, grants, programs
from kfabric.store import tables as t

router = APIRouter(prefix="/v1", tags=["programs"])

#: an application id in a path: bounded, so a huge number is a 422, not a storage error (64-bit ids)
ApplicationId = Annotated[int, Path(ge=1, le=2**62)]


def program_public(p: t.Program) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "description": p.description, "owner": p.owner, "weight": p.weight,
            "rules": p.rules}  # fmt: skip


def application_public(a: t.Application, names: dict[str, dict[int, str]], reviews: list[t.Review]) -> dict[str, Any]:
    return {
        "id": a.id,
        "program": names["program"].get(a.program_id),
        "organization": names["organization"].get(a.organization_id),
        "project": names["project"].get(a.project_id),
        "gpu_model_class": a.gpu_model_class,
        "gpus": a.gpus,
        "months": a.months,
        "justification": a.justification,
        "status": a.status,
        "created_at_s": a.created_at_s,
        "decided_at_s": a.decided_at_s,
        "decision_note": a.decision_note,
        "reviews": [{"scores": r.scores, "weighted": r.weighted, "comment": r.comment} for r in reviews],
        "mean_score": sum(r.weighted for r in reviews) / len(reviews) if reviews else None,
    }


def _names(c: Caller) -> dict[str, dict[int, str]]:
    with c.rt.sessions() as s:
        return {
            "program": dict(s.execute(select(t.Program.id, t.Program.name)).all()),
            "organization": dict(s.execute(select(t.Organization.id, t.Organization.name)).all()),
            "project": dict(s.execute(select(t.Project.id, t.Project.name)).all()),
        }


def _reviews(c: Caller, application_id: int) -> list[t.Review]:
    with c.rt.sessions() as s:
        q = select(t.Review).where(t.Review.application_id == application_id).order_by(t.Review.id)
        return list(s.scalars(q).all())


@router.get("/programs")
def list_programs(c: Caller) -> list[dict[str, Any]]:
    with c.rt.sessions() as s:
        return [program_public(p) for p in programs.list_programs(s)]


@router.post("/programs", status_code=201)
def create_program(body: ProgramCreate, c: Caller) -> dict[str, Any]:
    p = programs.create_program(
        c.rt.sessions, c.actor, body.name, body.description, body.owner, body.weight, body.rules, c.now
    )
    return program_public(p)


@router.get("/programs/{name}")
def show_program(name: ShortText, c: Caller) -> dict[str, Any]:
    with c.rt.sessions() as s:
        return program_public(programs.program_by_name(s, name))


@router.post("/applications", status_code=201)
def apply(body: ApplicationCreate, c: Caller) -> dict[str, Any]:
    a = programs.apply(
        c.rt.sessions, c.actor, body.program, body.project, body.gpu_model_class, body.gpus, body.months,
        body.justification, c.now, c.rt.scenario.fleet,
    )  # fmt: skip
    return application_public(a, _names(c), [])


@router.get("/applications")
def list_applications(
    c: Caller, status: Annotated[ShortText | None, Query(max_length=16)] = None
) -> list[dict[str, Any]]:
    with c.rt.sessions() as s:
        rows = programs.list_applications(s, c.actor, status)
    names = _names(c)
    return [application_public(a, names, _reviews(c, a.id)) for a in rows]


@router.get("/applications/{application_id}")
def show_application(application_id: ApplicationId, c: Caller) -> dict[str, Any]:
    with c.rt.sessions() as s:
        a = programs.get_application(s, c.actor, application_id)
    return application_public(a, _names(c), _reviews(c, a.id))


@router.post("/applications/{application_id}/reviews", status_code=201)
def review(application_id: ApplicationId, body: ReviewCreate, c: Caller) -> dict[str, Any]:
    r = programs.review(c.rt.sessions, c.actor, application_id, body.scores, body.comment, c.now)
    return {"application": application_id, "scores": r.scores, "weighted": r.weighted, "comment": r.comment}


@router.post("/applications/{application_id}/decision")
def decide(application_id: ApplicationId, body: DecisionCreate, c: Caller) -> dict[str, Any]:
    g = grants.decide(
        c.rt.sessions, c.actor, application_id, body.approve, c.now, body.note, body.start_s, body.reserved,
        body.credit_su_hours, c.rt.scenario.fleet,
    )  # fmt: skip
    view = None
    if g is not None:
        names = _names(c)
        view = grants.grant_view(g, names["program"].get(g.program_id), names["project"].get(g.project_id))
    return {"application": application_id, "approved": body.approve, "grant": view}


@router.get("/grants")
def list_grants(c: Caller) -> list[dict[str, Any]]:
    with c.rt.sessions() as s:
        return [grants.grant_view(g, program, project) for g, program, project in grants.list_grants(s, c.actor)]


@router.post("/grants", status_code=201)
def create_grant(body: GrantCreate, c: Caller) -> dict[str, Any]:
    g = grants.create_grant(
        c.rt.sessions, c.actor, body.name, body.program, body.project, body.start_s, body.end_s, c.now,
        body.reserved_model, body.reserved_gpus, body.credit_su_hours, body.weight, c.rt.scenario.fleet,
    )  # fmt: skip
    return grants.grant_view(g, body.program, body.project)


# ---- credit top-up (issue 15): the schema lives with its only route ----------------------------------------------
class GrantTopUp(Strict):
    """More credit for a grant: SU-hours (> 0) and why (audited)."""

    su_hours: Annotated[float, Field(gt=0, le=1e12)]
    note: Annotated[Text, Field(min_length=1)]


@router.post("/grants/{grant_id}/topup")
def top_up_grant(
    grant_id: Annotated[str, Path(min_length=1, max_length=200)], body: GrantTopUp, c: Caller
) -> dict[str, Any]:
    """Add credit to a grant (operators); ``grant_id`` is the grant's name, as ``kfabric grant list`` shows it."""
    g = credit.top_up(c.rt.sessions, c.actor, grant_id, body.su_hours, body.note, c.now)
    return grants.grant_view(g)
