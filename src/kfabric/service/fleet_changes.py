"""Fleet changes while the service runs (``kfabric fleet apply``), and an operator's node drains.

A change is one audited transaction that stores the desired fleet as a *pending* ``fleet_sources`` row; the
controller takes it at its next cycle (:func:`take_pending`): in one transaction it rewrites the node indices of
every placement from the old fleet to the new one (by node name), makes the row active (the old one is kept,
inactive) and rebuilds its in-memory state. Stored placements therefore always refer to the active fleet.

Nodes that leave the fleet (a removed pool, a shrunk pool) while work runs on them are kept, drained (a
``node_states`` row with source ``fleet``), until that work ends (``--running finish``) or has been requeued
(``--running requeue``); then the controller drops them (:func:`finish_drains`). Work not yet launched on them
is withdrawn and queued again. A change that would strand running work without a choice, put a site's power cap
below what runs there, name an unknown GPU model or a backend this server does not run is refused whole.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import yaml
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import Conflict, NotFound, PermissionDenied, ValidationError
from kfabric.model.fleet import Fleet, NodePool
from kfabric.model.job import MILLI_PER_GPU, JobState
from kfabric.scenarios.loader import Scenario, load_text
from kfabric.scenarios.yamldoc import parse_doc
from kfabric.service import audit
from kfabric.service.actors import Actor, Role
from kfabric.store import tables as t

RUNNING_CHOICES = ("finish", "requeue")
#: ``node_states.source`` of nodes that leave the fleet once their work ends, and of an operator's drains
FLEET = "fleet"
OPERATOR = "operator"
ACTIVE_STATES = (JobState.ADMITTED.value, JobState.RUNNING.value)
_SITE_FIELDS = ("region", "operator", "certification", "clearance", "power_cap_mw", "pue")
_CLUSTER_FIELDS = ("site", "backend")
_POOL_FIELDS = (
    "cluster", "gpu_model", "gpus_per_node", "nodes", "nvlink_domain_gpus", "nodes_per_rack", "racks_per_unit",
    "node_power_kw", "owner", "sharing", "online", "cpu_milli_per_node", "memory_mib_per_node", "node_names",
)  # fmt: skip
_MODEL_FIELDS = ("memory_gb", "board_power_w", "nvlink_domain_gpus", "su_weight")
#: pool fields whose change makes the work on the pool unable to stay (its GPUs or backend are not the same)
_RESHAPING = ("gpu_model", "gpus_per_node", "cluster")


# ---- the difference ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Section:
    """Added and removed names, and for changed ones each field as ``(field, old, new)``."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": {name: {f: [old, new] for f, old, new in fields} for name, fields in self.changed},
        }


@dataclass(frozen=True, slots=True)
class FleetDiff:
    sites: Section
    clusters: Section
    owners: Section
    pools: Section
    gpu_models: Section

    def sections(self) -> tuple[tuple[str, Section], ...]:
        return (("sites", self.sites), ("clusters", self.clusters), ("owners", self.owners),
                ("pools", self.pools), ("gpu_models", self.gpu_models))  # fmt: skip

    @property
    def empty(self) -> bool:
        return all(s.empty for _, s in self.sections())

    def to_json(self) -> dict[str, Any]:
        return {name: s.to_json() for name, s in self.sections()}


def _show(value: object) -> str:
    label = getattr(value, "label", None)
    if isinstance(label, str):
        return label
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    iso = getattr(value, "isoformat", None)
    return str(iso()) if callable(iso) else str(value)


def _section(old: Mapping[str, object], new: Mapping[str, object], names: tuple[str, ...]) -> Section:
    changed = []
    for name in sorted(set(old) & set(new)):
        fields = tuple(
            (f, _show(getattr(old[name], f)), _show(getattr(new[name], f)))
            for f in names
            if getattr(old[name], f) != getattr(new[name], f)
        )
        if fields:
            changed.append((name, fields))
    return Section(tuple(sorted(set(new) - set(old))), tuple(sorted(set(old) - set(new))), tuple(changed))


def diff_fleets(old: Fleet, new: Fleet) -> FleetDiff:
    """What changes from ``old`` to ``new``: sites, clusters, owners, pools (field by field) and GPU models."""

    def by_name(items: Iterable[Any]) -> dict[str, Any]:
        return {i.name: i for i in items}

    return FleetDiff(
        _section(by_name(old.sites), by_name(new.sites), _SITE_FIELDS),
        _section(by_name(old.clusters), by_name(new.clusters), _CLUSTER_FIELDS),
        _section(by_name(old.owners), by_name(new.owners), ("kind",)),
        _section(by_name(old.pools), by_name(new.pools), _POOL_FIELDS),
        _section(by_name(old.gpu_models), by_name(new.gpu_models), _MODEL_FIELDS),
    )


def pool_node_names(pool: NodePool) -> list[str]:
    """Backend node names of a pool, as ``live_state.fleet_node_names`` gives them."""
    if pool.node_names:
        return list(pool.node_names)
    if pool.nodes == 1:
        return [pool.name]
    return [f"{pool.name}-{k + 1:03d}" for k in range(pool.nodes)]


def node_names(fleet: Fleet) -> list[str]:
    """Backend node name per node index of ``fleet`` (the capacity index numbers nodes pool after pool)."""
    return [name for pool in fleet.pools for name in pool_node_names(pool)]


# ---- the work on the fleet -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Work:
    """An admitted or running job as a fleet change sees it."""

    job_id: int
    pool: str
    nodes: tuple[str, ...]
    launched: bool
    #: already on its way out (cancel or preemption requested): needs no choice, draws no power for long
    leaving: bool
    milli: int


def active_work(session: Session, fleet: Fleet) -> list[Work]:
    names = node_names(fleet)
    rows = session.execute(
        select(t.Job.id, t.Job.placement, t.Job.launched, t.Job.cancel_requested, t.Job.preempt_requested)
        .where(t.Job.state.in_(ACTIVE_STATES), t.Job.placement.is_not(None))
        .order_by(t.Job.id)
    ).all()
    out = []
    for job_id, placement, launched, cancel, preempt in rows:
        shares = placement.get("shares", [])
        nodes = tuple(names[n] if 0 <= n < len(names) else f"#{n}" for n, *_ in shares)
        milli = sum(len(g) * m for _n, g, m, _c, _mem in shares)
        out.append(Work(job_id, placement["pool"], nodes, bool(launched), bool(cancel or preempt), milli))
    return out


# ---- planning a change -----------------------------------------------------------------------------------------
@dataclass
class Plan:
    diff: FleetDiff
    #: the document to store: the desired one, or (nodes kept until their work ends) a merged copy
    document: str
    #: pool -> nodes that stay, drained, until their work ends
    draining: dict[str, list[str]] = field(default_factory=dict)
    requeue: list[int] = field(default_factory=list)
    withdraw: list[int] = field(default_factory=list)
    finishing: list[int] = field(default_factory=list)


def _leaving_nodes(old: Fleet, new: Fleet) -> dict[str, set[str]]:
    """Per pool of ``old``: the nodes that ``new`` no longer has."""
    new_pools = {p.name: set(pool_node_names(p)) for p in new.pools}
    out = {}
    for pool in old.pools:
        gone = set(pool_node_names(pool)) - new_pools.get(pool.name, set())
        if gone:
            out[pool.name] = gone
    return out


def _reshaped(old: Fleet, new: Fleet, backends: Collection[str]) -> set[str]:
    """Pools whose GPUs, node sizes or backend change: work on them cannot stay."""
    new_pools = {p.name: p for p in new.pools}
    out = set()
    for pool in old.pools:
        other = new_pools.get(pool.name)
        if other is None:
            continue
        shape = any(getattr(pool, f) != getattr(other, f) for f in _RESHAPING if f != "cluster")
        moved = _backend_of(old, pool, backends) != _backend_of(new, other, backends)
        smaller = (
            other.cpu_milli_per_node < pool.cpu_milli_per_node or other.memory_mib_per_node < pool.memory_mib_per_node
        )
        if shape or moved or smaller:
            out.add(pool.name)
    return out


def _backend_of(fleet: Fleet, pool: NodePool, backends: Collection[str]) -> str:
    """The backend that serves ``pool`` (as the controller chooses it: a backend named after the cluster, else the
    cluster's backend kind)."""
    cluster = fleet.cluster(pool.cluster)
    return cluster.name if cluster.name in backends else cluster.backend


def plan_change(
    current: Scenario,
    current_text: str,
    desired: Scenario,
    desired_text: str,
    work: list[Work],
    running: str | None,
    backends: Collection[str],
    already_leaving: Collection[str] = (),
) -> Plan:
    """Check a change against the work on the fleet and decide what happens to it; raises when refused."""
    old, new = current.fleet, desired.fleet
    _check_backends(new, backends)
    leaving = _leaving_nodes(old, new)
    reshaped = _reshaped(old, new, backends)
    gone = set().union(*leaving.values()) if leaving else set()
    plan = Plan(diff_fleets(old, new), desired_text)
    stranded: dict[str, list[int]] = {}
    busy: set[str] = set()
    for w in work:
        on_gone = bool(gone.intersection(w.nodes))
        if not (on_gone or w.pool in reshaped):
            continue
        if not w.launched:
            if not w.leaving:
                plan.withdraw.append(w.job_id)
            continue
        if on_gone:
            busy.update(n for n in w.nodes if n in gone)
        if w.leaving:
            continue
        if running == "requeue":
            plan.requeue.append(w.job_id)
        elif running == "finish" and w.pool not in reshaped:
            plan.finishing.append(w.job_id)
        elif running is None and set(w.nodes) <= set(already_leaving):
            plan.finishing.append(w.job_id)  # chosen by an earlier change: its nodes drain already
        else:
            stranded.setdefault(w.pool, []).append(w.job_id)
    if stranded:
        _refuse_stranded(stranded, reshaped, running)
    _check_power(old, new, work, set(plan.requeue) | set(plan.withdraw))
    if busy:
        merged, plan.draining = _keep_busy(current_text, desired_text, old, new, busy)
        plan.document = yaml.safe_dump(merged, sort_keys=False, width=120)
    return plan


def _check_backends(fleet: Fleet, backends: Collection[str]) -> None:
    for pool in fleet.pools:
        backend = _backend_of(fleet, pool, backends)
        if backend not in backends:
            raise ValidationError(
                f"pools {pool.name!r}: cluster {pool.cluster!r}",
                f"uses backend {backend!r}, which this server does not run (it runs: {', '.join(sorted(backends))})",
                "start kfabric serve with that backend (e.g. --slurm-config), or put the pool on a cluster whose "
                "backend is configured",
            )


def _refuse_stranded(stranded: dict[str, list[int]], reshaped: set[str], running: str | None) -> None:
    parts = []
    for pool, ids in sorted(stranded.items()):
        how = "changes GPUs, node size or backend" if pool in reshaped else "loses nodes"
        shown = ", ".join(str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
        parts.append(f"pool {pool!r} {how} while {len(ids)} job(s) run there ({shown})")
    if running == "finish":
        raise Conflict(
            "fleet apply --running finish",
            "; ".join(parts) + ": work cannot finish on GPUs that change under it",
            "use --running requeue, or drain the pool first (kfabric node drain) and apply once its work ended",
        )
    raise Conflict(
        "fleet apply --running",
        "; ".join(parts),
        "choose what happens to that work: --running finish (it runs to its end; the nodes take no new work and "
        "leave then) or --running requeue (it is stopped and queued again)",
    )


def _check_power(old: Fleet, new: Fleet, work: list[Work], leaving: set[int]) -> None:
    """A site's new power cap must hold the work that stays on it (GPU power, as the scheduler counts it)."""
    new_pools = {p.name: p for p in new.pools}
    old_pools = {p.name: p for p in old.pools}
    draw: dict[str, float] = {}
    for w in work:
        if w.leaving or w.job_id in leaving:
            continue
        pool = new_pools.get(w.pool) or old_pools.get(w.pool)
        if pool is None:
            continue
        fleet = new if w.pool in new_pools else old
        site_name = fleet.cluster(pool.cluster).site
        kw = pool.node_power_kw / max(pool.gpus_per_node, 1) * w.milli / MILLI_PER_GPU
        draw[site_name] = draw.get(site_name, 0.0) + kw
    for site in new.sites:
        kw = draw.get(site.name, 0.0)
        if kw > site.power_cap_mw * 1000.0 + 1e-6:
            raise Conflict(
                f"sites {site.name!r}.power_cap_mw",
                f"a cap of {site.power_cap_mw:g} MW is below the {kw / 1000.0:.4g} MW that running work draws now",
                f"set power_cap_mw to at least {kw / 1000.0:.4g}, or drain the site's nodes and apply once their "
                "work ended",
            )


def _raw(text: str, label: str) -> dict[str, Any]:
    data = parse_doc(text, label).data
    assert isinstance(data, dict)  # load_text accepted it: a mapping
    return data


def _by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((i for i in items if i.get("name") == name), None)


def _keep_busy(
    current_text: str, desired_text: str, old: Fleet, new: Fleet, busy: set[str]
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The desired document with the busy leaving nodes kept (a removed pool whole, a shrunk pool at the size that
    still holds them), and the nodes that drain."""
    cur, out = _raw(current_text, "stored fleet"), _raw(desired_text, "fleet document")
    out = copy.deepcopy(out)
    new_pools = {p.name: p for p in new.pools}
    draining: dict[str, list[str]] = {}
    for pool in old.pools:
        names = pool_node_names(pool)
        if not busy.intersection(names):
            continue
        if pool.name not in new_pools:
            entry = copy.deepcopy(_by_name(cur["pools"], pool.name))
            assert entry is not None
            out["pools"].append(entry)
            _copy_refs(cur, out, entry)
            draining[pool.name] = names
            continue
        target = _by_name(out["pools"], pool.name)
        assert target is not None
        keep, leave = _kept_nodes(pool, new_pools[pool.name], busy)
        if pool.node_names:
            target["node_names"] = keep
        target["nodes"] = len(keep)
        draining[pool.name] = leave
    return out, draining


def _kept_nodes(old: NodePool, new: NodePool, busy: set[str]) -> tuple[list[str], list[str]]:
    """The node list of a shrunk pool that still holds its busy nodes, and the nodes in it that leave later."""
    old_names, new_names = pool_node_names(old), pool_node_names(new)
    wanted = set(new_names)
    if old.node_names:
        keep = [n for n in old_names if n in wanted or n in busy] + [n for n in new_names if n not in old_names]
        return keep, [n for n in keep if n not in wanted]
    last = max(i for i, n in enumerate(old_names) if n in busy)
    count = max(new.nodes, last + 1)
    keep = [f"{new.name}-{k + 1:03d}" for k in range(count)] if count > 1 else [new.name]
    return keep, [n for n in keep if n not in wanted]


def _copy_refs(cur: dict[str, Any], out: dict[str, Any], pool: dict[str, Any]) -> None:
    """Give a kept pool what it refers to (cluster, site, owner, a custom GPU model) when the document dropped it."""
    wanted = (("clusters", pool.get("cluster")), ("owners", pool.get("owner")), ("gpu_models", pool.get("gpu_model")))
    for key, name in wanted:
        found = _by_name(cur.get(key) or [], str(name))
        if found is not None and _by_name(out.setdefault(key, []), str(name)) is None:
            out[key].append(copy.deepcopy(found))
            if key == "clusters":
                site = _by_name(cur.get("sites") or [], str(found.get("site")))
                if site is not None and _by_name(out.setdefault("sites", []), str(found.get("site"))) is None:
                    out["sites"].append(copy.deepcopy(site))


# ---- applying a change ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FleetChange:
    name: str
    diff: FleetDiff
    dry_run: bool
    #: the pending fleet_sources row (None: a dry run, or nothing changes)
    source_id: int | None
    requeue: tuple[int, ...] = ()
    withdraw: tuple[int, ...] = ()
    finishing: tuple[int, ...] = ()
    draining: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "dry_run": self.dry_run, "source_id": self.source_id, "unchanged": self.diff.empty,
            "diff": self.diff.to_json(), "requeue": list(self.requeue), "withdraw": list(self.withdraw),
            "finishing": list(self.finishing), "draining": {pool: list(nodes) for pool, nodes in self.draining},
            "effective": "dry run: nothing changed" if self.dry_run else
            "nothing to change" if self.diff.empty else "at the controller's next cycle",
        }  # fmt: skip


def active_source(session: Session, lock: bool = False) -> t.FleetSource:
    """The fleet in effect (``lock``: held until the transaction ends, so that changes to it are serialized)."""
    query = select(t.FleetSource).where(t.FleetSource.active.is_(True)).order_by(t.FleetSource.id)
    row = session.scalars(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound("fleet", "active", "start kfabric serve --fleet NAME once to store a fleet")
    return row


def pending_source(session: Session, active_id: int) -> t.FleetSource | None:
    """The newest stored fleet that the controller has not taken yet."""
    return session.scalars(
        select(t.FleetSource).where(t.FleetSource.id > active_id).order_by(t.FleetSource.id.desc())
    ).first()


def apply_fleet(
    sessions: sessionmaker[Session],
    actor: Actor,
    document: str,
    backends: Collection[str],
    now_s: float,
    running: str | None = None,
    dry_run: bool = False,
    label: str = "fleet document",
) -> FleetChange:
    """Compare ``document`` (a scenario YAML) with the stored fleet and, unless ``dry_run``, store it for the
    controller's next cycle, in one audited transaction; refused whole (nothing written) when invalid."""
    actor.require_operator("change the fleet")
    if running is not None and running not in RUNNING_CHOICES:
        raise ValidationError("running", f"unknown choice {running!r}", f"use one of: {', '.join(RUNNING_CHOICES)}")
    desired = load_text(document, label)
    with sessions.begin() as s:
        active = active_source(s, lock=True)
        waiting = pending_source(s, active.id)
        if waiting is not None:
            raise Conflict(
                "fleet apply",
                f"fleet change #{waiting.id} is stored but not in effect yet (the controller takes it at its next "
                "cycle)",
                "wait a few seconds and apply again; if it stays, check that a controller runs (kfabric status)",
            )
        current = load_text(active.document, f"stored fleet {active.name!r}")
        leaving = set(
            s.scalars(select(t.NodeState.node).where(t.NodeState.source == FLEET, t.NodeState.state != "up")).all()
        )
        work = active_work(s, current.fleet)
        plan = plan_change(current, active.document, desired, document, work, running, backends, leaving)
        load_text(plan.document, label)  # the merged document reads back
        change = FleetChange(
            desired.name, plan.diff, dry_run, None, tuple(plan.requeue), tuple(plan.withdraw), tuple(plan.finishing),
            tuple((pool, tuple(nodes)) for pool, nodes in sorted(plan.draining.items())),
        )  # fmt: skip
        if dry_run or plan.diff.empty:
            return change  # nothing written: the transaction commits no change
        row = t.FleetSource(name=desired.name, document=plan.document, loaded_at_s=now_s, active=False)
        s.add(row)
        s.flush()
        _write_drains(s, plan.draining, row.id, actor.name, now_s)
        _stop_work(s, actor.name, plan.requeue + plan.withdraw, f"fleet change #{row.id}", now_s)
        detail = change.to_json() | {"from_source": active.id, "running": running}
        detail.pop("effective")
        audit.record(s, actor.name, "fleet.apply", "fleet", row.id, now_s, detail=detail)
    return replace(change, source_id=row.id)


def _write_drains(s: Session, draining: dict[str, list[str]], source_id: int, by: str, now_s: float) -> None:
    """The ``fleet`` drain rows are exactly the nodes that now wait for their work to end."""
    keep = {n for nodes in draining.values() for n in nodes}
    s.execute(delete(t.NodeState).where(t.NodeState.source == FLEET, t.NodeState.node.not_in(keep or {""})))
    for pool, nodes in draining.items():
        for node in nodes:
            reason = f"leaves the fleet (pool {pool}, fleet change #{source_id}) once its work ends"
            existing = s.get(t.NodeState, (node, FLEET))
            if existing is None:
                s.add(t.NodeState(node=node, source=FLEET, state="drain", reason=reason, since_s=now_s, by=by))


def _stop_work(s: Session, actor: str, job_ids: Iterable[int], why: str, now_s: float) -> None:
    """Requeue (launched) or withdraw (not launched) jobs: the controller terminates them and queues them again."""
    for job_id in sorted(job_ids):
        row = s.get(t.Job, job_id, with_for_update=True)
        if row is None or row.state not in ACTIVE_STATES or row.preempt_requested or row.cancel_requested:
            continue
        row.preempt_requested = True
        row.reason = f"requeued: {why}"
        org = s.scalar(select(t.Project.organization_id).where(t.Project.id == row.project_id))
        audit.record(s, actor, "job.preempt", "job", row.id, now_s, org, {"attempt": row.attempt, "reason": why})


# ---- what the controller does ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Activation:
    source_id: int
    scenario: Scenario


def take_pending(
    s: Session, loaded_id: int, backends: Collection[str], now_s: float, actor: str = "controller"
) -> Activation | None:
    """Make the newest pending fleet the active one (in the caller's transaction), rewriting placements by node
    name. Work that was placed on a node the new fleet lacks (after the change was checked) is requeued first and
    the change waits a cycle for it; a fleet whose backends this server does not run waits (logged by the caller
    through the ValidationError)."""
    active = active_source(s, lock=True)
    pending = pending_source(s, active.id)
    if pending is None:
        return None if active.id == loaded_id else Activation(active.id, load_text(active.document, active.name))
    current = load_text(active.document, f"stored fleet {active.name!r}")
    new = load_text(pending.document, f"fleet change #{pending.id}")
    _check_backends(new.fleet, backends)
    if not _remap(s, current.fleet, new.fleet, actor, f"its node left the fleet (fleet change #{pending.id})", now_s):
        return None
    active.active = False
    for older in s.scalars(select(t.FleetSource).where(t.FleetSource.id > active.id, t.FleetSource.id < pending.id)):
        older.active = False  # superseded before it took effect
    pending.active = True
    audit.record(s, actor, "fleet.activate", "fleet", pending.id, now_s, detail={"from_source": active.id})
    return Activation(pending.id, new)


def _remap(s: Session, old: Fleet, new: Fleet, actor: str, why: str, now_s: float) -> bool:
    """Rewrite placements from ``old``'s node indices to ``new``'s; False (and the strays requeued) when some
    placement names a node ``new`` lacks."""
    old_names = node_names(old)
    index = {name: i for i, name in enumerate(node_names(new))}
    new_pools = {p.name for p in new.pools}
    rows = s.scalars(select(t.Job).where(t.Job.state.in_(ACTIVE_STATES), t.Job.placement.is_not(None))).all()
    strays = []
    for row in rows:
        assert row.placement is not None
        nodes = [old_names[share[0]] for share in row.placement["shares"]]
        if row.placement["pool"] not in new_pools or any(n not in index for n in nodes):
            strays.append(row.id)
    if strays:
        _stop_work(s, actor, strays, why, now_s)
        return False
    for row in rows:
        assert row.placement is not None
        shares = [[index[old_names[n]], *rest] for n, *rest in row.placement["shares"]]
        if shares != row.placement["shares"]:
            row.placement = {**row.placement, "shares": shares}
    return True


def finish_drains(s: Session, now_s: float, actor: str = "controller") -> Activation | None:
    """Drop from the active fleet the pools (or nodes) that were kept only for their work, once no work is left
    on them: a new active fleet row (in the caller's transaction), or None."""
    drains = s.scalars(select(t.NodeState).where(t.NodeState.source == FLEET)).all()
    if not drains:
        return None
    active = active_source(s)
    if pending_source(s, active.id) is not None:
        return None  # the pending change decides first
    current = load_text(active.document, f"stored fleet {active.name!r}")
    busy = {n for w in active_work(s, current.fleet) for n in w.nodes}
    leaving: dict[str, set[str]] = {}
    held: set[str] = set()
    for pool in current.fleet.pools:
        names = set(pool_node_names(pool))
        out = {d.node for d in drains if d.node in names}
        if out and not out & busy:
            leaving[pool.name] = out
        elif out:
            held.add(pool.name)
    stale = [d for d in drains if not any(d.node in set(pool_node_names(p)) for p in current.fleet.pools)]
    for d in stale:
        s.delete(d)
    if not leaving:
        return None
    document = yaml.safe_dump(
        _drop_nodes(_raw(active.document, "stored fleet"), current.fleet, leaving), sort_keys=False, width=120
    )
    new = load_text(document, "fleet after drains")
    if not _remap(s, current.fleet, new.fleet, actor, "its node left the fleet", now_s):
        return None
    row = t.FleetSource(name=active.name, document=document, loaded_at_s=now_s, active=True)
    active.active = False
    s.add(row)
    s.flush()
    gone = sorted(n for nodes in leaving.values() for n in nodes)
    for d in drains:
        if d.node in gone:
            s.delete(d)
    detail = {"from_source": active.id, "pools": sorted(leaving), "nodes": gone}
    audit.record(s, actor, "fleet.drained", "fleet", row.id, now_s, detail=detail)
    return Activation(row.id, new)


def _drop_nodes(raw: dict[str, Any], fleet: Fleet, leaving: dict[str, set[str]]) -> dict[str, Any]:
    """``raw`` without the leaving nodes (a pool that loses all of them goes, then clusters and sites that lost
    their last pool by that)."""
    out = copy.deepcopy(raw)
    had_pools = {p.cluster for p in fleet.pools}
    pools = []
    for entry in out["pools"]:
        gone = leaving.get(entry["name"])
        if not gone:
            pools.append(entry)
            continue
        names = pool_node_names(next(p for p in fleet.pools if p.name == entry["name"]))
        keep = [n for n in names if n not in gone]
        if not keep:
            continue
        if entry.get("node_names"):
            entry["node_names"] = keep
        entry["nodes"] = len(keep) if entry.get("node_names") else min(names.index(n) for n in gone)
        pools.append(entry)
    out["pools"] = pools
    used_clusters = {p["cluster"] for p in pools}
    out["clusters"] = [c for c in out["clusters"] if c["name"] in used_clusters or c["name"] not in had_pools]
    had_clusters = {c.site for c in fleet.clusters}
    used_sites = {c["site"] for c in out["clusters"]}
    out["sites"] = [x for x in out["sites"] if x["name"] in used_sites or x["name"] not in had_clusters]
    return out


# ---- an operator's node drains ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeView:
    node: str
    pool: str
    source: str
    state: str
    reason: str
    since_s: float
    by: str
    jobs: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "pool": self.pool, "source": self.source, "state": self.state,
                "reason": self.reason, "since_s": self.since_s, "by": self.by, "jobs": list(self.jobs)}  # fmt: skip


def _node_pool(fleet: Fleet, node: str) -> str:
    for pool in fleet.pools:
        if node in pool_node_names(pool):
            return pool.name
    sample = ", ".join(node_names(fleet)[:5])
    raise NotFound("node", node, f"name a node of the fleet (e.g. {sample}; kfabric fleet show --live lists them)")


def drain_node(
    sessions: sessionmaker[Session], actor: Actor, node: str, reason: str, now_s: float, requeue: bool = False
) -> NodeView:
    """Take ``node`` out of service (the operator's drain): no new placements; work not yet launched there is
    queued again; running work goes on unless ``requeue``. Audited; draining a drained node updates the reason."""
    actor.require_operator("drain nodes")
    if not reason.strip():
        raise ValidationError("reason", "is empty", "say why the node is drained (--reason 'disk replacement')")
    with sessions.begin() as s:
        fleet = load_text(active_source(s).document, "stored fleet").fleet
        pool = _node_pool(fleet, node)
        on_node = [w for w in active_work(s, fleet) if node in w.nodes and not w.leaving]
        stop = [w.job_id for w in on_node if requeue or not w.launched]
        row = s.get(t.NodeState, (node, OPERATOR), with_for_update=True)
        if row is None:
            row = t.NodeState(node=node, source=OPERATOR, state="drain", reason=reason, since_s=now_s, by=actor.name)
            s.add(row)
        else:
            row.state, row.reason, row.by = "drain", reason, actor.name
        _stop_work(s, actor.name, stop, f"node {node} drained: {reason}", now_s)
        detail = {"pool": pool, "reason": reason, "requeue": requeue, "stopped": stop}
        audit.record(s, actor.name, "node.drain", "node", node, now_s, detail=detail)
        running = tuple(w.job_id for w in on_node if w.job_id not in stop)
        return NodeView(node, pool, OPERATOR, "drain", reason, row.since_s, actor.name, running)


def resume_node(sessions: sessionmaker[Session], actor: Actor, node: str, now_s: float) -> NodeView:
    """Put an operator-drained node back in service (a backend's own down/drain rows stay)."""
    actor.require_operator("resume nodes")
    with sessions.begin() as s:
        fleet = load_text(active_source(s).document, "stored fleet").fleet
        pool = _node_pool(fleet, node)
        row = s.get(t.NodeState, (node, OPERATOR), with_for_update=True)
        if row is None:
            raise Conflict(f"node {node}", "is not drained by an operator", "kfabric node list shows drained nodes")
        detail = {"pool": pool, "was": row.reason, "drained_by": row.by}
        s.delete(row)
        audit.record(s, actor.name, "node.resume", "node", node, now_s, detail=detail)
        others = s.scalars(select(t.NodeState).where(t.NodeState.node == node, t.NodeState.state != "up")).all()
        still = "; ".join(f"{o.state} ({o.source}): {o.reason}" for o in others)
        return NodeView(node, pool, OPERATOR, "up" if not still else "out", still, now_s, actor.name)


def list_nodes(sessions: sessionmaker[Session], actor: Actor) -> list[NodeView]:
    """Nodes out of service, with why and who (operators and providers)."""
    if actor.role not in (Role.OPERATOR, Role.PROVIDER):
        raise PermissionDenied(
            "list nodes out of service", f"needs the operator or provider role; you are {actor.role.value}"
        )
    with sessions() as s:
        fleet = load_text(active_source(s).document, "stored fleet").fleet
        pools = {n: p.name for p in fleet.pools for n in pool_node_names(p)}
        work = active_work(s, fleet)
        rows = s.scalars(select(t.NodeState).where(t.NodeState.state != "up").order_by(t.NodeState.node)).all()
        jobs = {r.node: tuple(w.job_id for w in work if r.node in w.nodes) for r in rows}
        return [
            NodeView(r.node, pools.get(r.node, "-"), r.source, r.state, r.reason, r.since_s, r.by, jobs[r.node])
            for r in rows
        ]
