"""Usage records: what a job used over an interval, on which GPU model and site, charged to which grant, at
what price. Written in the transaction that moves the job (or by the controller's periodic accounting)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from kfabric.model.job import MILLI_PER_GPU
from kfabric.model.tenancy import Organization, OrgKind
from kfabric.sched.rules import GrantRules
from kfabric.service import credit
from kfabric.service.live_state import LiveState
from kfabric.service.programs import rules_of_json
from kfabric.store import rowcache
from kfabric.store import tables as t


def choose_grant(live: LiveState, project_id: int, model: str, now_s: float, guaranteed: bool) -> int | None:
    """The grant a placement is charged to, by the core's rule (``sched.rules.GrantRules.charged_to``, the grant
    whose credit the scheduler checked): the reservation of that model for guaranteed work, else the grant in
    force that covers the project's jobs."""
    project = live.projects.get(project_id)
    if project is None:
        return None
    grant = GrantRules(live.snap, now_s).charged_to(project[0], None, model, guaranteed)
    if grant is None:
        return None
    return next((g.id for g in live.grant_rows.values() if g.name == grant.id), None)


def account(session: Session, row: t.Job, until_s: float, live: LiveState) -> t.UsageRecord | None:
    """Record ``row``'s use from ``accounted_to_s`` to ``until_s`` (nothing when the interval is empty)."""
    start = row.accounted_to_s if row.accounted_to_s is not None else row.started_at_s
    if start is None or row.placement is None or until_s <= start:
        return None
    pool = live.snap.capacity.pool_by_name[row.placement["pool"]]
    milli = sum(len(g) * m for _n, g, m, _c, _mem in row.placement["shares"])
    gpu_s = milli / MILLI_PER_GPU * (until_s - start)
    su = gpu_s * pool.su_weight
    grant = rowcache.get(session, t.Grant, row.grant_id) if row.grant_id is not None else None
    project = rowcache.get(session, t.Project, row.project_id)
    assert project is not None
    org = rowcache.get(session, t.Organization, project.organization_id)
    assert org is not None
    price = 1.0
    program_id = None
    if grant is not None:
        program = rowcache.get(session, t.Program, grant.program_id)
        assert program is not None
        program_id = program.id
        price = rules_of_json(program.rules).price_for(
            Organization(org.name, OrgKind(org.kind), org.region, frozenset(org.flags))
        )
        grant.used_su_hours += su / 3600.0
        credit.draw(row, su / 3600.0)  # what the attempt holds turns into use
    site = live.snap.capacity.sites[pool.site].name
    rec = t.UsageRecord(
        job_id=row.id,
        project_id=row.project_id,
        organization_id=org.id,
        program_id=program_id,
        grant_id=grant.id if grant else None,
        site=site,
        provider=pool.owner,
        gpu_model=pool.model,
        start_s=start,
        end_s=until_s,
        gpu_s=gpu_s,
        su=su,
        price_factor=price,
        charged_su=su * price,
    )
    session.add(rec)
    row.accounted_to_s = until_s
    row.attained_gpu_s += gpu_s
    return rec
