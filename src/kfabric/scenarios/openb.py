"""The ``openb`` scenario: Alibaba's GPU cluster trace node list (cluster-trace-gpu-v2023) as one fleet."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import date
from pathlib import Path

from kfabric.model import Classification, Cluster, Fleet, NodePool, Owner, OwnerKind, Sharing, Site
from kfabric.scenarios.errors import ScenarioError
from kfabric.scenarios.loader import Scenario, load_gpu_catalog

DEFAULT_NODES_CSV = (
    Path(__file__).resolve().parents[3].parent / "shared/traces/alibaba-openb-2023/csv/openb_node_list_all_node.csv"
)
_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")


def read_node_rows(path: Path) -> list[tuple[str, int, int, int, str]]:
    """Rows ``(sn, cpu_milli, memory_mib, gpus, model)``; a bad row raises with its file, line and field."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError:
        raise ScenarioError(
            str(path), "", None, "an openb node list CSV (sn,cpu_milli,memory_mib,gpu,model)", "no readable file"
        ) from None
    rows: list[tuple[str, int, int, int, str]] = []
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ScenarioError(
                str(path), "header", 1, "columns " + ",".join(_COLUMNS), f"missing {', '.join(missing)}"
            )
        for line, row in enumerate(reader, start=2):
            values: list[int] = []
            for key in ("cpu_milli", "memory_mib", "gpu"):
                try:
                    value = int(row[key])
                except (TypeError, ValueError):
                    raise ScenarioError(str(path), key, line, "a whole number", repr(row[key])) from None
                if value < 0:
                    raise ScenarioError(str(path), key, line, "a number >= 0", str(value))
                values.append(value)
            model = (row["model"] or "").strip()
            if values[2] > 0 and not model:
                raise ScenarioError(str(path), "model", line, "a GPU model for a node with GPUs", "nothing")
            rows.append((row["sn"], values[0], values[1], values[2], model or "none"))
    if not rows:
        raise ScenarioError(str(path), "", None, "at least one node row", "none")
    return rows


def load_openb(path: Path) -> Scenario:
    """One pool per distinct (model, GPUs, CPU, memory) node shape; nodes keep the trace's order inside it."""
    rows = read_node_rows(path)
    catalog = load_gpu_catalog()
    shapes = Counter((model, gpus, cpu, mem) for _, cpu, mem, gpus, model in rows)
    unknown = sorted({m for m, *_ in shapes} - set(catalog))
    if unknown:
        raise ScenarioError(str(path), "model", None, "models of the GPU catalog", ", ".join(unknown))
    pools = []
    for i, ((model, gpus, cpu, mem), count) in enumerate(sorted(shapes.items())):
        pools.append(
            NodePool(
                name=f"{model.lower()}-{gpus}g-{cpu // 1000}c-{mem // 1024}g-{i}",
                cluster="openb",
                gpu_model=model,
                gpus_per_node=gpus,
                nodes=count,
                nvlink_domain_gpus=min(catalog[model].nvlink_domain_gpus, gpus) if gpus else 1,
                nodes_per_rack=16,
                racks_per_unit=8,
                node_power_kw=max(0.5, gpus * catalog[model].board_power_w / 1000 + 0.5),
                owner="alibaba",
                sharing=Sharing.SHARED,
                online=date(2023, 1, 1),
                cpu_milli_per_node=cpu,
                memory_mib_per_node=mem,
            )
        )
    used = {p.gpu_model for p in pools}
    fleet = Fleet(
        name="openb",
        gpu_models=tuple(m for n, m in sorted(catalog.items()) if n in used),
        owners=(Owner("alibaba", OwnerKind.PRIVATE),),
        sites=(Site("alibaba-pai", "cn", "Alibaba", "private-cloud", Classification.INTERNAL, 50.0, 1.3),),
        clusters=(Cluster("openb", "alibaba-pai"),),
        pools=tuple(pools),
    )
    return Scenario(
        name="openb",
        description=f"Alibaba GPU cluster trace 2023 (openb): {len(rows)} nodes from {path.name}",
        fleet=fleet,
        documented_totals={"nodes": len(rows), "gpus": sum(r[3] for r in rows)},
    )
