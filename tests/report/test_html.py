"""The HTML run report: every section, every run, the metric table, self-contained, clear errors on bad input."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kfabric.report.html import (
    MAX_POINTS,
    SECTION_TITLES,
    cdf_points,
    downsample,
    fmt_duration,
    fmt_power,
    jct_by_size,
    render_report,
    write_report,
)
from kfabric.report.runs import read_jobs, read_run, read_runs
from kfabric.sim.metrics import JOB_FIELDS

JOB_HEADER = list(JOB_FIELDS)  # the columns kfabric.sim.run writes


def make_run(
    root: Path,
    policy: str,
    *,
    jobs: list[tuple[str, float, float]] | None = None,
    samples: int = 48,
    tenants: dict[str, tuple[float, float]] | None = None,
    metrics: dict[str, Any] | None = None,
    dirname: str | None = None,
) -> Path:
    """A run directory like ``kfabric.sim.run.write_run`` writes; ``jobs`` are (size_class, wait_s, run_s)."""
    d = root / (dirname or policy)
    d.mkdir(parents=True)
    if jobs is None:
        jobs = [("1", 0.0, 3_600.0), ("1", 600.0, 1_800.0), ("2-8", 7_200.0, 36_000.0), ("9-64", 86_400.0, 90_000.0)]
    with (d / "jobs.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(JOB_HEADER)
        for i, (size, wait, run) in enumerate(jobs):
            submit = 100.0 * i
            gpus = {"fraction": 0.5, "1": 1, "2-8": 4, "9-64": 16}.get(size, 128)
            values = [
                *(f"j{i}", "alpha", gpus, size, submit, submit + wait, submit + wait + run, wait, wait + run),
                *(run, 1.0, 0, 0.0, run * gpus, run * gpus, "succeeded", "h100", 0, ""),
            ]
            # columns added later (e.g. the GPU model a job ran on) are left empty
            w.writerow(values + [""] * (len(JOB_HEADER) - len(values)))
    t = np.arange(samples) * 3_600.0
    alloc_a = np.linspace(0, 16, samples)
    alloc_b = np.full(samples, 20.0)
    rows = {
        "t_s": t,
        "queue": np.arange(samples) % 7,
        "running": np.full(samples, 5),
        "online_gpus": np.full(samples, 48.0),
        "allocated_gpus": alloc_a + alloc_b,
        "fragmentation": np.full(samples, 0.25),
        "owner:acme": alloc_a,
        "owner:government": alloc_b,
        "site:lab-acme": alloc_a,
        "site:lab-gov": alloc_b,
        "power_mw:lab-acme": alloc_a * 0.0008,
        "power_mw:lab-gov": alloc_b * 0.0014,
    }
    with (d / "timeline.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(rows))
        for i in range(samples):
            w.writerow([float(v[i]) for v in rows.values()])
    tenants = tenants or {"alpha": (0.6, 0.5), "beta": (0.4, 0.5)}
    summary: dict[str, Any] = {
        "utilization": 0.805,
        "avg_jct_s": 97_560.0,
        "p50_jct_s": 5_400.0,
        "p99_jct_s": 233_280.0,
        "avg_wait_s": 91_440.0,
        "p999_wait_s": 224_640.0,
        "avg_bounded_slowdown": 63.42,
        "preemptions": 35,
        "lost_gpu_hours": 105.8,
        "jain_index": 0.876,
        "tenants": {k: {"share": s, "entitlement": e} for k, (s, e) in tenants.items()},
        "power_peak_mw": {"lab-acme": 0.0128, "lab-gov": 0.028},
        "fragmentation_avg": 0.25,
        "jobs_finished": len(jobs),
        "jobs_unfinished": 0,
        "cycles": 783,
        "wall_s": 1.8,
        "jobs_per_min": 13_147.0,
        "sim_days": samples / 24,
        "run": {"policy": policy, "scenario": "lab", "workload": "toy", "seed": 7, "days": 2.0, "start": "2026-06-01"},
    }
    summary.update(metrics or {})
    (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    fifo = make_run(tmp_path, "fifo")
    kf = make_run(
        tmp_path,
        "kfabric",
        jobs=[("1", 0.0, 3_600.0), ("2-8", 60.0, 36_000.0)],
        metrics={"utilization": 0.889, "avg_jct_s": 43_630.0, "p50_jct_s": 5_705.0, "preemptions": 65},
    )
    return [fifo, kf]


def best_cells(page: str) -> list[str]:
    return re.findall(r"<td class=best[^>]*>([^<]*)</td>", page)


def test_report_has_every_section_every_run_and_the_metric_table(two_runs: list[Path], tmp_path: Path) -> None:
    out = write_report(two_runs, tmp_path / "out" / "report.html")
    page = out.read_text()
    for title in SECTION_TITLES.values():
        assert f"<h2>{title}</h2>" in page
    for policy in ("fifo", "kfabric"):
        assert f"{policy}</th>" in page  # a table column per run
        assert f'"name":"share \\u2014 {policy}"' in page  # and a trace per run in the charts
    # the header says what ran
    for word in ("lab", "toy", "fifo, kfabric", "2026-06-01"):
        assert word in page
    # the comparison table in human units; best value per row highlighted
    for value in ("80.5%", "88.9%", "27.1 h", "12.1 h", "1.5 h", "1.6 h", "2.7 d", "35", "65", "105.8 GPU-h"):
        assert f">{value}</td>" in page, value
    best = best_cells(page)
    assert "88.9%" in best and "80.5%" not in best  # utilization: higher is better
    assert "12.1 h" in best and "27.1 h" not in best  # mean JCT: lower is better
    assert "35" in best and "65" not in best  # preemptions: lower is better
    assert "0.876" not in best  # a tie is no winner
    # self-contained: plotly.js inline, exactly once, and nothing fetched
    assert '<script src="http' not in page
    assert 'src="//' not in page
    assert page.count("* plotly.js v") == 1
    assert len(page) < 6_000_000


def test_timelines_and_cdfs_are_downsampled(tmp_path: Path) -> None:
    many = [("1", float(i % 5_000), 3_600.0) for i in range(20_000)]
    run = make_run(tmp_path, "fifo", samples=10_000, jobs=many)
    page = render_report(read_runs([run]))
    # plotly writes arrays as {"dtype":..,"bdata":..}; no series may be longer than MAX_POINTS
    blobs = re.findall(r'"dtype":"f8","bdata":"([^"]*)"', page)
    lengths = [len(base64.b64decode(json.loads(f'"{b}"'))) // 8 for b in blobs]
    assert lengths and max(lengths) <= MAX_POINTS
    assert len(page) < 6_000_000


def test_downsample_keeps_means_or_peaks() -> None:
    x = np.arange(100_000, dtype=np.float64)
    y = np.sin(x / 1_000.0)
    y[54_321] = 5.0
    bx, (mean,) = downsample(x, [y])
    assert bx.size == MAX_POINTS and mean.size == MAX_POINTS
    assert mean.mean() == pytest.approx(y.mean(), abs=1e-6)
    _, (peak,) = downsample(x, [y], how="max")
    assert peak.max() == 5.0
    small = np.arange(10, dtype=np.float64)
    assert downsample(small, [small])[0] is small


def test_cdf_of_a_million_samples_is_short_and_exact_at_the_ends() -> None:
    rng = np.random.default_rng(1)
    waits = np.concatenate([np.zeros(300_000), rng.exponential(3_600.0, 700_000)])
    x, y = cdf_points(waits)
    assert x.size <= MAX_POINTS
    assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) > 0)
    assert y[-1] == 1.0 and x[-1] == waits.max()
    assert x[0] == 1.0  # zero waits are drawn at the 1 s floor
    assert y[np.searchsorted(x, 1.0, side="right") - 1] == pytest.approx(0.3, abs=1e-3)


def test_jct_by_size_class(tmp_path: Path) -> None:
    jobs = [("1", 0.0, 100.0), ("1", 0.0, 300.0), ("9-64", 50.0, 1_000.0), ("odd", 0.0, 10.0)]
    run = read_run(make_run(tmp_path, "fifo", jobs=jobs))
    stats = {s.label: s for s in jct_by_size(run)}
    assert set(stats) == {"1", "9-64", "odd"}
    assert (stats["1"].n, stats["1"].mean, stats["1"].p50) == (2, 200.0, 200.0)
    assert stats["9-64"].mean == 1_050.0


def test_many_tenants_show_the_top_30_by_entitlement(tmp_path: Path) -> None:
    tenants = {f"tenant-{i:02d}": (1 / 45, (i + 1) / 1035) for i in range(45)}
    page = render_report(read_runs([make_run(tmp_path, "fifo", tenants=tenants)]))
    assert "top 30 of 45 tenants" in page
    assert '"tenant-44"' in page and '"tenant-15"' in page
    assert '"tenant-14"' not in page and '"tenant-00"' not in page


def test_same_policy_twice_is_told_apart_by_directory(tmp_path: Path) -> None:
    a = make_run(tmp_path, "fifo", dirname="seed1")
    b = make_run(tmp_path, "fifo", dirname="seed2")
    assert [r.name for r in read_runs([a, b])] == ["fifo (seed1)", "fifo (seed2)"]


def test_a_run_without_jobs_still_renders(tmp_path: Path) -> None:
    run = make_run(tmp_path, "fifo", jobs=[])
    page = render_report(read_runs([run]))
    assert "No data: jobs.csv has no jobs" in page
    assert "<h2>Power draw by site</h2>" in page


def test_empty_cells_read_as_nan_and_fast_and_slow_paths_agree(tmp_path: Path) -> None:
    run = make_run(tmp_path, "fifo")
    fast = read_jobs(run / "jobs.csv")
    lines = (run / "jobs.csv").read_text().splitlines()
    cells = lines[1].split(",")
    cells[7] = ""  # wait_s
    (run / "jobs.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    slow = read_jobs(run / "jobs.csv")
    assert np.isnan(slow.wait_s[0])
    np.testing.assert_array_equal(slow.wait_s[1:], fast.wait_s[1:])
    np.testing.assert_array_equal(slow.jct_s, fast.jct_s)
    assert [slow.size_labels[c] for c in slow.size_code] == [fast.size_labels[c] for c in fast.size_code]


@pytest.mark.parametrize(
    ("breakage", "words"),
    [
        ("no-dir", ["does not exist", "kfabric simulate"]),
        ("no-jobs", ["jobs.csv is missing"]),
        ("no-summary", ["summary.json is missing"]),
        ("bad-json", ["summary.json is not valid JSON"]),
        ("bad-number", ["timeline.csv: line 3, column queue", "'lots'", "not a number"]),
        ("missing-column", ["jobs.csv: missing column(s) wait_s"]),
        ("short-row", [f"jobs.csv: line 3 has 3 fields, the header has {len(JOB_FIELDS)}"]),
        ("empty", ["timeline.csv is empty"]),
    ],
)
def test_bad_run_dirs_give_clear_errors(tmp_path: Path, breakage: str, words: list[str]) -> None:
    run = make_run(tmp_path, "fifo")
    if breakage == "no-dir":
        run = tmp_path / "nowhere"
    elif breakage == "no-jobs":
        (run / "jobs.csv").unlink()
    elif breakage == "no-summary":
        (run / "summary.json").unlink()
    elif breakage == "bad-json":
        (run / "summary.json").write_text("{not json")
    elif breakage == "bad-number":
        lines = (run / "timeline.csv").read_text().splitlines()
        cells = lines[2].split(",")
        cells[1] = "lots"
        lines[2] = ",".join(cells)
        (run / "timeline.csv").write_text("\n".join(lines) + "\n")
    elif breakage == "missing-column":
        text = (run / "jobs.csv").read_text()
        (run / "jobs.csv").write_text(text.replace("wait_s", "waited", 1))
    elif breakage == "short-row":
        lines = (run / "jobs.csv").read_text().splitlines()
        lines[2] = "j9,alpha,1"
        (run / "jobs.csv").write_text("\n".join(lines) + "\n")
    elif breakage == "empty":
        (run / "timeline.csv").write_text("")
    with pytest.raises(ValueError) as err:
        write_report([run], tmp_path / "report.html")
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0.0 s"), (42.0, "42 s"), (90.0, "1.5 min"), (5_400.0, "1.5 h"), (172_800.0, "2.0 d"), (float("nan"), "–")],
)
def test_durations_read_in_human_units(seconds: float, text: str) -> None:
    assert fmt_duration(seconds) == text


def test_power_units() -> None:
    assert fmt_power(0.054) == "54 kW"
    assert fmt_power(0.0041) == "4.1 kW"
    assert fmt_power(12.345) == "12.35 MW"


def test_an_unwritable_target_is_a_clear_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, "fifo")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"cannot write the report to .*--out FILE"):
        write_report([run], blocker / "report.html")
