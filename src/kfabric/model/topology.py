"""Nodes and their topology paths ``site/cluster/pool/unit/rack/node``.

Nodes are numbered inside a pool; rack and scalable unit follow from the pool's grouping. NVLink domains
are numbered inside a pool too: a domain is either inside a node (HGX) or a run of consecutive nodes in
one rack (NVL72).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kfabric.model.fleet import Fleet, NodePool


@dataclass(frozen=True, slots=True)
class Node:
    site: str
    cluster: str
    pool: str
    unit: int
    rack: int
    index: int
    domain: int

    @property
    def name(self) -> str:
        return f"{self.pool}-n{self.index:05d}"

    @property
    def path(self) -> str:
        return f"{self.site}/{self.cluster}/{self.pool}/u{self.unit:03d}/r{self.rack:04d}/{self.name}"


def pool_nodes(fleet: Fleet, pool: NodePool) -> Iterator[Node]:
    site = fleet.cluster(pool.cluster).site
    per_domain = pool.nodes_per_domain
    for i in range(pool.nodes):
        rack = i // pool.nodes_per_rack
        yield Node(
            site=site,
            cluster=pool.cluster,
            pool=pool.name,
            unit=rack // pool.racks_per_unit,
            rack=rack,
            index=i,
            domain=i // per_domain,
        )


def fleet_nodes(fleet: Fleet) -> Iterator[Node]:
    for pool in fleet.pools:
        yield from pool_nodes(fleet, pool)


def nvlink_domains(pool: NodePool) -> int:
    """Number of NVLink domains in a pool (per GPU for PCIe pools, per node for HGX, per rack for NVL72)."""
    if pool.gpus_per_node == 0:
        return 0
    if pool.nvlink_domain_gpus <= pool.gpus_per_node:
        return pool.nodes * (pool.gpus_per_node // pool.nvlink_domain_gpus)
    return -(-pool.nodes // pool.nodes_per_domain)
