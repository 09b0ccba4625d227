"""Grant and program rules at admission: a grant in force covers the job, it has credit for the job, and the
job's time limit is within the program's maximum. Expired or exhausted grants stop new work, or demote it to
scavenger (borrowed, preemptible capacity only) when the program says so.

Credit is *reserved* at admission: a job starts under a grant with a credit limit only if what is left of the
credit (the owner's ``GrantState.credit_left_su``: credit less what was used and what active jobs hold) covers
its time limit at its service-unit rate on the pool it gets (:func:`su_hours`). Within one cycle each admission
takes its reservation from what the next job may use (:meth:`GrantRules.charge`), so no two jobs share the same
credit. Jobs of projects without a credit grant pay nothing for this: one set lookup.
"""

from __future__ import annotations

from kfabric.model.job import MILLI_PER_GPU, Job, PriorityClass
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.model.tenancy import OnExhausted
from kfabric.sched.snapshot import GrantState, Snapshot

#: credit comparisons forgive float rounding (SU-hours)
CREDIT_EPS = 1e-9


def su_hours(job: Job, su_weight: float) -> float:
    """Service-unit hours the job holds over its whole time limit on GPUs of weight ``su_weight`` (GPUs, or the
    milli share of a fractional GPU, x weight x hours)."""
    return job.gpu_milli_total / MILLI_PER_GPU * su_weight * job.time_limit_s / 3600.0


def _amount(su: float) -> str:
    return f"{su:.1f}" if su >= 0.1 or su == 0 else f"{su:.3g}"


class GrantRules:
    """Rule checks for one cycle; the grant lookup is done once per (project, named grant)."""

    def __init__(self, snap: Snapshot, now_s: float) -> None:
        self.snap, self.now = snap, now_s
        self._status: dict[tuple[str, str | None], tuple[GrantState | None, PendingReason | None]] = {}
        self._credit_projects: frozenset[str] | None = None
        #: credit left per grant id in this cycle (admissions of the cycle taken off)
        self._left: dict[str, float] = {}

    @property
    def credit_projects(self) -> frozenset[str]:
        """Projects with a grant that has a credit limit: only their jobs are checked for credit."""
        got = self._credit_projects
        if got is None:
            got = self._credit_projects = frozenset(
                g.project for g in self.snap.grants.values() if g.credit_left_su is not None
            )
        return got

    def check(self, job: Job) -> PendingReason | None:
        """Why the job may not start under its grant, or None."""
        if not self.snap.grants:
            return None
        grant, blocked = self._covering(job.project, job.grant)
        if blocked is not None or grant is None:
            return blocked
        if grant.max_job_duration_s is not None and job.time_limit_s > grant.max_job_duration_s:
            return PendingReason(
                ReasonCode.MAX_DURATION,
                f"time limit {job.time_limit_s / 3600:g} h exceeds the program's maximum of "
                f"{grant.max_job_duration_s / 3600:g} h; lower --time",
            )
        return None

    def _covering(self, project: str, named: str | None) -> tuple[GrantState | None, PendingReason | None]:
        key = (project, named)
        status = self._status.get(key)
        if status is None:
            status = self._status[key] = self._find_grant(project, named)
        return status

    def _find_grant(self, project: str, named: str | None) -> tuple[GrantState | None, PendingReason | None]:
        grant = self.snap.grants.get(named) if named else None
        if grant is None:
            active = [g for g in self.snap.grants_by_project.get(project, ()) if g.start_s <= self.now]
            grant = active[-1] if active else None
        if grant is None:
            return None, PendingReason(
                ReasonCode.NO_GRANT, f"project {project} has no grant that covers this job; apply to a program"
            )
        if grant.on_exhausted == OnExhausted.STOP:
            if grant.end_s <= self.now:
                return grant, PendingReason(
                    ReasonCode.GRANT_EXPIRED, f"grant {grant.id} has expired; ask the program for a renewal"
                )
            if grant.credit_left_su is not None and grant.credit_left_su <= 0:
                return grant, PendingReason(
                    ReasonCode.CREDIT_EXHAUSTED, f"grant {grant.id} has no service-unit credit left; top it up"
                )
        return grant, None

    def scavenger(self, job: Job) -> bool:
        """Scavenger work runs only on borrowed capacity: asked for, or demoted by an exhausted grant."""
        if job.priority == PriorityClass.SCAVENGER:
            return True
        for g in self.snap.grants_by_project.get(job.project, ()):
            if g.on_exhausted == OnExhausted.SCAVENGER and (
                g.end_s <= self.now or (g.credit_left_su is not None and g.credit_left_su <= 0)
            ):
                return True
        return False

    # ---- credit ------------------------------------------------------------------------------------------------
    def charged(self, job: Job, model: str, guaranteed: bool) -> GrantState | None:
        """The grant whose credit the job draws on a pool of ``model`` (:meth:`charged_to`)."""
        return self.charged_to(job.project, job.grant, model, guaranteed)

    def charged_to(self, project: str, named: str | None, model: str, guaranteed: bool) -> GrantState | None:
        """The grant a job of ``project`` (naming grant ``named``, or none) is charged to on a pool of ``model``:
        for guaranteed work the project's first grant in force that reserves that model, otherwise the grant
        that covers it (the one its rules were checked against); None when that grant is not in force (expired
        work demoted to scavenger draws no credit)."""
        if guaranteed and not named:
            for g in self.snap.grants_by_project.get(project, ()):
                if g.reserved_model == model and g.reserved_gpus > 0 and g.start_s <= self.now < g.end_s:
                    return g
        grant = self._covering(project, named)[0] if self.snap.grants else None
        if grant is None or not grant.start_s <= self.now < grant.end_s:
            return None
        return grant

    def left(self, grant: GrantState) -> float:
        """Credit of a credit-limited grant that this cycle has not yet given out."""
        got = self._left.get(grant.id)
        if got is None:
            assert grant.credit_left_su is not None
            got = self._left[grant.id] = grant.credit_left_su
        return got

    def need(self, job: Job, model: str, su_weight: float, guaranteed: bool) -> tuple[GrantState, float] | None:
        """The credit-limited grant a placement would draw and the SU-hours it needs there (None: no credit
        limit applies)."""
        grant = self.charged(job, model, guaranteed)
        if grant is None or grant.credit_left_su is None:
            return None
        return grant, su_hours(job, su_weight)

    def covers(self, job: Job, model: str, su_weight: float, guaranteed: bool) -> bool:
        needed = self.need(job, model, su_weight, guaranteed)
        return needed is None or needed[1] <= self.left(needed[0]) + CREDIT_EPS

    def credit_reason(self, job: Job, model: str, su_weight: float, guaranteed: bool) -> PendingReason:
        needed = self.need(job, model, su_weight, guaranteed)
        assert needed is not None
        grant, su = needed
        return PendingReason(
            ReasonCode.CREDIT_EXHAUSTED,
            f"needs {_amount(su)} SU-hours at its time limit, {_amount(max(self.left(grant), 0.0))} free of grant "
            f"{grant.id}; top it up or lower --time",
        )

    def charge(self, job: Job, model: str, su_weight: float, guaranteed: bool) -> float:
        """Take an admitted job's reservation off what is left for the rest of the cycle; returns it (0 for a
        job that draws no credit: no limit, or demoted to scavenger because the credit does not cover it)."""
        needed = self.need(job, model, su_weight, guaranteed)
        if needed is None:
            return 0.0
        grant, su = needed
        left = self.left(grant)
        if su > left + CREDIT_EPS:
            return 0.0
        self._left[grant.id] = left - su
        return su


def charged_grant(snap: Snapshot, job: Job, model: str, guaranteed: bool, now_s: float) -> GrantState | None:
    """:meth:`GrantRules.charged` for an owner applying a decision (the grant its usage is charged to)."""
    return GrantRules(snap, now_s).charged(job, model, guaranteed)
