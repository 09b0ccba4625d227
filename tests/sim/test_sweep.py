"""``kfabric sweep``: variants change the scenario as the spec says; local processes, this process and a real
Ray cluster (a head started here with the ``ray`` CLI) give the same runs; spec errors name file:line, the key
path, what is wrong and how to fix it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from kfabric.cli.main import main
from kfabric.scenarios.loader import load_gpu_catalog, load_scenario
from kfabric.sim import sweep

SPEC = """\
name: tiny
base:
  fleet: lab
  workload: national:load=1.5
  days: 0.5
variants:
  - name: base
  - name: capped
    power_cap_mw: {lab-gov: 0.02}
policies: [fifo, kfabric]
seeds: [0, 1]
"""
RUN_NAMES = [f"{v}.{p}.seed{s}" for s in (0, 1) for v in ("base", "capped") for p in ("fifo", "kfabric")]


def write_spec(folder: Path, text: str = SPEC, name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def sweep_cli(*args: str) -> int:
    return main(["sweep", *args])


def decided(summary: dict[str, object]) -> dict[str, object]:
    """A run's summary without the wall-clock figures (the only part an executor may change)."""
    return {k: v for k, v in summary.items() if k not in sweep.WALL_CLOCK_KEYS}


def assert_same_runs(a: Path, b: Path) -> None:
    assert (a / "sweep.csv").read_bytes() == (b / "sweep.csv").read_bytes()
    doc_a, doc_b = (json.loads((d / "sweep.json").read_text()) for d in (a, b))
    assert doc_a["runs"] == doc_b["runs"]
    assert doc_a["table"] == doc_b["table"]
    for run in RUN_NAMES:
        for name in ("jobs.csv", "timeline.csv"):
            assert (a / run / name).read_bytes() == (b / run / name).read_bytes(), f"{run}/{name} differs"
        sa, sb = (json.loads((d / run / "summary.json").read_text()) for d in (a, b))
        assert decided(sa) == decided(sb)


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: every run in this process, one after the other."""
    folder = tmp_path_factory.mktemp("serial")
    assert sweep_cli(str(write_spec(folder)), "--out", str(folder / "out"), "--workers", "1", "--no-report") == 0
    return folder / "out"


def test_local_processes_give_the_serial_runs_and_one_table_and_report(
    serial_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert sweep_cli(str(write_spec(tmp_path)), "--out", str(out), "--workers", "2") == 0
    printed = capsys.readouterr().out
    assert "sweep tiny" in printed and "mean over 2 seeds" in printed
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(RUN_NAMES)
    assert_same_runs(out, serial_sweep)
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["executor"]["kind"] == "local" and doc["executor"]["workers"] == 2
    assert [(r["variant"], r["policy"], r["seeds"]) for r in doc["table"]] == [
        ("base", "fifo", [0, 1]),
        ("base", "kfabric", [0, 1]),
        ("capped", "fifo", [0, 1]),
        ("capped", "kfabric", [0, 1]),
    ]
    row = doc["table"][0]
    for key in ("avg_wait_s", "utilization", "jobs_never_started"):
        values = [r["metrics"][key] for r in doc["runs"] if (r["variant"], r["policy"]) == ("base", "fifo")]
        assert row["mean"][key] == pytest.approx(sum(values) / 2)
        assert row["min"][key] == min(values) and row["max"][key] == max(values)
    # the cap holds in the capped variant: its peak stays under 0.02 MW where the base one goes above
    peaks = {r: json.loads((out / r / "summary.json").read_text())["power_peak_mw"]["lab-gov"] for r in RUN_NAMES}
    assert all(v <= 0.02 + 1e-9 for r, v in peaks.items() if r.startswith("capped."))
    assert any(v > 0.02 for r, v in peaks.items() if r.startswith("base."))
    # the report compares the first seed's variants x policies
    html = (out / "report.html").read_text()
    for run in ("base.fifo.seed0", "capped.kfabric.seed0"):
        assert run in html
    assert "base.fifo.seed1" not in html


def test_a_sweep_run_is_the_simulate_run_of_its_variant(serial_sweep: Path, tmp_path: Path) -> None:
    """The base variant's run equals `kfabric simulate` with the same fleet, workload, policy, seed and days."""
    args = ["--fleet", "lab", "--workload", "national:load=1.5", "--days", "0.5", "--policy", "kfabric", "--seed", "1"]
    assert main(["simulate", *args, "--out", str(tmp_path), "--jobs", "1"]) == 0
    mine = json.loads((serial_sweep / "base.kfabric.seed1" / "summary.json").read_text())
    theirs = json.loads((tmp_path / "kfabric" / "summary.json").read_text())
    assert mine["run"].pop("variant") == "base" and mine["run"].pop("sweep") == "tiny"
    assert mine["run"].pop("scenario") == "lab/base" and theirs["run"].pop("scenario") == "lab"
    assert decided(mine) == decided(theirs)
    jobs = (serial_sweep / "base.kfabric.seed1" / "jobs.csv").read_bytes()
    assert jobs == (tmp_path / "kfabric" / "jobs.csv").read_bytes()


def test_each_override_changes_what_it_names(tmp_path: Path) -> None:
    text = """\
base: {fleet: lab, workload: national, days: 1}
variants:
  - name: late
    site_delays: {lab-acme: 30}
  - name: mix
    gpu_mix: {H100: {scale: 0.5, model: B200}, RTX-PRO-6000: 0}
  - name: cap
    power_cap_mw: {lab-gov: 0.03}
  - name: rules
    program_rules: {lab-grants: {max_job_duration_hours: 4, utilization_floor_pct: 50, weight: 2}}
policies: [kfabric]
"""
    spec = sweep.read_spec(write_spec(tmp_path, text))
    base = load_scenario("lab")
    late, mix, cap, rules = (sweep.apply_variant(base, v, spec, i) for i, v in enumerate(spec.variants))
    pools = {p.name: p for p in base.fleet.pools}
    assert {p.name: p.online for p in late.fleet.pools} == {
        "h100": pools["h100"].online,
        "rtx": pools["rtx"].online + timedelta(days=30),
    }
    (only,) = mix.fleet.pools  # RTX scaled to 0 is gone
    catalog = load_gpu_catalog()
    assert (only.name, only.gpu_model, only.nodes) == ("h100", "B200", pools["h100"].nodes // 2)
    per_gpu_w = catalog["B200"].board_power_w - catalog["H100"].board_power_w
    assert only.node_power_kw == pytest.approx(pools["h100"].node_power_kw + 8 * per_gpu_w / 1000)
    assert [m.name for m in mix.fleet.gpu_models] == ["B200"]
    assert {s.name: s.power_cap_mw for s in cap.fleet.sites} == {"lab-gov": 0.03, "lab-acme": 0.05}
    program = next(p for p in rules.programs if p.name == "lab-grants")
    assert program.rules.max_job_duration_s == 4 * 3600 and program.rules.utilization_floor_pct == 50
    assert program.weight == 2
    assert rules.programs[1] == base.programs[1]
    assert [s.name for s in (late, mix, cap, rules)] == ["lab/late", "lab/mix", "lab/cap", "lab/rules"]


BAD_SPECS = [
    ("polices: [kfabric]\n", "tiny.yaml:1: polices", "did you mean policies?"),
    (SPEC.replace("[fifo, kfabric]", "[fifo, kfabrik]"), "tiny.yaml:10: policies[1]", "did you mean kfabric?"),
    (SPEC.replace("{lab-gov: 0.02}", "{lab-gv: 0.02}"), "variants[1].power_cap_mw.lab-gv", "did you mean lab-gov?"),
    (
        SPEC.replace("power_cap_mw: {lab-gov: 0.02}", "site_delay: {lab-gov: 3}"),
        "tiny.yaml:9: variants[1]",
        "site_delays",
    ),
    (
        SPEC.replace("power_cap_mw: {lab-gov: 0.02}", "gpu_mix: {H10: 0.5}"),
        "variants[1].gpu_mix.H10",
        "did you mean H100?",
    ),
    (
        SPEC.replace("power_cap_mw: {lab-gov: 0.02}", "gpu_mix: {H100: {model: B300X}}"),
        "variants[1].gpu_mix.H100.model",
        "unknown GPU model 'B300X'",
    ),
    (
        SPEC.replace("power_cap_mw: {lab-gov: 0.02}", "program_rules: {lab-grant: {weight: 2}}"),
        "variants[1].program_rules.lab-grant",
        "did you mean lab-grants?",
    ),
    (
        SPEC.replace("power_cap_mw: {lab-gov: 0.02}", "program_rules: {lab-grants: {max_job_hours: 2}}"),
        "variants[1].program_rules.lab-grants.max_job_hours",
        "did you mean max_job_duration_hours?",
    ),
    (SPEC.replace("{lab-gov: 0.02}", "{lab-gov: -1}"), "tiny.yaml:9: variants[1].power_cap_mw.lab-gov", "must be > 0"),
    (SPEC.replace("name: capped", "name: base"), "tiny.yaml:8: variants[1].name", "listed twice"),
    (SPEC.replace("name: capped", "name: a/b"), "variants[1].name", "cannot name a run directory"),
    (SPEC.replace("[0, 1]", "[0, -1]"), "tiny.yaml:11: seeds[1]", "must be >= 0"),
    (SPEC.replace("fleet: lab", "fleet: labb"), "tiny.yaml:3: base.fleet", "did you mean lab?"),
    (SPEC.replace("workload: national", "workload: nationl"), "tiny.yaml:4: base.workload", "did you mean national?"),
    (SPEC.replace("days: 0.5", "days: 0"), "tiny.yaml:5: base.days", "must be > 0"),
    (SPEC.replace("variants:", "variants: [\n"), "tiny.yaml:", "valid YAML"),
]


@pytest.mark.parametrize(("text", "where", "what"), BAD_SPECS, ids=[f"bad{i}" for i in range(len(BAD_SPECS))])
def test_spec_errors_say_where_what_and_how_to_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str, what: str
) -> None:
    spec = write_spec(tmp_path, text)
    assert sweep_cli(str(spec), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'tiny.yaml'}:") or err.startswith("error: " + str(spec)), err
    assert where in err and what in err, err
    assert "(fix: " in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written for a bad spec


def test_too_many_runs_are_refused_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seeds = ", ".join(str(i) for i in range(300))
    spec = write_spec(tmp_path, SPEC.replace("[0, 1]", f"[{seeds}]"))  # 2 x 2 x 300 = 1,200 runs
    assert sweep_cli(str(spec), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "1,200 runs, more than --max-runs 1,000" in err and "--max-runs 1200" in err
    assert sweep_cli(str(spec), "--out", str(tmp_path / "out"), "--max-runs", "3") == 2
    assert "more than --max-runs 3" in capsys.readouterr().err
    big = write_spec(tmp_path, "# " + "x" * sweep.MAX_SPEC_BYTES + "\n" + SPEC, name="big.yaml")
    assert sweep_cli(str(big), "--out", str(tmp_path / "out")) == 2
    assert "more than the limit of 262,144" in capsys.readouterr().err


# ---- Ray -------------------------------------------------------------------------------------------------------
RAY_MISSING = "ray is not installed: .venv/bin/pip install -e '.[ray]'"


def _free_port() -> int:
    """A free TCP port outside Ray's worker port range (10002-19999)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not 10_002 <= port <= 19_999:
            return port


def _ray_cli() -> Path:
    return Path(sys.executable).with_name("ray")


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A real Ray head in its own process session (2 CPUs, 100 MB object store, private temp dir), stopped
    with everything it started (the session's processes, by its id) and its temp dir removed, pass or fail."""
    if os.environ.get("KFABRIC_NATIVE") == "1":
        pytest.skip("the Ray run is checked once, on the sources (the executor does not depend on the build)")
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("KFABRIC_REQUIRE_RAY") == "1":
            pytest.fail(f"{RAY_MISSING} (required: KFABRIC_REQUIRE_RAY=1)", pytrace=False)
        pytest.skip(RAY_MISSING)
    if not _ray_cli().exists():
        pytest.fail(f"ray is importable but its CLI {_ray_cli()} is missing; reinstall: {RAY_MISSING}")
    temp = tempfile.mkdtemp(prefix="kfray-", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    port = _free_port()
    cmd = [
        str(_ray_cli()), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
        "--num-cpus=2", "--object-store-memory=100000000", "--include-dashboard=false", "--disable-usage-stats",
        f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
        f"--temp-dir={temp}",
    ]  # fmt: skip
    log = Path(temp) / "head.log"
    with log.open("wb") as fh:
        head = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while b"Ray runtime started" not in log.read_bytes():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed (exit {head.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        deadline = time.monotonic() + 10
        while _session_alive(head.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _session_alive(head.pid):
            os.killpg(head.pid, signal.SIGKILL)  # the group this fixture created (start_new_session)
        shutil.rmtree(temp, ignore_errors=True)


def _session_alive(sid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 3 and int(fields[3]) == sid and fields[0] != "Z":
                return True
    return False


@pytest.mark.integration
def test_a_ray_cluster_gives_the_local_runs(ray_head: str, serial_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "kfabric.cli.main", "sweep", str(write_spec(tmp_path)), "--out", str(out)]
    done = subprocess.run(
        [*cmd, "--ray", ray_head, "--no-report"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_runs(out, serial_sweep)
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["executor"]["kind"] == "ray" and doc["executor"]["address"] == ray_head


def test_ray_errors_are_one_line_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(write_spec(tmp_path))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    try:
        import ray  # noqa: F401
    except ImportError:
        assert sweep_cli(spec, "--out", str(tmp_path / "o"), "--ray", closed) == 2
        assert "Ray is not installed; install it with: pip install 'kfabric[ray]'" in capsys.readouterr().err
        return
    assert sweep_cli(spec, "--out", str(tmp_path / "o"), "--ray", closed) == 2
    err = capsys.readouterr().err
    assert f"--ray {closed}: no Ray cluster answers there" in err and "ray start --head" in err
    assert err.count("\n") == 1
    saved = sys.modules.get("ray")
    sys.modules["ray"] = None  # type: ignore[assignment]  # what `import ray` meets where it is not installed
    try:
        assert sweep_cli(spec, "--out", str(tmp_path / "o"), "--ray", closed) == 2
    finally:
        if saved is not None:
            sys.modules["ray"] = saved
    err = capsys.readouterr().err
    assert err == "error: --ray: Ray is not installed; install it with: " + (
        "pip install 'kfabric[ray]' (in this checkout: .venv/bin/pip install -e '.[ray]')\n"
    )
