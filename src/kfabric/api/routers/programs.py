"""/v1/programs, /v1/applications (with reviews and decisions), /v1/grants."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import Field

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
from kfabric.service import credit, grants, program_queries, programs

router = APIRouter(prefix="/v1", tags=["programs"])

#: an application id in a path: bounded, so a huge number is a 422, not a storage error (64-bit ids)
ApplicationId = Annotated[int, Path(ge=1, le=2**62)]


@router.get("/programs")
def list_programs(c: Caller) -> list[dict[str, Any]]:
    return program_queries.programs_list(c.rt.sessions)


@router.post("/programs", status_code=201)
def create_program(body: ProgramCreate, c: Caller) -> dict[str, Any]:
    p = programs.create_program(
        c.rt.sessions, c.actor, body.name, body.description, body.owner, body.weight, body.rules, c.now
    )
    return program_queries.program_view(p)


@router.get("/programs/{name}")
def show_program(name: ShortText, c: Caller) -> dict[str, Any]:
    return program_queries.program(c.rt.sessions, name)


@router.post("/applications", status_code=201)
def apply(body: ApplicationCreate, c: Caller) -> dict[str, Any]:
    a = programs.apply(
        c.rt.sessions, c.actor, body.program, body.project, body.gpu_model_class, body.gpus, body.months,
        body.justification, c.now, c.rt.scenario.fleet,
    )  # fmt: skip
    return program_queries.new_application(c.rt.sessions, a)


@router.get("/applications")
def list_applications(
    c: Caller, status: Annotated[ShortText | None, Query(max_length=16)] = None
) -> list[dict[str, Any]]:
    return program_queries.applications(c.rt.sessions, c.actor, status)


@router.get("/applications/{application_id}")
def show_application(application_id: ApplicationId, c: Caller) -> dict[str, Any]:
    return program_queries.application(c.rt.sessions, c.actor, application_id)


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
        view = grants.grant_view(g, *program_queries.grant_names(c.rt.sessions, g))
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
