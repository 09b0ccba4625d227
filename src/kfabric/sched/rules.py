"""Grant and program rules at admission: a grant in force covers the job, it has credit left, and the job's
time limit is within the program's maximum. Expired or exhausted grants stop new work, or demote it to
scavenger (borrowed, preemptible capacity only) when the program says so."""

from __future__ import annotations

from kfabric.model.job import Job, PriorityClass
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.model.tenancy import OnExhausted
from kfabric.sched.snapshot import GrantState, Snapshot


class GrantRules:
    """Rule checks for one cycle; the grant lookup is done once per (project, named grant)."""

    def __init__(self, snap: Snapshot, now_s: float) -> None:
        self.snap, self.now = snap, now_s
        self._status: dict[tuple[str, str | None], tuple[GrantState | None, PendingReason | None]] = {}

    def check(self, job: Job) -> PendingReason | None:
        """Why the job may not start under its grant, or None."""
        if not self.snap.grants:
            return None
        key = (job.project, job.grant)
        status = self._status.get(key)
        if status is None:
            status = self._status[key] = self._find_grant(job)
        grant, blocked = status
        if blocked is not None or grant is None:
            return blocked
        if grant.max_job_duration_s is not None and job.time_limit_s > grant.max_job_duration_s:
            return PendingReason(
                ReasonCode.MAX_DURATION,
                f"time limit {job.time_limit_s / 3600:g} h exceeds the program's maximum of "
                f"{grant.max_job_duration_s / 3600:g} h; lower --time",
            )
        return None

    def _find_grant(self, job: Job) -> tuple[GrantState | None, PendingReason | None]:
        grant = self.snap.grants.get(job.grant) if job.grant else None
        if grant is None:
            active = [g for g in self.snap.grants_by_project.get(job.project, ()) if g.start_s <= self.now]
            grant = active[-1] if active else None
        if grant is None:
            return None, PendingReason(
                ReasonCode.NO_GRANT, f"project {job.project} has no grant that covers this job; apply to a program"
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
