"""Tiresias' 60-job list: the real file and bad rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from kfabric.traces.tiresias import DEFAULT_CSV, read_tiresias

needs_trace = pytest.mark.skipif(not DEFAULT_CSV.exists(), reason=f"trace not present at {DEFAULT_CSV}")
HEADER = "job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n"


@needs_trace
def test_real_job_list() -> None:
    w = read_tiresias()
    assert len(w.jobs) == 60
    assert set(w.tenants) == {"tiresias"}
    job1 = next(j for j in w.jobs if j.job.id == "tiresias-1")
    assert (job1.job.gpus, job1.job.name, job1.job.submit_s, job1.run_s) == (8, "vgg11", 30.0, 147.0)
    assert job1.job.time_limit_s == 3600.0  # 147 s x U[1, 5] < 1 h
    submits = [j.job.submit_s for j in w.jobs]
    assert submits == sorted(submits)
    assert all(j.job.time_limit_s >= j.run_s for j in w.jobs)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("1,2,0,10,vgg,0,1", "duration"),
        ("1,1.5,0,10,vgg,5,1", "num_gpu"),
        ("1,2,later,10,vgg,5,1", "submit_time"),
        ("1,2,0,10,,5,1", "model_name"),
        ("0,2,0,10,vgg,5,1", "job_id"),
    ],
    ids=["zero-duration", "fractional-gpus", "submit-text", "no-model", "duplicate-id"],
)
def test_bad_rows(tmp_path: Path, row: str, field: str) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + "0,1,0,10,vgg,5,1\n" + row + "\n")
    with pytest.raises(ValueError) as err:
        read_tiresias(path)
    assert f"jobs.csv:3: field '{field}'" in str(err.value) and "fix:" in str(err.value)


def test_missing_file_and_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read it"):
        read_tiresias(tmp_path / "none.csv")
    (tmp_path / "jobs.csv").write_text("job_id,num_gpu\n1,2\n")
    with pytest.raises(ValueError, match="missing column"):
        read_tiresias(tmp_path / "jobs.csv")
