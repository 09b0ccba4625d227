"""Grant credit held at admission and released at the end, and operator top-ups (issue 15, hole 5).

A job admitted under a grant with a credit limit holds, on its row (``Job.reserved_su_hours``), its time limit
at its SU rate on the pool it got (:func:`kfabric.sched.rules.su_hours`); the scheduler admitted it only if the
grant's free credit covered that (``sched.rules``; the free credit is what :func:`free_su_hours` computes and
``LiveState`` gives the core). Usage records charge what ran (``service.usage.account``), and each charge comes
off the hold, so ``used + held <= credit`` at every commit; the end or requeue of the attempt gives the rest
back (:func:`release`). A top-up is an operator's audited action that adds credit (:func:`top_up`).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.decision import Admission
from kfabric.model.errors import NotFound, ValidationError
from kfabric.model.job import JobState
from kfabric.model.tenancy import OnExhausted
from kfabric.sched import ledger
from kfabric.sched.rules import su_hours
from kfabric.service import audit
from kfabric.service.actors import Actor
from kfabric.service.programs import rules_of_json
from kfabric.store import rowcache
from kfabric.store import tables as t

if TYPE_CHECKING:
    from kfabric.service.live_state import LiveState

log = logging.getLogger("kfabric.credit")

#: states whose jobs hold credit
HOLDING = (JobState.ADMITTED.value, JobState.RUNNING.value)
#: the largest single top-up (SU-hours), as the largest grant the API accepts
MAX_TOP_UP = 1e12


def held_by_grant(session: Session, grant_id: int | None = None) -> dict[int, float]:
    """SU-hours held by admitted and running jobs, per grant (one grant's only, when ``grant_id`` is given)."""
    q = (
        select(t.Job.grant_id, func.sum(t.Job.reserved_su_hours))
        .where(t.Job.state.in_(HOLDING), t.Job.reserved_su_hours > 0, t.Job.grant_id.is_not(None))
        .group_by(t.Job.grant_id)
    )
    if grant_id is not None:
        q = q.where(t.Job.grant_id == grant_id)
    return {int(gid): float(su) for gid, su in session.execute(q).all() if gid is not None}


def free_su_hours(session: Session, grant: t.Grant) -> float:
    """The grant's credit less what was used and what active jobs hold."""
    return grant.credit_su_hours - grant.used_su_hours - held_by_grant(session, grant.id).get(grant.id, 0.0)


def hold(
    session: Session, live: LiveState, row: t.Job, adm: Admission, now_s: float, held: dict[int, float] | None = None
) -> float:
    """Hold credit for an admitted attempt on the grant it is charged to (``row.grant_id``, chosen by the core's
    rule); returns the SU-hours held. A job the credit does not cover was demoted to scavenger by its grant's
    program (the core admits no other): it draws no credit and is charged to no grant.

    ``held``: what admitted and running jobs hold per grant (:func:`held_by_grant`), read once by a caller that
    holds credit for many admissions in one transaction and kept up to date here (one query per cycle instead of
    one per admission, and no flush of the admissions before it)."""
    row.reserved_su_hours = 0.0
    grant = rowcache.get(session, t.Grant, row.grant_id) if row.grant_id is not None else None
    job = live.job(adm.job_id)
    if grant is None or grant.credit_su_hours <= 0 or job is None:
        return 0.0
    su_weight = live.snap.capacity.pool_by_name[adm.placement.pool].su_weight
    need = su_hours(job, su_weight)
    if held is None:
        free = free_su_hours(session, grant)
    else:
        free = grant.credit_su_hours - grant.used_su_hours - held.get(grant.id, 0.0)
    if ledger.credit_hold(job, su_weight, free) <= 0:  # the twin's rule: the credit does not cover it
        program = rowcache.get(session, t.Program, grant.program_id)
        demotes = program is not None and rules_of_json(program.rules).on_exhausted == OnExhausted.SCAVENGER
        if demotes and adm.borrowed:
            row.grant_id = None
            return 0.0
        # the core checked the same numbers: only a change to the grant between sync and apply gets here
        log.error("job %s admitted beyond grant %s's credit (needs %.3f, %.3f free)", row.id, grant.name, need, free)
    row.reserved_su_hours = need
    if held is not None:
        held[grant.id] = held.get(grant.id, 0.0) + need
    return need


def release(row: t.Job) -> None:
    """The attempt ended or was requeued (after its use was charged): what it still holds goes back."""
    row.reserved_su_hours = 0.0


def draw(row: t.Job, charged_su_hours: float) -> None:
    """Usage charged to the job's grant comes off what the attempt holds."""
    if row.reserved_su_hours > 0:
        row.reserved_su_hours = max(0.0, row.reserved_su_hours - charged_su_hours)


def top_up(
    sessions: sessionmaker[Session], actor: Actor, grant: str, su_hours_added: float, note: str, now_s: float
) -> t.Grant:
    """Add ``su_hours_added`` of credit to a grant (operators; a note says why). Audited."""
    actor.require_operator("top up grants")
    if not (math.isfinite(su_hours_added) and 0 < su_hours_added <= MAX_TOP_UP):
        raise ValidationError(
            "topup.su_hours", f"must be a positive number of SU-hours up to {MAX_TOP_UP:g}, got {su_hours_added}"
        )
    if not note.strip():
        raise ValidationError("topup.note", "must say why the grant gets more credit", "add --note TEXT")
    with sessions.begin() as s:
        row = s.scalars(select(t.Grant).where(t.Grant.name == grant).with_for_update()).first()
        if row is None:
            raise NotFound("grant", grant, "kfabric grant list shows the grants")
        if row.credit_su_hours <= 0:
            # credit 0 means no credit limit (a reservation-only grant): a top-up would impose one
            raise ValidationError(
                f"grant {grant!r}", "has no credit limit (it reserves GPUs only); there is nothing to top up"
            )
        before = row.credit_su_hours
        row.credit_su_hours = before + su_hours_added
        project = s.get(t.Project, row.project_id)
        detail = {
            "grant": row.name,
            "su_hours": su_hours_added,
            "credit_before": before,
            "credit_after": row.credit_su_hours,
            "used": row.used_su_hours,
            "note": note.strip(),
        }
        org = project.organization_id if project else None
        audit.record(s, actor.name, "grant.topup", "grant", row.id, now_s, org, detail)
        return row
