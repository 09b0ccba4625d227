"""Alibaba openb pods replayed in time: the real list, the row rules and bad rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kfabric.model import PriorityClass
from kfabric.traces.openb import COLUMNS, DEFAULT_PODS_CSV, read_openb_pods

needs_trace = pytest.mark.skipif(not DEFAULT_PODS_CSV.exists(), reason=f"trace not present at {DEFAULT_PODS_CSV}")
HEADER = ",".join(COLUMNS) + "\n"


@needs_trace
def test_real_pod_list() -> None:
    w = read_openb_pods()
    jobs = w.jobs
    assert len(jobs) == 8_151  # 8,152 pods, one with a zero lifetime dropped
    assert "dropped_nonpositive=1" in w.description
    submits = [j.job.submit_s for j in jobs]
    assert submits == sorted(submits)
    assert len({j.job.id for j in jobs}) == len(jobs)
    kinds = Counter("cpu" if j.job.gpus == 0 else "fractional" if j.job.fractional else "whole" for j in jobs)
    assert sum(kinds.values()) == len(jobs)
    assert kinds["cpu"] == 1_088 and kinds["fractional"] == 3_077  # 3,078 less the dropped one
    assert Counter(j.job.project for j in jobs).keys() == {
        "openb-ls",
        "openb-be",
        "openb-burstable",
        "openb-guaranteed",
    }
    assert set(w.tenants) == {"openb-ls", "openb-be", "openb-burstable", "openb-guaranteed"}
    assert sum(j.fails for j in jobs) == 1_870
    assert all(j.job.time_limit_s >= j.run_s > 0 for j in jobs)
    assert all(j.job.cpu_milli > 0 for j in jobs)  # one pod (openb-pod-1523) asks for 0 MiB of memory


def _write(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "pods.csv"
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            "p,4000,8192,1,1000,,LS,Running,10,110,20",
            {"gpus": 1, "gpu_milli": 1000, "run": 90.0, "priority": PriorityClass.HIGH, "preemptible": False},
        ),
        (
            "p,2000,4096,1,250,,BE,Failed,10,110,",
            {"gpus": 1, "gpu_milli": 250, "run": 100.0, "priority": PriorityClass.LOW, "fails": True},
        ),
        (
            "p,88000,327680,8,1000,V100M16|V100M32,Burstable,Succeeded,0,50,5",
            {"gpus": 8, "models": ("V100M16", "V100M32")},
        ),
        ("p,32000,65536,0,0,,Guaranteed,Running,0,50,0", {"gpus": 0, "cpu_milli": 32000, "memory_mib": 65536}),
    ],
    ids=["whole-ls", "fractional-be-unscheduled-failed", "multi-gpu-spec", "cpu-only"],
)
def test_row_to_job(tmp_path: Path, row: str, expected: dict[str, object]) -> None:
    sim = read_openb_pods(_write(tmp_path, row)).jobs[0]
    job = sim.job
    actual = {
        "gpus": job.gpus,
        "gpu_milli": job.gpu_milli,
        "run": sim.run_s,
        "priority": job.priority,
        "preemptible": job.preemptible,
        "fails": sim.fails,
        "models": job.gpu_models,
        "cpu_milli": job.cpu_milli,
        "memory_mib": job.memory_mib,
    }
    assert {k: actual[k] for k in expected} == expected
    assert job.project == f"openb-{row.split(',')[6].lower()}"


def test_nonpositive_lifetimes_are_dropped_and_counted(tmp_path: Path) -> None:
    w = read_openb_pods(_write(tmp_path, "a,1,1,1,1000,,LS,Running,5,5,5", "b,1,1,1,1000,,LS,Running,5,9,"))
    assert [j.job.id for j in w.jobs] == ["b"]
    assert "dropped_nonpositive=1" in w.description


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("p,1,1,two,1000,,LS,Running,0,5,0", "num_gpu"),
        ("p,1,1,2,500,,LS,Running,0,5,0", "gpu_milli"),
        ("p,1,1,0,300,,LS,Running,0,5,0", "gpu_milli"),
        ("p,1,1,1,1000,,Gold,Running,0,5,0", "qos"),
        ("p,1,1,1,1000,,LS,Running,,5,0", "creation_time"),
        ("p,-1,1,1,1000,,LS,Running,0,5,0", "cpu_milli"),
    ],
    ids=["num-gpu-text", "fraction-of-many", "milli-without-gpu", "unknown-qos", "no-creation", "negative-cpu"],
)
def test_bad_rows(tmp_path: Path, row: str, field: str) -> None:
    with pytest.raises(ValueError) as err:
        read_openb_pods(_write(tmp_path, "ok,1,1,1,1000,,LS,Running,0,5,0", row))
    assert f"pods.csv:3: field '{field}'" in str(err.value) and "fix:" in str(err.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read it"):
        read_openb_pods(tmp_path / "missing.csv")
    (tmp_path / "pods.csv").write_text("name,cpu_milli\nx,1\n")
    with pytest.raises(ValueError, match="missing column"):
        read_openb_pods(tmp_path / "pods.csv")
    with pytest.raises(ValueError, match="duplicate pod name"):
        read_openb_pods(_write(tmp_path, "a,1,1,1,1000,,LS,Running,0,5,0", "a,1,1,1,1000,,LS,Running,0,5,0"))


MULTIGPU_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"


def test_a_multigpu_list_without_gpu_spec_and_later_columns_is_read(tmp_path: Path) -> None:
    """The public dataset's ``multigpu`` lists have only the first five columns: no model, QoS or times."""
    path = tmp_path / "openb_pod_list_multigpu50.csv"
    path.write_text(
        MULTIGPU_HEADER + "openb-pod-0000,12000,16384,1,1000\nopenb-pod-0001,6000,8192,1,460\n"
        "openb-pod-0002,88000,327680,8,1000\nopenb-pod-0003,4000,4096,0,0\n"
    )
    w = read_openb_pods(path)
    assert [j.job.id for j in w.jobs] == ["openb-pod-0000", "openb-pod-0001", "openb-pod-0002", "openb-pod-0003"]
    assert [(j.job.gpus, j.job.gpu_milli) for j in w.jobs] == [(1, 1000), (1, 460), (8, 1000), (0, 1000)]
    assert all(j.job.gpu_models == () for j in w.jobs)  # no gpu_spec: any model
    assert {j.job.project for j in w.jobs} == {"openb-burstable"}  # no qos: Kubernetes' Burstable
    assert all(j.job.submit_s == 0.0 and not j.fails for j in w.jobs)  # a snapshot: all at 0, in file order
    assert all(j.run_s == 90 * 86_400.0 <= j.job.time_limit_s for j in w.jobs)  # never leave in a window
    assert "no_lifetimes" in w.description


def test_a_list_with_gpu_spec_but_no_times_keeps_the_models(tmp_path: Path) -> None:
    path = tmp_path / "pods.csv"
    path.write_text(MULTIGPU_HEADER.strip() + ",gpu_spec,qos\np0,1000,1024,2,1000,V100M16|V100M32,LS\n")
    job = read_openb_pods(path).jobs[0].job
    assert (job.gpu_models, job.project, job.preemptible) == (("V100M16", "V100M32"), "openb-ls", False)


def test_a_list_missing_a_required_column_says_which(tmp_path: Path) -> None:
    path = tmp_path / "pods.csv"
    path.write_text("name,cpu_milli,memory_mib,num_gpu\np0,1,1,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) gpu_milli") as err:
        read_openb_pods(path)
    assert "optionally followed by gpu_spec" in str(err.value)


def test_bad_optional_columns_are_still_checked(tmp_path: Path) -> None:
    path = tmp_path / "pods.csv"
    path.write_text(MULTIGPU_HEADER.strip() + ",creation_time\np0,1,1,1,1000,soon\n")
    with pytest.raises(ValueError, match="creation_time"):
        read_openb_pods(path)
