"""Usage reports over :class:`~kfabric.store.tables.UsageRecord` (product spec section 10).

A report groups usage by program, organization, project, site, provider or GPU model, over ``[since, until)``.
A record that straddles a bound counts pro rata to the part inside it (usage is spread evenly over a record's
interval). Records wholly inside are summed by the database; only the few straddling ones are clipped here.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from kfabric.model.errors import PermissionDenied, ValidationError
from kfabric.service.actors import Actor, Role
from kfabric.store import tables as t

NO_PROGRAM = "(none)"  # the program key of usage charged to no grant
_U = t.UsageRecord
GROUPS: dict[str, Any] = {
    "program": t.Program.name,
    "organization": t.Organization.name,
    "project": t.Project.name,
    "site": _U.site,
    "provider": _U.provider,
    "gpu_model": _U.gpu_model,
}
FIELDS = ("gpu_hours", "su_hours", "charged_su_hours", "records")


def _grouped(key: Any, by: str, *cols: Any) -> Select[Any]:
    q = select(key, *cols).select_from(_U)
    if by == "program":
        q = q.outerjoin(t.Program, t.Program.id == _U.program_id)
    elif by == "organization":
        q = q.join(t.Organization, t.Organization.id == _U.organization_id)
    elif by == "project":
        q = q.join(t.Project, t.Project.id == _U.project_id)
    return q


def _visibility(actor: Actor) -> ColumnElement[bool] | None:
    """The records ``actor`` may see as a WHERE clause (None: all); raises for roles that see no usage."""
    if actor.role is Role.OPERATOR:
        return None
    if actor.role is Role.ORG_ADMIN:
        return _U.organization_id == actor.organization_id
    if actor.role is Role.MEMBER:
        return _U.project_id.in_(sorted(actor.project_ids))
    if actor.role is Role.PROVIDER:
        return _U.provider == actor.owner
    raise PermissionDenied("see usage", f"the {actor.role.value} role sees no usage", "ask an operator")


def usage_report(
    session: Session, actor: Actor, by: str, since_s: float | None = None, until_s: float | None = None
) -> list[dict[str, Any]]:
    """Usage grouped ``by`` one of :data:`GROUPS`, clipped to ``[since_s, until_s)``, sorted by key.

    Each row: ``{by: key, "gpu_hours", "su_hours", "charged_su_hours", "records"}`` (service units in SU-hours, as
    grants count them) (``records`` counts the records that
    overlap the interval). Operators see all usage; org-admins their organization's; members their projects';
    providers the usage on their owner's sites; reviewers none (:class:`PermissionDenied`).
    """
    if by not in GROUPS:
        raise ValidationError("by", f"cannot group usage by {by!r}", f"use one of: {', '.join(GROUPS)}")
    if since_s is not None and until_s is not None and since_s >= until_s:
        raise ValidationError("since", f"since {since_s} is not before until {until_s}", "swap them")
    visible = _visibility(actor)
    key = GROUPS[by]
    lo = since_s if since_s is not None else float("-inf")
    hi = until_s if until_s is not None else float("inf")
    inside: list[ColumnElement[bool]] = []
    if since_s is not None:
        inside.append(_U.start_s >= since_s)
    if until_s is not None:
        inside += [_U.end_s <= until_s, _U.start_s < until_s]
    if visible is not None:
        inside.append(visible)
    sums: dict[Any, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    whole = _grouped(key, by, func.sum(_U.gpu_s), func.sum(_U.su), func.sum(_U.charged_su), func.count())
    for k, gpu_s, su, charged, n in session.execute(whole.where(*inside).group_by(key)).all():
        acc = sums[k]
        acc[0] += gpu_s or 0.0
        acc[1] += su or 0.0
        acc[2] += charged or 0.0
        acc[3] += n
    if since_s is not None or until_s is not None:
        straddle: list[ColumnElement[bool]] = []
        if since_s is not None:
            straddle.append(_U.end_s > since_s)
        if until_s is not None:
            straddle.append(_U.start_s < until_s)
        crosses: list[ColumnElement[bool]] = []
        if since_s is not None:
            crosses.append(_U.start_s < since_s)
        if until_s is not None:
            crosses.append(_U.end_s > until_s)
        straddle.append(or_(*crosses))
        if visible is not None:
            straddle.append(visible)
        part = _grouped(key, by, _U.start_s, _U.end_s, _U.gpu_s, _U.su, _U.charged_su)
        for k, r0, r1, gpu_s, su, charged in session.execute(part.where(and_(*straddle))).all():
            share = (min(r1, hi) - max(r0, lo)) / (r1 - r0)
            acc = sums[k]
            acc[0] += gpu_s * share
            acc[1] += su * share
            acc[2] += charged * share
            acc[3] += 1
    rows = [
        {
            by: NO_PROGRAM if k is None else k,
            "gpu_hours": g / 3600.0,
            "su_hours": s / 3600.0,
            "charged_su_hours": c / 3600.0,
            "records": int(n),
        }
        for k, (g, s, c, n) in sums.items()
    ]
    return sorted(rows, key=lambda r: str(r[by]))


def usage_csv(rows: list[dict[str, Any]], by: str | None = None) -> str:
    """``rows`` of :func:`usage_report` as CSV with a header row. The key column is named after the grouping
    (``by``, or the first row's first key; ``key`` for an empty report without ``by``)."""
    key = by or (next(iter(rows[0])) if rows else "key")
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([key, *FIELDS])
    for r in rows:
        w.writerow([r[key], *(round(r[f], 6) if isinstance(r[f], float) else r[f] for f in FIELDS)])
    return out.getvalue()


def totals(session: Session) -> dict[str, float]:
    """Sums over every usage record: ``gpu_s``, ``su``, ``charged_su`` and ``records`` (for consistency
    checks: every report over all time adds up to these)."""
    gpu_s, su, charged, n = session.execute(
        select(func.sum(_U.gpu_s), func.sum(_U.su), func.sum(_U.charged_su), func.count()).select_from(_U)
    ).one()
    return {"gpu_s": gpu_s or 0.0, "su": su or 0.0, "charged_su": charged or 0.0, "records": float(n)}
