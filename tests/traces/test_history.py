"""``history:DB_URL`` replays the jobs the live service ran, with their real arrival and run times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kfabric.backends.sim import SimBackend
from kfabric.cli.main import main
from kfabric.scenarios.policies import load_policy
from kfabric.service import jobs
from kfabric.service.auth import authenticate
from kfabric.service.runtime import open_runtime
from kfabric.traces.history import read_history


def _live_history(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/live.db"
    now = [datetime(2026, 3, 2, tzinfo=UTC).timestamp()]
    sim = SimBackend(lambda: now[0])
    rt = open_runtime(url, load_policy("kfabric"), {"sim": sim}, fleet="lab", clock=lambda: now[0])
    with rt.sessions() as s:
        op = authenticate(s, rt.bootstrap_token)
    specs = [(0.0, 600.0, ""), (120.0, 300.0, ""), (240.0, 900.0, "exit 1")]
    for at, run, command in specs:
        now[0] += at - (now[0] - datetime(2026, 3, 2, tzinfo=UTC).timestamp())
        spec = {"gpus": 8, "time_limit_s": 3600.0, "runtime_estimate_s": run, "command": command}
        jobs.submit(rt.sessions, op, "vision-lab", spec, now[0])
        rt.controller.tick()
    never = jobs.submit(rt.sessions, op, "vision-lab", {"gpus": 64, "time_limit_s": 60.0}, now[0])[0]
    for _ in range(80):
        now[0] += 30
        rt.controller.tick()
    jobs.cancel(rt.sessions, op, never.id, now[0])
    rt.close()
    return url


def test_history_replays_ended_jobs_with_real_times(tmp_path: Path) -> None:
    url = _live_history(tmp_path)
    w = read_history(url)
    # run times are what the cluster reported (the controller polls every 30 s of the fake clock)
    assert [(j.job.submit_s, j.fails) for j in w.jobs] == [(0.0, False), (120.0, False), (240.0, True)]
    assert [j.run_s for j in w.jobs] == [pytest.approx(r, abs=31) for r in (600.0, 300.0, 900.0)]
    assert all(j.job.gpus == 8 and j.job.project == "vision-lab" for j in w.jobs)
    assert "3 ended jobs replayed, 1 left out" in w.description


def test_simulate_replays_history_under_another_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _live_history(tmp_path)
    out = tmp_path / "replay"
    argv = ["simulate", "--fleet", f"store:{url}", "--workload", f"history:{url}", "--policy", "fifo"]
    code = main([*argv, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "fifo" / "summary.json").exists()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [("history:", "no database URL"), ("history:sqlite:///x.db,since=yesterday", "is not a date")],
    ids=["no-url", "bad-since"],
)
def test_bad_history_specs(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        read_history(spec.removeprefix("history:"))
