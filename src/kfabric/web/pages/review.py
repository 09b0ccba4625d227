"""Reviewing (reviewers and operators): the applications to score, one application with its request, justification
and the program's rubric, the scoring form (``programs.review``, as ``POST /v1/applications/{id}/reviews``) and the
declaration of a conflict of interest (``programs.declare_conflict``).

kfabric has no assignment of applications to reviewers: every reviewer may review every submitted application, so
"assigned to me" is the submitted applications I have not scored and have no conflict of interest on."""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path, Response

from kfabric.api.schemas import ReviewCreate
from kfabric.model.errors import KfabricError, PermissionDenied
from kfabric.service import portal_applications, programs
from kfabric.service.actors import Actor, Role
from kfabric.web import nav
from kfabric.web.pages.submit import schema_error
from kfabric.web.view import PageRoute, Posted, View, Viewer, describe

router = APIRouter(route_class=PageRoute, include_in_schema=False)
REVIEWERS = frozenset({Role.REVIEWER, Role.OPERATOR})
nav.add("nav.review", "/review", REVIEWERS, order=50)

ApplicationId = Annotated[int, Path(ge=1, le=2**62)]
#: the score range of every criterion (programs.review's rule is the same)
SCORE_MIN, SCORE_MAX = 0, 10


def require_reviewer(actor: Actor) -> None:
    """Reviewing pages are for reviewers and operators (the API answers 403 to the others' reviews)."""
    if actor.role not in REVIEWERS:
        raise PermissionDenied("review applications", f"needs the reviewer role; you are {actor.role.value}")


@router.get("/review")
def review_list(view: Viewer) -> Response:
    actor = view.actor
    require_reviewer(actor)
    work = portal_applications.review_work(view.rt.sessions, actor)
    open_apps, mine, declared, named = work.open_apps, work.mine, work.declared, work.names
    own_org = {a.id for a in open_apps if a.organization_id == actor.organization_id is not None}
    todo = [a for a in open_apps if a.id not in mine and a.id not in declared and a.id not in own_org]
    scored = [a for a in open_apps if a.id in mine]
    conflicted = [a for a in open_apps if a.id in declared or a.id in own_org]
    return view.render("review_list.html", todo=todo, scored=scored, conflicted=conflicted, mine=mine, names=named)


def _context(view: View, application_id: int) -> dict[str, Any]:
    actor = view.actor
    require_reviewer(actor)
    c = portal_applications.review_context(view.rt.sessions, actor, application_id)
    app, named = c.app, c.names
    return {
        "app": app,
        "program": c.program,
        "criteria": list(c.rules.review_weights),
        "min_reviews": c.rules.min_reviews,
        "review_count": c.review_count,
        "mine": c.mine,
        "conflict": c.conflict,
        "organization": named["organization"].get(app.organization_id, "?"),
        "project": named["project"].get(app.project_id, "?"),
        "score_min": SCORE_MIN,
        "score_max": SCORE_MAX,
        "values": {},
        "problem": None,
    }


@router.get("/review/{application_id}")
def review_page(view: Viewer, application_id: ApplicationId, saved: str = "") -> Response:
    return view.render("review.html", saved=saved == "1", **_context(view, application_id))


@router.post("/review/{application_id}")
def score(view: Viewer, form: Posted, application_id: ApplicationId) -> Response:
    context = _context(view, application_id)
    values = {c: form.get(f"score-{c}").strip() for c, _w in context["criteria"]}
    comment = form.get("comment")
    raw: dict[str, Any] = {}
    for criterion, text in values.items():
        try:
            raw[criterion] = float(text)
        except ValueError:
            raw[criterion] = text  # text that is no number stays text: the schema names the field, as the API does
    try:
        try:
            body = ReviewCreate.model_validate({"scores": raw, "comment": comment})
        except pydantic.ValidationError as exc:
            raise schema_error(exc) from None
        programs.review(view.rt.sessions, view.actor, application_id, body.scores, body.comment, view.now)
    except KfabricError as exc:
        context.update(values=values | {"comment": comment}, problem=describe(view, exc, in_form=True))
        return view.render("review.html", status=context["problem"][0], saved=False, **context)
    return view.redirect(f"/review/{application_id}?saved=1")


@router.post("/review/{application_id}/conflict")
def conflict(view: Viewer, form: Posted, application_id: ApplicationId) -> Response:
    require_reviewer(view.actor)
    try:
        programs.declare_conflict(view.rt.sessions, view.actor, application_id, form.get("note"), view.now)
    except KfabricError as exc:
        context = _context(view, application_id)
        context["problem"] = describe(view, exc, in_form=True)
        return view.render("review.html", status=context["problem"][0], saved=False, **context)
    return view.redirect("/review")
