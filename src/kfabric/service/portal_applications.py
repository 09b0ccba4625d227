"""What the portal's application and reviewing pages read: the applications a user sees
(``programs.list_applications``), each program with its rules for the apply form, one application with its reviews
and grant, and a reviewer's work list and scoring context. Every function opens its own read and returns plain
records (:mod:`kfabric.service.portal_records`); tenancy is the API's (``programs.get_application``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model import tenancy as m
from kfabric.model.fleet import Fleet
from kfabric.service import programs
from kfabric.service.actors import Actor
from kfabric.service.portal_records import ApplicationRecord, ProgramRecord, ReviewRecord, of
from kfabric.service.program_queries import Names, names_in
from kfabric.store import tables as t


def rules_of(prog: ProgramRecord) -> m.ProgramRules:
    """The program's rules, validated as the service reads them (``programs.program_rules``)."""
    return programs.rules_of_json(prog.rules, f"program {prog.name!r}.rules")


def applications(sessions: sessionmaker[Session], actor: Actor) -> tuple[list[ApplicationRecord], Names]:
    """The applications ``actor`` sees, by id, and the names they refer to."""
    with sessions() as s:
        return [of(ApplicationRecord, a) for a in programs.list_applications(s, actor)], names_in(s)


def program_facts(sessions: sessionmaker[Session], fleet: Fleet) -> list[dict[str, Any]]:
    """Every program with its rules (validated, as the service reads them) and the GPU models its pools hold."""
    with sessions() as s:
        listed = programs.list_programs(s)
        return [
            {
                "name": p.name,
                "description": p.description,
                "rules": programs.rules_to_json(programs.program_rules(p)),
                "max_months": programs.max_months(programs.program_rules(p)),
                "models": programs.program_models(fleet, p.owner),
            }
            for p in listed
        ]


def _reviews(s: Session, application_id: int) -> list[ReviewRecord]:
    q = select(t.Review).where(t.Review.application_id == application_id).order_by(t.Review.id)
    return [of(ReviewRecord, r) for r in s.scalars(q)]


def _grant_name(s: Session, application_id: int) -> str | None:
    return s.scalars(select(t.Grant.name).where(t.Grant.application_id == application_id)).first()


@dataclass(frozen=True, slots=True)
class ApplicationDetail:
    app: ApplicationRecord
    reviews: list[ReviewRecord]
    grant: str | None
    names: Names


def application_detail(sessions: sessionmaker[Session], actor: Actor, application_id: int) -> ApplicationDetail:
    """One application ``actor`` may see (:class:`NotFound` otherwise), its reviews and grant."""
    with sessions() as s:
        row = programs.get_application(s, actor, application_id)
        return ApplicationDetail(of(ApplicationRecord, row), _reviews(s, row.id), _grant_name(s, row.id), names_in(s))


# ---- reviewing -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReviewWork:
    """A reviewer's submitted applications, their own reviews by application id and declared conflicts."""

    open_apps: list[ApplicationRecord]
    mine: dict[int, ReviewRecord]
    declared: set[int]
    names: Names


def review_work(sessions: sessionmaker[Session], actor: Actor) -> ReviewWork:
    with sessions() as s:
        open_apps = [of(ApplicationRecord, a) for a in programs.list_applications(s, actor, "submitted")]
        q = select(t.Review).where(t.Review.reviewer_id == actor.user_id)
        mine = {r.application_id: of(ReviewRecord, r) for r in s.scalars(q).all()}
        return ReviewWork(open_apps, mine, programs.declared_conflicts(s, actor), names_in(s))


@dataclass(frozen=True, slots=True)
class ReviewContext:
    """One application as its reviewer sees it: the program's rubric, the reviewer's own review, the count of
    reviews and the reviewer's conflict of interest (None: none)."""

    app: ApplicationRecord
    program: ProgramRecord
    rules: m.ProgramRules
    mine: ReviewRecord | None
    review_count: int
    conflict: str | None
    names: Names


def review_context(sessions: sessionmaker[Session], actor: Actor, application_id: int) -> ReviewContext:
    with sessions() as s:
        app = programs.get_application(s, actor, application_id)
        prog = s.get(t.Program, app.program_id)
        assert prog is not None
        reviews = _reviews(s, app.id)
        mine = next((r for r in reviews if r.reviewer_id == actor.user_id), None)
        return ReviewContext(of(ApplicationRecord, app), of(ProgramRecord, prog), programs.program_rules(prog), mine,
                             len(reviews), programs.conflict_of(s, actor, app), names_in(s))  # fmt: skip
