"""What a scenario's fleet holds at a date: GPUs by owner, site and model, nodes, NVLink domains, power.

Pure computation (no printing); the CLI renders it as tables or JSON. "Online" means the pool's online date
is on or before the date asked; with no date everything counts as online.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from kfabric.model import NodePool, nvlink_domains
from kfabric.scenarios.loader import Scenario

_MW_DIGITS = 4


@dataclass(frozen=True, slots=True)
class OwnerRow:
    name: str
    kind: str
    gpus_online: int
    gpus_total: int
    nodes_online: int


@dataclass(frozen=True, slots=True)
class SiteRow:
    name: str
    region: str
    operator: str
    certification: str
    clearance: str
    gpus_online: int
    gpus_total: int
    nodes_online: int
    peak_it_mw: float  # nodes online x node power
    peak_it_mw_total: float  # all pools of the site, online or not
    facility_mw: float  # peak_it_mw x the site's PUE
    power_cap_mw: float
    pue: float


@dataclass(frozen=True, slots=True)
class ModelRow:
    name: str
    interconnect: str
    memory_gb: float
    gpus_online: int
    gpus_total: int


@dataclass(frozen=True, slots=True)
class PoolRow:
    name: str
    site: str
    cluster: str
    owner: str
    gpu_model: str
    gpus: int
    nodes: int
    nvlink_domains: int
    sharing: str
    online: date
    is_online: bool


@dataclass(frozen=True, slots=True)
class FleetSummary:
    scenario: str
    at: date | None
    gpus_online: int
    gpus_total: int
    nodes_online: int
    nodes_total: int
    nvlink_domains_online: int
    peak_it_mw: float
    facility_mw: float
    power_cap_mw: float
    by_owner: tuple[OwnerRow, ...]
    by_site: tuple[SiteRow, ...]
    by_model: tuple[ModelRow, ...]
    pools: tuple[PoolRow, ...]

    @property
    def pools_online(self) -> tuple[PoolRow, ...]:
        return tuple(p for p in self.pools if p.is_online)


def summarize(scenario: Scenario, at: date | None = None) -> FleetSummary:
    """Summarize ``scenario``'s fleet as of ``at`` (everything when ``None``)."""
    fleet = scenario.fleet
    online = {p.name for p in fleet.pools_online(at)}

    def on(pools: Iterable[NodePool]) -> list[NodePool]:
        return [p for p in pools if p.name in online]

    owners = tuple(
        OwnerRow(
            name=o.name,
            kind=o.kind.value,
            gpus_online=sum(p.gpus for p in on(_of(fleet.pools, owner=o.name))),
            gpus_total=sum(p.gpus for p in _of(fleet.pools, owner=o.name)),
            nodes_online=sum(p.nodes for p in on(_of(fleet.pools, owner=o.name))),
        )
        for o in fleet.owners
    )
    sites = []
    for s in fleet.sites:
        at_site = [p for p in fleet.pools if fleet.site_of(p).name == s.name]
        it_mw = sum(p.power_kw for p in on(at_site)) / 1000
        sites.append(
            SiteRow(
                name=s.name,
                region=s.region,
                operator=s.operator,
                certification=s.certification,
                clearance=s.clearance.label,
                gpus_online=sum(p.gpus for p in on(at_site)),
                gpus_total=sum(p.gpus for p in at_site),
                nodes_online=sum(p.nodes for p in on(at_site)),
                peak_it_mw=it_mw,
                peak_it_mw_total=sum(p.power_kw for p in at_site) / 1000,
                facility_mw=it_mw * s.pue,
                power_cap_mw=s.power_cap_mw,
                pue=s.pue,
            )
        )
    models = tuple(
        ModelRow(
            name=m.name,
            interconnect=m.interconnect,
            memory_gb=m.memory_gb,
            gpus_online=sum(p.gpus for p in on(_of(fleet.pools, gpu_model=m.name))),
            gpus_total=sum(p.gpus for p in _of(fleet.pools, gpu_model=m.name)),
        )
        for m in fleet.gpu_models
    )
    pools = tuple(
        PoolRow(
            name=p.name,
            site=fleet.site_of(p).name,
            cluster=p.cluster,
            owner=p.owner,
            gpu_model=p.gpu_model,
            gpus=p.gpus,
            nodes=p.nodes,
            nvlink_domains=nvlink_domains(p),
            sharing=p.sharing.value,
            online=p.online,
            is_online=p.name in online,
        )
        for p in fleet.pools
    )
    return FleetSummary(
        scenario=scenario.name,
        at=at,
        gpus_online=sum(p.gpus for p in pools if p.is_online),
        gpus_total=sum(p.gpus for p in pools),
        nodes_online=sum(p.nodes for p in pools if p.is_online),
        nodes_total=sum(p.nodes for p in pools),
        nvlink_domains_online=sum(p.nvlink_domains for p in pools if p.is_online),
        peak_it_mw=sum(s.peak_it_mw for s in sites),
        facility_mw=sum(s.facility_mw for s in sites),
        power_cap_mw=sum(s.power_cap_mw for s in fleet.sites),
        by_owner=owners,
        by_site=tuple(sites),
        by_model=models,
        pools=pools,
    )


def _of(pools: Iterable[NodePool], *, owner: str | None = None, gpu_model: str | None = None) -> list[NodePool]:
    return [p for p in pools if (owner is None or p.owner == owner) and (gpu_model is None or p.gpu_model == gpu_model)]


def _mw(value: float) -> float:
    return round(value, _MW_DIGITS)


def to_json(summary: FleetSummary) -> dict[str, Any]:
    """A JSON-ready dict with stable keys; lists keep the scenario's declaration order (models by name)."""
    return {
        "scenario": summary.scenario,
        "at": summary.at.isoformat() if summary.at else None,
        "totals": {
            "gpus_online": summary.gpus_online,
            "gpus_total": summary.gpus_total,
            "nodes_online": summary.nodes_online,
            "nodes_total": summary.nodes_total,
            "nvlink_domains_online": summary.nvlink_domains_online,
            "pools_online": len(summary.pools_online),
            "pools_total": len(summary.pools),
            "peak_it_mw": _mw(summary.peak_it_mw),
            "facility_mw": _mw(summary.facility_mw),
            "power_cap_mw": _mw(summary.power_cap_mw),
        },
        "by_owner": [
            {
                "name": o.name,
                "kind": o.kind,
                "gpus_online": o.gpus_online,
                "gpus_total": o.gpus_total,
                "nodes_online": o.nodes_online,
            }
            for o in summary.by_owner
        ],
        "by_site": [
            {
                "name": s.name,
                "region": s.region,
                "operator": s.operator,
                "certification": s.certification,
                "clearance": s.clearance,
                "gpus_online": s.gpus_online,
                "gpus_total": s.gpus_total,
                "nodes_online": s.nodes_online,
                "peak_it_mw": _mw(s.peak_it_mw),
                "peak_it_mw_total": _mw(s.peak_it_mw_total),
                "facility_mw": _mw(s.facility_mw),
                "power_cap_mw": _mw(s.power_cap_mw),
                "pue": s.pue,
            }
            for s in summary.by_site
        ],
        "by_model": [
            {
                "name": m.name,
                "interconnect": m.interconnect,
                "memory_gb": m.memory_gb,
                "gpus_online": m.gpus_online,
                "gpus_total": m.gpus_total,
            }
            for m in summary.by_model
        ],
        "pools": [
            {
                "name": p.name,
                "site": p.site,
                "cluster": p.cluster,
                "owner": p.owner,
                "gpu_model": p.gpu_model,
                "gpus": p.gpus,
                "nodes": p.nodes,
                "nvlink_domains": p.nvlink_domains,
                "sharing": p.sharing,
                "online": p.online.isoformat(),
                "is_online": p.is_online,
            }
            for p in summary.pools
        ],
    }
