"""Between cycles: the one path by which the twin (``sim/engine.py``) and the live controller
(``service/controller.py``, ``service/live_state.py``) change the scheduler's state.

``sched.cycle`` decides; everything that happens around it is here, so the twin and the service cannot drift:

* **Arrivals** (:func:`arrival`): a submission is queued or refused by its project's grants, one rule for both.
  Refused when the project has grants and none covers the job now or later (no grant, expired or out of credit
  under a program that stops such work, over the program's maximum duration, or demoted to scavenger while not
  preemptible); queued otherwise, also when its grant starts later (it waits) or when its program demotes work
  of an expired grant to scavenger. Why refuse rather than queue: the core would hold such a job pending for
  ever (``grant_expired``), and a refusal at submit tells the user at once (Slurm refuses at ``sbatch``).
* **Start and finish of runs** (:class:`Ledger`): the snapshot's running set, fair-share usage (each second a
  run holds GPUs counts, from admission to its end, also the last interval before a job ends between cycles),
  attained service, and the run-time estimator.
* **Estimator updates** (:data:`LEARNS_FROM`): only runs that ended by themselves or at their time limit teach
  the estimator how long a job of its kind holds GPUs. A failed run says how long until it crashed, not how
  long the job needs (a crash loop would make its kind look short and jump the queue under SJF/QSSF); a
  preempted, lost or cancelled run was cut by someone else.
* **Usage decay** (:meth:`Ledger.accrue`, with :func:`kfabric.sched.fairshare.decay`, the one decay formula).
* **Credit** (:func:`credit_hold`, :func:`credit_charge`): held at admission for the time limit, charged by
  use (at most what was held), the rest given back.
* **Under-use of reserved grants** (:func:`utilization_pct`, :func:`underuse_action`, and
  :meth:`Ledger.check_underuse` for owners that keep grants in memory): flag below the program's floor,
  reclaim after a whole window flagged (the grant ends now), restore at or above the floor.
* **Preemption grace** comes from the policy only (``Policy.grace_s``, :func:`grace_s`).

Functions return results (the run that ended, the action taken); none sets a flag for another step to read.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import NamedTuple

from kfabric.model.decision import Decision, Placement
from kfabric.model.job import MILLI_PER_GPU, Job, PriorityClass
from kfabric.model.reasons import ReasonCode
from kfabric.sched.fairshare import decay
from kfabric.sched.policy import Policy
from kfabric.sched.rules import CREDIT_EPS, GrantRules, su_hours
from kfabric.sched.snapshot import GrantState, RunningJob, Snapshot

# ---- how a run ended ---------------------------------------------------------------------------------------------
SUCCEEDED, FAILED, TIMEOUT = "succeeded", "failed", "timeout"
PREEMPTED, LOST, CANCELLED = "preempted", "lost", "cancelled"
#: run ends whose run time the estimator learns from (see the module's note)
LEARNS_FROM = frozenset({SUCCEEDED, TIMEOUT})
#: the shortest run time recorded (a run reported to end when it started still held its GPUs)
MIN_RUN_S = 1.0

# ---- under-use actions -------------------------------------------------------------------------------------------
OK, FLAGGED, STILL_FLAGGED, RECLAIMED, RESTORED = "ok", "flagged", "still-flagged", "reclaimed", "restored"
#: seven days: the window over which reserved use is measured, and how long a grant stays flagged before reclaim
UNDERUSE_WINDOW_S = 7 * 86_400.0
#: how often the owner checks under-use (the live controller's default; the twin's too)
UNDERUSE_INTERVAL_S = 3600.0


def grace_s(policy: Policy) -> float:
    """Seconds a preempted job gets between the signal and the kill: the policy's, in the twin and live."""
    return policy.grace_s


# ---- arrivals ----------------------------------------------------------------------------------------------------
class Arrival:
    """What happens to a submission: ``queued``, or refused with ``code``. ``grant``: the grant the job is held to
    (or waits for, ``waits``); ``demoted``: its program demotes it to scavenger (an expired or exhausted grant)."""

    __slots__ = ("code", "demoted", "grant", "queued", "waits")

    def __init__(
        self,
        queued: bool,
        code: ReasonCode | None = None,
        grant: GrantState | None = None,
        waits: bool = False,
        demoted: bool = False,
    ) -> None:
        self.queued = queued
        self.code = code
        self.grant = grant
        self.waits = waits
        self.demoted = demoted

    def __repr__(self) -> str:
        g = self.grant.id if self.grant is not None else None
        return (
            f"Arrival(queued={self.queued}, code={self.code}, grant={g!r}, waits={self.waits}, demoted={self.demoted})"
        )


def arrival(snap: Snapshot, job: Job, now_s: float) -> Arrival:
    """Queue or refuse ``job`` arriving at ``now_s`` by its project's grants (the module's rule). A snapshot
    without grants applies no grant rule: every job is queued."""
    if not snap.grants:
        return Arrival(True)
    mine = snap.grants_by_project.get(job.project, [])
    started = [g for g in mine if g.start_s <= now_s]
    if not started:
        later = [g for g in mine if g.start_s > now_s]
        if not later:
            return Arrival(False, ReasonCode.NO_GRANT)
        return Arrival(True, grant=min(later, key=_start_key), waits=True)
    grant = started[-1]
    rules = GrantRules(snap, now_s)
    reason = rules.check(job)
    if reason is not None and reason.code in (
        ReasonCode.GRANT_EXPIRED,
        ReasonCode.CREDIT_EXHAUSTED,
        ReasonCode.MAX_DURATION,
        ReasonCode.NO_GRANT,
    ):
        return Arrival(False, reason.code, grant)
    if job.priority != PriorityClass.SCAVENGER and rules.scavenger(job):
        if not job.preemptible:
            return Arrival(False, ReasonCode.GRANT_EXPIRED, grant, demoted=True)
        return Arrival(True, grant=grant, demoted=True)
    return Arrival(True, grant=grant)


def _start_key(g: GrantState) -> tuple[float, str]:
    return (g.start_s, g.id)


# ---- credit ------------------------------------------------------------------------------------------------------
def credit_hold(job: Job, su_weight: float, free_su: float | None) -> float:
    """SU-hours an admitted attempt holds on its grant: its time limit at the pool's SU rate; 0 when the grant has
    no credit limit (``free_su`` None) or its free credit does not cover that (the core admitted it only because
    its program demotes such work to scavenger: it draws no credit)."""
    if free_su is None:
        return 0.0
    need = su_hours(job, su_weight)
    return need if need <= free_su + CREDIT_EPS else 0.0


def credit_charge(held_su: float, used_su: float) -> tuple[float, float]:
    """At the end of an attempt: ``(charged, given back)``. Use is charged up to what was held (a start delayed by
    a preemption's grace period is not use); the rest of the hold goes back."""
    charged = min(max(used_su, 0.0), held_su)
    return charged, held_su - charged


# ---- under-use -----------------------------------------------------------------------------------------------
def window_gpu_s(gpu_s: float, start_s: float, end_s: float, from_s: float, to_s: float) -> float:
    """The part of a use of ``gpu_s`` GPU-seconds spread over ``[start_s, end_s)`` that falls in ``[from_s, to_s)``."""
    if end_s <= start_s:
        return 0.0
    return gpu_s * max(min(end_s, to_s) - max(start_s, from_s), 0.0) / (end_s - start_s)


def window_start_s(grant_start_s: float, now_s: float, window_s: float) -> float:
    """Where a grant's under-use window begins: ``window_s`` back, not before the grant started."""
    return max(now_s - window_s, grant_start_s)


def utilization_pct(
    used_gpu_s: float, reserved_gpus: int, grant_start_s: float, now_s: float, window_s: float
) -> float:
    """Use of the reserved model in the window as a share of reserved GPUs x the window's length (0 for an empty
    window)."""
    span = now_s - window_start_s(grant_start_s, now_s, window_s)
    if reserved_gpus <= 0 or span <= 0:
        return 0.0
    return 100.0 * used_gpu_s / (reserved_gpus * span)


def underuse_action(flagged: bool, flagged_at_s: float | None, pct: float, floor_pct: float, now_s: float,
                    window_s: float) -> str:  # fmt: skip
    """The under-use rule: at or above the floor a flagged grant is restored (else ``ok``); below it an unflagged
    grant is flagged, and one flagged for a whole window already is reclaimed (it ends now)."""
    if pct >= floor_pct:
        return RESTORED if flagged else OK
    if not flagged:
        return FLAGGED
    since = flagged_at_s if flagged_at_s is not None else now_s
    return STILL_FLAGGED if now_s - since < window_s else RECLAIMED


# ---- runs --------------------------------------------------------------------------------------------------------
class Finished(NamedTuple):
    """A run that left its GPUs: the run, the seconds it held them (from admission), GPU-seconds and SUs of that."""

    run: RunningJob
    held_s: float
    gpu_s: float
    su: float


class _Use(NamedTuple):
    """One stretch of reserved-model use charged to a grant (for the under-use rule)."""

    grant: str
    start_s: float
    end_s: float
    gpu_s: float


class Ledger:
    """The between-cycle state of one snapshot: runs start and finish through it, usage decays and accrues, the
    estimator learns, credit is held and charged, reserved grants are checked for under-use.

    Fair-share usage is exact piecewise: :meth:`accrue` decays what was there and adds each project's SU rate x
    the elapsed time; a run starting or ending between two accruals corrects the next one by the part of the
    interval it did not (or did) hold GPUs, so each second of use counts once, wherever the owner's clock ticks.
    """

    def __init__(
        self, snap: Snapshot, half_life_s: float, usage_at_s: float = 0.0, track_underuse: bool = True
    ) -> None:
        """``track_underuse``: keep reserved-model use in memory for :meth:`check_underuse` (the twin); an owner
        that keeps it in a store (the live service's usage records) passes False."""
        self.snap = snap
        self.track_underuse = track_underuse
        self.half_life_s = half_life_s
        #: the time up to which ``snap.usage_su`` holds the use
        self.usage_at_s = usage_at_s
        #: SU per second of the runs in the running set, per project
        self.rate: dict[str, float] = defaultdict(float)
        #: corrections for the next accrual (runs that started or ended inside the interval)
        self.pending: dict[str, float] = defaultdict(float)
        #: per running job: the time its use counts from (admission, or what was accounted before a rebuild)
        self.marks: dict[str, float] = {}
        #: reserved-model use per grant with an under-use floor (kept only when some grant has one)
        self.uses: list[_Use] = []
        #: per grant id: when it was flagged for under-use (absent: not flagged)
        self.flagged_at: dict[str, float] = {}
        #: running jobs whose use counts for a watched grant (:meth:`watched`): job id -> grant id
        self.charged: dict[str, str] = {}
        self._watch: frozenset[str] = frozenset()
        self.grants_changed()

    def grants_changed(self) -> None:
        """The snapshot's grants were replaced (projects with a watched grant are looked up again)."""
        self._watch = frozenset(g.project for g in self.watched().values()) if self.track_underuse else frozenset()

    # ---- usage ---------------------------------------------------------------------------------------------
    def accrue(self, now_s: float) -> None:
        """Decay usage to ``now_s`` and add what ran since the last accrual."""
        dt = now_s - self.usage_at_s
        usage = self.snap.usage_su
        if dt > 0:
            factor = decay(1.0, dt, self.half_life_s)
            for p in list(usage):
                usage[p] *= factor
            for p, rate in self.rate.items():
                if rate > 0:
                    usage[p] = usage.get(p, 0.0) + rate * dt
            self.usage_at_s = now_s
        for p, extra in self.pending.items():
            if extra != 0.0:
                usage[p] = max(usage.get(p, 0.0) + extra, 0.0)
        self.pending.clear()

    def rebuild_usage(self, records: list[tuple[str, float, float]], now_s: float) -> None:
        """Usage from stored records ``(project, end_s, su)`` decayed to ``now_s`` (an owner starting over)."""
        usage: dict[str, float] = {}
        for project, end_s, su in records:
            usage[project] = usage.get(project, 0.0) + decay(su, max(0.0, now_s - end_s), self.half_life_s)
        self.snap.usage_su.clear()
        self.snap.usage_su.update(usage)
        self.pending.clear()
        self.usage_at_s = now_s

    def _su_rate(self, run: RunningJob) -> float:
        pool = self.snap.capacity.pool_by_name[run.placement.pool]
        return run.milli / MILLI_PER_GPU * pool.su_weight

    # ---- start and finish --------------------------------------------------------------------------------
    def start(
        self,
        job: Job,
        placement: Placement,
        now_s: float,
        borrowed: bool,
        guaranteed: bool = False,
        take: bool = True,
        counted_to_s: float | None = None,
    ) -> RunningJob:
        """``job`` holds ``placement`` from ``now_s`` (its admission). ``counted_to_s``: use up to then is already
        in the usage (an owner rebuilding its state from records); ``take``: see :meth:`Snapshot.start`."""
        snap = self.snap
        snap.start(job, placement, now_s, borrowed, guaranteed, take)
        run = snap.running[job.id]
        mark = now_s if counted_to_s is None else max(now_s, counted_to_s)
        self.marks[job.id] = mark
        rate = self._su_rate(run)
        self.rate[job.project] += rate
        if mark != self.usage_at_s:
            self.pending[job.project] += rate * (self.usage_at_s - mark)
        if job.project in self._watch:
            model = snap.capacity.pool_by_name[placement.pool].model
            grant = GrantRules(snap, now_s).charged(job, model, guaranteed)
            if grant is not None and grant.reserved_model == model and grant.id in self.watched():
                self.charged[job.id] = grant.id
        return run

    def finish(self, job_id: str, end_s: float, give: bool = True) -> Finished:
        """The run of ``job_id`` left its GPUs at ``end_s`` (ended, killed, preempted or lost): capacity back (see
        :meth:`Snapshot.finish` for ``give``), its use counted, its attained service added."""
        snap = self.snap
        run = snap.finish(job_id, give)
        mark = self.marks.pop(job_id, run.start_s)
        rate = self._su_rate(run)
        project = run.job.project
        self.rate[project] -= rate
        if self.rate[project] < 1e-12:
            self.rate[project] = 0.0
        self.pending[project] += rate * (end_s - self.usage_at_s)
        held = max(0.0, end_s - run.start_s)
        gpus = run.milli / MILLI_PER_GPU
        snap.attained_gpu_s[job_id] = snap.attained_gpu_s.get(job_id, 0.0) + max(0.0, end_s - mark) * gpus
        grant = self.charged.pop(job_id, None)
        if grant is not None:
            self.record_use(grant, mark, end_s, max(0.0, end_s - mark) * gpus)
        return Finished(run, held, held * gpus, held * gpus * (rate / gpus if gpus > 0 else 0.0))

    def learn(self, job: Job, outcome: str, run_s: float, key_ids: tuple[int, ...] | None = None) -> bool:
        """Feed the run time of an attempt that ended with ``outcome`` to the estimator, by :data:`LEARNS_FROM`;
        returns whether it learned."""
        if outcome not in LEARNS_FROM:
            return False
        self.snap.estimator.observe(job, max(run_s, MIN_RUN_S), key_ids)
        return True

    # ---- credit kept in the snapshot's grants (owners without a store: the twin) -------------------------
    def hold_credit(self, job: Job, model: str, su_weight: float, guaranteed: bool, now_s: float) -> tuple[str, float]:
        """Hold credit for an admitted attempt on the grant it is charged to: ``(grant id, SU-hours)``, ``("", 0)``
        when it draws none."""
        grant = GrantRules(self.snap, now_s).charged(job, model, guaranteed)
        if grant is None or grant.credit_left_su is None:
            return "", 0.0
        held = credit_hold(job, su_weight, grant.credit_left_su)
        if held <= 0:
            return "", 0.0
        self.set_credit(grant.id, grant.credit_left_su - held)
        return grant.id, held

    def release_credit(self, grant_id: str, held_su: float, used_su: float) -> float:
        """The attempt ended: charge its use (:func:`credit_charge`) and give the rest back; returns the charge."""
        grant = self.snap.grants[grant_id]
        assert grant.credit_left_su is not None
        charged, back = credit_charge(held_su, used_su)
        self.set_credit(grant_id, grant.credit_left_su + back)
        return charged

    def set_credit(self, grant_id: str, left_su: float) -> None:
        self.replace_grant(self.snap.grants[grant_id].with_credit(left_su))

    def replace_grant(self, new: GrantState) -> None:
        """Put ``new`` in place of the grant of the same id (credit or end changed)."""
        grants = self.snap.grants
        assert isinstance(grants, dict)
        grants[new.id] = new
        same = self.snap.grants_by_project[new.project]
        same[:] = [new if x.id == new.id else x for x in same]

    # ---- under-use kept in memory (the twin; the service keeps it in the store: service/grants.py) -------
    def watched(self) -> dict[str, GrantState]:
        """Grants the under-use rule applies to: reserving GPUs under a program with a utilization floor."""
        return {
            g.id: g for g in self.snap.grants.values() if g.utilization_floor_pct > 0 and g.reserved_gpus > 0
        }  # fmt: skip

    def record_use(self, grant_id: str, start_s: float, end_s: float, gpu_s: float) -> None:
        """Reserved-model use charged to ``grant_id`` over ``[start_s, end_s)``."""
        if gpu_s > 0 and end_s > start_s:
            self.uses.append(_Use(grant_id, start_s, end_s, gpu_s))

    def check_underuse(self, now_s: float, window_s: float = UNDERUSE_WINDOW_S) -> list[tuple[str, float, str]]:
        """Apply the under-use rule to every watched grant in force at ``now_s``: ``(grant, %, action)`` each; a
        reclaimed grant ends at ``now_s``. Runs still going count up to ``now_s``."""
        watched = self.watched()
        since = now_s - window_s
        self.uses = [u for u in self.uses if u.end_s > since]
        used: dict[str, float] = defaultdict(float)
        going = []
        for job_id in sorted(self.charged):
            run = self.snap.running[job_id]
            mark = self.marks[job_id]
            going.append(_Use(self.charged[job_id], mark, now_s, max(0.0, now_s - mark) * run.milli / MILLI_PER_GPU))
        for u in self.uses + going:
            g = watched.get(u.grant)
            if g is not None:
                used[u.grant] += window_gpu_s(u.gpu_s, u.start_s, u.end_s, window_start_s(g.start_s, now_s, window_s),
                                              now_s)  # fmt: skip
        out: list[tuple[str, float, str]] = []
        for gid in sorted(watched):
            g = watched[gid]
            if not g.start_s < now_s < g.end_s:
                continue
            pct = utilization_pct(used[gid], g.reserved_gpus, g.start_s, now_s, window_s)
            action = underuse_action(gid in self.flagged_at, self.flagged_at.get(gid), pct, g.utilization_floor_pct,
                                     now_s, window_s)  # fmt: skip
            if action == FLAGGED:
                self.flagged_at[gid] = now_s
            elif action == RESTORED:
                del self.flagged_at[gid]
            elif action == RECLAIMED:
                del self.flagged_at[gid]
                self.replace_grant(g.with_end(now_s))
            out.append((gid, pct, action))
        if any(action == RECLAIMED for _g, _p, action in out):
            self.grants_changed()
        return out


def victim_from_s(policy: Policy, job: Job, start_s: float) -> float | None:
    """When a run started at ``start_s`` may first be preempted (its minimum run time passed), if the policy
    preempts at all and the job may be preempted: a cycle then may decide otherwise with nothing else changed, so an
    owner that cycles only on events (the twin) wakes then, as the live controller's every-tick cycle sees it."""
    if not job.preemptible or not (policy.preempt_by_priority or policy.preempt_by_service or policy.reclaim):
        return None
    return start_s + policy.min_run_s


def start_times(snap: Snapshot, decision: Decision, now_s: float, grace: float) -> dict[str, float]:
    """When each admission of ``decision`` can start work: not before its ``start_at_s``, and not before ``now_s +
    grace`` when it got a GPU that a victim preempted by the same decision holds until its grace ends (the core
    gives the later start only to the job the victims were chosen for; a job placed next on their GPUs waits too,
    as the live controller's launch does). Call before the victims leave the snapshot."""
    held: set[tuple[int, int]] = set()
    for pre in decision.preemptions:
        run = snap.running.get(pre.job_id)
        if run is not None:
            for share in run.placement.shares:
                for gpu in share.gpus:
                    held.add((share.node, gpu))
    out: dict[str, float] = {}
    for adm in decision.admissions:
        start = adm.start_at_s
        if held and start < now_s + grace:
            for share in adm.placement.shares:
                if any((share.node, gpu) in held for gpu in share.gpus):
                    start = now_s + grace
                    break
        out[adm.job_id] = start
    return out


def next_grant_change(snap: Snapshot, now_s: float) -> float:
    """The next time after ``now_s`` a grant starts or ends (a cycle may decide differently then), or infinity."""
    best = math.inf
    for g in snap.grants.values():
        if now_s < g.start_s < best:
            best = g.start_s
        if now_s < g.end_s < best:
            best = g.end_s
    return best
