"""``kfabric bench sim``: its JSON contract on a small run, and clear errors for bad input."""

from __future__ import annotations

import json

import pytest

from kfabric.cli.main import main


@pytest.mark.parametrize("interval", ["60", "300"])
def test_json_reports_the_jobs_it_replayed(capsys: pytest.CaptureFixture[str], interval: str) -> None:
    assert main(["bench", "sim", "--jobs", "400", "--interval", interval, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"jobs", "wall_s", "jobs_per_min", "cycles", "sim_days", "interval_s"} <= set(data)
    assert data["jobs"] == 400 and data["interval_s"] == float(interval)
    assert data["jobs_per_min"] == pytest.approx(400 / data["wall_s"] * 60.0, rel=0.05)  # wall_s is rounded
    assert data["cycles"] >= 1
    assert data["build"] == "python"  # the suite's first pass runs the sources (tests/conftest.py)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--jobs", "0"], "--jobs: must be >= 1, got 0"),
        (["--interval", "0"], "--interval: must be > 0 seconds, got 0.0"),
        (["--interval", "nan"], "--interval: must be > 0 seconds, got nan"),
    ],
    ids=["no-jobs", "zero-interval", "nan-interval"],
)
def test_bad_input_exits_2_with_one_error_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["bench", "sim", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
