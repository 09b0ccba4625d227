"""``kfabric queue`` (like squeue) and ``kfabric acct`` (like sacct): field formats and squeue letters, sorting,
folding of pending array tasks, TIME as run time, plain columns; then, against a real server (the lab fleet on
the sim backend, the controller ticked by hand), the server-side filters, expected starts and ``acct``."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import insert, select

from kfabric.api.app import create_app
from kfabric.cli.errors import UsageError
from kfabric.cli.main import main
from kfabric.cli.queue_cmd import parse_states
from kfabric.cli.queue_fields import (
    fold_arrays,
    parse_format,
    parse_sort,
    plain_lines,
    run_time,
    sort_jobs,
    where_or_why,
)
from kfabric.store import tables as t

sys.path.insert(0, str(Path(__file__).parent.parent / "api"))
from api_world import PROJECT_OF, World, build_world, open_api

NOW = 1_800_000_000.0


def job(job_id: int, state: str = "pending", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": job_id, "project": "p", "user": "u", "name": f"j{job_id}", "state": state, "reason_code": "resources",
        "reason": "waiting", "expected_start_s": None, "expected_start_why": "", "submitted_at_s": NOW - 600,
        "admitted_at_s": None, "started_at_s": None, "ended_at_s": None, "exit_code": None, "attempt": 0, "gpus": 1,
        "gpu_milli": 1000, "time_limit_s": 3600.0, "priority": "normal", "pool": None, "nodes": [],
        "cancel_requested": False, "spec": {},
    }  # fmt: skip
    return base | kw


# ---- formats, sorting, folding, TIME ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("id,name,user,state,reason,time,gpus,pool,start,submit",
         ("id", "name", "user", "state", "reason", "time", "gpus", "pool", "start", "submit")),
        ("%i %j %u %T %M %D %R", ("id", "name", "user", "state", "time", "nodes", "reason")),
        ("%.18i %.9P %.8j %.2t", ("id", "pool", "name", "st")),
        ("JOBID PARTITION", ("id", "pool")),  # Slurm's long names, any case
    ],
    ids=["names", "letters", "letters-with-widths", "slurm-names"],
)  # fmt: skip
def test_format_takes_names_and_squeue_letters(text: str, fields: tuple[str, ...]) -> None:
    assert parse_format(text) == fields


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parse_format("id,nmae"), "unknown field 'nmae' (did you mean name?)"),
        (lambda: parse_format("%i %Z"), "squeue letter %Z is not one kfabric shows"),
        (lambda: parse_sort("-submitt"), "unknown field 'submitt' (did you mean submit?)"),
        (lambda: parse_states(["pendng"]), "unknown job state 'pendng' (did you mean pending?)"),
        (lambda: parse_states(["runing,PD"]), "unknown job state 'runing' (did you mean running?)"),
    ],
    ids=["field", "letter", "sort", "state", "state-in-list"],
)
def test_unknown_names_say_what_was_meant(call: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        call()


def test_slurm_state_codes() -> None:
    assert parse_states(["PD,R", "cd"]) == ["pending", "running", "succeeded"]
    assert parse_states(["all"]) is None


def test_sort_keys_ascending_and_descending() -> None:
    jobs = [job(1, user="b"), job(2, user="a"), job(3, user="b"), job(4, user="a")]
    assert [j["id"] for j in sort_jobs(jobs, parse_sort("user,-id"), NOW)] == [4, 2, 3, 1]
    # a missing start sorts last, never an error comparing None with a number
    timed = [job(1), job(2, expected_start_s=NOW + 50), job(3, expected_start_s=NOW + 10)]
    assert [j["id"] for j in sort_jobs(timed, parse_sort("start"), NOW)] == [3, 2, 1]


def test_time_is_the_run_time() -> None:
    assert run_time(job(1, submitted_at_s=NOW - 9999), NOW) == 0  # pending: 0:00, not its wait
    assert run_time(job(2, "running", started_at_s=NOW - 90), NOW) == 90
    assert run_time(job(3, "succeeded", started_at_s=NOW - 90, ended_at_s=NOW - 30), NOW) == 60
    assert run_time(job(4, "pending", started_at_s=NOW - 500), NOW) == 0  # requeued: waits again
    lines = list(plain_lines(("id", "state", "time"), [job(1), job(2, "running", started_at_s=NOW - 3725)], NOW))
    assert lines == ["JOBID STATE      TIME", "    1 PENDING    0:00", "    2 RUNNING 1:02:05"]


def test_pending_array_tasks_fold_into_one_line() -> None:
    tasks = [job(10 + i, array_job_id=10, array_task_id=i, spec={"array": "0-99%10"}) for i in range(6)]
    tasks[1] = tasks[1] | {"state": "running"}
    others = [job(5), job(30, array_job_id=30, array_task_id=0)]
    shown = fold_arrays([others[0], *tasks, others[1]])
    ids = [line.split()[0] for line in plain_lines(("id", "state"), shown, NOW, header=False)]
    assert ids == ["5", "10_[0,2-5%10]", "10_1", "30_0"]


def test_jobs_without_array_fields_pass_through() -> None:
    """A server that does not send array ids yet: every job keeps its own line."""
    old = [{k: v for k, v in job(i).items() if not k.startswith("array")} for i in (1, 2)]
    assert fold_arrays(old) == old


# ---- against a server -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, str]]:
    db = tmp_path_factory.mktemp("queue") / "kfabric.db"
    with open_api(f"sqlite:///{db}") as api:
        world = build_world(api)
        port = _free_port()
        web = uvicorn.Server(uvicorn.Config(create_app(api.rt), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=web.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not web.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        try:
            yield world, f"http://127.0.0.1:{port}"
        finally:
            web.should_exit = True
            thread.join(10)


@pytest.fixture
def as_user(served: tuple[World, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    world, url = served
    monkeypatch.setenv("KFABRIC_URL", url)
    monkeypatch.delenv("KFABRIC_TOKEN_FILE", raising=False)

    def use(role: str, org: str | None = None) -> World:
        monkeypatch.setenv("KFABRIC_TOKEN", world.token(role, org))
        return world

    return use


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_filters_run_on_the_server(as_user: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world = as_user("operator")
    code, out, err = cli(capsys, "queue", "--all", "-u", "tinyml-member@tinyml", "--format", "id,user,project,state")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:-1]]
    assert rows and all(r[1:3] == ["tinyml-member@tinyml", PROJECT_OF["tinyml"]] for r in rows)
    assert {int(r[0]) for r in rows} == {world.finished["tinyml"], world.jobs["tinyml"]}
    _, out, _ = cli(capsys, "queue", "-A", PROJECT_OF["snu-vision"], "-t", "PD", "--format", "%i %T", "--noheader")
    assert out.split() == [str(world.jobs["snu-vision"]), "PENDING"]
    # -p: jobs placed on that pool (ended ones keep their placement)
    pool = world.api.get(f"/v1/jobs/{world.finished['snu-vision']}", world.api.operator).json()["pool"]
    _, out, _ = cli(capsys, "queue", "--all", "-p", pool, "--format", "id,pool", "--noheader")
    assert [line.split() for line in out.splitlines()] == [[str(world.finished["snu-vision"]), pool]]
    code, _, err = cli(capsys, "queue", "-t", "finshed")
    assert code == 2 and "unknown job state 'finshed'" in err


def test_me_and_tenancy(as_user: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world = as_user("member", "snu-vision")
    _, out, _ = cli(capsys, "queue", "--all", "--me", "--format", "id,user", "--noheader")
    assert {line.split()[1] for line in out.splitlines()} == {"snu-vision-member@snu-vision"}
    _, out, _ = cli(capsys, "queue", "--all", "-u", "tinyml-member@tinyml", "--noheader")
    assert out == ""  # another tenant's user: nothing
    assert str(world.jobs["tinyml"]) not in cli(capsys, "queue", "--all")[1]


def test_start_shows_expected_starts_stored_by_the_controller(as_user: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world = as_user("operator")
    api = world.api
    big = [world.submit(api.operator, PROJECT_OF["snu-vision"], name=f"big{i}", gpus=8, gpu_models=["H100"],
                        time_limit_s=7200.0) for i in range(12)]  # fmt: skip
    api.tick(1.0, times=2)
    jobs = {j["id"]: j for j in api.get("/v1/jobs", api.operator, params={"state": "pending", "limit": 1000}).json()}
    waiting = [i for i in big if i in jobs]
    assert waiting, "the H100 pool should be full"
    for i in waiting:  # every pending job has a time or a why
        assert (jobs[i]["expected_start_s"] is None) != (jobs[i]["expected_start_why"] == ""), jobs[i]
    timed = [i for i in waiting if jobs[i]["expected_start_s"] is not None]
    assert timed and all(jobs[i]["expected_start_s"] > api.clock.now - 10 for i in timed)
    code, out, err = cli(capsys, "queue", "--start", "--format", "id,start")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert all(lines[str(i)].split()[1] != "-" for i in timed)
    with api.rt.sessions() as s:
        stored = dict(s.execute(select(t.Job.id, t.Job.expected_start_s).where(t.Job.id.in_(waiting))).all())
    assert {i: stored[i] for i in timed} == {i: jobs[i]["expected_start_s"] for i in timed}
    for i in big:
        world.api.post(f"/v1/jobs/{i}/cancel", api.operator)


def test_acct_lists_jobs_with_their_usage(as_user: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world = as_user("member", "tinyml")
    code, out, err = cli(capsys, "acct", "-S", "1970-01-02", "--format", "id,user,state,gpuhours,charge", "--csv")
    assert code == 0, err
    header, *rows = [line.split(",") for line in out.splitlines()]
    assert header == ["JOBID", "USER", "STATE", "GPU_HOURS", "CHARGED_SU"]
    by_id = {r[0]: r for r in rows}
    done = by_id[str(world.finished["tinyml"])]
    assert done[1:3] == ["tinyml-member@tinyml", "SUCCEEDED"] and float(done[3]) > 0
    assert str(world.finished["snu-vision"]) not in by_id  # the other tenant's
    code, _, err = cli(capsys, "acct", "-S", "yesterday-ish")
    assert code == 2 and "is not a time" in err
    code, _, err = cli(capsys, "acct", "--format", "elapsd")
    assert code == 2 and "did you mean elapsed?" in err


def test_a_long_queue_prints_plain_columns(as_user: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world = as_user("operator")
    with world.api.rt.sessions.begin() as s:
        project = s.scalar(select(t.Project.id).where(t.Project.name == PROJECT_OF["tinyml"]))
        user = s.scalar(select(t.User.id).where(t.User.name == "tinyml-member@tinyml"))
        rows = [{"project_id": project, "user_id": user, "name": f"bulk{i}", "spec": {"gpus": 1, "time_limit_s": 60.0},
                 "state": "cancelled", "reason": "cancelled", "submitted_at_s": NOW, "ended_at_s": NOW}
                for i in range(1500)]  # fmt: skip
        s.execute(insert(t.Job), rows)
    code, out, err = cli(capsys, "queue", "-t", "cancelled", "--format", "id,name,state")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["JOBID", "NAME", "STATE"] and "│" not in out
    assert sum(1 for line in lines if " bulk" in line) == 1500
    assert lines[-1].startswith(f"{len(lines) - 2} jobs")


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        # held: the reason says it all; the expected-start "why" only repeats it and is left out
        ({"reason_code": "held", "reason": "held by its user", "expected_start_why": "held by its user"},
         "held: held by its user"),
        # a different why is added
        ({"reason_code": "resources", "reason": "no pool has 8 free GPUs",
          "expected_start_why": "beyond the planning horizon"},
         "resources: no pool has 8 free GPUs; no expected start: beyond the planning horizon"),
    ],
)  # fmt: skip
def test_reason_column_adds_the_expected_start_why_only_when_it_says_more(extra: dict[str, Any], expect: str) -> None:
    job = {"state": "pending", "expected_start_s": None, **extra}
    assert where_or_why(job) == expect
