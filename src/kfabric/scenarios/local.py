"""A one-node fleet for this machine, for ``kfabric serve --fleet local``: its GPUs (detected or declared), one
site, one cluster on the ``local`` backend, and an open program so its users can run work at once."""

from __future__ import annotations

import os
from datetime import date

import yaml

from kfabric.scenarios.loader import load_gpu_catalog


def gpu_model_for(product_name: str) -> str:
    """The catalog model whose name appears in an ``nvidia-smi`` product name (``NVIDIA H200`` → ``H200``);
    ``H100`` when none does."""
    names = sorted(load_gpu_catalog(), key=len, reverse=True)
    upper = product_name.upper().replace(" ", "-")
    for name in names:
        if name != "none" and name.upper() in upper:
            return name
    return "H100"


def local_scenario_text(gpus: int, gpu_model: str = "H100", node: str = "local") -> str:
    cpus = os.cpu_count() or 2
    try:
        mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        mem_mib = 16_384
    doc = {
        "name": "local",
        "description": f"This machine ({node}): {gpus} x {gpu_model}, run by the local backend.",
        "owners": [{"name": "local", "kind": "government"}],
        "sites": [
            {
                "name": "localhost",
                "region": "local",
                "operator": "this machine",
                "certification": "government-operated",
                "clearance": "restricted",
                "power_cap_mw": 1.0,
                "pue": 1.0,
            }
        ],
        "clusters": [{"name": node, "site": "localhost", "backend": "local"}],
        "pools": [
            {
                "name": node,
                "cluster": node,
                "gpu_model": gpu_model,
                "gpus_per_node": gpus,
                "nvlink_domain_gpus": gpus,
                "nodes": 1,
                "nodes_per_rack": 1,
                "racks_per_unit": 1,
                "node_power_kw": 1.0,
                "owner": "local",
                "sharing": "shared",
                "online": date(2020, 1, 1),
                # processes share the cores and memory; declare at least the scheduler's per-GPU defaults
                # (4 CPUs, 32 GiB) so that a job asking only for GPUs fits on a small machine
                "cpu_milli_per_node": max(cpus * 1000, gpus * 4000),
                "memory_mib_per_node": max(int(mem_mib), gpus * 32768),
            }
        ],
        "organizations": [{"name": "local", "kind": "institute", "region": "local"}],
        "projects": [{"name": "default", "organization": "local"}],
        "programs": [{"name": "local", "description": "Open use of this machine.", "owner": "local"}],
        "grants": [
            {
                "id": "g-default",
                "program": "local",
                "project": "default",
                "start": date(2020, 1, 1),
                "end": date(2100, 1, 1),
                "credit_su_hours": 1_000_000_000,
            }
        ],
        "documented_totals": {"gpus": gpus, "nodes": 1, "by_owner": {"local": gpus}},
    }
    return yaml.safe_dump(doc, sort_keys=False)
