"""What the program routes read (``/v1/programs``, ``/v1/applications``), as the API's JSON objects: programs,
and applications with their reviews and the names of their program, organization and project. Also the grants
in force that ``/metrics`` reports (kfabric.api.metrics)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.service import programs
from kfabric.service.actors import Actor
from kfabric.store import tables as t

#: grant statuses that count (reserved capacity, credit)
IN_FORCE = ("active", "flagged")
#: names by id of the objects an application refers to (:func:`names_in`)
Names = dict[str, dict[int, str]]


def program_view(p: t.Program) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "description": p.description, "owner": p.owner, "weight": p.weight,
            "rules": p.rules}  # fmt: skip


def application_view(
    a: t.Application, names: Names, reviews: list[t.Review], actor: Actor | None = None
) -> dict[str, Any]:
    """The public form of an application with the reviews ``actor`` may read (all, for a new one's answer)."""
    if actor is not None:
        reviews = programs.reviews_shown(actor, a.status, reviews)
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


def names_in(s: Session) -> Names:
    """Program, organization and project names by id (answers and pages show names, the rows hold ids); the one
    lookup the API's applications and the portal's application and program pages share."""
    return {
        "program": dict(s.execute(select(t.Program.id, t.Program.name)).all()),
        "organization": dict(s.execute(select(t.Organization.id, t.Organization.name)).all()),
        "project": dict(s.execute(select(t.Project.id, t.Project.name)).all()),
    }


def _reviews(s: Session, application_ids: Iterable[int]) -> dict[int, list[t.Review]]:
    ids = sorted(set(application_ids))
    out: dict[int, list[t.Review]] = defaultdict(list)
    if ids:
        q = select(t.Review).where(t.Review.application_id.in_(ids)).order_by(t.Review.id)
        for r in s.scalars(q):
            out[r.application_id].append(r)
    return out


def programs_list(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    with sessions() as s:
        return [program_view(p) for p in programs.list_programs(s)]


def program(sessions: sessionmaker[Session], name: str) -> dict[str, Any]:
    with sessions() as s:
        return program_view(programs.program_by_name(s, name))


def applications(sessions: sessionmaker[Session], actor: Actor, status: str | None) -> list[dict[str, Any]]:
    """The applications the caller may see (optionally with ``status``), each with its reviews."""
    with sessions() as s:
        rows = programs.list_applications(s, actor, status)
        names, reviews = names_in(s), _reviews(s, (a.id for a in rows))
        return [application_view(a, names, reviews.get(a.id, []), actor) for a in rows]


def application(sessions: sessionmaker[Session], actor: Actor, application_id: int) -> dict[str, Any]:
    """One application the caller may see, with its reviews (404 otherwise)."""
    with sessions() as s:
        a = programs.get_application(s, actor, application_id)
        return application_view(a, names_in(s), _reviews(s, [a.id]).get(a.id, []), actor)


def new_application(sessions: sessionmaker[Session], a: t.Application) -> dict[str, Any]:
    """The answer to a new application (no reviews yet)."""
    with sessions() as s:
        return application_view(a, names_in(s), [])


def grant_names(sessions: sessionmaker[Session], g: t.Grant) -> tuple[str | None, str | None]:
    """The names of a grant's program and project."""
    with sessions() as s:
        program_name = s.scalar(select(t.Program.name).where(t.Program.id == g.program_id))
        project_name = s.scalar(select(t.Project.name).where(t.Project.id == g.project_id))
    return program_name, project_name


GrantInForce = tuple[int, str, str, str, str | None, int, float, float]


def grants_in_force(s: Session, now_s: float) -> list[GrantInForce]:
    """Grants in force at ``now_s``, by id: (id, name, program, project, reserved model, reserved GPUs, credit
    SU-hours, used SU-hours)."""
    return list(
        s.execute(
            select(t.Grant.id, t.Grant.name, t.Program.name, t.Project.name, t.Grant.reserved_model,
                   t.Grant.reserved_gpus, t.Grant.credit_su_hours, t.Grant.used_su_hours)
            .join(t.Program, t.Program.id == t.Grant.program_id)
            .join(t.Project, t.Project.id == t.Grant.project_id)
            .where(t.Grant.status.in_(IN_FORCE), t.Grant.start_s <= now_s, t.Grant.end_s > now_s)
            .order_by(t.Grant.id)
        ).all()
    )  # fmt: skip
