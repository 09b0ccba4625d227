"""``kfabric report``: argument handling, default output path, and exit code 2 with a clear message on bad input."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from kfabric.cli import report_cmd
from kfabric.cli.errors import UsageError
from kfabric.model.errors import KfabricError
from kfabric.sim.metrics import JOB_FIELDS

JOB_HEADER = list(JOB_FIELDS)  # the columns kfabric.sim.run writes
TIMELINE_HEADER = [
    "t_s",
    "queue",
    "running",
    "online_gpus",
    "allocated_gpus",
    "fragmentation",
    "owner:acme",
    "site:lab",
    "power_mw:lab",
]


def make_run(root: Path, policy: str) -> Path:
    d = root / policy
    d.mkdir(parents=True)
    with (d / "jobs.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(JOB_HEADER)
        w.writerow(
            ["j1", "alpha", 1, "1", 0, 60, 3_660, 60, 3_660, 3_600, 1.02, 0, 0, 3_600, 3_600, "succeeded", "h100"]
        )
    with (d / "timeline.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(TIMELINE_HEADER)
        for i in range(3):
            w.writerow([i * 3_600.0, 0, 1, 8.0, 1.0, 0.0, 1.0, 1.0, 0.001])
    summary = {
        "utilization": 0.125,
        "avg_jct_s": 3_660.0,
        "tenants": {"alpha": {"share": 1.0, "entitlement": 1.0}},
        "run": {"policy": policy, "scenario": "lab", "workload": "toy", "seed": 1, "days": 1},
    }
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kfabric")
    report_cmd.register(p.add_subparsers(dest="command"))
    return p


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """What ``kfabric.cli.main.main`` does once ``report`` is registered: errors are exit code 2."""
    args = parser().parse_args(argv)
    try:
        code = args.handler(args)
    except (KfabricError, ValueError) as exc:
        print(f"error: {exc}", file=__import__("sys").stderr)
        code = 2
    out, err = capsys.readouterr()
    return code, out, err


def test_default_out_is_next_to_the_first_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = make_run(tmp_path / "runs", "fifo"), make_run(tmp_path / "runs", "kfabric")
    code, out, _ = run_cli(["report", str(a), str(b)], capsys)
    assert code == 0
    report = tmp_path / "runs" / "report.html"
    assert report.is_file()
    assert str(report) in out
    page = report.read_text()
    assert "fifo" in page and "kfabric" in page and '<script src="http' not in page


def test_out_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, "fifo")
    target = tmp_path / "new" / "dir" / "cmp.html"
    code, out, _ = run_cli(["report", str(run), "--out", str(target)], capsys)
    assert code == 0 and target.is_file() and str(target) in out


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: [str(p / "missing")], ["does not exist"]),
        (lambda p: [str(make_run(p, "fifo") / "jobs.csv")], ["is not a directory"]),
    ],
)
def test_bad_run_dir_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, words: list[str]
) -> None:
    argv = make(tmp_path)  # type: ignore[operator]
    code, _, err = run_cli(["report", *argv, "--out", str(tmp_path / "r.html")], capsys)
    assert code == 2
    for word in words:
        assert word in err
    assert not (tmp_path / "r.html").exists()


def test_out_must_be_an_html_file(tmp_path: Path) -> None:
    run = make_run(tmp_path, "fifo")
    for out in (tmp_path, tmp_path / "summary.json"):
        args = parser().parse_args(["report", str(run), "--out", str(out)])
        with pytest.raises(UsageError, match="--out"):
            args.handler(args)


def test_needs_a_run_dir(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["report"])
    assert exc.value.code == 2
    assert "RUN_DIR" in capsys.readouterr().err


def test_wired_into_the_kfabric_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kfabric.cli import main as cli_main

    sub = next(a for a in cli_main.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "report" in sub.choices
    assert cli_main.main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    run = make_run(tmp_path, "fifo")
    assert cli_main.main(["report", str(run)]) == 0
    assert (tmp_path / "report.html").is_file()
