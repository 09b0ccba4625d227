"""``kfabric fleet show``: tables for people, JSON for machines, clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kfabric.cli.main import main

TOP_KEYS = {"scenario", "at", "totals", "by_owner", "by_site", "by_model", "pools"}
TOTAL_KEYS = {
    "gpus_online",
    "gpus_total",
    "nodes_online",
    "nodes_total",
    "nvlink_domains_online",
    "pools_online",
    "pools_total",
    "peak_it_mw",
    "facility_mw",
    "power_cap_mw",
}
SITE_KEYS = {
    "name",
    "region",
    "operator",
    "certification",
    "clearance",
    "gpus_online",
    "gpus_total",
    "nodes_online",
    "peak_it_mw",
    "peak_it_mw_total",
    "facility_mw",
    "power_cap_mw",
    "pue",
}


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["fleet", "show", *argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(
    ("scenario", "words"),
    [
        ("lab", ["lab-gov", "lab-acme", "government", "acme", "H100", "RTX-PRO-6000", "restricted"]),
        ("korea-2030", ["government", "kisti", "samsung", "sk", "hyundai", "naver", "naicc-haenam", "268,616"]),
    ],
    ids=["lab", "korea-2030"],
)
def test_table_output_mentions_owners_sites_and_models(
    capsys: pytest.CaptureFixture[str], scenario: str, words: list[str]
) -> None:
    assert main(["fleet", "show", scenario]) == 0
    out = capsys.readouterr().out
    for word in ["By owner", "By site", "By GPU model", "Totals", *words]:
        assert word in out, word


def test_table_output_at_a_date_shows_online_of_total(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "show", "korea-2030", "--at", "2025-12-31"]) == 0
    out = capsys.readouterr().out
    assert "as of 2025-12-31" in out
    assert "9,320 / 268,616" in out


def test_json_has_stable_keys_and_lab_values(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "lab")
    assert set(data) == TOP_KEYS
    assert data["scenario"] == "lab" and data["at"] is None
    totals = data["totals"]
    assert isinstance(totals, dict) and set(totals) == TOTAL_KEYS
    assert (totals["gpus_online"], totals["gpus_total"], totals["nodes_total"], totals["pools_online"]) == (
        48,
        48,
        6,
        2,
    )
    # 4 HGX nodes = 4 NVLink domains; 16 PCIe GPUs = 16 domains of one GPU
    assert totals["nvlink_domains_online"] == 20
    assert totals["peak_it_mw"] == pytest.approx(0.0536)  # 4 x 10.2 kW + 2 x 6.4 kW
    assert totals["facility_mw"] == pytest.approx(0.0408 * 1.3 + 0.0128 * 1.4, abs=1e-4)
    assert data["by_owner"] == [
        {"name": "government", "kind": "government", "gpus_online": 32, "gpus_total": 32, "nodes_online": 4},
        {"name": "acme", "kind": "private", "gpus_online": 16, "gpus_total": 16, "nodes_online": 2},
    ]
    sites = data["by_site"]
    assert isinstance(sites, list) and all(set(s) == SITE_KEYS for s in sites)
    assert [(s["name"], s["clearance"], s["power_cap_mw"]) for s in sites] == [
        ("lab-gov", "restricted", 0.1),
        ("lab-acme", "internal", 0.05),
    ]


@pytest.mark.parametrize(
    ("at", "gpus_online", "pools_online"),
    [("2024-12-31", 0, 0), ("2025-06-01", 32, 1), ("2026-01-01", 48, 2)],
    ids=["before", "government-only", "all"],
)
def test_json_at_a_date_counts_pools_online(
    capsys: pytest.CaptureFixture[str], at: str, gpus_online: int, pools_online: int
) -> None:
    data = run_json(capsys, "lab", "--at", at)
    totals = data["totals"]
    assert isinstance(totals, dict)
    assert data["at"] == at
    assert (totals["gpus_online"], totals["gpus_total"], totals["pools_online"]) == (gpus_online, 48, pools_online)
    pools = data["pools"]
    assert isinstance(pools, list) and sum(p["is_online"] for p in pools) == pools_online


def test_json_korea_2030_matches_documented_year_end(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "korea-2030", "--at", "2027-12-31")
    totals = data["totals"]
    assert isinstance(totals, dict)
    assert (totals["gpus_online"], totals["gpus_total"], totals["nodes_total"]) == (145_696, 268_616, 51_115)
    by_owner = data["by_owner"]
    assert isinstance(by_owner, list)
    owners = {o["name"]: o["gpus_total"] for o in by_owner}
    assert owners == {
        "government": 50_000,
        "kisti": 8_400,
        "samsung": 50_040,
        "sk": 50_000,
        "hyundai": 50_176,
        "naver": 60_000,
    }


def test_yaml_path_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    lab = Path(__file__).resolve().parents[2] / "src/kfabric/scenarios/data/lab.yaml"
    assert run_json(capsys, str(lab))["scenario"] == "lab"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lab", "--at", "2025-13-01"], "error: --at: '2025-13-01' is not a valid date"),
        (["lab", "--at", "tomorrow"], "error: --at: expected a date YYYY-MM-DD (e.g. 2027-01-01), got 'tomorrow'"),
        (["lab", "--at", "2025/01/01"], "error: --at: expected a date YYYY-MM-DD"),
        (["no-such-scenario"], "error: no-such-scenario: expected a scenario name"),
    ],
    ids=["bad-month", "word", "slashes", "unknown-scenario"],
)
def test_bad_input_exits_2_with_one_error_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["fleet", "show", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = " ".join(captured.err.split())  # rich may wrap long lines
    assert err.startswith(message)
    assert "Traceback" not in captured.err


def test_fleet_without_action_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet"]) == 2
    assert "show" in capsys.readouterr().out


def test_local_is_the_fleet_serve_runs_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    """``fleet show local`` (it used to say "neither a scenario nor a file"): the one-node fleet of this machine's
    GPUs, as ``kfabric serve --fleet local`` runs it; declared with --local-gpus where none is detected."""
    data = run_json(capsys, "local", "--local-gpus", "4")
    assert data["scenario"] == "local" and data["totals"] == data["totals"] | {"gpus_total": 4, "nodes_total": 1}
    assert main(["fleet", "show", "lab", "--local-gpus", "4"]) == 2
    assert "--local-gpus goes with SCENARIO local" in capsys.readouterr().err
