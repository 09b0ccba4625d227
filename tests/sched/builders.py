"""Fluent builders for the scheduling core's tests (Kueue style), plus snapshot helpers and invariant checks.

Everything is built from ``kfabric.model`` types directly; nothing here reads YAML.

    job = a_job("j1").gpus(8).project("a").limit_h(4).priority(PriorityClass.HIGH).build()
    fleet = a_fleet().site("gov", clearance=Classification.RESTRICTED).pool("h100", nodes=4).build()
    snap = snapshot_of(fleet, tenants=[tenant("a")])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import numpy as np

from kfabric.model import (
    Classification,
    Cluster,
    Fleet,
    GpuModel,
    Job,
    MinTopology,
    NodePool,
    Owner,
    OwnerKind,
    PriorityClass,
    Sharing,
    Site,
)
from kfabric.model.decision import Decision, NodeShare, Placement
from kfabric.model.job import MILLI_PER_GPU
from kfabric.model.tenancy import OnExhausted
from kfabric.sched.capacity import Capacity
from kfabric.sched.fairshare import TenantInfo
from kfabric.sched.queue import PendingQueue
from kfabric.sched.snapshot import GrantState, Snapshot

HOUR_S = 3600.0
DAY_S = 86_400.0

#: the models fleets in these tests draw from (public facts rounded; SU weights are test values)
MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel("H100", 80, 700, 8, 1.0),
        GpuModel("H200", 141, 700, 8, 1.2),
        GpuModel("B200", 180, 1000, 8, 2.0),
        GpuModel("GB200", 186, 1200, 72, 2.5),
        GpuModel("RTX", 96, 600, 1, 0.5),
    )
}


# ---- jobs --------------------------------------------------------------------------------------------------
class JobBuilder:
    """``a_job("j1").gpus(8).project("a").limit_h(4).build()``; defaults: 1 GPU, project ``a``, 1 h."""

    def __init__(self, job_id: str) -> None:
        self._kw: dict[str, Any] = {"id": job_id, "project": "a", "time_limit_s": HOUR_S}

    def _set(self, **kw: Any) -> JobBuilder:
        self._kw.update(kw)
        return self

    def project(self, name: str) -> JobBuilder:
        return self._set(project=name)

    def gpus(self, n: int) -> JobBuilder:
        return self._set(gpus=n)

    def fraction(self, milli: int) -> JobBuilder:
        return self._set(gpus=1, gpu_milli=milli)

    def shape(self, nodes: int, gpus_per_node: int) -> JobBuilder:
        return self._set(nodes=nodes, gpus_per_node=gpus_per_node, gpus=nodes * gpus_per_node)

    def models(self, *names: str) -> JobBuilder:
        return self._set(gpu_models=tuple(names))

    def topology(self, level: MinTopology) -> JobBuilder:
        return self._set(min_topology=level)

    def limit_s(self, seconds: float) -> JobBuilder:
        return self._set(time_limit_s=seconds)

    def limit_h(self, hours: float) -> JobBuilder:
        return self._set(time_limit_s=hours * HOUR_S)

    def estimate_s(self, seconds: float) -> JobBuilder:
        return self._set(runtime_estimate_s=seconds)

    def submitted(self, t_s: float) -> JobBuilder:
        return self._set(submit_s=t_s)

    def priority(self, p: PriorityClass) -> JobBuilder:
        return self._set(priority=p)

    def preemptible(self, yes: bool = True) -> JobBuilder:
        return self._set(preemptible=yes)

    def classification(self, c: Classification) -> JobBuilder:
        return self._set(classification=c)

    def cpu(self, milli: int) -> JobBuilder:
        return self._set(cpu_milli=milli)

    def memory(self, mib: int) -> JobBuilder:
        return self._set(memory_mib=mib)

    def grant(self, grant_id: str) -> JobBuilder:
        return self._set(grant=grant_id)

    def user(self, name: str) -> JobBuilder:
        return self._set(user=name)

    def name(self, name: str) -> JobBuilder:
        return self._set(name=name)

    def build(self) -> Job:
        return Job(**self._kw)


def a_job(job_id: str) -> JobBuilder:
    return JobBuilder(job_id)


# ---- fleets ------------------------------------------------------------------------------------------------
@dataclass
class _PoolSpec:
    name: str
    site: str
    model: str
    gpus_per_node: int
    nodes: int
    nodes_per_rack: int
    racks_per_unit: int
    domain: int | None
    node_kw: float
    owner: str
    sharing: Sharing
    cpu_milli: int
    memory_mib: int
    online: date


@dataclass
class FleetBuilder:
    """Sites (one cluster each, named ``<site>-c``), pools, owners. Models come from :data:`MODELS`."""

    _sites: list[Site] = field(default_factory=list)
    _pools: list[_PoolSpec] = field(default_factory=list)
    _owners: dict[str, OwnerKind] = field(default_factory=dict)

    def site(
        self,
        name: str,
        clearance: Classification = Classification.RESTRICTED,
        power_cap_mw: float = 100.0,
        certification: str = "government-operated",
    ) -> FleetBuilder:
        self._sites.append(Site(name, "daejeon", "lab", certification, clearance, power_cap_mw, 1.3))
        return self

    def owner(self, name: str, kind: OwnerKind = OwnerKind.PRIVATE) -> FleetBuilder:
        self._owners[name] = kind
        return self

    def pool(
        self,
        name: str,
        *,
        site: str | None = None,
        model: str = "H100",
        gpus_per_node: int = 8,
        nodes: int = 4,
        nodes_per_rack: int = 2,
        racks_per_unit: int = 2,
        domain: int | None = None,
        node_kw: float = 10.0,
        owner: str = "gov",
        sharing: Sharing = Sharing.SHARED,
        cpu_milli: int = 112_000,
        memory_mib: int = 2_097_152,
        online: date = date(2025, 1, 1),
    ) -> FleetBuilder:
        if not self._sites:
            self.site("s1")
        self._pools.append(
            _PoolSpec(
                name,
                site or self._sites[-1].name,
                model,
                gpus_per_node,
                nodes,
                nodes_per_rack,
                racks_per_unit,
                domain,
                node_kw,
                owner,
                sharing,
                cpu_milli,
                memory_mib,
                online,
            )
        )
        return self

    def build(self) -> Fleet:
        if not self._sites:
            self.site("s1")
        owners = dict(self._owners)
        for p in self._pools:
            owners.setdefault(p.owner, OwnerKind.GOVERNMENT if p.owner == "gov" else OwnerKind.PRIVATE)
        used_models = sorted({p.model for p in self._pools})
        pools = tuple(
            NodePool(
                name=p.name,
                cluster=f"{p.site}-c",
                gpu_model=p.model,
                gpus_per_node=p.gpus_per_node,
                nodes=p.nodes,
                nvlink_domain_gpus=p.domain
                if p.domain is not None
                else max(1, min(MODELS[p.model].nvlink_domain_gpus, p.gpus_per_node)),
                nodes_per_rack=p.nodes_per_rack,
                racks_per_unit=p.racks_per_unit,
                node_power_kw=p.node_kw,
                owner=p.owner,
                sharing=p.sharing,
                online=p.online,
                cpu_milli_per_node=p.cpu_milli,
                memory_mib_per_node=p.memory_mib,
            )
            for p in self._pools
        )
        return Fleet(
            name="test",
            gpu_models=tuple(MODELS[m] for m in used_models),
            owners=tuple(Owner(n, k) for n, k in sorted(owners.items())),
            sites=tuple(self._sites),
            clusters=tuple(Cluster(f"{s.name}-c", s.name) for s in self._sites),
            pools=pools,
        )


def a_fleet() -> FleetBuilder:
    return FleetBuilder()


def hgx_fleet(nodes: int = 4, nodes_per_rack: int = 2, racks_per_unit: int = 2, **pool: Any) -> Fleet:
    """One site, one shared pool of 8-GPU HGX H100 nodes."""
    return (
        a_fleet().pool("p", nodes=nodes, nodes_per_rack=nodes_per_rack, racks_per_unit=racks_per_unit, **pool).build()
    )


# ---- tenants, grants, snapshots ----------------------------------------------------------------------------
def tenant(
    project: str, affiliation: str = "", organization: str | None = None, program: str = "prog", weight: float = 1.0
) -> TenantInfo:
    return TenantInfo(project, organization or f"org-{project}", program, weight=weight, affiliation=affiliation)


class GrantBuilder:
    """``a_grant("g1").project("a").reserved("H100", 8).credit(100).build()``; active over [0, 365 d)."""

    def __init__(self, grant_id: str) -> None:
        self._g = GrantState(grant_id, "a", 0.0, 365 * DAY_S)

    def project(self, name: str) -> GrantBuilder:
        self._g = replace(self._g, project=name)
        return self

    def between(self, start_s: float, end_s: float) -> GrantBuilder:
        self._g = replace(self._g, start_s=start_s, end_s=end_s)
        return self

    def reserved(self, model: str, gpus: int) -> GrantBuilder:
        self._g = replace(self._g, reserved_model=model, reserved_gpus=gpus)
        return self

    def credit(self, su: float) -> GrantBuilder:
        self._g = replace(self._g, credit_left_su=su)
        return self

    def on_exhausted(self, what: OnExhausted) -> GrantBuilder:
        self._g = replace(self._g, on_exhausted=what)
        return self

    def max_job_h(self, hours: float) -> GrantBuilder:
        self._g = replace(self._g, max_job_duration_s=hours * HOUR_S)
        return self

    def build(self) -> GrantState:
        return self._g


def a_grant(grant_id: str) -> GrantBuilder:
    return GrantBuilder(grant_id)


def snapshot_of(
    fleet: Fleet, tenants: Iterable[TenantInfo] = (), grants: Iterable[GrantState] = (), **kw: Any
) -> Snapshot:
    """A snapshot of ``fleet`` with every pool online."""
    return Snapshot.for_fleet(fleet, tenants={t.project: t for t in tenants}, grants={g.id: g for g in grants}, **kw)


def queue_of(snap: Snapshot, *jobs: Job) -> PendingQueue:
    """A pending queue holding ``jobs``, each with its tenant's affiliation from the snapshot."""
    q = PendingQueue()
    for job in jobs:
        t = snap.tenants.get(job.project)
        q.add(job, t.affiliation if t else "")
    return q


def share(node: int, *gpus: int, milli: int = MILLI_PER_GPU, cpu: int = 0, mem: int = 0) -> NodeShare:
    return NodeShare(node, tuple(gpus), milli, cpu, mem)


def place(pool: str, *shares: NodeShare) -> Placement:
    return Placement(pool, tuple(shares))


def run(
    snap: Snapshot,
    job: Job,
    placement: Placement,
    start_s: float = 0.0,
    borrowed: bool = False,
    guaranteed: bool = False,
) -> None:
    """Start ``job`` on an explicit placement (a fixture for running work)."""
    snap.start(job, placement, start_s, borrowed, guaranteed)


def apply_decision(snap: Snapshot, q: PendingQueue, decision: Decision) -> None:
    """What an owner does with a decision: victims leave, admitted jobs start (at their ``start_at_s``)."""
    for p in decision.preemptions:
        snap.finish(p.job_id)
    for adm in decision.admissions:
        job = q.remove(adm.job_id)
        snap.start(job, adm.placement, adm.start_at_s, adm.borrowed, adm.guaranteed)


# ---- state capture and invariants -------------------------------------------------------------------------
def online_capacity(fleet: Fleet) -> Capacity:
    """A capacity index of ``fleet`` with every pool online."""
    cap = Capacity(fleet)
    for i in range(len(cap.pools)):
        cap.set_pool_online(i, True)
    return cap


def use(
    cap: Capacity, node: int, gpus: int = 0, milli: int = MILLI_PER_GPU, *, first: int = 0, cpu: int = 0, mem: int = 0
) -> None:
    """Take ``gpus`` GPUs of ``node`` starting at GPU ``first`` (``milli`` each), plus CPU and memory."""
    cap.take(node, tuple(range(first, first + gpus)), milli, cpu, mem)


def capacity_state(cap: Capacity) -> dict[str, object]:
    """Every piece of mutable capacity state, including the order of the bucket dicts."""
    return {
        "milli": cap.milli.tolist(),
        "whole": cap.whole.tolist(),
        "cpu_free": cap.cpu_free.tolist(),
        "mem_free": cap.mem_free.tolist(),
        "up": cap.up.tolist(),
        "rack_full": cap.rack_full.tolist(),
        "unit_full": cap.unit_full.tolist(),
        "rack_gpus": cap.rack_gpus.tolist(),
        "unit_gpus": cap.unit_gpus.tolist(),
        "pool_milli": cap.pool_milli.tolist(),
        "pool_up_milli": cap.pool_up_milli.tolist(),
        "site_kw": [round(float(x), 6) for x in cap.site_kw],
        "buckets": [[list(b) for b in pool] for pool in cap.buckets],
        "fresh": [list(f) for f in cap.fresh],
    }


def snapshot_state(snap: Snapshot) -> dict[str, object]:
    def nonzero(d: dict[Any, float]) -> dict[Any, float]:
        return {k: round(v, 9) for k, v in d.items() if abs(v) > 1e-9}

    return {
        "capacity": capacity_state(snap.capacity),
        "log": snap.capacity.mark(),
        "logging": snap.capacity.logging,
        "running": {
            k: (r.placement, r.start_s, r.expected_end_s, r.borrowed, r.guaranteed) for k, r in snap.running.items()
        },
        "own": nonzero(snap.own_gpus),
        "shared": nonzero(snap.shared_used),
        "borrowed": nonzero(snap.borrowed_gpus),
        "usage": dict(snap.usage_su),
        "attained": dict(snap.attained_gpu_s),
        "estimator": snap.estimator.version,
    }


def check_invariants(cap: Capacity) -> None:
    """Assert that the capacity index is consistent: nothing oversubscribed, every aggregate recomputable."""
    n = cap.n_nodes
    # the hot path's Python mirrors agree with the arrays that vectorized queries read
    assert cap.mirrors_agree(), "a list mirror differs from its array (milli, whole, up or rack_full)"
    for node in range(n):
        g = int(cap.node_gpus[node])
        row = cap.milli[node]
        assert (row[:g] >= 0).all(), f"node {node}: GPU milli below 0: {row[:g].tolist()}"
        assert (row[:g] <= MILLI_PER_GPU).all(), f"node {node}: GPU milli above 1000: {row[:g].tolist()}"
        assert (row[g:] == -1).all(), f"node {node}: slots beyond its GPUs changed: {row.tolist()}"
        assert int(cap.whole[node]) == int(np.count_nonzero(row[:g] == MILLI_PER_GPU)), f"node {node}: whole"
        assert int(cap.node_milli[node]) == int(row[:g].sum()), f"node {node}: node_milli"
        assert 0 <= int(cap.cpu_free[node]) <= int(cap.cpu_total[node]), f"node {node}: cpu_free {cap.cpu_free[node]}"
        assert 0 <= int(cap.mem_free[node]) <= int(cap.mem_total[node]), f"node {node}: mem_free {cap.mem_free[node]}"
    up = cap.up
    full = up & (cap.whole == cap.node_gpus)
    rack_full = np.zeros_like(cap.rack_full)
    np.add.at(rack_full, cap.node_rack[full], 1)
    unit_full = np.zeros_like(cap.unit_full)
    np.add.at(unit_full, cap.node_unit[full], 1)
    rack_gpus = np.zeros_like(cap.rack_gpus)
    np.add.at(rack_gpus, cap.node_rack[up], cap.whole[up])
    unit_gpus = np.zeros_like(cap.unit_gpus)
    np.add.at(unit_gpus, cap.node_unit[up], cap.whole[up])
    assert cap.rack_full.tolist() == rack_full.tolist(), "rack_full"
    assert cap.unit_full.tolist() == unit_full.tolist(), "unit_full"
    assert cap.rack_gpus.tolist() == rack_gpus.tolist(), "rack_gpus"
    assert cap.unit_gpus.tolist() == unit_gpus.tolist(), "unit_gpus"
    kw = np.zeros(len(cap.sites))
    for p in cap.pools:
        sl = slice(p.first_node, p.first_node + p.nodes)
        milli = cap.milli[sl, : p.gpus_per_node]
        assert int(cap.pool_milli[p.index]) == int(milli[up[sl]].sum()), f"pool {p.name}: pool_milli"
        assert int(cap.pool_up_milli[p.index]) == int(up[sl].sum()) * p.gpus_per_node * MILLI_PER_GPU
        kw[p.site] += float((MILLI_PER_GPU - milli).sum()) * p.kw_per_gpu / MILLI_PER_GPU
        # partly used GPUs by free milli: the nodes with such GPUs and how many, up or down
        expected_shared: dict[int, dict[int, int]] = {}
        for i, g in zip(*np.nonzero((milli > 0) & (milli < MILLI_PER_GPU)), strict=True):
            at = expected_shared.setdefault(int(milli[i, g]), {})
            at[p.first_node + int(i)] = at.get(p.first_node + int(i), 0) + 1
        assert cap.shared[p.index] == expected_shared, f"pool {p.name}: shared GPUs index"
        # buckets: every up node in exactly one place, by whole free GPUs; fully free nodes of whole racks fresh
        where: dict[int, str] = {}
        for c, bucket in enumerate(cap.buckets[p.index]):
            for node in bucket:
                assert node not in where, f"node {node} in two buckets"
                where[node] = f"b{c}"
        for node in cap.fresh[p.index]:
            assert node not in where, f"node {node} in a bucket and fresh"
            where[node] = "fresh"
        for node in p.node_range:
            if not up[node]:
                assert node not in where, f"down node {node} indexed as {where.get(node)}"
                continue
            whole = int(cap.whole[node])
            if whole < p.gpus_per_node:
                expected = f"b{whole}"
            else:
                expected = "fresh" if cap.rack_whole(int(cap.node_rack[node])) else f"b{whole}"
            assert where.get(node) == expected, f"node {node}: indexed as {where.get(node)}, expected {expected}"
    assert np.allclose(cap.site_kw, kw), f"site_kw {cap.site_kw.tolist()} != {kw.tolist()}"


def check_power(cap: Capacity) -> None:
    """No site draws more than its power cap."""
    for s in cap.sites:
        assert cap.site_kw[s.index] <= s.cap_kw + 1e-6, f"site {s.name} over its power cap"


def placement_gpus(p: Placement) -> list[tuple[int, int]]:
    return [(s.node, g) for s in p.shares for g in s.gpus]


def node_racks(cap: Capacity, p: Placement) -> set[int]:
    return {int(cap.node_rack[s.node]) for s in p.shares}


def node_units(cap: Capacity, p: Placement) -> set[int]:
    return {int(cap.node_unit[s.node]) for s in p.shares}


def decision_key(d: Decision) -> tuple[object, ...]:
    """Everything a decision says, comparable with ``==``."""
    return (d.admissions, d.preemptions, d.reservations, dict(d.pending))
