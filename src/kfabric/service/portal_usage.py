"""What the portal's usage pages read: usage reports (``accounting.usage_report``, as ``GET /v1/usage``), the grants
a user sees (``grants.list_grants``) and one grant's credit burn-down with a projected exhaustion date from the
recent burn rate. Every function opens its own read and returns plain values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import NotFound
from kfabric.service import accounting, grants
from kfabric.service.actors import Actor
from kfabric.store import tables as t

#: the burn rate behind a projection is the charge over this window (or since the grant started, if later)
RATE_WINDOW_S = 7 * 86400.0
#: a burn-down has at most this many points (records are thinned evenly beyond it)
MAX_POINTS = 2000


def usage_report(
    sessions: sessionmaker[Session], actor: Actor, by: str, since_s: float | None = None, until_s: float | None = None
) -> list[dict[str, Any]]:
    """``accounting.usage_report`` in its own read (the rows ``actor`` may see, grouped ``by``)."""
    with sessions() as s:
        return accounting.usage_report(s, actor, by, since_s, until_s)


def grants_seen(sessions: sessionmaker[Session], actor: Actor) -> list[dict[str, Any]]:
    """The grants ``actor`` sees, as ``grants.grant_view`` shows them."""
    with sessions() as s:
        return [grants.grant_view(g, program, project) for g, program, project in grants.list_grants(s, actor)]


@dataclass(frozen=True, slots=True)
class BurnDown:
    """A grant's credit over time: ``points`` are (time, SU-hours left) after each charge."""

    credit_su_hours: float
    left_su_hours: float
    points: list[tuple[float, float]]
    rate_su_hours_per_day: float
    window_s: float
    exhausted_at_s: float | None  # None: no recent use, nothing to project
    ends_first: bool  # the grant ends before its credit runs out


def _thinned(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    step = len(points) / MAX_POINTS
    return [points[int(i * step)] for i in range(MAX_POINTS)] + [points[-1]]


def burn_down(charges: list[tuple[float, float]], grant: t.Grant, now_s: float) -> BurnDown:
    """The burn-down of ``grant`` from its ``charges`` (end time, charged SU-seconds), in time order."""
    left = max(grant.credit_su_hours - grant.used_su_hours, 0.0)
    points: list[tuple[float, float]] = [(grant.start_s, grant.credit_su_hours)]
    spent = 0.0
    window_start = max(now_s - RATE_WINDOW_S, grant.start_s)
    recent = 0.0
    for end_s, charged in charges:
        spent += charged / 3600.0
        points.append((end_s, grant.credit_su_hours - spent))
        if end_s > window_start:
            recent += charged / 3600.0
    window = max(now_s - window_start, 1.0)
    rate_per_s = recent / window
    exhausted = now_s + left / rate_per_s if rate_per_s > 0 and grant.credit_su_hours > 0 else None
    return BurnDown(
        grant.credit_su_hours, left, _thinned(points), rate_per_s * 86400.0, window, exhausted,
        exhausted is not None and exhausted > grant.end_s,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class GrantBurn:
    """One grant as its page shows it: ``grants.grant_view``, its burn-down and when it ends."""

    view: dict[str, Any]
    burn: BurnDown
    end_s: float


def grant_burn(sessions: sessionmaker[Session], actor: Actor, name: str, now_s: float) -> GrantBurn:
    """Grant ``name`` if ``actor`` sees it (:class:`NotFound` otherwise), with its burn-down at ``now_s``."""
    with sessions() as s:
        found = next(((g, p, q) for g, p, q in grants.list_grants(s, actor) if g.name == name), None)
        if found is None:
            raise NotFound("grant", name)
        grant, program, project = found
        charges = s.execute(
            select(t.UsageRecord.end_s, t.UsageRecord.charged_su)
            .where(t.UsageRecord.grant_id == grant.id)
            .order_by(t.UsageRecord.end_s, t.UsageRecord.id)
        ).all()
        burn = burn_down([(e, c) for e, c in charges], grant, now_s)
        return GrantBurn(grants.grant_view(grant, program, project), burn, grant.end_s)
