"""Discovery: a Slurm cluster's nodes, GPUs, partitions and state, turned into kfabric node pools.

``discover(config)`` reads ``sinfo --json`` (nodes: GRES, CPUs, memory, partitions, state) and
``scontrol show partition`` (which partition is the default), keeps the nodes of the configured partition
(or the default one) that have GPUs, and groups identical nodes (same GRES type and count, CPUs, memory) into
one pool each, listing the Slurm node names in natural order (node2 before node10). ``Discovery.fragment()``
is a fleet YAML fragment (``clusters`` + ``pools``) to merge into a scenario document.

``node_states(config)`` says which nodes are up (down, drained, draining, failing, not responding, powered
down, unknown → not up) so kfabric's view can follow nodes going down and coming back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import yaml

from kfabric.backends.slurm.commands import SlurmCli
from kfabric.backends.slurm.config import SlurmClusterConfig
from kfabric.scenarios.loader import load_gpu_catalog
from kfabric.scenarios.local import gpu_model_for

#: host power besides the GPUs (CPUs, memory, NICs, fans) assumed per node when a pool's node power is
#: estimated as catalog board power x GPUs + this; an operator should replace it with the vendor's figure
HOST_POWER_KW = 1.5
#: base states in which a node can run jobs
UP_STATES = frozenset({"idle", "allocated", "mixed", "completing"})
#: state flags that take a node out of service even when its base state is fine
DOWN_FLAGS = frozenset({"DRAIN", "DRAINING", "DRAINED", "FAIL", "NOT_RESPONDING", "POWERED_DOWN", "POWER_DOWN"})


def natural_key(name: str) -> tuple[Any, ...]:
    """``node10`` after ``node2``: digits compare as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def split_gres(text: str) -> list[str]:
    """``gpu:a100:4(S:0-1),shard:8`` → ``["gpu:a100:4(S:0-1)", "shard:8"]`` (commas inside () stay)."""
    parts, depth, cur = [], 0, ""
    for ch in text or "":
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip() and p.strip() != "(null)"]


def gpu_gres(text: str) -> tuple[str, int]:
    """GPU type and count from a node's GRES string: ``gpu:b200:8`` → ``("b200", 8)``, ``gpu:8`` → ``("", 8)``,
    none → ``("", 0)``. Several typed GPU entries add up; the type is then the first one's."""
    gtype, count = "", 0
    for part in split_gres(text):
        fields_ = re.sub(r"\(.*\)$", "", part).split(":")
        if fields_[0] != "gpu":
            continue
        if len(fields_) == 2 and fields_[1].isdigit():
            count += int(fields_[1])
        elif len(fields_) >= 3 and fields_[-1].isdigit():
            gtype = gtype or fields_[1]
            count += int(fields_[-1])
        elif len(fields_) == 1:
            count += 1
    return gtype, count


@dataclass(frozen=True, slots=True)
class SlurmNode:
    name: str
    state: str
    flags: tuple[str, ...]
    reason: str
    cpus: int
    memory_mib: int
    gpu_type: str
    gpus: int
    partitions: tuple[str, ...]

    @property
    def up(self) -> bool:
        return self.state in UP_STATES and not (set(self.flags) & DOWN_FLAGS)


def node_of(raw: dict[str, Any]) -> SlurmNode:
    gtype, count = gpu_gres(str(raw.get("gres") or ""))
    return SlurmNode(
        name=str(raw["name"]),
        state=str(raw.get("state") or "unknown").lower(),
        flags=tuple(str(f).upper() for f in raw.get("state_flags") or ()),
        reason=str(raw.get("reason") or ""),
        cpus=int(raw.get("cpus") or 0),
        memory_mib=int(raw.get("real_memory") or 0),
        gpu_type=gtype,
        gpus=count,
        partitions=tuple(str(p) for p in raw.get("partitions") or ()),
    )


@dataclass(slots=True)
class Discovery:
    cluster: str
    site: str
    partition: str
    nodes: list[SlurmNode]
    #: fleet pool definitions (dicts in the scenario format), one per group of identical GPU nodes
    pools: list[dict[str, Any]]
    #: nodes left out, with why (no GPUs, not in the partition)
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def node_states(self) -> dict[str, bool]:
        return {n.name: n.up for n in self.nodes}

    def fragment(self) -> dict[str, Any]:
        """``{"clusters": [...], "pools": [...]}`` to merge into a scenario document."""
        return {
            "clusters": [{"name": self.cluster, "site": self.site, "backend": "slurm"}],
            "pools": [dict(p) for p in self.pools],
        }

    def fragment_yaml(self) -> str:
        header = (
            f"# discovered from Slurm cluster {self.cluster!r} (partition {self.partition!r}).\n"
            f"# node_power_kw = catalog board power x GPUs + {HOST_POWER_KW} kW host (an estimate: use the\n"
            "# vendor's system power where known); nodes_per_rack = the pool (Slurm's topology is not read).\n"
        )
        return header + yaml.safe_dump(self.fragment(), sort_keys=False)


def default_partition(partitions: list[dict[str, str]]) -> str:
    for p in partitions:
        if p.get("Default") == "YES":
            return p["PartitionName"]
    return partitions[0]["PartitionName"] if partitions else ""


def pools_of(
    config: SlurmClusterConfig, nodes: list[SlurmNode], partition: str, online: date
) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    catalog = load_gpu_catalog()
    groups: dict[tuple[str, int, int, int], list[SlurmNode]] = {}
    skipped: dict[str, str] = {}
    warnings: list[str] = []
    for node in nodes:
        if partition and partition not in node.partitions:
            skipped[node.name] = f"not in partition {partition!r}"
        elif node.gpus == 0:
            skipped[node.name] = "no GPU GRES"
        else:
            groups.setdefault((node.gpu_type, node.gpus, node.cpus, node.memory_mib), []).append(node)
    pools: list[dict[str, Any]] = []
    used: set[str] = set()
    by_first_node = sorted(groups.items(), key=lambda kv: min(natural_key(n.name) for n in kv[1]))
    for (gtype, gpus, cpus, mem), members in by_first_node:
        model = config.gpu_model or gpu_model_for(gtype.replace("_", "-"))
        if not config.gpu_model and (not gtype or model.upper() not in gtype.upper().replace("_", "-")):
            warnings.append(
                f"GRES type {gtype or '(none)'!r} maps to no catalog model by name; assumed {model} "
                "(set gpu_model in the cluster config)"
            )
        spec = catalog[model]
        base = f"{config.name}-{(gtype or model).lower()}"
        name, k = base, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        domain = (
            spec.nvlink_domain_gpus if spec.nvlink_domain_gpus <= gpus and gpus % spec.nvlink_domain_gpus == 0 else gpus
        )
        pools.append(
            {
                "name": name,
                "cluster": config.name,
                "gpu_model": model,
                "gpus_per_node": gpus,
                "nvlink_domain_gpus": domain,
                "nodes": len(members),
                "nodes_per_rack": len(members),
                "racks_per_unit": 1,
                # catalog board power x GPUs + HOST_POWER_KW host: an estimate, not a measurement
                "node_power_kw": round(spec.board_power_w * gpus / 1000 + HOST_POWER_KW, 2),
                "owner": config.owner or config.site,
                "sharing": "shared",
                "online": online,
                "cpu_milli_per_node": cpus * 1000,
                "memory_mib_per_node": mem,
                "node_names": sorted((n.name for n in members), key=natural_key),
            }
        )
    return pools, skipped, warnings


def discover(config: SlurmClusterConfig, cli: SlurmCli | None = None, online: date | None = None) -> Discovery:
    """Read the cluster now (raises BackendUnavailable when slurmctld cannot be reached)."""
    cli = cli or SlurmCli(config.slurm_conf, config.command_timeout_s, config.backoff_max_s, config.bin_dir)
    nodes = sorted((node_of(n) for n in cli.sinfo_nodes() if n.get("name")), key=lambda n: natural_key(n.name))
    partition = config.partition or default_partition(cli.partitions())
    pools, skipped, warnings = pools_of(config, nodes, partition, online or date(2020, 1, 1))
    return Discovery(config.name, config.site, partition, nodes, pools, skipped, warnings)


def node_states(config: SlurmClusterConfig, cli: SlurmCli | None = None) -> dict[str, bool]:
    """Node name → whether it can run jobs now (down, drained/draining, not responding → False)."""
    cli = cli or SlurmCli(config.slurm_conf, config.command_timeout_s, config.backoff_max_s, config.bin_dir)
    return {n.name: n.up for n in (node_of(raw) for raw in cli.sinfo_nodes() if raw.get("name"))}
