"""The program lifecycle (product spec section 3): create a program, apply to it, review, decide.

Each use case is one transaction and audits its change in it. Rules are stored as JSON
(:func:`rules_to_json`) and always read back through :func:`rules_of_json`, which validates them.
Deciding an application and the life of the grants it issues (caps at grant time, operator-direct grants,
under-use detection, views) are in :mod:`kfabric.service.grants`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model import tenancy as m
from kfabric.model.errors import Conflict, NotFound, PermissionDenied, ValidationError, require
from kfabric.model.fleet import Fleet, Sharing
from kfabric.model.job import PriorityClass
from kfabric.model.suggest import did_you_mean
from kfabric.service import audit
from kfabric.service.actors import Actor, Role
from kfabric.store import tables as t

DAY_S = 86400.0
MONTH_S = 30 * DAY_S  # a program month: grants run months × 30 days
HOLDING = ("active", "flagged")  # grant statuses that hold their reservation
_RULE_KEYS = tuple(f.name for f in fields(m.ProgramRules))


# ---- rules as JSON -------------------------------------------------------------------------------------------


def rules_to_json(rules: m.ProgramRules) -> dict[str, Any]:
    """``rules`` as a JSON object (the inverse of :func:`rules_of_json`)."""
    return {
        "eligible_kinds": sorted(k.value for k in rules.eligible_kinds),
        "per_project_cap": dict(rules.per_project_cap),
        "max_duration_days": rules.max_duration_days,
        "max_job_duration_s": rules.max_job_duration_s,
        "price_factor": dict(rules.price_factor),
        "review_weights": dict(rules.review_weights),
        "concentration_cap_pct": rules.concentration_cap_pct,
        "preferred_regions": sorted(rules.preferred_regions),
        "utilization_floor_pct": rules.utilization_floor_pct,
        "on_exhausted": rules.on_exhausted.value,
        "min_reviews": rules.min_reviews,
        "max_priority": rules.max_priority.name.lower(),
        "allow_cpu_only": rules.allow_cpu_only,
    }


def _number(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValidationError(where, f"must be a number, got {v!r}")
    return float(v)


def _integer(v: object, where: str) -> int:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValidationError(where, f"must be a whole number, got {v!r}")
    return v


def _strings(v: object, where: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValidationError(where, f"must be a list of strings, got {v!r}")
    return list(v)


def _object(v: object, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValidationError(where, f"must be an object, got {v!r}", 'write it as {"key": value, ...}')
    return v


def rules_of_json(data: object, where: str = "program.rules") -> m.ProgramRules:
    """Parse and validate rules written by :func:`rules_to_json` (or by a person). Missing keys take the
    :class:`~kfabric.model.tenancy.ProgramRules` defaults; unknown keys, wrong types and out-of-range values
    raise :class:`ValidationError` naming the key."""
    d = _object(data, where)
    unknown = sorted(set(d) - set(_RULE_KEYS))
    if unknown:
        raise ValidationError(f"{where}.{unknown[0]}", "unknown rule", f"known rules: {', '.join(_RULE_KEYS)}")
    kw: dict[str, Any] = {}
    if "eligible_kinds" in d:
        kinds = _strings(d["eligible_kinds"], f"{where}.eligible_kinds")
        kw["eligible_kinds"] = frozenset(
            m.OrgKind.parse(k, f"{where}.eligible_kinds[{i}]") for i, k in enumerate(kinds)
        )
    if "per_project_cap" in d:
        caps = _object(d["per_project_cap"], f"{where}.per_project_cap")
        kw["per_project_cap"] = tuple((k, _integer(v, f"{where}.per_project_cap.{k}")) for k, v in caps.items())
    for key in ("price_factor", "review_weights"):
        if key in d:
            obj = _object(d[key], f"{where}.{key}")
            kw[key] = tuple((k, _number(v, f"{where}.{key}.{k}")) for k, v in obj.items())
    if "max_duration_days" in d:
        kw["max_duration_days"] = _integer(d["max_duration_days"], f"{where}.max_duration_days")
    if d.get("max_job_duration_s") is not None:
        kw["max_job_duration_s"] = _number(d["max_job_duration_s"], f"{where}.max_job_duration_s")
    for key in ("concentration_cap_pct", "utilization_floor_pct"):
        if key in d:
            kw[key] = _number(d[key], f"{where}.{key}")
    if "preferred_regions" in d:
        kw["preferred_regions"] = frozenset(_strings(d["preferred_regions"], f"{where}.preferred_regions"))
    if "on_exhausted" in d:
        choice = d["on_exhausted"]
        choices = [o.value for o in m.OnExhausted]
        require(choice in choices, f"{where}.on_exhausted", f"{choice!r}", f"use one of: {', '.join(choices)}")
        kw["on_exhausted"] = m.OnExhausted(choice)
    kw |= _admission_rules(d, where)
    try:
        return m.ProgramRules(**kw)
    except ValidationError as e:  # the model names its fields program.rules.*; say where they really are
        raise ValidationError(e.where.replace("program.rules", where, 1), e.problem, e.fix) from None


def _admission_rules(d: dict[str, Any], where: str) -> dict[str, Any]:
    """``min_reviews``, ``max_priority`` and ``allow_cpu_only`` of a rules object, those present."""
    kw: dict[str, Any] = {}
    if "min_reviews" in d:
        kw["min_reviews"] = _integer(d["min_reviews"], f"{where}.min_reviews")
    if "max_priority" in d:
        choice = d["max_priority"]
        names = [c.name.lower() for c in PriorityClass]
        require(choice in names, f"{where}.max_priority", f"{choice!r}", f"use one of: {', '.join(names)}")
        kw["max_priority"] = PriorityClass.parse(choice)
    if "allow_cpu_only" in d:
        flag = d["allow_cpu_only"]
        require(isinstance(flag, bool), f"{where}.allow_cpu_only", f"must be true or false, got {flag!r}")
        kw["allow_cpu_only"] = flag
    return kw


def program_rules(row: t.Program) -> m.ProgramRules:
    return rules_of_json(row.rules, f"program {row.name!r}.rules")


# ---- the pools a program may use ----------------------------------------------------------------------------


def program_pools(fleet: Fleet, owner: str) -> list[str]:
    """Pools that work granted by a program of ``owner`` may run on, as the scheduler decides: every pool not
    dedicated, and the pools dedicated to ``owner`` (the program's owner is its projects' affiliation)."""
    return [p.name for p in fleet.pools if p.sharing is not Sharing.DEDICATED or p.owner == owner]


def program_models(fleet: Fleet, owner: str) -> dict[str, int]:
    """GPUs per GPU model in the pools a program of ``owner`` may use (models with GPUs only)."""
    usable = set(program_pools(fleet, owner))
    out: dict[str, int] = {}
    for p in fleet.pools:
        if p.name in usable and p.gpus > 0:
            out[p.gpu_model] = out.get(p.gpu_model, 0) + p.gpus
    return dict(sorted(out.items()))


def closest(name: str, choices: list[str]) -> str:
    """``" (did you mean X?)"`` for the closest of ``choices`` to ``name``, or ``""``."""
    return did_you_mean(name, choices)


def check_model(fleet: Fleet, program: str, owner: str, model: str, gpus: int, where: str) -> None:
    """Raise :class:`ValidationError` unless the pools program ``program`` (of ``owner``) may use hold ``gpus``
    GPUs of ``model``; the message lists the models they hold, with their GPU counts."""
    models = program_models(fleet, owner)
    held = ", ".join(f"{m} ({n} GPUs)" for m, n in models.items()) or "none"
    if model not in models:
        raise ValidationError(
            where,
            f"GPU model {model!r} is not in the pools program {program!r} can use in fleet {fleet.name!r}"
            f"{closest(model, list(models))}; they hold: {held}",
            f"ask for one of: {', '.join(models) or 'none (the program has no usable pool)'}",
        )
    if gpus > models[model]:
        raise ValidationError(
            f"{where.rsplit('.', 1)[0]}.gpus",
            f"asks {gpus} {model}; the pools program {program!r} can use hold {models[model]} {model}",
            f"ask for at most {models[model]} {model}",
        )


# ---- programs ------------------------------------------------------------------------------------------------


def create_program(
    sessions: sessionmaker[Session],
    actor: Actor,
    name: str,
    description: str,
    owner: str,
    weight: float,
    rules: dict[str, Any],
    now_s: float,
) -> t.Program:
    """Create a program (operators only). The rules are validated and stored normalized."""
    actor.require_operator("create programs")
    parsed = rules_of_json(rules)
    m.Program(name, description, owner, parsed, weight)  # validates name and weight
    try:
        with sessions.begin() as s:
            if s.scalars(select(t.Program).where(t.Program.name == name)).first() is not None:
                raise Conflict(f"program {name!r}", "exists already", "pick another name")
            row = t.Program(name=name, description=description, owner=owner, weight=weight, rules=rules_to_json(parsed))
            s.add(row)
            s.flush()
            detail = {"name": name, "weight": weight, "rules": row.rules}
            audit.record(s, actor.name, "program.create", "program", row.id, now_s, detail=detail)
            return row
    except IntegrityError:
        raise Conflict(f"program {name!r}", "was created concurrently", "pick another name") from None


def list_programs(session: Session) -> list[t.Program]:
    """Every program: programs are public schemes, so every role sees them."""
    return list(session.scalars(select(t.Program).order_by(t.Program.name)).all())


def program_by_name(session: Session, name: str) -> t.Program:
    row = session.scalars(select(t.Program).where(t.Program.name == name)).first()
    if row is None:
        raise NotFound("program", name, "kfabric programs lists them")
    return row


# ---- applications --------------------------------------------------------------------------------------------


def organization_of(row: t.Organization) -> m.Organization:
    """The domain's organization of a stored one."""
    return m.Organization(row.name, m.OrgKind.parse(row.kind), row.region, frozenset(row.flags))


def program_of(row: t.Program) -> m.Program:
    """The domain's program of a stored one (its rules validated by :func:`program_rules`)."""
    return m.Program(row.name, row.description, row.owner, program_rules(row), row.weight)


def max_months(rules: m.ProgramRules) -> int:
    """The longest grant in program months (:attr:`~kfabric.model.tenancy.ProgramRules.max_months`)."""
    return rules.max_months


def _as_application(e: ValidationError, app_id: str) -> ValidationError:
    """The model's error about application ``app_id`` (not stored yet) as the API and CLI name its fields."""
    return ValidationError(e.where.replace(f"application {app_id!r}", "application", 1), e.problem, e.fix)


def apply(
    sessions: sessionmaker[Session],
    actor: Actor,
    program: str,
    project: str,
    gpu_model_class: str,
    gpus: int,
    months: int,
    justification: str,
    now_s: float,
    fleet: Fleet | None = None,
) -> t.Application:
    """Submit an application for ``project`` (its organization's admins, or operators). The ask is checked by
    building the model's :class:`~kfabric.model.tenancy.Application` and
    :class:`~kfabric.model.tenancy.EligibleApplication` (the program's eligible kind, maximum duration, per-project
    cap of the asked model); here, that the justification says something and, given the service's ``fleet``, that the
    pools the program may use hold the asked model and count (the API always passes it)."""
    if actor.role not in (Role.OPERATOR, Role.ORG_ADMIN):
        raise PermissionDenied(
            "apply to programs", f"needs the org-admin or operator role; you are {actor.role.value}", "ask your admin"
        )
    require(
        isinstance(justification, str) and justification.strip() != "",
        "application.justification",
        "is empty",
        "say why the project needs the GPUs and what it will do with them (--justification TEXT)",
    )
    try:  # the model checks the asked model name, GPUs and months (an application without an id is 'new')
        asked = m.Application("new", program, "", project, gpu_model_class, gpus, months, justification)
    except ValidationError as e:
        raise _as_application(e, "new") from None
    with sessions.begin() as s:
        prog = program_by_name(s, program)
        proj = s.scalars(select(t.Project).where(t.Project.name == project)).first()
        if proj is None or not actor.sees_project(proj.id, proj.organization_id):
            raise NotFound("project", project, "kfabric projects lists the projects you can see")
        org = s.get(t.Organization, proj.organization_id)
        assert org is not None
        try:  # the model checks the program's rules: eligible kind, months, per-project cap
            m.EligibleApplication(program_of(prog), organization_of(org), asked)
        except ValidationError as e:
            raise _as_application(e, "new") from None
        if fleet is not None:
            check_model(fleet, program, prog.owner, gpu_model_class, gpus, "application.gpu_model_class")
        row = t.Application(
            program_id=prog.id,
            organization_id=org.id,
            project_id=proj.id,
            gpu_model_class=gpu_model_class,
            gpus=gpus,
            months=months,
            justification=justification,
            status="submitted",
            created_at_s=now_s,
        )
        s.add(row)
        s.flush()
        detail = {"program": program, "project": project, "model": gpu_model_class, "gpus": gpus, "months": months}
        audit.record(s, actor.name, "application.submit", "application", row.id, now_s, org.id, detail)
        return row


def _visible_application(session: Session, actor: Actor, application_id: int) -> t.Application:
    row = session.get(t.Application, application_id)
    if row is None or not _sees_applications_of(actor, row.organization_id):
        raise NotFound("application", application_id, "kfabric applications lists the ones you can see")
    return row


def _sees_applications_of(actor: Actor, organization_id: int) -> bool:
    if actor.role in (Role.OPERATOR, Role.REVIEWER):
        return True
    return actor.is_tenant and actor.organization_id == organization_id


def get_application(session: Session, actor: Actor, application_id: int) -> t.Application:
    """One application; :class:`NotFound` when it does not exist or the caller may not see it."""
    return _visible_application(session, actor, application_id)


def list_applications(session: Session, actor: Actor, status: str | None = None) -> list[t.Application]:
    """Applications the caller may see: tenants their organization's; reviewers and operators all."""
    q = select(t.Application).order_by(t.Application.id)
    if actor.is_tenant:
        q = q.where(t.Application.organization_id == actor.organization_id)
    elif actor.role not in (Role.OPERATOR, Role.REVIEWER):
        return []
    if status is not None:
        q = q.where(t.Application.status == status)
    return list(session.scalars(q).all())


# ---- reviews -------------------------------------------------------------------------------------------------


def review(
    sessions: sessionmaker[Session],
    actor: Actor,
    application_id: int,
    scores: dict[str, float],
    comment: str,
    now_s: float,
) -> t.Review:
    """Score a submitted application on exactly the program's criteria, each 0..10 (reviewers, operators).

    One review per reviewer per application: a second call by the same reviewer *updates* that review (new
    scores, weighted score and comment) and audits it as ``review.update`` with the old and new scores; the row
    keeps its first ``created_at_s``.
    """
    if actor.role not in (Role.OPERATOR, Role.REVIEWER):
        raise PermissionDenied("review applications", f"needs the reviewer role; you are {actor.role.value}")
    _object(scores, "review.scores")
    try:
        with sessions.begin() as s:
            app = _visible_application(s, actor, application_id)
            if app.status != "submitted":
                raise Conflict(f"application {application_id}", f"is already {app.status}", "reviews come before")
            _refuse_conflicted(s, actor, app)
            prog = s.get(t.Program, app.program_id)
            assert prog is not None
            rules = program_rules(prog)
            rules.check_criteria(prog.name, scores, "review.scores")
            values = tuple((c, _number(scores[c], f"review.scores.{c}")) for c, _w in rules.review_weights)
            weighted = m.Review(str(application_id), actor.name, values).weighted(rules.review_weights)
            row = s.scalars(
                select(t.Review).where(t.Review.application_id == app.id, t.Review.reviewer_id == actor.user_id)
            ).first()
            detail: dict[str, Any] = {"scores": dict(values), "weighted": weighted}
            if row is None:
                row = t.Review(
                    application_id=app.id,
                    reviewer_id=actor.user_id,
                    scores=dict(values),
                    weighted=weighted,
                    comment=comment,
                    created_at_s=now_s,
                )
                s.add(row)
                action = "review.create"
            else:
                detail["previous"] = {"scores": row.scores, "weighted": row.weighted}
                row.scores, row.weighted, row.comment = dict(values), weighted, comment
                action = "review.update"
            s.flush()
            audit.record(s, actor.name, action, "review", row.id, now_s, app.organization_id, detail)
            return row
    except IntegrityError:
        raise Conflict(f"application {application_id}", "reviewed concurrently by you", "retry") from None


# ---- conflicts of interest ------------------------------------------------------------------------------------
#: the audit action of a declared conflict of interest (the entry is the declaration: reviewer, application, note)
CONFLICT_ACTION = "review.conflict"


def declared_conflicts(session: Session, actor: Actor) -> set[int]:
    """Ids of the applications ``actor`` declared a conflict of interest on (their ``review.conflict`` entries)."""
    q = select(t.AuditEntry.object_id).where(
        t.AuditEntry.action == CONFLICT_ACTION,
        t.AuditEntry.object_type == "application",
        t.AuditEntry.actor == actor.name,
    )
    return {int(oid) for oid in session.scalars(q) if oid.isdigit()}


def _declared(session: Session, actor: Actor, app: t.Application) -> bool:
    found = session.scalar(
        select(t.AuditEntry.id)
        .where(
            t.AuditEntry.organization_id == app.organization_id,  # indexed: narrows the scan to the applicant's
            t.AuditEntry.action == CONFLICT_ACTION,
            t.AuditEntry.object_type == "application",
            t.AuditEntry.object_id == str(app.id),
            t.AuditEntry.actor == actor.name,
        )
        .limit(1)
    )
    return found is not None


def conflict_of(session: Session, actor: Actor, app: t.Application) -> str | None:
    """Why ``actor`` may not review ``app`` (a reviewer of the applicant's organization, or a declared conflict of
    interest), or None."""
    if actor.organization_id is not None and actor.organization_id == app.organization_id:
        return "you belong to the applicant's organization (a conflict of interest)"
    return "you declared a conflict of interest on it" if _declared(session, actor, app) else None


def _refuse_conflicted(session: Session, actor: Actor, app: t.Application) -> None:
    why = conflict_of(session, actor, app)
    if why is not None:
        raise PermissionDenied(f"review application {app.id}", why, "leave it to the other reviewers")


def declare_conflict(
    sessions: sessionmaker[Session], actor: Actor, application_id: int, note: str, now_s: float
) -> t.AuditEntry:
    """Declare a conflict of interest on a submitted application (reviewers, operators): from then on the reviewer
    may not score it, and a review they gave already is withdrawn (it no longer counts towards the program's
    ``min_reviews`` or the mean). The declaration is the audit entry ``review.conflict`` (with the withdrawn scores,
    if any); declaring twice is refused."""
    if actor.role not in (Role.OPERATOR, Role.REVIEWER):
        raise PermissionDenied("declare conflicts of interest", f"needs the reviewer role; you are {actor.role.value}")
    require(len(note) <= 2000, "conflict.note", "longer than 2000 characters", "say it in fewer words")
    with sessions.begin() as s:
        app = _visible_application(s, actor, application_id)
        if app.status != "submitted":
            raise Conflict(f"application {application_id}", f"is already {app.status}", "conflicts are declared before")
        if _declared(s, actor, app):
            raise Conflict(f"application {application_id}", "you declared a conflict of interest on it already")
        row = s.scalars(
            select(t.Review).where(t.Review.application_id == app.id, t.Review.reviewer_id == actor.user_id)
        ).first()
        detail: dict[str, Any] = {"note": note.strip(), "withdrawn": None}
        if row is not None:
            detail["withdrawn"] = {"review": row.id, "scores": row.scores, "weighted": row.weighted}
            s.delete(row)
            s.flush()
        return audit.record(s, actor.name, CONFLICT_ACTION, "application", app.id, now_s, app.organization_id, detail)


ReviewT = TypeVar("ReviewT")


def reviews_shown(actor: Actor, status: str, reviews: Sequence[ReviewT]) -> list[ReviewT]:
    """The reviews of an application in ``status`` that ``actor`` may read: the applicant's tenants see the
    reviewers' scores and comments once the application is decided (until then reviews stay independent of the
    applicant); operators and reviewers see them all along. The API and the portal both answer with this."""
    return list(reviews) if status != "submitted" or not actor.is_tenant else []
