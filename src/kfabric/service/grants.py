"""Grants: deciding applications, operator-direct grants, the grant-time caps, under-use detection and views.

A grant's **weight is its GPU count** (the asked ``gpus`` of the application, reserved or not): the grant sets
the project's fair-share weight, and a project granted 256 GPUs should weigh 32 times one granted 8. Expiry
(``end_s``) and credit exhaustion (``credit_su_hours - used_su_hours``) are enforced by the scheduler from the
grant rows; this module only writes them (under-use reclaim ends a grant by setting ``end_s`` to now).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session, sessionmaker

from kfabric.model import tenancy as m
from kfabric.model.errors import Conflict, NotFound, ValidationError, require, require_name
from kfabric.model.fleet import Fleet
from kfabric.sched import ledger
from kfabric.service import audit, credit
from kfabric.service.actors import Actor, Role
from kfabric.service.programs import (
    DAY_S,
    HOLDING,
    MONTH_S,
    check_model,
    organization_of,
    program_by_name,
    program_rules,
)
from kfabric.store import tables as t

CONTROLLER = "controller"  # the audit actor of automatic changes


@dataclass(frozen=True, slots=True)
class Parties:
    """Who a grant is between: the program it is under, the project it is for and that project's organization."""

    prog: t.Program
    proj: t.Project
    org: t.Organization


def grant_terms(
    name: str,
    start_s: float,
    end_s: float,
    reserved_model: str | None,
    reserved_gpus: int,
    credit_su_hours: float,
    weight: float,
) -> m.GrantTerms[float]:
    """The terms of a grant named ``name``, validated by the model (:class:`~kfabric.model.tenancy.GrantTerms`)."""
    require_name(name, "grant.name")
    return m.GrantTerms(name, start_s, end_s, reserved_model, reserved_gpus, credit_su_hours, weight)


def _held(session: Session, prog_id: int, start_s: float, end_s: float) -> list[tuple[t.Grant, int]]:
    """The program's grants that hold a reservation at any time during ``[start_s, end_s)`` (status active or
    flagged), with their project's organization."""
    q = (
        select(t.Grant, t.Project.organization_id)
        .join(t.Project, t.Project.id == t.Grant.project_id)
        .where(
            t.Grant.program_id == prog_id,
            t.Grant.status.in_(HOLDING),
            t.Grant.reserved_gpus > 0,
            t.Grant.start_s < end_s,
            t.Grant.end_s > start_s,
        )
    )
    return [(g, o) for g, o in session.execute(q).all()]


def _check_project_cap(
    held: list[tuple[t.Grant, int]], rules: m.ProgramRules, p: Parties, terms: m.GrantTerms[float]
) -> None:
    model, gpus = terms.reserved_model, terms.reserved_gpus
    cap = rules.cap_for(model) if model is not None else None
    if cap is None:
        return
    mine = sum(g.reserved_gpus for g, _o in held if g.project_id == p.proj.id and g.reserved_model == model)
    if mine + gpus > cap:
        raise Conflict(
            f"grant {terms.name!r}",
            f"project {p.proj.name!r} would hold {mine} + {gpus} = {mine + gpus} {model} under program "
            f"{p.prog.name!r}; its per-project cap is {cap}",
            f"grant at most {max(cap - mine, 0)} {model}, or wait for the project's other grants to end",
        )


def _check_concentration(
    held: list[tuple[t.Grant, int]], rules: m.ProgramRules, p: Parties, terms: m.GrantTerms[float]
) -> None:
    total = sum(g.reserved_gpus for g, _o in held)
    if total == 0 or rules.concentration_cap_pct >= 100:
        return
    org_now = sum(g.reserved_gpus for g, o in held if o == p.org.id)
    org_after, total_after = org_now + terms.reserved_gpus, total + terms.reserved_gpus
    pct_cap = rules.concentration_cap_pct
    if org_after * 100 > pct_cap * total_after + 1e-9:
        c = pct_cap / 100
        most = max(math.floor((c * total - org_now) / (1 - c) + 1e-9), 0)
        raise Conflict(
            f"grant {terms.name!r}",
            f"organization {p.org.name!r} would hold {org_after} of the {total_after} reserved GPUs of program "
            f"{p.prog.name!r} ({100 * org_after / total_after:.1f}%); its concentration cap is {pct_cap:g}%",
            f"grant {p.org.name!r} at most {most} GPUs now, or grant other organizations first",
        )


def _check_caps(session: Session, p: Parties, terms: m.GrantTerms[float]) -> None:
    """Per-project cap and concentration cap of a reservation, counting the program's grants that hold one at any
    time during the new grant's period."""
    if terms.reserved_model is None:
        return
    held = _held(session, p.prog.id, terms.start, terms.end)
    rules = program_rules(p.prog)
    _check_project_cap(held, rules, p, terms)
    _check_concentration(held, rules, p, terms)


def issue_grant(
    session: Session,
    actor_name: str,
    p: Parties,
    terms: m.GrantTerms[float],
    now_s: float,
    application_id: int | None = None,
) -> t.Grant:
    """Check the grant-time caps and insert a grant of ``terms`` in the caller's transaction (audited)."""
    # lock the program row: grants under one program are checked and issued one at a time (on PostgreSQL two
    # concurrent decisions would otherwise both pass the caps; SQLite serializes writers anyway)
    session.execute(select(t.Program.id).where(t.Program.id == p.prog.id).with_for_update())
    if session.scalars(select(t.Grant).where(t.Grant.name == terms.name)).first() is not None:
        raise Conflict(f"grant {terms.name!r}", "exists already", "pick another name")
    _check_caps(session, p, terms)
    row = t.Grant(
        name=terms.name,
        program_id=p.prog.id,
        project_id=p.proj.id,
        application_id=application_id,
        start_s=terms.start,
        end_s=terms.end,
        reserved_model=terms.reserved_model,
        reserved_gpus=terms.reserved_gpus,
        credit_su_hours=terms.credit_su_hours,
        used_su_hours=0.0,
        weight=terms.weight,
        status="active",
    )
    session.add(row)
    session.flush()
    detail = {
        "program": p.prog.name,
        "project": p.proj.name,
        "start_s": terms.start,
        "end_s": terms.end,
        "reserved_model": terms.reserved_model,
        "reserved_gpus": terms.reserved_gpus,
        "credit_su_hours": terms.credit_su_hours,
        "weight": terms.weight,
        "application": application_id,
    }
    audit.record(session, actor_name, "grant.create", "grant", row.id, now_s, p.org.id, detail)
    return row


def _parties(s: Session, prog: t.Program, project_id: int) -> Parties:
    proj = s.get(t.Project, project_id)
    assert proj is not None
    org = s.get(t.Organization, proj.organization_id)
    assert org is not None
    return Parties(prog, proj, org)


def _submitted(s: Session, application_id: int) -> t.Application:
    """The application, locked (one decision at a time), if it waits for a decision."""
    app = s.get(t.Application, application_id, with_for_update=True)
    if app is None:
        raise NotFound("application", application_id, "kfabric applications lists them")
    if app.status != "submitted":
        raise Conflict(f"application {application_id}", f"is already {app.status}", "it was decided once")
    return app


def _approve(
    s: Session,
    actor: Actor,
    app: t.Application,
    prog: t.Program,
    start_s: float,
    reserved: bool,
    credit_su_hours: float,
    fleet: Fleet | None,
    now_s: float,
) -> t.Grant:
    p = _parties(s, prog, app.project_id)
    _check_grants_something(app, reserved, credit_su_hours)
    if reserved and fleet is not None:
        where = f"application {app.id}.gpu_model_class"
        check_model(fleet, prog.name, prog.owner, app.gpu_model_class, app.gpus, where)
    terms = grant_terms(
        f"g-{app.id}",
        start_s,
        start_s + app.months * MONTH_S,
        app.gpu_model_class if reserved else None,
        app.gpus if reserved else 0,
        credit_su_hours,
        float(app.gpus),
    )
    return issue_grant(s, actor.name, p, terms, now_s, app.id)


def decide(
    sessions: sessionmaker[Session],
    actor: Actor,
    application_id: int,
    approve: bool,
    now_s: float,
    note: str = "",
    start_s: float | None = None,
    reserved: bool = True,
    credit_su_hours: float = 0.0,
    fleet: Fleet | None = None,
) -> t.Grant | None:
    """Approve or reject a submitted application (operators). Approval issues grant ``g-<application id>``
    from ``start_s`` (default now) for the asked months × 30 days: the asked GPUs reserved when ``reserved``,
    plus ``credit_su_hours``; weight = the asked GPU count. Returns the grant, or None on rejection.

    The program's rules apply: the application needs ``min_reviews`` reviews before either decision; an
    approval must grant something (a reservation, credit or both); given the service's ``fleet`` (the API always
    passes it), a reservation must be of a model, and a count, that the pools the program may use hold."""
    actor.require_operator("decide applications")
    with sessions.begin() as s:
        app = _submitted(s, application_id)
        prog = s.get(t.Program, app.program_id)
        assert prog is not None
        _check_reviewed(s, app, prog)
        start = now_s if start_s is None else start_s
        grant = _approve(s, actor, app, prog, start, reserved, credit_su_hours, fleet, now_s) if approve else None
        app.status = "approved" if approve else "rejected"
        app.decided_at_s, app.decided_by, app.decision_note = now_s, actor.user_id, note
        detail = {"note": note, "grant": grant.name if grant else None}
        action = "application.approve" if approve else "application.reject"
        audit.record(s, actor.name, action, "application", app.id, now_s, app.organization_id, detail)
        return grant


def _check_reviewed(s: Session, app: t.Application, prog: t.Program) -> None:
    """Raise :class:`Conflict` unless the application has the reviews its program asks before a decision."""
    need = program_rules(prog).min_reviews
    have = s.scalar(select(func.count()).select_from(t.Review).where(t.Review.application_id == app.id)) or 0
    if have < need:
        raise Conflict(
            f"application {app.id}",
            f"has {have} review(s); program {prog.name!r} decides only after {need}",
            f"have reviewers score it first: kfabric review {app.id} --score CRITERION=N (kfabric programs lists "
            "the criteria)",
        )


def _check_grants_something(app: t.Application, reserved: bool, credit_su_hours: float) -> None:
    if reserved or credit_su_hours > 0:
        return
    raise ValidationError(
        f"application {app.id}.decision",
        "this approval grants nothing: no GPUs reserved (reserved: false / --no-reserve) and no credit",
        "give credit (--credit SU_HOURS; API: credit_su_hours > 0), or reserve the asked GPUs (drop --no-reserve)",
    )


def _named_parties(s: Session, prog: t.Program, project: str) -> Parties:
    proj = s.scalars(select(t.Project).where(t.Project.name == project)).first()
    if proj is None:
        raise NotFound("project", project)
    return _parties(s, prog, proj.id)


def create_grant(
    sessions: sessionmaker[Session],
    actor: Actor,
    name: str,
    program: str,
    project: str,
    start_s: float,
    end_s: float,
    now_s: float,
    reserved_model: str | None = None,
    reserved_gpus: int = 0,
    credit_su_hours: float = 0.0,
    weight: float | None = None,
    fleet: Fleet | None = None,
) -> t.Grant:
    """An operator's direct grant, without an application. The program's eligibility and maximum duration
    apply as to an application, and the grant-time caps as to a decision; given the service's ``fleet``, a
    reservation must be of a model and count the program's pools hold. ``weight`` defaults to the reserved
    GPU count (1 for a credit-only grant)."""
    actor.require_operator("create grants")
    try:
        with sessions.begin() as s:
            prog = program_by_name(s, program)
            p = _named_parties(s, prog, project)
            rules = program_rules(prog)
            # the program's rules, as for an application (the model's checks; a direct grant has no application)
            rules.check_kind(program, organization_of(p.org), f"grant {name!r}.project")
            rules.check_days(program, (end_s - start_s) / DAY_S, f"grant {name!r}.end")
            if fleet is not None and reserved_model is not None:
                check_model(fleet, program, prog.owner, reserved_model, reserved_gpus, f"grant {name!r}.reserved_model")
            w = weight if weight is not None else float(max(reserved_gpus, 1))
            terms = grant_terms(name, start_s, end_s, reserved_model, reserved_gpus, credit_su_hours, w)
            return issue_grant(s, actor.name, p, terms, now_s)
    except IntegrityError:
        raise Conflict(f"grant {name!r}", "was created concurrently", "pick another name") from None


def list_grants(session: Session, actor: Actor) -> list[tuple[t.Grant, str, str]]:
    """``(grant, program name, project name)`` the caller may see: tenants their organization's, operators
    all, everyone else none."""
    q = (
        select(t.Grant, t.Program.name, t.Project.name)
        .join(t.Program, t.Program.id == t.Grant.program_id)
        .join(t.Project, t.Project.id == t.Grant.project_id)
        .order_by(t.Grant.id)
    )
    if actor.is_tenant:
        q = q.where(t.Project.organization_id == actor.organization_id)
    elif actor.role is not Role.OPERATOR:
        return []
    return [(g, pg, pj) for g, pg, pj in session.execute(q).all()]


def _iso_day(s: float) -> str:
    return datetime.fromtimestamp(s, tz=UTC).date().isoformat()


def grant_view(row: t.Grant, program: str | None = None, project: str | None = None) -> dict[str, Any]:
    """A grant as plain data. Program and project names are looked up through the row's session when not
    given (``#id`` when the row is detached)."""
    session = object_session(row)
    if program is None:
        p = session.get(t.Program, row.program_id) if session else None
        program = p.name if p else f"#{row.program_id}"
    if project is None:
        q = session.get(t.Project, row.project_id) if session else None
        project = q.name if q else f"#{row.project_id}"
    reserved = {"model": row.reserved_model, "gpus": row.reserved_gpus} if row.reserved_gpus else None
    held = credit.held_by_grant(session, row.id).get(row.id, 0.0) if session is not None else 0.0
    return {
        "name": row.name,
        "program": program,
        "project": project,
        "start": _iso_day(row.start_s),
        "end": _iso_day(row.end_s),
        "reserved": reserved,
        "credit_su_hours": row.credit_su_hours,
        "used_su_hours": row.used_su_hours,
        "left_su_hours": max(row.credit_su_hours - row.used_su_hours, 0.0),
        # held by admitted and running jobs for their time limits (service/credit.py); free = left - held
        "held_su_hours": held,
        "free_su_hours": max(row.credit_su_hours - row.used_su_hours - held, 0.0),
        "weight": row.weight,
        "status": row.status,
    }


def reserved_use_pct(s: Session, held: list[t.Grant], now_s: float, window_s: float) -> dict[int, float]:
    """Utilization % of each grant's reservation over the under-use window (the core's rule, ``sched.ledger``):
    GPU-seconds of its usage records on the reserved model, clipped to ``[max(now - window, start), now)``, ÷
    (reserved GPUs × that span) × 100. Usage not yet written as records (a running job's current interval) does
    not count."""
    by_id = {g.id: g for g in held}
    if not by_id:
        return {}
    used: dict[int, float] = defaultdict(float)
    u = t.UsageRecord
    q = select(u.grant_id, u.gpu_model, u.start_s, u.end_s, u.gpu_s).where(
        u.grant_id.in_(list(by_id)), u.end_s > now_s - window_s, u.start_s < now_s
    )
    for gid, model, r0, r1, gpu_s in s.execute(q).all():
        g = by_id.get(gid) if gid is not None else None
        if g is not None and model == g.reserved_model:
            w0 = ledger.window_start_s(g.start_s, now_s, window_s)
            used[g.id] += ledger.window_gpu_s(gpu_s, r0, r1, w0, now_s)
    return {
        gid: ledger.utilization_pct(used[gid], g.reserved_gpus, g.start_s, now_s, window_s) for gid, g in by_id.items()
    }


def _watched(s: Session, now_s: float) -> list[tuple[t.Grant, int, float]]:
    """Grants in force that reserve GPUs under a program with a utilization floor: (grant, organization, floor)."""
    rows = s.execute(
        select(t.Grant, t.Program, t.Project.organization_id)
        .join(t.Program, t.Program.id == t.Grant.program_id)
        .join(t.Project, t.Project.id == t.Grant.project_id)
        .where(
            t.Grant.status.in_(HOLDING),
            t.Grant.reserved_gpus > 0,
            t.Grant.reserved_model.is_not(None),
            t.Grant.start_s < now_s,
            t.Grant.end_s > now_s,
        )
        .order_by(t.Grant.id)
    ).all()
    checked = [(g, o, program_rules(p).utilization_floor_pct) for g, p, o in rows]
    return [(g, o, floor) for g, o, floor in checked if floor > 0]


def check_underuse(
    sessions: sessionmaker[Session], now_s: float, window_s: float = ledger.UNDERUSE_WINDOW_S
) -> list[tuple[str, float, str]]:
    """Flag, reclaim or restore reserved grants by their use over the last ``window_s`` (one transaction).

    For each grant in force (active or flagged, started, not ended) that reserves GPUs under a program with a
    utilization floor, its utilization (:func:`reserved_use_pct`) decides: below the floor an active grant is
    flagged, and a grant flagged for ``window_s`` already is reclaimed (``end_s = now``); at or above it a flagged
    grant is active again. Returns ``(grant, utilization %, action)`` for every grant checked, action one of
    ``ok``, ``flagged``, ``still-flagged``, ``reclaimed``, ``restored``.
    """
    require(window_s > 0, "window_s", f"must be > 0, got {window_s}")
    with sessions.begin() as s:
        checked = _watched(s, now_s)
        pct = reserved_use_pct(s, [g for g, _o, _f in checked], now_s, window_s)
        return [
            (g.name, pct[g.id], _underuse_step(s, g, pct[g.id], floor, org_id, now_s, window_s))
            for g, org_id, floor in checked
        ]


def _underuse_step(s: Session, g: t.Grant, pct: float, floor: float, org_id: int, now_s: float, window_s: float) -> str:
    """The core's rule (``sched.ledger.underuse_action``, the twin's too) decides; this writes it and audits it."""
    detail: dict[str, Any] = {"utilization_pct": round(pct, 3), "floor_pct": floor, "window_s": window_s}
    action = ledger.underuse_action(g.status == "flagged", g.flagged_at_s, pct, floor, now_s, window_s)
    if action == ledger.RESTORED:
        g.status, g.flagged_at_s = "active", None
        audit.record(s, CONTROLLER, "grant.unflag", "grant", g.id, now_s, org_id, detail)
    elif action == ledger.FLAGGED:
        g.status, g.flagged_at_s = "flagged", now_s
        audit.record(s, CONTROLLER, "grant.flag", "grant", g.id, now_s, org_id, detail)
    elif action == ledger.RECLAIMED:
        detail["previous_end_s"] = g.end_s
        g.status, g.end_s = "reclaimed", now_s
        audit.record(s, CONTROLLER, "grant.reclaim", "grant", g.id, now_s, org_id, detail)
    return action
