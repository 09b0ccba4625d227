"""Programs and their calls, ranked applications and decisions, and grants (program managers: the operator role,
which ``grants.decide`` requires, as ``POST /v1/applications/{id}/decision`` does).

A program takes applications as long as it exists: its open call is its submitted applications. The ranking is by
the mean weighted review score (unreviewed last, then by id). What an application "would take" is its asked GPUs of
its model; "free" is, per model, the GPUs in the pools the program may use (``programs.program_models``) less what
grants in force now reserve of that model (any program's: reservations share those pools), and "free after" runs
down the ranking as if every application above were approved with its reservation."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path, Response

from kfabric.api.schemas import DecisionCreate
from kfabric.model.errors import KfabricError, ValidationError
from kfabric.sched import ledger
from kfabric.service import grants, portal_programs, programs
from kfabric.service.actors import Role
from kfabric.web import nav
from kfabric.web.pages.submit import schema_error
from kfabric.web.view import PageRoute, Posted, View, Viewer, describe

router = APIRouter(route_class=PageRoute, include_in_schema=False)
OPERATORS = frozenset({Role.OPERATOR})
nav.add("nav.programs", "/programs", OPERATORS, order=60)
nav.add("nav.grants", "/grants", OPERATORS, order=61)

ApplicationId = Annotated[int, Path(ge=1, le=2**62)]
ProgramName = Annotated[str, Path(min_length=1, max_length=200)]


# ---- programs --------------------------------------------------------------------------------------------------


@router.get("/programs")
def program_list(view: Viewer) -> Response:
    facts = portal_programs.program_overview(view.rt.sessions, view.actor, view.now)
    return view.render("programs.html", programs=facts)


@router.get("/programs/{name}")
def program_page(view: Viewer, name: ProgramName, decided: str = "") -> Response:
    found = portal_programs.program_page(view.rt.sessions, view.actor, view.rt.controller.live.fleet, name, view.now)
    return view.render(
        "program.html",
        program=found.program,
        rules=programs.rules_to_json(found.rules),
        room=found.room,
        ranked=found.ranked,
        done=found.done,
        names=found.names,
        decided=decided[:20],
    )


# ---- deciding one application ----------------------------------------------------------------------------------


def _decide_context(view: View, application_id: int) -> dict[str, Any]:
    c = portal_programs.decision_context(
        view.rt.sessions, view.actor, application_id, view.rt.controller.live.fleet, view.now
    )
    app, reviews, named = c.app, c.reviews, c.names
    return {
        "app": app,
        "program": c.program,
        "min_reviews": c.rules.min_reviews,
        "reviews": reviews,
        "mean": sum(r.weighted for r, _u in reviews) / len(reviews) if reviews else None,
        "room": c.room,
        "organization": named["organization"].get(app.organization_id, "?"),
        "project": named["project"].get(app.project_id, "?"),
        "grant": c.grant,
        "values": {"reserve": "on", "credit": "0", "note": ""},
        "problem": None,
    }


@router.get("/decide/{application_id}")
def decide_page(view: Viewer, application_id: ApplicationId) -> Response:
    return view.render("decide.html", **_decide_context(view, application_id))


@router.post("/decide/{application_id}")
def decide(view: Viewer, form: Posted, application_id: ApplicationId) -> Response:
    context = _decide_context(view, application_id)
    values = {
        "reserve": form.get("reserve"),
        "credit": form.get("credit", "0").strip() or "0",
        "note": form.get("note"),
    }
    raw: dict[str, Any] = {"approve": form.get("decision") == "approve", "note": values["note"],
                           "reserved": values["reserve"] == "on", "credit_su_hours": values["credit"]}  # fmt: skip
    with contextlib.suppress(ValueError):  # text that is no number stays text: the schema names the field
        raw["credit_su_hours"] = float(values["credit"])
    try:
        if form.get("decision") not in ("approve", "reject"):
            raise ValidationError("decision", f"must be approve or reject, got {form.get('decision')!r}")
        try:
            body = DecisionCreate.model_validate(raw)
        except pydantic.ValidationError as exc:
            raise schema_error(exc) from None
        grants.decide(
            view.rt.sessions, view.actor, application_id, body.approve, view.now, body.note, body.start_s,
            body.reserved, body.credit_su_hours, view.rt.scenario.fleet,
        )  # fmt: skip
    except KfabricError as exc:
        context.update(values=values, problem=describe(view, exc, in_form=True))
        return view.render("decide.html", status=context["problem"][0], **context)
    return view.redirect(f"/programs/{context['program'].name}?decided={application_id}")


# ---- grants ------------------------------------------------------------------------------------------------------


@router.get("/grants")
def grant_list(view: Viewer, status: str = "") -> Response:
    window = ledger.UNDERUSE_WINDOW_S
    rows = portal_programs.grant_rows(view.rt.sessions, view.actor, status, view.now, window)
    return view.render("grants.html", rows=rows, window_days=window / 86400, chosen=status[:16])
