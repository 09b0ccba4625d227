"""Sites, clusters, node pools, owners and the fleet that holds them (product spec section 2)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from typing import TypeVar

from kfabric.model.errors import ValidationError, require, require_name
from kfabric.model.gpu import GpuModel
from kfabric.model.sovereignty import Classification

BACKENDS = ("sim", "local", "slurm", "kubernetes")
_T = TypeVar("_T")


class Sharing(Enum):
    """How a pool's capacity is shared: only its owner, the national pool, or owner-first and lendable."""

    DEDICATED = "dedicated"
    SHARED = "shared"
    LENDABLE = "lendable"


class OwnerKind(Enum):
    GOVERNMENT = "government"
    PRIVATE = "private"


@dataclass(frozen=True, slots=True)
class Owner:
    name: str
    kind: OwnerKind

    def __post_init__(self) -> None:
        require_name(self.name, "owner.name")


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    region: str
    operator: str
    certification: str
    clearance: Classification
    power_cap_mw: float
    pue: float

    def __post_init__(self) -> None:
        where = f"site {self.name!r}"
        require_name(self.name, f"{where}.name")
        require(self.power_cap_mw > 0, f"{where}.power_cap_mw", f"must be > 0 MW, got {self.power_cap_mw}")
        require(
            1.0 <= self.pue <= 3.0,
            f"{where}.pue",
            f"must be between 1.0 and 3.0, got {self.pue}",
            "PUE is facility power / IT power, typically 1.1-1.6",
        )


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    site: str
    backend: str = "sim"

    def __post_init__(self) -> None:
        where = f"cluster {self.name!r}"
        require_name(self.name, f"{where}.name")
        require(
            self.backend in BACKENDS,
            f"{where}.backend",
            f"unknown backend {self.backend!r}",
            f"use one of {', '.join(BACKENDS)}",
        )


@dataclass(frozen=True, slots=True)
class NodePool:
    """Identical nodes of one GPU model, one owner, one online date.

    Topology: ``nodes_per_rack`` nodes form a rack, ``racks_per_unit`` racks a scalable unit. An NVLink
    domain holds ``nvlink_domain_gpus`` GPUs: either a divisor of ``gpus_per_node`` (HGX: 8 = the node) or
    a whole number of nodes inside one rack (NVL72: 18 trays x 4 GPUs = the rack). 1 means PCIe only.
    """

    name: str
    cluster: str
    gpu_model: str
    gpus_per_node: int
    nodes: int
    nvlink_domain_gpus: int
    nodes_per_rack: int
    racks_per_unit: int
    node_power_kw: float
    owner: str
    sharing: Sharing
    online: date
    cpu_milli_per_node: int = 112_000
    memory_mib_per_node: int = 2_097_152
    #: the nodes' host names in a real cluster (e.g. Slurm node names), in topology order; empty for
    #: simulated pools, whose nodes are named ``POOL-NNN``
    node_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"pool {self.name!r}"
        require(
            not self.node_names or len(self.node_names) == self.nodes,
            f"{where}.node_names",
            f"lists {len(self.node_names)} names for {self.nodes} nodes",
            "give one name per node, in rack order, or leave node_names out",
        )
        require(
            len(set(self.node_names)) == len(self.node_names),
            f"{where}.node_names",
            "names a node twice",
            "each node appears once",
        )
        require_name(self.name, f"{where}.name")
        require(self.gpus_per_node >= 0, f"{where}.gpus_per_node", f"must be >= 0, got {self.gpus_per_node}")
        require(self.nodes >= 1, f"{where}.nodes", f"must be >= 1, got {self.nodes}")
        require(self.nodes_per_rack >= 1, f"{where}.nodes_per_rack", f"must be >= 1, got {self.nodes_per_rack}")
        require(self.racks_per_unit >= 1, f"{where}.racks_per_unit", f"must be >= 1, got {self.racks_per_unit}")
        require(self.node_power_kw > 0, f"{where}.node_power_kw", f"must be > 0 kW, got {self.node_power_kw}")
        require(self.cpu_milli_per_node > 0, f"{where}.cpu_milli_per_node", "must be > 0")
        require(self.memory_mib_per_node > 0, f"{where}.memory_mib_per_node", "must be > 0")
        d, g = self.nvlink_domain_gpus, self.gpus_per_node
        require(d >= 1, f"{where}.nvlink_domain_gpus", f"must be >= 1 (1 = PCIe), got {d}")
        if g > 0 and d <= g:
            require(
                g % d == 0,
                f"{where}.nvlink_domain_gpus",
                f"{d} does not divide gpus_per_node {g}",
                "an NVLink domain inside a node must split the node evenly",
            )
        elif g > 0:
            require(
                d % g == 0 and (d // g) <= self.nodes_per_rack and self.nodes_per_rack % (d // g) == 0,
                f"{where}.nvlink_domain_gpus",
                f"a {d}-GPU domain is not a whole number of {g}-GPU nodes that tiles a {self.nodes_per_rack}-node rack",
                "make the domain a multiple of gpus_per_node that divides the rack (NVL72: 4 GPUs x 18 nodes)",
            )

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def nodes_per_domain(self) -> int:
        """Nodes in one NVLink domain (1 when the domain lies inside a node)."""
        if self.gpus_per_node == 0 or self.nvlink_domain_gpus <= self.gpus_per_node:
            return 1
        return self.nvlink_domain_gpus // self.gpus_per_node

    @property
    def nodes_per_unit(self) -> int:
        return self.nodes_per_rack * self.racks_per_unit

    @property
    def power_kw(self) -> float:
        return self.node_power_kw * self.nodes

    def online_at(self, day: date) -> bool:
        return self.online <= day


@dataclass(frozen=True, slots=True)
class Fleet:
    """A validated, self-consistent fleet: every reference resolves."""

    name: str
    gpu_models: tuple[GpuModel, ...]
    owners: tuple[Owner, ...]
    sites: tuple[Site, ...]
    clusters: tuple[Cluster, ...]
    pools: tuple[NodePool, ...]
    _models: dict[str, GpuModel] = field(init=False, repr=False, compare=False)
    _sites: dict[str, Site] = field(init=False, repr=False, compare=False)
    _clusters: dict[str, Cluster] = field(init=False, repr=False, compare=False)
    _owners: dict[str, Owner] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_models", _index("gpu_models", self.gpu_models))
        object.__setattr__(self, "_owners", _index("owners", self.owners))
        object.__setattr__(self, "_sites", _index("sites", self.sites))
        object.__setattr__(self, "_clusters", _index("clusters", self.clusters))
        _index("pools", self.pools)
        for c in self.clusters:
            _ref(self._sites, c.site, f"cluster {c.name!r}.site", "sites")
        for p in self.pools:
            _ref(self._clusters, p.cluster, f"pool {p.name!r}.cluster", "clusters")
            _ref(self._models, p.gpu_model, f"pool {p.name!r}.gpu_model", "gpu_models")
            _ref(self._owners, p.owner, f"pool {p.name!r}.owner", "owners")

    def model(self, name: str) -> GpuModel:
        return self._models[name]

    def site(self, name: str) -> Site:
        return self._sites[name]

    def cluster(self, name: str) -> Cluster:
        return self._clusters[name]

    def owner(self, name: str) -> Owner:
        return self._owners[name]

    def site_of(self, pool: NodePool) -> Site:
        return self._sites[self._clusters[pool.cluster].site]

    def pools_online(self, day: date | None) -> Iterator[NodePool]:
        return (p for p in self.pools if day is None or p.online_at(day))

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.pools)


def _index(what: str, items: tuple[_T, ...]) -> dict[str, _T]:
    out: dict[str, _T] = {}
    for item in items:
        name = getattr(item, "name")  # noqa: B009 - every indexed type has a name
        if name in out:
            raise ValidationError(f"fleet.{what}", f"duplicate name {name!r}", "give each entry a unique name")
        out[name] = item
    return out


def _ref(index: Mapping[str, object], name: str, where: str, what: str) -> None:
    if name not in index:
        known = ", ".join(sorted(index)) or "none"
        raise ValidationError(where, f"refers to unknown {what[:-1]} {name!r}", f"use one of: {known}")
