"""Programs and their calls, ranked applications and decisions, and grants (program managers: the operator role,
which ``grants.decide`` requires, as ``POST /v1/applications/{id}/decision`` does).

A program takes applications as long as it exists: its open call is its submitted applications. The ranking is by
the mean weighted review score (unreviewed last, then by id). What an application "would take" is its asked GPUs of
its model; "free" is, per model, the GPUs in the pools the program may use (``programs.program_models``) less what
grants in force now reserve of that model (any program's: reservations share those pools), and "free after" runs
down the ranking as if every application above were approved with its reservation."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kfabric.api.schemas import DecisionCreate
from kfabric.model.errors import KfabricError, ValidationError
from kfabric.sched import ledger
from kfabric.service import grants, programs
from kfabric.service.actors import Actor, Role
from kfabric.store import tables as t
from kfabric.web import nav
from kfabric.web.pages.review import names
from kfabric.web.pages.submit import schema_error
from kfabric.web.view import PageRoute, Posted, View, Viewer, describe

router = APIRouter(route_class=PageRoute, include_in_schema=False)
OPERATORS = frozenset({Role.OPERATOR})
nav.add("nav.programs", "/programs", OPERATORS, order=60)
nav.add("nav.grants", "/grants", OPERATORS, order=61)

ApplicationId = Annotated[int, Path(ge=1, le=2**62)]
ProgramName = Annotated[str, Path(min_length=1, max_length=200)]


def require_manager(actor: Actor, action: str = "manage programs") -> None:
    actor.require_operator(action)


# ---- programs --------------------------------------------------------------------------------------------------


@router.get("/programs")
def program_list(view: Viewer) -> Response:
    require_manager(view.actor)
    with view.rt.sessions() as s:
        rows = programs.list_programs(s)
        counts: dict[int, dict[str, int]] = defaultdict(dict)
        for pid, status, n in s.execute(
            select(t.Application.program_id, t.Application.status, func.count()).group_by(
                t.Application.program_id, t.Application.status
            )
        ):
            counts[pid][status] = n
        in_force: dict[int, int] = dict(
            s.execute(
                select(t.Grant.program_id, func.count())
                .where(t.Grant.status.in_(programs.HOLDING), t.Grant.start_s <= view.now, t.Grant.end_s > view.now)
                .group_by(t.Grant.program_id)
            ).all()
        )
        s.expunge_all()
    facts = [
        {"row": p, "rules": programs.rules_to_json(programs.program_rules(p)), "counts": counts.get(p.id, {}),
         "grants": in_force.get(p.id, 0)}
        for p in rows
    ]  # fmt: skip
    return view.render("programs.html", programs=facts)


@dataclass(frozen=True, slots=True)
class Ranked:
    rank: int
    app: t.Application
    organization: str
    project: str
    reviews: int
    mean: float | None
    free_before: int | None  # None: the model is not in the program's pools
    free_after: int | None


def pool_room(s: Session, view: View, prog: t.Program) -> dict[str, dict[str, int]]:
    """Per GPU model of the program's pools: ``gpus`` there, ``reserved`` now by grants in force, ``free``."""
    models = programs.program_models(view.rt.controller.live.fleet, prog.owner)
    reserved: dict[str, int] = defaultdict(int)
    for model, n in s.execute(
        select(t.Grant.reserved_model, func.sum(t.Grant.reserved_gpus))
        .where(
            t.Grant.status.in_(programs.HOLDING),
            t.Grant.reserved_gpus > 0,
            t.Grant.start_s <= view.now,
            t.Grant.end_s > view.now,
        )
        .group_by(t.Grant.reserved_model)
    ):
        if model is not None:
            reserved[model] = int(n or 0)
    return {m: {"gpus": g, "reserved": reserved[m], "free": g - reserved[m]} for m, g in models.items()}


def ranking(s: Session, view: View, prog: t.Program, room: dict[str, dict[str, int]]) -> list[Ranked]:
    apps = list(
        s.scalars(select(t.Application).where(t.Application.program_id == prog.id, t.Application.status == "submitted"))
    )
    stats = {
        aid: (int(n), float(mean))
        for aid, n, mean in s.execute(
            select(t.Review.application_id, func.count(), func.avg(t.Review.weighted))
            .where(t.Review.application_id.in_([a.id for a in apps]))
            .group_by(t.Review.application_id)
        )
    }
    named = names(s)
    apps.sort(key=lambda a: (a.id not in stats, -stats.get(a.id, (0, 0.0))[1], a.id))
    left = {m: r["free"] for m, r in room.items()}
    out = []
    for i, a in enumerate(apps, 1):
        before = left.get(a.gpu_model_class)
        after = None if before is None else before - a.gpus
        if after is not None:
            left[a.gpu_model_class] = after
        n, mean = stats.get(a.id, (0, None))
        out.append(Ranked(i, a, named["organization"].get(a.organization_id, "?"),
                          named["project"].get(a.project_id, "?"), n, mean, before, after))  # fmt: skip
    return out


@router.get("/programs/{name}")
def program_page(view: Viewer, name: ProgramName, decided: str = "") -> Response:
    require_manager(view.actor)
    with view.rt.sessions() as s:
        prog = programs.program_by_name(s, name)
        rules = programs.program_rules(prog)
        room = pool_room(s, view, prog)
        ranked = ranking(s, view, prog, room)
        done = list(
            s.execute(
                select(t.Application, t.Grant.name)
                .outerjoin(t.Grant, t.Grant.application_id == t.Application.id)
                .where(t.Application.program_id == prog.id, t.Application.status != "submitted")
                .order_by(t.Application.decided_at_s.desc(), t.Application.id.desc())
                .limit(200)
            ).all()
        )
        named = names(s)
        s.expunge_all()
    return view.render(
        "program.html",
        program=prog,
        rules=programs.rules_to_json(rules),
        room=room,
        ranked=ranked,
        done=done,
        names=named,
        decided=decided[:20],
    )


# ---- deciding one application ----------------------------------------------------------------------------------


def _decide_context(view: View, application_id: int) -> dict[str, Any]:
    require_manager(view.actor, "decide applications")
    with view.rt.sessions() as s:
        app = programs.get_application(s, view.actor, application_id)
        prog = s.get(t.Program, app.program_id)
        assert prog is not None
        rules = programs.program_rules(prog)
        reviews = list(
            s.execute(
                select(t.Review, t.User.name)
                .join(t.User, t.User.id == t.Review.reviewer_id)
                .where(t.Review.application_id == app.id)
                .order_by(t.Review.id)
            ).all()
        )
        room = pool_room(s, view, prog)
        grant = s.scalars(select(t.Grant.name).where(t.Grant.application_id == app.id)).first()
        named = names(s)
        s.expunge_all()
    return {
        "app": app,
        "program": prog,
        "min_reviews": rules.min_reviews,
        "reviews": reviews,
        "mean": sum(r.weighted for r, _u in reviews) / len(reviews) if reviews else None,
        "room": room.get(app.gpu_model_class),
        "organization": named["organization"].get(app.organization_id, "?"),
        "project": named["project"].get(app.project_id, "?"),
        "grant": grant,
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


@dataclass(frozen=True, slots=True)
class GrantRow:
    view: dict[str, Any]
    utilization_pct: float | None  # over the under-use window, for a reservation watched by a floor
    floor_pct: float
    flagged_at_s: float | None
    reclaim_at_s: float | None  # when a flagged grant is reclaimed if its use stays below the floor


def utilization(s: Session, rows: list[t.Grant], now_s: float, window_s: float) -> dict[int, float]:
    """Use of each grant's reserved model over the under-use window, as ``grants.check_underuse`` counts it
    (usage records only: a running job's current interval is not written yet)."""
    watched = {g.id: g for g in rows if g.reserved_gpus > 0 and g.start_s < now_s < g.end_s}
    used: dict[int, float] = defaultdict(float)
    if watched:
        for gid, model, r0, r1, gpu_s in s.execute(
            select(t.UsageRecord.grant_id, t.UsageRecord.gpu_model, t.UsageRecord.start_s, t.UsageRecord.end_s,
                   t.UsageRecord.gpu_s)
            .where(t.UsageRecord.grant_id.in_(list(watched)), t.UsageRecord.end_s > now_s - window_s,
                   t.UsageRecord.start_s < now_s)
        ):  # fmt: skip
            g = watched.get(gid) if gid is not None else None
            if g is not None and model == g.reserved_model:
                w0 = ledger.window_start_s(g.start_s, now_s, window_s)
                used[g.id] += ledger.window_gpu_s(gpu_s, r0, r1, w0, now_s)
    return {
        gid: ledger.utilization_pct(used[gid], g.reserved_gpus, g.start_s, now_s, window_s)
        for gid, g in watched.items()
    }


@router.get("/grants")
def grant_list(view: Viewer, status: str = "") -> Response:
    require_manager(view.actor, "see every grant")
    window = ledger.UNDERUSE_WINDOW_S
    now = view.now
    with view.rt.sessions() as s:
        listed = grants.list_grants(s, view.actor)
        if status:
            listed = [x for x in listed if x[0].status == status]
        floors = {p.id: programs.program_rules(p).utilization_floor_pct for p in programs.list_programs(s)}
        pct = utilization(s, [g for g, _p, _q in listed], now, window)
        rows = [
            GrantRow(
                grants.grant_view(g, program, project),
                pct.get(g.id) if floors.get(g.program_id, 0) > 0 else None,
                floors.get(g.program_id, 0.0),
                g.flagged_at_s if g.status == "flagged" else None,
                (g.flagged_at_s or now) + window if g.status == "flagged" else None,
            )
            for g, program, project in listed
        ]
    return view.render("grants.html", rows=rows, window_days=window / 86400, chosen=status[:16])
