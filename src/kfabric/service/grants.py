"""Grants: deciding applications, operator-direct grants, the grant-time caps, under-use detection and views.

A grant's **weight is its GPU count** (the asked ``gpus`` of the application, reserved or not): the grant sets
the project's fair-share weight, and a project granted 256 GPUs should weigh 32 times one granted 8. Expiry
(``end_s``) and credit exhaustion (``credit_su_hours - used_su_hours``) are enforced by the scheduler from the
grant rows; this module only writes them (under-use reclaim ends a grant by setting ``end_s`` to now).
"""

from __future__ import annotations

import math
from collections import defaultdict
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
    check_eligible,
    check_model,
    program_by_name,
    program_rules,
)
from kfabric.store import tables as t

CONTROLLER = "controller"  # the audit actor of automatic changes


def _caps(
    session: Session,
    prog: t.Program,
    rules: m.ProgramRules,
    proj: t.Project,
    org: t.Organization,
    model: str,
    gpus: int,
    start_s: float,
    end_s: float,
    name: str,
) -> None:
    """Per-project cap and concentration cap, counting the program's grants that hold a reservation at any time
    during ``[start_s, end_s)`` (status active or flagged)."""
    held = session.execute(
        select(t.Grant, t.Project.organization_id)
        .join(t.Project, t.Project.id == t.Grant.project_id)
        .where(
            t.Grant.program_id == prog.id,
            t.Grant.status.in_(HOLDING),
            t.Grant.reserved_gpus > 0,
            t.Grant.start_s < end_s,
            t.Grant.end_s > start_s,
        )
    ).all()
    cap = rules.cap_for(model)
    if cap is not None:
        mine = sum(g.reserved_gpus for g, _o in held if g.project_id == proj.id and g.reserved_model == model)
        if mine + gpus > cap:
            raise Conflict(
                f"grant {name!r}",
                f"project {proj.name!r} would hold {mine} + {gpus} = {mine + gpus} {model} under program "
                f"{prog.name!r}; its per-project cap is {cap}",
                f"grant at most {max(cap - mine, 0)} {model}, or wait for the project's other grants to end",
            )
    total = sum(g.reserved_gpus for g, _o in held)
    if total == 0 or rules.concentration_cap_pct >= 100:
        return
    org_now = sum(g.reserved_gpus for g, o in held if o == org.id)
    org_after, total_after = org_now + gpus, total + gpus
    pct_cap = rules.concentration_cap_pct
    if org_after * 100 > pct_cap * total_after + 1e-9:
        c = pct_cap / 100
        most = max(math.floor((c * total - org_now) / (1 - c) + 1e-9), 0)
        raise Conflict(
            f"grant {name!r}",
            f"organization {org.name!r} would hold {org_after} of the {total_after} reserved GPUs of program "
            f"{prog.name!r} ({100 * org_after / total_after:.1f}%); its concentration cap is {pct_cap:g}%",
            f"grant {org.name!r} at most {most} GPUs now, or grant other organizations first",
        )


def issue_grant(
    session: Session,
    actor_name: str,
    prog: t.Program,
    proj: t.Project,
    org: t.Organization,
    *,
    name: str,
    start_s: float,
    end_s: float,
    reserved_model: str | None,
    reserved_gpus: int,
    credit_su_hours: float,
    weight: float,
    now_s: float,
    application_id: int | None = None,
) -> t.Grant:
    """Validate, check the grant-time caps and insert a grant in the caller's transaction (audited)."""
    where = f"grant {name!r}"
    require_name(name, "grant.name")
    require(end_s > start_s, f"{where}.end", f"end {end_s} must be after start {start_s}")
    require(reserved_gpus >= 0, f"{where}.reserved_gpus", f"must be >= 0, got {reserved_gpus}")
    require(
        (reserved_gpus == 0) == (reserved_model is None),
        f"{where}.reserved_model",
        "reserved_model and reserved_gpus go together",
        "set both (e.g. B200 and 128) or neither",
    )
    require(math.isfinite(credit_su_hours) and credit_su_hours >= 0, f"{where}.credit_su_hours", "must be >= 0")
    require(reserved_gpus > 0 or credit_su_hours > 0, where, "grants nothing", "reserve GPUs, give credit, or both")
    require(math.isfinite(weight) and weight > 0, f"{where}.weight", f"must be > 0, got {weight}")
    # lock the program row: grants under one program are checked and issued one at a time (on PostgreSQL two
    # concurrent decisions would otherwise both pass the caps; SQLite serializes writers anyway)
    session.execute(select(t.Program.id).where(t.Program.id == prog.id).with_for_update())
    if session.scalars(select(t.Grant).where(t.Grant.name == name)).first() is not None:
        raise Conflict(where, "exists already", "pick another name")
    rules = program_rules(prog)
    if reserved_model is not None:
        _caps(session, prog, rules, proj, org, reserved_model, reserved_gpus, start_s, end_s, name)
    row = t.Grant(
        name=name,
        program_id=prog.id,
        project_id=proj.id,
        application_id=application_id,
        start_s=start_s,
        end_s=end_s,
        reserved_model=reserved_model,
        reserved_gpus=reserved_gpus,
        credit_su_hours=credit_su_hours,
        used_su_hours=0.0,
        weight=weight,
        status="active",
    )
    session.add(row)
    session.flush()
    detail = {
        "program": prog.name,
        "project": proj.name,
        "start_s": start_s,
        "end_s": end_s,
        "reserved_model": reserved_model,
        "reserved_gpus": reserved_gpus,
        "credit_su_hours": credit_su_hours,
        "weight": weight,
        "application": application_id,
    }
    audit.record(session, actor_name, "grant.create", "grant", row.id, now_s, org.id, detail)
    return row


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
        app = s.get(t.Application, application_id, with_for_update=True)  # one decision at a time
        if app is None:
            raise NotFound("application", application_id, "kfabric applications lists them")
        if app.status != "submitted":
            raise Conflict(f"application {application_id}", f"is already {app.status}", "it was decided once")
        grant = None
        prog = s.get(t.Program, app.program_id)
        assert prog is not None
        _check_reviewed(s, app, prog)
        if approve:
            proj, org = s.get(t.Project, app.project_id), s.get(t.Organization, app.organization_id)
            assert proj is not None and org is not None
            _check_grants_something(app, reserved, credit_su_hours)
            if reserved and fleet is not None:
                check_model(
                    fleet, prog.name, prog.owner, app.gpu_model_class, app.gpus, f"application {app.id}.gpu_model_class"
                )
            start = now_s if start_s is None else start_s
            grant = issue_grant(
                s,
                actor.name,
                prog,
                proj,
                org,
                name=f"g-{app.id}",
                start_s=start,
                end_s=start + app.months * MONTH_S,
                reserved_model=app.gpu_model_class if reserved else None,
                reserved_gpus=app.gpus if reserved else 0,
                credit_su_hours=credit_su_hours,
                weight=float(app.gpus),
                now_s=now_s,
                application_id=app.id,
            )
        app.status = "approved" if approve else "rejected"
        app.decided_at_s, app.decided_by, app.decision_note = now_s, actor.user_id, note
        detail = {"note": note, "grant": grant.name if grant else None}
        audit.record(
            s,
            actor.name,
            "application.approve" if approve else "application.reject",
            "application",
            app.id,
            now_s,
            app.organization_id,
            detail,
        )
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
            proj = s.scalars(select(t.Project).where(t.Project.name == project)).first()
            if proj is None:
                raise NotFound("project", project)
            org = s.get(t.Organization, proj.organization_id)
            assert org is not None
            rules = program_rules(prog)
            check_eligible(rules, program, org)
            days = (end_s - start_s) / DAY_S
            if days > rules.max_duration_days + 1e-9:
                raise ValidationError(
                    f"grant {name!r}.end",
                    f"runs {days:g} days; program {program!r} grants at most {rules.max_duration_days} days",
                    "end it earlier",
                )
            if fleet is not None and reserved_model is not None:
                check_model(fleet, program, prog.owner, reserved_model, reserved_gpus, f"grant {name!r}.reserved_model")
            w = weight if weight is not None else float(max(reserved_gpus, 1))
            return issue_grant(
                s,
                actor.name,
                prog,
                proj,
                org,
                name=name,
                start_s=start_s,
                end_s=end_s,
                reserved_model=reserved_model,
                reserved_gpus=reserved_gpus,
                credit_su_hours=credit_su_hours,
                weight=w,
                now_s=now_s,
            )
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


def check_underuse(
    sessions: sessionmaker[Session], now_s: float, window_s: float = ledger.UNDERUSE_WINDOW_S
) -> list[tuple[str, float, str]]:
    """Flag, reclaim or restore reserved grants by their use over the last ``window_s`` (one transaction).

    For each grant in force (active or flagged, started, not ended) that reserves GPUs under a program with a
    utilization floor: utilization = GPU-seconds of its usage records on the reserved model, clipped to
    ``[max(now - window, start), now)``, ÷ (reserved GPUs × that span) × 100. Below the floor an active grant
    is flagged, and a grant flagged for ``window_s`` already is reclaimed (``end_s = now``); at or above it a
    flagged grant is active again. Returns ``(grant, utilization %, action)`` for every grant checked, action
    one of ``ok``, ``flagged``, ``still-flagged``, ``reclaimed``, ``restored``. Usage not yet written as
    records (a running job's current interval) does not count.
    """
    require(window_s > 0, "window_s", f"must be > 0, got {window_s}")
    out: list[tuple[str, float, str]] = []
    with sessions.begin() as s:
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
        checked = [(g, o, floor) for g, o, floor in checked if floor > 0]
        used: dict[int, float] = defaultdict(float)
        if checked:
            by_id = {g.id: g for g, _o, _f in checked}
            recs = s.execute(
                select(
                    t.UsageRecord.grant_id,
                    t.UsageRecord.gpu_model,
                    t.UsageRecord.start_s,
                    t.UsageRecord.end_s,
                    t.UsageRecord.gpu_s,
                ).where(
                    t.UsageRecord.grant_id.in_(list(by_id)),
                    t.UsageRecord.end_s > now_s - window_s,
                    t.UsageRecord.start_s < now_s,
                )
            ).all()
            for gid, model, r0, r1, gpu_s in recs:
                if gid is None:
                    continue
                g = by_id[gid]
                if model == g.reserved_model:
                    w0 = ledger.window_start_s(g.start_s, now_s, window_s)
                    used[gid] += ledger.window_gpu_s(gpu_s, r0, r1, w0, now_s)
        for g, org_id, floor in checked:
            pct = ledger.utilization_pct(used[g.id], g.reserved_gpus, g.start_s, now_s, window_s)
            action = _underuse_step(s, g, pct, floor, org_id, now_s, window_s)
            out.append((g.name, pct, action))
    return out


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
