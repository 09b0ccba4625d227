"""What the portal's program-manager pages read (operators): programs with their applications and grants in force,
one program's ranked open call and decided applications, the context of a decision, and the grants with their
use against the under-use floor. Every function opens its own read and returns plain records.

The ranking is by the mean weighted review score (unreviewed last, then by id). "Free" is, per GPU model of the
pools a program may use (``programs.program_models``), the GPUs there less what grants in force now reserve of that
model (any program's: reservations share those pools); "free after" runs down the ranking as if every application
above were approved with its reservation."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model import tenancy as m
from kfabric.model.fleet import Fleet
from kfabric.service import grants, programs
from kfabric.service.actors import Actor
from kfabric.service.portal_records import ApplicationRecord, ProgramRecord, ReviewRecord, of
from kfabric.service.program_queries import Names, names_in
from kfabric.store import tables as t

#: per GPU model: ``gpus`` in the program's pools, ``reserved`` now by grants in force, ``free``
Room = dict[str, dict[str, int]]


def _in_force(now_s: float) -> tuple[Any, ...]:
    return t.Grant.status.in_(programs.HOLDING), t.Grant.start_s <= now_s, t.Grant.end_s > now_s


def program_overview(sessions: sessionmaker[Session], actor: Actor, now_s: float) -> list[dict[str, Any]]:
    """Every program: its row, rules, application counts by status and the number of its grants in force."""
    actor.require_operator("manage programs")
    with sessions() as s:
        counts: dict[int, dict[str, int]] = defaultdict(dict)
        q = select(t.Application.program_id, t.Application.status, func.count())
        for pid, status, n in s.execute(q.group_by(t.Application.program_id, t.Application.status)):
            counts[pid][status] = n
        held = select(t.Grant.program_id, func.count()).where(*_in_force(now_s)).group_by(t.Grant.program_id)
        in_force: dict[int, int] = {pid: n for pid, n in s.execute(held).all()}
        return [
            {"row": of(ProgramRecord, p), "rules": programs.rules_to_json(programs.program_rules(p)),
             "counts": counts.get(p.id, {}), "grants": in_force.get(p.id, 0)}
            for p in programs.list_programs(s)
        ]  # fmt: skip


def _room(s: Session, fleet: Fleet, owner: str, now_s: float) -> Room:
    models = programs.program_models(fleet, owner)
    reserved: dict[str, int] = defaultdict(int)
    q = select(t.Grant.reserved_model, func.sum(t.Grant.reserved_gpus)).where(
        *_in_force(now_s), t.Grant.reserved_gpus > 0
    )
    for model, n in s.execute(q.group_by(t.Grant.reserved_model)):
        if model is not None:
            reserved[model] = int(n or 0)
    return {mo: {"gpus": g, "reserved": reserved[mo], "free": g - reserved[mo]} for mo, g in models.items()}


@dataclass(frozen=True, slots=True)
class Ranked:
    rank: int
    app: ApplicationRecord
    organization: str
    project: str
    reviews: int
    mean: float | None
    free_before: int | None  # None: the model is not in the program's pools
    free_after: int | None


def _review_stats(s: Session, ids: list[int]) -> dict[int, tuple[int, float]]:
    q = select(t.Review.application_id, func.count(), func.avg(t.Review.weighted))
    rows = s.execute(q.where(t.Review.application_id.in_(ids)).group_by(t.Review.application_id))
    return {aid: (int(n), float(mean)) for aid, n, mean in rows}


def _ranking(s: Session, prog_id: int, room: Room, named: Names) -> list[Ranked]:
    q = select(t.Application).where(t.Application.program_id == prog_id, t.Application.status == "submitted")
    apps = [of(ApplicationRecord, a) for a in s.scalars(q)]
    stats = _review_stats(s, [a.id for a in apps])
    apps.sort(key=lambda a: (a.id not in stats, -stats.get(a.id, (0, 0.0))[1], a.id))
    left = {mo: r["free"] for mo, r in room.items()}
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


def _decided(s: Session, prog_id: int) -> list[tuple[ApplicationRecord, str | None]]:
    rows = s.execute(
        select(t.Application, t.Grant.name)
        .outerjoin(t.Grant, t.Grant.application_id == t.Application.id)
        .where(t.Application.program_id == prog_id, t.Application.status != "submitted")
        .order_by(t.Application.decided_at_s.desc(), t.Application.id.desc())
        .limit(200)
    ).all()
    return [(of(ApplicationRecord, a), g) for a, g in rows]


@dataclass(frozen=True, slots=True)
class ProgramPage:
    program: ProgramRecord
    rules: m.ProgramRules
    room: Room
    ranked: list[Ranked]
    done: list[tuple[ApplicationRecord, str | None]]  # decided applications with their grant
    names: Names


def program_page(sessions: sessionmaker[Session], actor: Actor, fleet: Fleet, name: str, now_s: float) -> ProgramPage:
    """Program ``name`` (:class:`NotFound` if none) with its ranked open call and its last decisions."""
    actor.require_operator("manage programs")
    with sessions() as s:
        prog = programs.program_by_name(s, name)
        room, named = _room(s, fleet, prog.owner, now_s), names_in(s)
        return ProgramPage(of(ProgramRecord, prog), programs.program_rules(prog), room,
                           _ranking(s, prog.id, room, named), _decided(s, prog.id), named)  # fmt: skip


# ---- deciding one application ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionContext:
    app: ApplicationRecord
    program: ProgramRecord
    rules: m.ProgramRules
    reviews: list[tuple[ReviewRecord, str]]  # with the reviewer's name
    room: dict[str, int] | None  # of the asked model; None: not in the program's pools
    grant: str | None
    names: Names


def _named_reviews(s: Session, application_id: int) -> list[tuple[ReviewRecord, str]]:
    rows = s.execute(
        select(t.Review, t.User.name)
        .join(t.User, t.User.id == t.Review.reviewer_id)
        .where(t.Review.application_id == application_id)
        .order_by(t.Review.id)
    ).all()
    return [(of(ReviewRecord, r), u) for r, u in rows]


def decision_context(
    sessions: sessionmaker[Session], actor: Actor, application_id: int, fleet: Fleet, now_s: float
) -> DecisionContext:
    actor.require_operator("decide applications")
    with sessions() as s:
        app = programs.get_application(s, actor, application_id)
        prog = s.get(t.Program, app.program_id)
        assert prog is not None
        room = _room(s, fleet, prog.owner, now_s).get(app.gpu_model_class)
        grant = s.scalars(select(t.Grant.name).where(t.Grant.application_id == app.id)).first()
        return DecisionContext(of(ApplicationRecord, app), of(ProgramRecord, prog), programs.program_rules(prog),
                               _named_reviews(s, app.id), room, grant, names_in(s))  # fmt: skip


# ---- grants ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrantRow:
    view: dict[str, Any]
    utilization_pct: float | None  # over the under-use window, for a reservation watched by a floor
    floor_pct: float
    flagged_at_s: float | None
    reclaim_at_s: float | None  # when a flagged grant is reclaimed if its use stays below the floor


def _utilization(s: Session, rows: list[t.Grant], now_s: float, window_s: float) -> dict[int, float]:
    """Use of each grant's reserved model over the under-use window, as ``grants.check_underuse`` counts it, for the
    grants that reserve GPUs and are in their period now."""
    watched = [g for g in rows if g.reserved_gpus > 0 and g.start_s < now_s < g.end_s]
    return grants.reserved_use_pct(s, watched, now_s, window_s)


def _grant_row(g: t.Grant, program: str, project: str, pct: dict[int, float], floors: dict[int, float],
               now_s: float, window_s: float) -> GrantRow:  # fmt: skip
    flagged = g.status == "flagged"
    return GrantRow(
        grants.grant_view(g, program, project),
        pct.get(g.id) if floors.get(g.program_id, 0) > 0 else None,
        floors.get(g.program_id, 0.0),
        g.flagged_at_s if flagged else None,
        (g.flagged_at_s or now_s) + window_s if flagged else None,
    )


def grant_rows(
    sessions: sessionmaker[Session], actor: Actor, status: str, now_s: float, window_s: float
) -> list[GrantRow]:
    """Every grant (of ``status``, when given) with its use against its program's under-use floor."""
    actor.require_operator("see every grant")
    with sessions() as s:
        listed = [x for x in grants.list_grants(s, actor) if not status or x[0].status == status]
        floors = {p.id: programs.program_rules(p).utilization_floor_pct for p in programs.list_programs(s)}
        pct = _utilization(s, [g for g, _p, _q in listed], now_s, window_s)
        return [_grant_row(g, program, project, pct, floors, now_s, window_s) for g, program, project in listed]
