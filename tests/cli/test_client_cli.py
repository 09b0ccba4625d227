"""The Python client and the Slurm-style commands against a real server: the API and a controller loop on the
local backend (4 declared GPUs) in this process, driven through ``kfabric.cli.main.main``."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from kfabric.api.app import create_app
from kfabric.backends.local import LocalBackend
from kfabric.cli.main import main
from kfabric.client import ApiError, Client
from kfabric.scenarios.local import local_scenario_text
from kfabric.scenarios.policies import load_policy
from kfabric.service.loop import ControllerLoop
from kfabric.service.runtime import open_runtime
from posix_accounts import map_users

FINAL = ("succeeded", "failed", "cancelled", "timeout")


@dataclass(frozen=True)
class Server:
    url: str
    token: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, job_account: str) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("kfabric-serve")
    rt = open_runtime(
        f"sqlite:///{tmp}/kfabric.db",
        load_policy("kfabric"),
        {"local": LocalBackend(tmp / "local", gpus=4)},
        fleet="local",
        fleet_document=local_scenario_text(4),
    )
    assert rt.bootstrap_token
    map_users(rt.sessions, job_account)  # the operator's jobs run as the test account (never as root)
    port = _free_port()
    web = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, name="kfabric-test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not web.started:
        assert time.monotonic() < deadline, "the API server did not start within 10 s"
        time.sleep(0.02)
    loop = ControllerLoop(rt.controller, 0.2)
    loop.start()
    try:
        yield Server(f"http://127.0.0.1:{port}", rt.bootstrap_token)
    finally:
        web.should_exit = True
        thread.join(10)
        loop.stop()
        rt.close()


@pytest.fixture
def env(server: Server, monkeypatch: pytest.MonkeyPatch, job_dir: Path) -> Server:
    """The CLI's environment points at the server as its operator; the working directory is empty."""
    monkeypatch.setenv("KFABRIC_URL", server.url)
    monkeypatch.setenv("KFABRIC_TOKEN", server.token)
    monkeypatch.delenv("KFABRIC_TOKEN_FILE", raising=False)
    monkeypatch.delenv("KFABRIC_STATE_DIR", raising=False)
    monkeypatch.chdir(job_dir)  # a directory the job's account may work in
    return server


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def submitted_id(out: str) -> int:
    assert out.startswith("Submitted job "), out
    return int(out.split()[-1])


def wait_for(
    capsys: pytest.CaptureFixture[str],
    job_id: int,
    states: tuple[str, ...],
    timeout_s: float = 10,
    scheduled: bool = False,
) -> Any:
    """Poll ``job show --json`` until the job is in one of ``states`` (and, with ``scheduled``, has been through a
    scheduling cycle: its reason is no longer the submission's)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = cli_json(capsys, "job", "show", str(job_id))
        if job["state"] in states and not (scheduled and job["reason_code"] == "new"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout_s} s: {job['reason']}"
        time.sleep(0.1)


# ---- jobs ------------------------------------------------------------------------------------------------


def test_submit_wrap_queue_and_finish_with_exit_code(env: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "submit", "--project", "default", "--time", "1:00", "--name", "tiny",
                         "--wrap", "sleep 1; exit 3")  # fmt: skip
    assert code == 0, err
    job_id = submitted_id(out)

    code, out, _ = cli(capsys, "queue")
    assert code == 0
    row = next(line for line in out.splitlines() if line.strip("│ ").startswith(f"{job_id} "))
    assert "tiny" in row and "default" in row and "admin" in row

    job = wait_for(capsys, job_id, FINAL)
    assert (job["state"], job["exit_code"]) == ("failed", 3)
    assert job["spec"]["command"] == "sleep 1; exit 3"
    assert job["spec"]["workdir"] == str(Path.cwd())

    code, out, _ = cli(capsys, "job", "show", str(job_id))
    assert code == 0
    assert "exit_code" in out and "Events" in out and "running" in out
    events = cli_json(capsys, "job", "events", str(job_id))
    assert [e["to_state"] for e in events][:1] == ["pending"] and events[-1]["to_state"] == "failed"
    _, out, _ = cli(capsys, "queue")
    assert f"│ {job_id:>5} │" not in out  # ended jobs leave the default view
    _, out, _ = cli(capsys, "queue", "--all")
    assert "FAILED" in out and "(exit 3)" in out


def test_script_directives_are_defaults_the_command_line_overrides(
    env: Server, capsys: pytest.CaptureFixture[str], job_dir: Path
) -> None:
    script = job_dir / "train.sh"
    script.write_text(
        "#!/bin/bash\n"
        "# an ordinary comment\n"
        "#KFABRIC --project default --gpus 2\n"
        '#KFABRIC --time 2:00 --name from-script --env GREETING=hi --env "WHO=two words"\n'
        "\n"
        'echo "$GREETING $WHO $CUDA_VISIBLE_DEVICES" > out.txt\n'
        "#KFABRIC --gpus 99\n"  # after the first command: not a directive
    )
    job = cli_json(capsys, "submit", str(script), "--name", "override", "--env", "EXTRA=1", "--chdir", str(job_dir))
    spec = job["spec"]
    assert (job["project"], job["name"], job["gpus"], job["time_limit_s"]) == ("default", "override", 2, 120.0)
    assert "command" not in spec  # the script's content is stored and run (issue 19), not the file on disk
    assert spec["env"] == {"GREETING": "hi", "WHO": "two words", "EXTRA": "1"}
    assert wait_for(capsys, job["id"], FINAL)["state"] == "succeeded"
    greeting, who1, who2, gpus = (job_dir / "out.txt").read_text().split()
    assert (greeting, who1, who2) == ("hi", "two", "words") and len(gpus.split(",")) == 2

    (job_dir / "bad.sh").write_text("#KFABRIC --project default --time soon\ntrue\n")
    code, _, err = cli(capsys, "submit", "bad.sh")
    assert code == 2
    assert f"--time (from {job_dir / 'bad.sh'}:1): 'soon' is not a time" in err


def test_cancel_running_and_pending_jobs(env: Server, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, "submit", "-A", "default", "-t", "5", "--wrap", "sleep 30")
    running = submitted_id(out)
    wait_for(capsys, running, ("running",))
    code, out, err = cli(capsys, "cancel", str(running))
    assert code == 0, err
    assert out.startswith(f"Cancelling job {running}")
    assert wait_for(capsys, running, FINAL)["state"] == "cancelled"

    code, _, err = cli(capsys, "submit", "-A", "default", "-t", "5", "--gpus", "8", "--wrap", "true")
    assert code == 2 and "largest request that can run is 4 GPUs" in err  # never fits 4: refused at submit
    _, out, _ = cli(capsys, "submit", "-A", "default", "-t", "5", "--gpus", "4", "--wrap", "sleep 30")
    blocker = submitted_id(out)
    wait_for(capsys, blocker, ("running",))
    _, out, _ = cli(capsys, "submit", "-A", "default", "-t", "5", "--gpus", "4", "--wrap", "true")
    pending = submitted_id(out)
    job = wait_for(capsys, pending, ("pending",), scheduled=True)
    code, out, _ = cli(capsys, "queue", "--state", "pending")
    assert "PENDING" in out and "resources" in out  # the reason code and its sentence
    code, out, err = cli(capsys, "cancel", "999999", str(pending), str(running))
    assert code == 2
    assert out == f"Cancelled job {pending}\n"  # tried after the failing id
    assert "job 999999 not found" in err and f"job {running}: is already cancelled" in err
    assert "Traceback" not in err
    assert cli_json(capsys, "job", "show", str(pending))["state"] == "cancelled"
    assert job["reason_code"] == "resources"
    assert cli(capsys, "cancel", str(blocker))[0] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["queue", "--all"],
        ["usage"],
        ["usage", "--by", "gpu_model", "--since", "2020-01-01", "--until", "2100-01-01"],
        ["whoami"],
        ["programs"],
        ["applications"],
        ["grant", "list"],
        ["projects"],
        ["org", "list"],
        ["audit"],
        ["audit", "--verify"],
    ],
    ids=lambda argv: "-".join(a.lstrip("-") for a in argv[:2]),
)
def test_json_outputs_parse(env: Server, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    data = cli_json(capsys, *argv)
    assert isinstance(data, list | dict)
    code, out, err = cli(capsys, *argv)  # and the text form of the same command works
    assert code == 0 and out and not err


def test_usage_csv_is_the_api_export(env: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "usage", "--by", "site", "--csv")
    assert code == 0
    assert out.splitlines()[0] == "site,gpu_hours,su_hours,charged_su_hours,records"


# ---- errors ----------------------------------------------------------------------------------------------


BAD_FLAGS = [
    ("bad-time", ["submit", "-A", "default", "--time", "4h", "--wrap", "true"], "--time: '4h' is not a time"),
    ("no-time", ["submit", "-A", "default", "--wrap", "true"], "--time is required"),
    ("no-command", ["submit", "-A", "default", "-t", "5"], "nothing to run"),
    ("two-shapes", ["submit", "-A", "default", "-t", "5", "--gpus", "2", "--nodes", "1", "--gpus-per-node", "2",
                    "--wrap", "x"], "not both"),
    ("priority", ["submit", "-A", "default", "-t", "5", "--priority", "vip", "--wrap", "x"], "--priority: unknown"),
    ("env", ["submit", "-A", "default", "-t", "5", "--env", "NOVALUE", "--wrap", "x"], "--env: expected NAME=VALUE"),
    ("state", ["queue", "--state", "done"], "--state: unknown job state 'done'"),
    ("jobid", ["job", "show", "x1"], "JOBID: 'x1' is not a job id"),
    ("by", ["usage", "--by", "color"], "--by: cannot group usage by 'color'"),
    ("since", ["usage", "--since", "2026-02-30"], "--since: '2026-02-30' is not a valid date"),
    ("score", ["review", "1", "--score", "impact"], "--score: expected CRITERION=N"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), [(a, m) for _i, a, m in BAD_FLAGS], ids=[i for i, _a, _m in BAD_FLAGS])
def test_bad_flags_name_the_flag(
    env: Server, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_unknown_project_is_the_api_404(env: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "submit", "--project", "nope", "--time", "5", "--wrap", "true")
    assert code == 2
    assert err == "error: project 'nope' not found (fix: kfabric projects lists the projects you belong to)\n"


def test_server_not_running(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("kfabric.client.SUBMIT_RETRY_PAUSE_S", 0.0)
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("KFABRIC_URL", url)
    monkeypatch.setenv("KFABRIC_TOKEN", "kf_whatever")
    for argv in (["queue"], ["submit", "-A", "default", "-t", "5", "--wrap", "true"], ["cancel", "1"]):
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == ""
        assert err.startswith(f"error: the kfabric server at {url} is not reachable"), err
        assert "kfabric serve" in err and "Traceback" not in err


# ---- tenancy and programs --------------------------------------------------------------------------------


def test_user_create_then_whoami_as_the_member(
    env: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = cli(capsys, "user", "create", "carol", "--role", "member", "--organization", "local",
                         "--project", "default")  # fmt: skip
    assert code == 0, err
    first, token = out.splitlines()
    assert first.startswith("Created user carol") and token.startswith("kf_")
    code, out, _ = cli(capsys, "whoami", "--token", token)
    assert code == 0 and out.splitlines() == ["carol (member)", "organization: local", "projects: default"]
    monkeypatch.setenv("KFABRIC_TOKEN", token)
    assert cli_json(capsys, "whoami")["role"] == "member"
    code, _, err = cli(capsys, "user", "create", "mallory", "--role", "operator")
    assert code == 2 and err.startswith("error: ") and "not allowed to create users" in err


def test_apply_review_decide_round_trip(env: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "apply", "--program", "local", "--project", "default", "--gpu-model-class", "H100",
                         "--gpus", "2", "--months", "3", "--justification", "fine-tuning")  # fmt: skip
    assert code == 0, err
    application = int(out.split()[2].rstrip(":"))
    reviewer = cli_json(capsys, "user", "create", "rita", "--role", "reviewer")["token"]

    code, out, err = cli(capsys, "review", str(application), "--score", "impact=8", "--comment", "good",
                         "--token", reviewer)  # fmt: skip
    assert (code, out) == (0, f"Reviewed application {application}: weighted score 8.00\n"), err
    code, _, err = cli(capsys, "review", str(application), "--score", "impact=8", "--score", "readiness=7",
                       "--token", reviewer)  # fmt: skip
    assert code == 2 and "not criteria of program 'local': readiness" in err
    code, _, err = cli(capsys, "grant", "decide", str(application), "--approve", "--token", reviewer)
    assert code == 2 and "not allowed to decide applications" in err

    [a] = [a for a in cli_json(capsys, "applications", "--status", "submitted") if a["id"] == application]
    assert (a["mean_score"], a["project"], a["gpus"]) == (8.0, "default", 2)
    code, out, err = cli(capsys, "grant", "decide", str(application), "--approve", "--credit", "100", "--note", "ok")
    assert code == 0, err
    assert out.startswith(f"Approved application {application}: grant g-{application}")
    grants = {g["name"]: g for g in cli_json(capsys, "grant", "list")}
    assert grants[f"g-{application}"]["reserved"] == {"model": "H100", "gpus": 2}
    assert grants[f"g-{application}"]["credit_su_hours"] == 100.0
    assert [a["id"] for a in cli_json(capsys, "applications", "--status", "approved")] == [application]
    code, _, err = cli(capsys, "grant", "decide", str(application), "--reject")
    assert code == 2 and "is already approved" in err


# ---- the Python client -----------------------------------------------------------------------------------


def test_client_submit_is_idempotent_with_a_client_key(env: Server) -> None:
    with Client(env.url, env.token) as client:
        # one GPU each: the local program allows no CPU-only work (rule allow_cpu_only)
        first = client.submit("default", client_key="k-1", time_limit_s=60, command="true", gpus=1)
        again = client.submit("default", client_key="k-1", time_limit_s=60, command="true", gpus=1)
        other = client.submit("default", time_limit_s=60, command="true", gpus=1)
        assert first["id"] == again["id"] != other["id"]
        with pytest.raises(ApiError) as err:
            client.job(10**9)
        assert (err.value.status, err.value.code, err.value.where) == (404, "not_found", "job")
        assert str(err.value).count("(fix:") == 1


def test_submit_retries_once_with_the_same_key_after_a_5xx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kfabric.client.SUBMIT_RETRY_PAUSE_S", 0.0)
    bodies: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if len(bodies) == 1:
            return httpx.Response(503, json={"error": {"code": "x", "message": "busy", "where": "", "fix": ""}})
        return httpx.Response(201, json={"id": 7})

    client = Client("http://kfabric.test", "kf_t", transport=httpx.MockTransport(answer))
    assert client.submit("p", time_limit_s=60) == {"id": 7}
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    assert len(bodies[0]["client_key"]) == 36  # a UUID made by the client


def test_submit_does_not_retry_a_4xx() -> None:
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        body = {"error": {"code": "invalid", "message": "bad", "where": "job.gpus", "fix": "use 1"}}
        return httpx.Response(422, json=body)

    client = Client("http://kfabric.test", "kf_t", transport=httpx.MockTransport(answer))
    with pytest.raises(ApiError, match=r"^job\.gpus: bad \(fix: use 1\)$"):
        client.submit("p", time_limit_s=60)
    assert len(calls) == 1


def test_from_env_token_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("KFABRIC_URL", "KFABRIC_TOKEN", "KFABRIC_TOKEN_FILE", "KFABRIC_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)

    def header(client: Client) -> str | None:
        return client._http.headers.get("Authorization")

    assert Client.from_env().url == "http://127.0.0.1:8470" and header(Client.from_env()) is None
    (tmp_path / ".kfabric").mkdir()
    (tmp_path / ".kfabric" / "operator.token").write_text("kf_state\n")
    assert header(Client.from_env()) == "Bearer kf_state"
    (tmp_path / "tok").write_text("kf_file\n")
    monkeypatch.setenv("KFABRIC_TOKEN_FILE", str(tmp_path / "tok"))
    assert header(Client.from_env()) == "Bearer kf_file"
    monkeypatch.setenv("KFABRIC_TOKEN", "kf_env")
    assert header(Client.from_env()) == "Bearer kf_env"
    assert header(Client.from_env(token="kf_flag")) == "Bearer kf_flag"
    monkeypatch.delenv("KFABRIC_TOKEN")
    monkeypatch.setenv("KFABRIC_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ApiError, match="KFABRIC_TOKEN_FILE: cannot read the token file"):
        Client.from_env()
    with pytest.raises(ApiError, match="no http:// or https:// scheme"):
        Client("localhost:8470", None)
