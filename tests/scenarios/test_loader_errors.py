"""Bad scenario files fail with the exact file, key path, line, expectation and finding — and load nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from kfabric.scenarios.errors import ScenarioError
from kfabric.scenarios.loader import load_file, load_gpu_catalog, load_scenario

# A small valid scenario; each case below edits it once. Line numbers in the cases refer to this text.
BASE = """\
name: t
description: tiny
owners:
  - {name: gov, kind: government}
  - {name: acme, kind: private}
sites:
  - name: s1
    region: daejeon
    operator: lab
    certification: government-operated
    clearance: restricted
    power_cap_mw: 1
    pue: 1.3
clusters:
  - {name: c1, site: s1}
pools:
  - name: p1
    cluster: c1
    gpu_model: H100
    gpus_per_node: 8
    nodes: 2
    nodes_per_rack: 2
    racks_per_unit: 1
    node_power_kw: 10.2
    owner: gov
    sharing: shared
    online: 2025-01-01
organizations:
  - {name: kaist, kind: university, region: daejeon}
projects:
  - {name: llm, organization: kaist}
programs:
  - name: grants
    rules:
      eligible_kinds: [university]
      per_project_cap: {H100: 16}
grants:
  - {id: g1, program: grants, project: llm, start: 2025-01-01, end: 2026-01-01, reserved_model: H100, reserved_gpus: 8}
documented_totals: {gpus: 16, nodes: 2}
"""

POOL_KEYS = (
    "cluster, cpu_milli_per_node, gpu_model, gpus_per_node, memory_mib_per_node, name, node_names, node_power_kw, "
    "nodes, nodes_per_rack, nvlink_domain_gpus, online, owner, racks_per_unit, sharing"
)
TOP_KEYS = (
    "catalog, clusters, description, documented_totals, gpu_models, grants, name, organizations, owners, pools, "
    "programs, projects, sites"
)


@dataclass(frozen=True)
class Case:
    id: str
    old: str | None  # text of BASE to replace (None: use ``new`` as the whole file)
    new: str
    key_path: str
    line: int | None
    expected: str
    found: str

    def text(self) -> str:
        if self.old is None:
            return self.new
        assert BASE.count(self.old) == 1, f"{self.id}: {self.old!r} must occur once in BASE"
        return BASE.replace(self.old, self.new)


def catalog_names() -> str:
    return ", ".join(sorted(load_gpu_catalog()))


CASES = [
    # --- YAML itself
    Case("yaml-syntax", "  - {name: c1, site: s1}\n", "  - {name: c1, site: s1\n", "", 16, "valid YAML",
         "expected ',' or '}', but got ':'"),
    Case("yaml-bad-indent", "    region: daejeon\n", "   region: daejeon\n", "", 8, "valid YAML",
         "expected <block end>, but found '<block mapping start>'"),
    Case("empty-file", None, "", "", 1, "a YAML mapping", "an empty file"),
    Case("only-comments", None, "# nothing here\n", "", 1, "a YAML mapping", "an empty file"),
    Case("top-level-list", None, "- name: t\n", "", 1, "a mapping", "a list"),
    Case("duplicate-yaml-key", "    nodes: 2\n", "    nodes: 2\n    nodes: 3\n", "pools[0].nodes", 22, "unique keys",
         "a duplicate"),
    # --- missing keys and wrong types
    Case("missing-pool-nodes", "    nodes: 2\n", "", "pools[0].nodes", 17, "key 'nodes'", "no such key"),
    Case("missing-top-pools", "pools:\n", "pool_list:\n", "pools", 1, "key 'pools'", "no such key"),
    Case("missing-site-pue", "    pue: 1.3\n", "", "sites[0].pue", 7, "key 'pue'", "no such key"),
    Case("wrong-type-integer", "    nodes: 2\n", "    nodes: two\n", "pools[0].nodes", 21, "a whole number",
         "text 'two'"),
    Case("wrong-type-float-nodes", "    nodes: 2\n", "    nodes: 2.5\n", "pools[0].nodes", 21, "a whole number",
         "number 2.5"),
    Case("wrong-type-number", "    power_cap_mw: 1\n", "    power_cap_mw: high\n", "sites[0].power_cap_mw", 12,
         "a number", "text 'high'"),
    Case("wrong-type-list", "  - {name: c1, site: s1}\n", "  c1: s1\n", "clusters", 15, "a list", "a mapping"),
    Case("wrong-type-text", "name: t\n", "name: 42\n", "name", 1, "non-empty text", "number 42"),
    Case("wrong-type-bool", "    gpus_per_node: 8\n", "    gpus_per_node: true\n", "pools[0].gpus_per_node", 20,
         "a whole number", "boolean True"),
    # --- unknown keys (typos)
    Case("unknown-pool-key", "    online: 2025-01-01\n", "    online: 2025-01-01\n    cpu_mili_per_node: 1000\n",
         "pools[0].cpu_mili_per_node", 28, f"one of the known keys ({POOL_KEYS})", "unknown key 'cpu_mili_per_node'"),
    Case("unknown-top-key", "documented_totals:", "documented_total:", "documented_total", 39,
         f"one of the known keys ({TOP_KEYS})", "unknown key 'documented_total'"),
    # --- references
    Case("unknown-gpu-model", "    gpu_model: H100\n", "    gpu_model: H1OO\n", "pools[0].gpu_model", 19,
         "a GPU model of the catalog: " + catalog_names(), "text 'H1OO'"),
    Case("unknown-cluster", "    cluster: c1\n", "    cluster: c9\n", "pools[0].cluster", 18,
         "a name defined under clusters (c1)", "text 'c9'"),
    Case("unknown-site", "site: s1}", "site: s2}", "clusters[0].site", 15, "a name defined under sites (s1)",
         "text 's2'"),
    Case("unknown-owner", "    owner: gov\n", "    owner: govt\n", "pools[0].owner", 25,
         "a name defined under owners (acme, gov)", "text 'govt'"),
    Case("project-unknown-organization", "organization: kaist}", "organization: kaist-univ}",
         "projects[0].organization", 31, "an organization defined under organizations", "text 'kaist-univ'"),
    Case("grant-unknown-program", "program: grants,", "program: grant,", "grants[0].program", 38,
         "a program defined under programs", "text 'grant'"),
    Case("grant-unknown-project", "project: llm,", "project: lm,", "grants[0].project", 38,
         "a project defined under projects", "text 'lm'"),
    Case("grant-unknown-model", "reserved_model: H100,", "reserved_model: H101,", "grants[0].reserved_model", 38,
         "a GPU model of the catalog", "text 'H101'"),
    # --- duplicate names
    Case("duplicate-owner", "  - {name: acme, kind: private}\n", "  - {name: gov, kind: private}\n",
         "owners[1].name", 5, "a name not used before in owners", "text 'gov'"),
    Case("duplicate-cluster", "  - {name: c1, site: s1}\n", "  - {name: c1, site: s1}\n  - {name: c1, site: s1}\n",
         "clusters[1].name", 16, "a name not used before in clusters", "text 'c1'"),
    Case("duplicate-project", "  - {name: llm, organization: kaist}\n",
         "  - {name: llm, organization: kaist}\n  - {name: llm, organization: kaist}\n", "projects[1].name", 32,
         "a name not used before in projects", "text 'llm'"),
    Case("duplicate-grant-id", "documented_totals:",
         "  - {id: g1, program: grants, project: llm, start: 2025-01-01, end: 2025-06-01, credit_su_hours: 10}\n"
         "documented_totals:", "grants[1].id", 39, "a name not used before in grants", "text 'g1'"),
    # --- dates
    Case("bad-date-month", "    online: 2025-01-01\n", "    online: 2025-13-01\n", "pools[0].online", 27,
         "a valid date YYYY-MM-DD", "'2025-13-01' (month must be in 1..12)"),
    Case("bad-date-text", "    online: 2025-01-01\n", "    online: soon\n", "pools[0].online", 27,
         "a date YYYY-MM-DD", "text 'soon'"),
    Case("bad-date-with-time", "    online: 2025-01-01\n", "    online: 2025-01-01 08:00:00\n", "pools[0].online", 27,
         "a date YYYY-MM-DD", "date 2025-01-01T08:00:00"),
    Case("grant-end-before-start", "end: 2026-01-01", "end: 2024-01-01", "grants[0].end", 38, "a valid value",
         "grant 'g1'.end: end 2024-01-01 must be after start 2025-01-01"),
    # --- enums
    Case("bad-sharing", "    sharing: shared\n", "    sharing: public\n", "pools[0].sharing", 26,
         "one of dedicated, shared, lendable", "text 'public'"),
    Case("bad-clearance", "    clearance: restricted\n", "    clearance: secret\n", "sites[0].clearance", 11,
         "one of public, internal, confidential, restricted", "text 'secret'"),
    Case("bad-owner-kind", "kind: private}", "kind: corporate}", "owners[1].kind", 5, "one of government, private",
         "text 'corporate'"),
    Case("bad-org-kind", "kind: university,", "kind: college,", "organizations[0].kind", 29,
         "one of government, university, institute, startup, enterprise", "text 'college'"),
    Case("bad-eligible-kind", "eligible_kinds: [university]", "eligible_kinds: [college]",
         "programs[0].rules.eligible_kinds[0]", 35, "one of government, university, institute, startup, enterprise",
         "text 'college'"),
    Case("bad-backend", "site: s1}", "site: s1, backend: cloud}", "clusters[0].backend", 15,
         "use one of sim, local, slurm, kubernetes", "cluster 'c1'.backend: unknown backend 'cloud'"),
    # --- numbers out of range
    Case("zero-nodes", "    nodes: 2\n", "    nodes: 0\n", "pools[0].nodes", 21, "a whole number >= 1", "number 0"),
    Case("negative-gpus-per-node", "    gpus_per_node: 8\n", "    gpus_per_node: -8\n", "pools[0].gpus_per_node", 20,
         "a whole number >= 0", "number -8"),
    Case("negative-node-power", "    node_power_kw: 10.2\n", "    node_power_kw: -1\n", "pools[0].node_power_kw", 24,
         "a valid value", "pool 'p1'.node_power_kw: must be > 0 kW, got -1.0"),
    Case("zero-power-cap", "    power_cap_mw: 1\n", "    power_cap_mw: 0\n", "sites[0].power_cap_mw", 12,
         "a valid value", "site 's1'.power_cap_mw: must be > 0 MW, got 0.0"),
    Case("pue-below-one", "    pue: 1.3\n", "    pue: 0.9\n", "sites[0].pue", 13,
         "PUE is facility power / IT power, typically 1.1-1.6", "site 's1'.pue: must be between 1.0 and 3.0, got 0.9"),
    Case("negative-grant-credit", "reserved_gpus: 8}", "reserved_gpus: 8, credit_su_hours: -5}",
         "grants[0].credit_su_hours", 38, "a number >= 0", "number -5"),
    # --- NVLink domain vs node shape
    Case("nvlink-not-dividing-node", "    gpus_per_node: 8\n", "    gpus_per_node: 8\n    nvlink_domain_gpus: 3\n",
         "pools[0].nvlink_domain_gpus", 21, "an NVLink domain inside a node must split the node evenly",
         "pool 'p1'.nvlink_domain_gpus: 3 does not divide gpus_per_node 8"),
    Case("nvlink-larger-than-rack", "    gpus_per_node: 8\n", "    gpus_per_node: 8\n    nvlink_domain_gpus: 24\n",
         "pools[0].nvlink_domain_gpus", 21,
         "make the domain a multiple of gpus_per_node that divides the rack (NVL72: 4 GPUs x 18 nodes)",
         "pool 'p1'.nvlink_domain_gpus: a 24-GPU domain is not a whole number of 8-GPU nodes that tiles a 2-node rack"),
]  # fmt: skip


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_base_scenario_is_valid(tmp_path: Path) -> None:
    s = load_file(_write(tmp_path, BASE))
    assert (s.name, s.fleet.gpus, len(s.grants)) == ("t", 16, 1)
    assert s.description == "tiny"


def test_description_is_optional(tmp_path: Path) -> None:
    assert load_file(_write(tmp_path, BASE.replace("description: tiny\n", ""))).description == ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_scenario_raises_exact_error(tmp_path: Path, case: Case) -> None:
    path = _write(tmp_path, case.text())
    with pytest.raises(ScenarioError) as info:
        load_file(path)
    err = info.value
    assert (err.file, err.key_path, err.line, err.expected, err.found) == (
        str(path),
        case.key_path,
        case.line,
        case.expected,
        case.found,
    )
    where = f"{path}:{case.line}" if case.line is not None else str(path)
    assert str(err).startswith(where + (f" at {case.key_path}" if case.key_path else "") + ": expected ")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(str(missing))
    assert (info.value.file, info.value.line, info.value.found) == (str(missing), None, "neither")


def test_failed_load_leaves_nothing_half_loaded(tmp_path: Path) -> None:
    """A scenario that overrides a catalog model and fails at its last grant returns nothing and changes nothing."""
    catalog_before = load_gpu_catalog()
    override = "gpu_models:\n  - {name: H100, memory_gb: 80, board_power_w: 700, nvlink_domain_gpus: 8, su_weight: 9}\n"
    broken = override + BASE.replace("project: llm,", "project: nobody,")
    result = None
    with pytest.raises(ScenarioError) as info:
        result = load_file(_write(tmp_path, broken))
    assert result is None
    assert info.value.key_path == "grants[0].project"
    assert load_gpu_catalog() == catalog_before
    assert load_gpu_catalog()["H100"].su_weight == 1.0
    fine = load_file(_write(tmp_path, override + BASE))
    assert fine.fleet.model("H100").su_weight == 9.0
    assert load_file(_write(tmp_path, BASE)).fleet.model("H100").su_weight == 1.0
