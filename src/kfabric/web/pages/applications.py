"""My applications: the list (``programs.list_applications``), the apply form with each program's rules
(``programs.apply``, with the service's fleet, as the API calls it) and one application's page: its request,
status, and once decided the decision and the reviewers' comments. Another tenant's application is a 404 page."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path, Response

from kfabric.api.schemas import ApplicationCreate
from kfabric.model.errors import KfabricError
from kfabric.service import portal_applications, portal_jobs, programs
from kfabric.service.actors import Role
from kfabric.web import nav
from kfabric.web.pages.submit import schema_error
from kfabric.web.view import PageRoute, Posted, View, Viewer, describe

router = APIRouter(route_class=PageRoute, include_in_schema=False)
nav.add("nav.applications", "/applications", frozenset({Role.OPERATOR, Role.ORG_ADMIN, Role.MEMBER}), order=40)

ApplicationId = Annotated[int, Path(ge=1, le=2**62)]
#: the roles that may apply (programs.apply refuses the others; the page then says so instead of a form)
APPLIERS = (Role.ORG_ADMIN, Role.OPERATOR)


@router.get("/applications")
def applications(view: Viewer) -> Response:
    rows, names = portal_applications.applications(view.rt.sessions, view.actor)
    return view.render("applications.html", rows=rows, names=names, may_apply=view.actor.role in APPLIERS)


def _apply_form(view: View, values: dict[str, str], problem: tuple[int, str, str, str] | None = None) -> Response:
    projects = portal_jobs.visible_projects(view.rt.sessions, view.actor)
    facts = portal_applications.program_facts(view.rt.sessions, view.rt.scenario.fleet)
    chosen = values.get("program") or (facts[0]["name"] if facts else "")
    return view.render(
        "apply.html",
        status=problem[0] if problem else 200,
        values={**values, "program": chosen},
        programs=facts,
        chosen=next((f for f in facts if f["name"] == chosen), None),
        projects=projects,
        may_apply=view.actor.role in APPLIERS,
        problem=problem,
    )


@router.get("/applications/new")
def apply_page(view: Viewer, program: str = "") -> Response:
    return _apply_form(view, {"program": program[:200], "months": "6", "gpus": "8"})


@router.post("/applications/new")
def apply(view: Viewer, form: Posted) -> Response:
    values = {k: form.get(k) for k in ("program", "project", "gpu_model_class", "gpus", "months", "justification")}
    raw: dict[str, Any] = {k: v.strip() for k, v in values.items() if k != "justification"}
    raw["justification"] = values["justification"]
    for key in ("gpus", "months"):
        # text that is no number stays text: the schema names the field, as the API does for such a string
        with contextlib.suppress(ValueError):
            raw[key] = int(raw[key])
    try:
        try:
            body = ApplicationCreate.model_validate(raw)
        except pydantic.ValidationError as exc:
            raise schema_error(exc) from None
        row = programs.apply(
            view.rt.sessions, view.actor, body.program, body.project, body.gpu_model_class, body.gpus, body.months,
            body.justification, view.now, view.rt.scenario.fleet,
        )  # fmt: skip
    except KfabricError as exc:
        return _apply_form(view, values, describe(view, exc, in_form=True))
    return view.redirect(f"/applications/{row.id}")


@router.get("/applications/{application_id}")
def application_page(view: Viewer, application_id: ApplicationId) -> Response:
    found = portal_applications.application_detail(view.rt.sessions, view.actor, application_id)
    row, reviews, names = found.app, found.reviews, found.names
    decided = row.status != "submitted"
    shown = programs.reviews_shown(view.actor, row.status, reviews)
    return view.render(
        "application.html",
        app=row,
        program=names["program"].get(row.program_id, "?"),
        project=names["project"].get(row.project_id, "?"),
        decided=decided,
        reviews=shown,
        review_count=len(reviews),
        mean=sum(r.weighted for r in shown) / len(shown) if shown and decided else None,
        grant=found.grant,
    )
