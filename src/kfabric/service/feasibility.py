"""Admission at submit: refuse, with the largest request that could run, a job that can never run.

The scheduler would leave such a job pending for ever (Slurm refuses it at ``sbatch``): a GPU model absent from
the fleet, a shape larger than every pool the job may use, data whose classification no site with acceptable
GPUs is cleared for, a time limit over the program's maximum, a project with no grant in force. The rules are
the scheduler's own: pool eligibility is :func:`kfabric.sched.eligibility.eligible_pools` on a private capacity
index of the fleet with every pool online (a pool that comes online later is not an impossibility), and the
grant rules are :class:`kfabric.sched.rules.GrantRules` over the project's grants. Only the messages are written
here, so that each says what the largest possible request is.

Cost: the fleet's capacity index is built once per :class:`Feasibility`; eligibility is cached per job shape;
each project's grants are read from the store at most once per :data:`TTL_S` seconds. The cache only ever lets
a submission *through* on stale data: a refusal is decided on a fresh read, so a grant issued a moment ago is
never refused. The staleness window is therefore one-sided: for up to :data:`TTL_S` seconds after a grant
expires, is reclaimed or exhausted, its project's jobs may still be accepted (the scheduler then holds them as
``grant_expired``/``credit_exhausted``, as before this check existed).

"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import PermissionDenied, ValidationError
from kfabric.model.fleet import Fleet
from kfabric.model.job import Job, MinTopology, PriorityClass
from kfabric.model.reasons import ReasonCode
from kfabric.model.sovereignty import Classification
from kfabric.model.tenancy import OnExhausted, ProgramRules
from kfabric.sched import ledger
from kfabric.sched.capacity import Capacity, PoolInfo
from kfabric.sched.eligibility import Eligibility, eligible_pools
from kfabric.sched.rules import GrantRules
from kfabric.sched.snapshot import GrantState, Snapshot
from kfabric.service.actors import Actor, Role
from kfabric.service.programs import closest, rules_of_json
from kfabric.store import tables as t

#: seconds a project's grants are remembered (see the module's note on the one-sided staleness window)
TTL_S = 3.0
#: grant statuses the scheduler reads (service/live_state.py): in force, and reclaimed (then ended)
READ_STATUSES = ("active", "flagged", "reclaimed")
_SHAPES_MAX = 4096
_APPLY = "kfabric apply --program {program} --project {project} --gpu-model-class MODEL --gpus N --months M"


# ---- the project's standing, cached ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrantView:
    state: GrantState
    status: str
    program: str
    owner: str
    rules: ProgramRules


@dataclass(frozen=True, slots=True)
class ProjectView:
    """What admission needs of a project: its ids, and the grants the scheduler reads, by grant id."""

    id: int
    organization_id: int
    grants: tuple[GrantView, ...]
    #: does the store hold any grant the scheduler reads? (with none, the scheduler applies no grant rule)
    any_grants: bool


def _read_project(session: Session, name: str) -> ProjectView | None:
    row = session.execute(select(t.Project.id, t.Project.organization_id).where(t.Project.name == name)).first()
    if row is None:
        return None
    q = (
        select(t.Grant, t.Program)
        .join(t.Program, t.Program.id == t.Grant.program_id)
        .where(t.Grant.project_id == row[0], t.Grant.status.in_(READ_STATUSES))
        .order_by(t.Grant.id)
    )
    views = tuple(_grant_view(g, p, name) for g, p in session.execute(q).all())
    any_grants = (
        bool(views)
        or session.execute(select(t.Grant.id).where(t.Grant.status.in_(READ_STATUSES)).limit(1)).first() is not None
    )
    return ProjectView(row[0], row[1], views, any_grants)


def _grant_view(g: t.Grant, p: t.Program, project: str) -> GrantView:
    """The grant as the scheduler sees it (as service/live_state.py builds it)."""
    rules = rules_of_json(p.rules, f"program {p.name!r}.rules")
    state = GrantState(
        id=g.name,
        project=project,
        start_s=g.start_s,
        end_s=g.end_s,
        reserved_model=g.reserved_model,
        reserved_gpus=g.reserved_gpus,
        credit_left_su=g.credit_su_hours - g.used_su_hours if g.credit_su_hours > 0 else None,
        on_exhausted=rules.on_exhausted,
        max_job_duration_s=rules.max_job_duration_s,
    )
    return GrantView(state, g.status, p.name, p.owner, rules)


# ---- admission ------------------------------------------------------------------------------------------------


class Feasibility:
    """Submit-time admission for one fleet and store. Thread-safe; cheap per call (see the module's note)."""

    def __init__(
        self,
        fleet: Fleet,
        sessions: sessionmaker[Session],
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet, self.sessions, self.ttl_s, self.clock = fleet, sessions, ttl_s, clock
        self.cap = Capacity(fleet)
        for i in range(len(self.cap.pools)):
            self.cap.set_pool_online(i, True)
        self.owners = {o.name for o in fleet.owners}
        self.models = sorted({p.gpu_model for p in fleet.pools if p.gpus_per_node > 0})
        self._lock = threading.Lock()
        self._shapes: dict[tuple[object, ...], Eligibility] = {}
        self._projects: dict[str, tuple[float, ProjectView]] = {}

    def check(self, actor: Actor, project: str, job: Job, now_s: float) -> tuple[str, ...]:
        """Raise (422 :class:`ValidationError`, 403 :class:`PermissionDenied`) unless the job can run; return notes
        for the submitter (e.g. demoted to scavenger). A project the caller cannot see is left to the commit, which
        answers 404 whether it exists or not."""
        view = self._project(project, fresh=False)
        if view is None or not actor.sees_project(view.id, view.organization_id):
            return ()  # the commit answers 404 for it, as for every unknown project; nothing is revealed here
        try:
            return self._judge(actor, project, job, now_s, view)
        except (ValidationError, PermissionDenied):
            fresh = self._project(project, fresh=True)  # refuse only on what the store says now
            if fresh is None or fresh == view:
                raise
            return self._judge(actor, project, job, now_s, fresh)

    def _judge(self, actor: Actor, project: str, job: Job, now_s: float, view: ProjectView) -> tuple[str, ...]:
        notes: list[str] = []
        grant = _standing(self.cap, view, project, job, now_s, notes) if view.any_grants else None
        rules = grant.rules if grant is not None else ProgramRules()
        program = grant.program if grant is not None else None
        _check_priority(actor, job, rules, program)
        _check_cpu_only(job, rules, program)
        affiliation = view.grants[0].owner if view.grants and view.grants[0].owner in self.owners else ""
        self.check_shape(job, affiliation)
        return tuple(notes)

    def _project(self, name: str, fresh: bool) -> ProjectView | None:
        now = self.clock()
        if not fresh:
            with self._lock:
                hit = self._projects.get(name)
            if hit is not None and hit[0] > now:
                return hit[1]
        with self.sessions() as s:
            view = _read_project(s, name)
        with self._lock:
            if view is None:
                self._projects.pop(name, None)  # unknown projects are not remembered: one may be created next
            else:
                if len(self._projects) > 100_000:
                    self._projects.clear()
                self._projects[name] = (now + self.ttl_s, view)
        return view

    # ---- shape --------------------------------------------------------------------------------------------
    def eligibility(self, job: Job, affiliation: str) -> Eligibility:
        """:func:`eligible_pools` for the job's shape on the whole fleet (every pool online), cached per shape."""
        key = (job.gpus, job.gpu_milli, job.nodes, job.gpus_per_node, job.gpu_models, job.min_topology,
               job.classification, affiliation)  # fmt: skip
        with self._lock:
            hit = self._shapes.get(key)
        if hit is not None:
            return hit
        elig = eligible_pools(self.cap, job, affiliation)
        with self._lock:
            if len(self._shapes) >= _SHAPES_MAX:
                self._shapes.clear()
            self._shapes[key] = elig
        return elig

    def check_shape(self, job: Job, affiliation: str) -> None:
        """Raise :class:`ValidationError` unless some pool of the fleet can ever hold the job's shape."""
        elig = self.eligibility(job, affiliation)
        if elig.reason is None:
            return
        code = elig.reason.code
        if code is ReasonCode.GPU_MODEL:
            raise self._model_error(job, affiliation)
        if code is ReasonCode.SOVEREIGNTY:
            raise self._sovereignty_error(job, affiliation)
        if code is ReasonCode.TOPOLOGY:
            raise self._size_error(job, affiliation)
        raise ValidationError("job", f"can never run: {elig.reason.message}", "change the request")

    def _candidates(self, job: Job, affiliation: str, **relax: object) -> list[PoolInfo]:
        """Pools a one-GPU job like ``job`` (models, classification; ``relax`` overrides) may use."""
        one = replace(job, gpus=1, gpu_milli=1000, nodes=None, gpus_per_node=None, min_topology=MinTopology.ANY)
        elig = self.eligibility(replace(one, **relax), affiliation)  # type: ignore[arg-type]
        return [self.cap.pools[i] for i in elig.pools]

    def _model_error(self, job: Job, affiliation: str) -> ValidationError:
        asked = ", ".join(job.gpu_models)
        unknown = [m for m in job.gpu_models if m not in self.models]
        usable = sorted({p.model for p in self._candidates(job, affiliation, gpu_models=())})
        if len(unknown) == len(job.gpu_models):
            hint = closest(unknown[0], self.models) if len(unknown) == 1 else ""
            problem = (
                f"GPU model {asked} is not in fleet {self.fleet.name!r}{hint}; its models: {', '.join(self.models)}"
            )
        else:
            problem = f"the pools with GPU model {asked} are dedicated to their owners"
        largest = self._largest(self._candidates(job, affiliation, gpu_models=()))
        return ValidationError(
            "job.gpu_models",
            f"{problem}; the largest request that can run: {largest}",
            f"ask for one of: {', '.join(usable)} (--gpu-model), or leave the model out"
            if usable
            else "no GPU model of this fleet can run it",
        )

    def _sovereignty_error(self, job: Job, affiliation: str) -> ValidationError:
        level = job.classification
        sites = self.cap.sites
        within = self._candidates(job, affiliation, classification=Classification.PUBLIC)
        top = max((sites[p.site].clearance for p in within), default=Classification.PUBLIC)
        seen = sorted({(sites[p.site].name, sites[p.site].clearance.label) for p in within})
        cleared = sorted({p.model for p in self._candidates(job, affiliation, gpu_models=())})
        models = f" GPU model {', '.join(job.gpu_models)}" if job.gpu_models else ""
        other = f"ask for a GPU model at a site cleared for {level.label}: {', '.join(cleared)}" if cleared else ""
        return ValidationError(
            "job.classification",
            f"{level.label} data may run only on sites cleared for {level.label}; the sites with{models} pools this "
            f"project may use are cleared up to {top.label}: " + ", ".join(f"{n} ({c})" for n, c in seen),
            f"lower --classification to {top.label} or below" + (f", or {other}" if other else ""),
        )

    def _size_error(self, job: Job, affiliation: str) -> ValidationError:
        pools = self._candidates(job, affiliation)
        node = max(pools, key=lambda p: p.gpus_per_node)
        if job.gpus_per_node is not None and job.gpus_per_node > node.gpus_per_node:
            return ValidationError(
                "job.gpus_per_node",
                f"asks {job.gpus_per_node} GPUs per node; the largest node of an eligible pool has "
                f"{node.gpus_per_node} ({node.name})",
                f"ask for at most {node.gpus_per_node} GPUs per node",
            )
        if job.min_topology in (MinTopology.ANY, MinTopology.CLUSTER):
            return ValidationError(
                "job.gpus",
                f"asks {job.gpus} GPUs; a job runs in one pool (one GPU model, one cluster) and the largest request "
                f"that can run is {self._largest(pools)}",
                f"ask for at most {max(p.gpus for p in pools)} GPUs",
            )
        scope = job.min_topology.name.lower()
        most = max(_domain_gpus(p, job.min_topology) for p in pools)
        return ValidationError(
            "job.min_topology",
            f"asks {job.gpus} GPUs within one {scope} domain; the largest {scope} domain of an eligible pool has "
            f"{most} GPUs",
            f"ask for at most {most} GPUs, or relax --min-topology",
        )

    @staticmethod
    def _largest(pools: list[PoolInfo]) -> str:
        if not pools:
            return "none (no pool of this fleet can run work of this project)"
        p = max(pools, key=lambda p: (p.gpus, p.gpus_per_node))
        return f"{p.gpus} GPUs of {p.model} (pool {p.name}: {p.nodes} nodes x {p.gpus_per_node})"


def _domain_gpus(p: PoolInfo, scope: MinTopology) -> int:
    """GPUs in the largest domain of ``scope`` of a pool (as :func:`kfabric.sched.placement.topology_ok`)."""
    if scope is MinTopology.NODE:
        return p.gpus_per_node
    if scope is MinTopology.NVLINK:
        return p.domain_gpus
    if scope is MinTopology.RACK:
        return min(p.nodes, p.nodes_per_rack) * p.gpus_per_node
    return min(p.nodes, p.nodes_per_rack * p.racks_per_unit) * p.gpus_per_node


# ---- grant standing, priority, CPU-only -------------------------------------------------------------------------


def _day(s: float) -> str:
    return datetime.fromtimestamp(s, UTC).date().isoformat()


def _standing(
    cap: Capacity, view: ProjectView, project: str, job: Job, now_s: float, notes: list[str]
) -> GrantView | None:
    """The grant the scheduler will hold the job to (as :class:`GrantRules`); raises when it has none in force,
    unless the program demotes such work to scavenger (then a note says so). Queue or refuse is the core's rule
    (``sched.ledger.arrival``, which the twin applies to its arrivals too); only the messages are written here."""
    states = {g.state.id: g.state for g in view.grants}
    snap = Snapshot(cap, grants=states)
    rules = GrantRules(snap, now_s)
    started = [g for g in sorted(view.grants, key=lambda g: (g.state.start_s, g.state.id)) if g.state.start_s <= now_s]
    grant = started[-1] if started else None
    verdict = ledger.arrival(snap, job, now_s) if states else ledger.Arrival(False, ReasonCode.NO_GRANT)
    if grant is None:
        later = [g for g in view.grants if g.state.start_s > now_s and g.status != "reclaimed"]
        if not verdict.waits or not later:
            raise ValidationError(
                "job.project",
                f"project {project} has no grant; its jobs cannot run",
                f"apply to a program for it: {_APPLY.format(program='PROGRAM', project=project)} --justification TEXT "
                "(kfabric programs lists the programs)",
            )
        first = min(later, key=lambda g: g.state.start_s)
        notes.append(f"grant {first.state.id} of project {project} starts on {_day(first.state.start_s)}; "
                     "the job waits until then")  # fmt: skip
        return first
    if (
        not verdict.queued
        and verdict.code in (ReasonCode.GRANT_EXPIRED, ReasonCode.CREDIT_EXHAUSTED)
        and (not verdict.demoted)
    ):
        raise _not_in_force(grant, project, now_s)
    if not verdict.queued and verdict.code is ReasonCode.MAX_DURATION:
        most = grant.rules.max_job_duration_s or 0.0
        raise ValidationError(
            "job.time_limit_s",
            f"time limit {job.time_limit_s / 3600:g} h is over the maximum of {most / 3600:g} h per job of program "
            f"{grant.program!r}",
            f"ask for at most {most:g} seconds (--time {_hms(most)})",
        )
    if job.priority is not PriorityClass.SCAVENGER and rules.scavenger(job):
        demoted = next(g for g in view.grants if g.rules.on_exhausted is OnExhausted.SCAVENGER and _over(g, now_s))
        notes.append(
            f"grant {demoted.state.id} {_how_over(demoted, now_s)}; program {demoted.program!r} demotes such work to "
            "scavenger: the job was accepted as scavenger and runs only on idle capacity, preemptible at any time "
            f"(renew the grant for normal priority: {_APPLY.format(program=demoted.program, project=project)})"
        )
        if not job.preemptible:
            raise ValidationError(
                "job.preemptible",
                f"{notes[-1].split(';')[0]}; scavenger work must be preemptible and this job is not",
                "submit it preemptible (drop --no-preempt), or renew the grant",
            )
    return grant


def _over(g: GrantView, now_s: float) -> bool:
    s = g.state
    return s.end_s <= now_s or (s.credit_left_su is not None and s.credit_left_su <= 0)


def _how_over(g: GrantView, now_s: float) -> str:
    s = g.state
    if g.status == "reclaimed":
        return f"was reclaimed on {_day(s.end_s)}"
    if s.end_s <= now_s:
        return f"expired on {_day(s.end_s)}"
    return f"has no service-unit credit left ({s.credit_left_su or 0:g} SU-hours)"


def _not_in_force(g: GrantView, project: str, now_s: float) -> ValidationError:
    how = _how_over(g, now_s)
    fix = (
        f"ask an operator to top up grant {g.state.id}, or apply for a new grant: "
        f"{_APPLY.format(program=g.program, project=project)}"
        if "credit" in how
        else f"apply for a renewal: {_APPLY.format(program=g.program, project=project)} --justification TEXT"
    )
    return ValidationError(
        "job.project",
        f"grant {g.state.id} of project {project} (program {g.program}) {how}; the project has no grant in force",
        fix,
    )


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _check_priority(actor: Actor, job: Job, rules: ProgramRules, program: str | None) -> None:
    if job.priority <= PriorityClass.NORMAL or actor.role is Role.OPERATOR or job.priority <= rules.max_priority:
        return
    allowed = rules.max_priority.name.lower() if program else PriorityClass.NORMAL.name.lower()
    under = f"program {program!r} allows up to {allowed}" if program else f"without a program, up to {allowed}"
    raise PermissionDenied(
        f"submit at priority {job.priority.name.lower()}",
        f"priorities above normal need the operator role or a program that allows them; {under}",
        f"submit with --priority {allowed} or lower, or ask an operator",
    )


def _check_cpu_only(job: Job, rules: ProgramRules, program: str | None) -> None:
    if job.gpus > 0 or rules.allow_cpu_only:
        return
    under = f"program {program!r} does not allow CPU-only work" if program else "no program allows it here"
    raise ValidationError(
        "job.gpus",
        f"asks no GPU (gpus: 0); {under} (rule allow_cpu_only)",
        "ask for at least one GPU (--gpus 1, or a share: --gpu-milli 250)",
    )


# ---- one Feasibility per running service ------------------------------------------------------------------------

_by_store: weakref.WeakKeyDictionary[sessionmaker[Session], Feasibility] = weakref.WeakKeyDictionary()
_by_store_lock = threading.Lock()


def for_service(fleet: Fleet, sessions: sessionmaker[Session]) -> Feasibility:
    """The :class:`Feasibility` of a running service (one per store connection and fleet, built on first use)."""
    with _by_store_lock:
        found = _by_store.get(sessions)
        if found is None or found.fleet is not fleet:
            found = _by_store[sessions] = Feasibility(fleet, sessions)
        return found
