"""``load_workload``: every spec, the days cut, and the errors that list the valid specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kfabric.scenarios.loader import load_scenario
from kfabric.traces.openb import COLUMNS
from kfabric.traces.philly import DEFAULT_THROUGHPUTS, THROUGHPUTS_NAME
from kfabric.traces.sources import find_throughputs, load_workload
from kfabric.traces.tiresias import DEFAULT_CSV as TIRESIAS_CSV

TABLE = {"v100": {"A|1": 2.0, "A|4": 10.0}}


@pytest.fixture
def gavel_dir(tmp_path: Path) -> Path:
    """``gavel/msr/seed=0`` with two VCs, the throughput JSON two folders up (as in Gavel's repo)."""
    folder = tmp_path / "gavel" / "msr" / "seed=0"
    folder.mkdir(parents=True)
    (tmp_path / "gavel" / THROUGHPUTS_NAME).write_text(json.dumps(TABLE))
    (folder / "vc1.trace").write_text("A\tc\t-s\t1\t100\t0.0\t1\nA\tc\t-s\t1\t100\t200000.0\t4\n")
    (folder / "vc2.trace").write_text("A\tc\t-s\t1\t40\t10.0\t4\n")
    return folder


@pytest.fixture
def pods_csv(tmp_path: Path) -> Path:
    path = tmp_path / "pods.csv"
    rows = ["a,1000,1024,1,500,,BE,Running,0,100,0", "b,1000,1024,2,1000,,LS,Running,90000,90100,90000"]
    path.write_text(",".join(COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("days", "expected_ids"),
    [(None, ["philly-vc1-0001", "philly-vc2-0001", "philly-vc1-0002"]), (1.0, ["philly-vc1-0001", "philly-vc2-0001"])],
    ids=["all", "first-day"],
)
def test_philly_dir_spec(gavel_dir: Path, days: float | None, expected_ids: list[str]) -> None:
    w = load_workload(f"philly:{gavel_dir}", None, days, seed=1)
    assert [j.job.id for j in w.jobs] == expected_ids
    assert set(w.tenants) == {"vc1", "vc2"}


def test_openb_and_tiresias_specs(pods_csv: Path) -> None:
    openb = load_workload(f"openb:{pods_csv}", None, 1.0, seed=0)
    assert [j.job.id for j in openb.jobs] == ["a"]
    assert set(openb.tenants) == {"openb-be"}  # tenants without jobs are dropped with the days cut
    if TIRESIAS_CSV.exists():
        assert len(load_workload("tiresias", None, None, seed=0).jobs) == 60
        assert len(load_workload(f"tiresias:{TIRESIAS_CSV}", None, 0.01, seed=0).jobs) < 60


@pytest.mark.parametrize(
    ("spec", "days", "check"),
    [
        ("national", 2.0, lambda w: w.name == "national-lab" and max(j.job.submit_s for j in w.jobs) <= 2 * 86400),
        ("national:scale=0.5", 2.0, lambda w: "scale 0.5" in w.description),
        ("national:scale=2,load=0.7,on=2026-06-01", 1.0, lambda w: "offered load target 140.0%" in w.description),
        ("national", None, lambda w: "over 7 d" in w.description),
    ],
    ids=["default", "scale", "all-options", "default-days"],
)
def test_national_specs(spec: str, days: float | None, check: object) -> None:
    w = load_workload(spec, load_scenario("lab"), days, seed=3)
    assert w.jobs and check(w)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("spec", "scenario", "message"),
    [
        ("helios", False, "unknown workload source 'helios'"),
        ("national", False, "needs a scenario"),
        ("national:speed=2", True, "unknown national option"),
        ("national:scale=fast", True, "cannot read option"),
        ("national:scale=0", True, "scale must be > 0"),
    ],
    ids=["unknown", "no-scenario", "bad-option", "bad-value", "zero-scale"],
)
def test_bad_specs_list_the_valid_ones(spec: str, scenario: bool, message: str) -> None:
    with pytest.raises(ValueError) as err:
        load_workload(spec, load_scenario("lab") if scenario else None, 1.0, seed=0)
    assert message in str(err.value)
    assert "philly[:DIR], openb[:PODS_CSV], tiresias[:CSV], national" in str(err.value)


def test_bad_days_and_missing_throughputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="days must be > 0"):
        load_workload("tiresias", None, 0.0, seed=0)
    assert find_throughputs(tmp_path) == DEFAULT_THROUGHPUTS
