"""The openb scenario from Alibaba's real node list, and the errors a bad node list gives."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kfabric.model import fleet_nodes
from kfabric.scenarios.errors import ScenarioError
from kfabric.scenarios.loader import load_scenario
from kfabric.scenarios.openb import DEFAULT_NODES_CSV, load_openb

PROJECT = Path(__file__).resolve().parents[2]
NODES_CSV = PROJECT.parent / "shared/traces/alibaba-openb-2023/csv/openb_node_list_all_node.csv"
HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"

needs_trace = pytest.mark.skipif(not NODES_CSV.exists(), reason=f"trace not present at {NODES_CSV}")


@needs_trace
def test_openb_real_node_list_totals() -> None:
    s = load_openb(NODES_CSV)
    assert sum(p.nodes for p in s.fleet.pools) == 1_523
    assert s.fleet.gpus == 6_212
    assert s.documented_totals == {"nodes": 1_523, "gpus": 6_212}
    assert s.fleet.site("alibaba-pai").clearance.label == "internal"


@needs_trace
def test_openb_by_model() -> None:
    gpus: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for p in load_openb(NODES_CSV).fleet.pools:
        gpus[p.gpu_model] += p.gpus
        nodes[p.gpu_model] += p.nodes
    assert dict(gpus) == {
        "A10": 2, "G2": 4_392, "G3": 312, "P100": 265, "T4": 842, "V100M16": 195, "V100M32": 204, "none": 0,
    }  # fmt: skip
    assert dict(nodes) == {
        "A10": 2, "G2": 549, "G3": 39, "P100": 134, "T4": 404, "V100M16": 55, "V100M32": 30, "none": 310,
    }  # fmt: skip


@needs_trace
def test_openb_default_path_and_name_resolve_to_the_shared_trace() -> None:
    assert DEFAULT_NODES_CSV.resolve() == NODES_CSV.resolve()
    s = load_scenario("openb")
    assert (s.name, s.fleet.gpus) == ("openb", 6_212)
    paths = [n.path for n in fleet_nodes(s.fleet)]
    assert len(set(paths)) == len(paths) == 1_523


def test_openb_small_csv_through_the_loader(tmp_path: Path) -> None:
    csv = tmp_path / "nodes.csv"
    csv.write_text(HEADER + "n0,96000,786432,8,G2\nn1,96000,786432,8,G2\nn2,32000,262144,0,\nn3,64000,262144,2,T4\n")
    s = load_scenario(f"openb:{csv}")
    assert s.fleet.gpus == 18
    assert sorted((p.gpu_model, p.gpus_per_node, p.nodes) for p in s.fleet.pools) == [
        ("G2", 8, 2),
        ("T4", 2, 1),
        ("none", 0, 1),
    ]


BAD_ROWS = [
    # (id, csv text, key, line, expected, found)
    ("cpu-not-a-number", HEADER + "n0,32000,262144,0,\nn1,x,262144,0,\n", "cpu_milli", 3, "a whole number", "'x'"),
    ("negative-gpus", HEADER + "n0,32000,262144,-1,T4\n", "gpu", 2, "a number >= 0", "-1"),
    ("memory-float", HEADER + "n0,32000,1.5,0,\n", "memory_mib", 2, "a whole number", "'1.5'"),
    ("short-row", HEADER + "n0,32000\n", "memory_mib", 2, "a whole number", "None"),
    ("gpus-without-model", HEADER + "n0,32000,262144,0,\nn1,32000,262144,0,\nn2,32000,262144,4,\n", "model", 4,
     "a GPU model for a node with GPUs", "nothing"),
    ("missing-column", "sn,cpu_milli,memory_mib,gpu\nn0,1,1,0\n", "header", 1,
     "columns sn,cpu_milli,memory_mib,gpu,model", "missing model"),
    ("unknown-model", HEADER + "n0,32000,262144,8,XPU9\nn1,32000,262144,8,ZPU\n", "model", None,
     "models of the GPU catalog", "XPU9, ZPU"),
    ("no-rows", HEADER, "", None, "at least one node row", "none"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "key", "line", "expected", "found"), [r[1:] for r in BAD_ROWS], ids=[r[0] for r in BAD_ROWS]
)
def test_bad_node_list_names_file_line_and_field(
    tmp_path: Path, text: str, key: str, line: int | None, expected: str, found: str
) -> None:
    csv = tmp_path / "nodes.csv"
    csv.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_openb(csv)
    err = info.value
    assert (err.file, err.key_path, err.line, err.expected, err.found) == (str(csv), key, line, expected, found)


def test_missing_node_list(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(f"openb:{tmp_path / 'absent.csv'}")
    assert (info.value.line, info.value.found) == (None, "no readable file")
