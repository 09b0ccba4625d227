"""The Slurm backend's parts that need no Slurm: parsing 22.05's output, error mapping (with stand-in tools in a
``bin_dir``), discovery's grouping, sbatch flags and the batch script, configuration. Fast; run everywhere."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from kfabric.backends.base import BackendUnavailable, LaunchSpec, NodeGpus, RunState
from kfabric.backends.slurm import SlurmCli, SlurmClusterConfig, SlurmConfigError, SlurmError, load_slurm_clusters
from kfabric.backends.slurm import submit as submit_mod
from kfabric.backends.slurm.commands import decode_exit_pair, decode_wait_status, parse_key_values
from kfabric.backends.slurm.discover import gpu_gres, natural_key, node_of, pools_of
from kfabric.backends.slurm.records import JobcompReader, from_jobcomp, from_squeue, run_state
from kfabric.backends.slurm.submit import check_spec, sbatch_request, script_of

JOBCOMP_LINE = (
    "JobId=2 UserId=root(0) GroupId=root(0) Name=kf-7.1 JobState=FAILED Partition=gpu TimeLimit=UNLIMITED "
    "StartTime=2026-11-30T12:53:22 EndTime=2026-11-30T12:53:25 NodeList=node1 NodeCnt=1 ProcCnt=1 "
    "WorkDir=/tmp ReservationName= Tres=cpu=1,mem=1G,node=1,billing=1 Account= QOS= WcKey= Cluster=unknown "
    "SubmitTime=2026-11-30T12:53:21 EligibleTime=2026-11-30T12:53:21 DerivedExitCode=0:0 ExitCode=3:0 \n"
)


def config(tmp_path: Path, **kw: object) -> SlurmClusterConfig:
    base: dict[str, object] = {
        "name": "alpha",
        "site": "s1",
        "slurm_conf": "/x/slurm.conf",
        "workdir_root": str(tmp_path),
    }
    return SlurmClusterConfig(**{**base, **kw})  # type: ignore[arg-type]


def launch_spec(
    nodes: dict[str, int], milli: int = 1000, env: tuple[tuple[str, str], ...] = (), **kw: object
) -> LaunchSpec:
    parts = tuple(NodeGpus(n, tuple(range(k)), milli, 4000, 8192) for n, k in nodes.items())
    args: dict[str, object] = {"job_id": "42", "attempt": 1, "name": "train", "command": "echo hi", "nodes": parts}
    return LaunchSpec(**{**args, "time_limit_s": 90.0, "env": env, **kw})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- 22.05 output


def test_exit_codes_raw_wait_status_and_pairs() -> None:
    assert [decode_wait_status(w) for w in (0, 768, 15, 36608, None)] == [0, 3, 143, 143, None]
    assert [decode_exit_pair(p) for p in ("3:0", "0:15", "0:0", "x")] == [3, 143, 0, None]
    assert parse_key_values("A=1 Tres=cpu=1,mem=1G Account= junk") == {"A": "1", "Tres": "cpu=1,mem=1G", "Account": ""}


def test_gres_strings() -> None:
    assert gpu_gres("gpu:b200:8") == ("b200", 8)
    assert gpu_gres("gpu:8") == ("", 8)
    assert gpu_gres("gpu:a100:4(S:0-1),shard:8") == ("a100", 4)
    assert gpu_gres("gpu:h100:4(S:0,1),gpu:a100:2") == ("h100", 6)
    assert gpu_gres("(null)") == ("", 0) and gpu_gres("") == ("", 0)
    assert sorted(["node10", "node2", "node1"], key=natural_key) == ["node1", "node2", "node10"]


def test_node_states_from_sinfo_json() -> None:
    raw = {"name": "n1", "state": "idle", "state_flags": [], "cpus": 32, "real_memory": 1000, "gres": "gpu:8"}
    assert node_of(raw).up
    assert not node_of({**raw, "state_flags": ["DRAIN"]}).up
    assert not node_of({**raw, "state": "down"}).up
    assert not node_of({**raw, "state": "mixed", "state_flags": ["NOT_RESPONDING"]}).up
    assert node_of({**raw, "state": "mixed"}).up


def test_pools_group_identical_nodes(tmp_path: Path) -> None:
    def node(name: str, gres: str, cpus: int = 32, parts: tuple[str, ...] = ("gpu",)) -> dict[str, object]:
        return {"name": name, "state": "idle", "cpus": cpus, "real_memory": 256000, "gres": gres, "partitions": parts}

    raws = [
        node("n10", "gpu:b200:8"),
        node("n2", "gpu:b200:8"),
        node("n3", "gpu:h100:4", 64),
        node("cpu1", ""),
        node("n9", "gpu:b200:8", parts=("debug",)),
    ]
    pools, skipped, warnings = pools_of(config(tmp_path), [node_of(r) for r in raws], "gpu", date(2025, 1, 1))
    assert [(p["name"], p["gpu_model"], p["node_names"]) for p in pools] == [
        ("alpha-b200", "B200", ["n2", "n10"]),
        ("alpha-h100", "H100", ["n3"]),
    ]
    assert pools[0]["node_power_kw"] == 9.5 and pools[1]["node_power_kw"] == 4.3  # GPUs x board W + 1.5 kW
    assert pools[1]["cpu_milli_per_node"] == 64000 and pools[1]["nvlink_domain_gpus"] == 4
    assert skipped == {"cpu1": "no GPU GRES", "n9": "not in partition 'gpu'"} and not warnings
    _, _, warnings = pools_of(config(tmp_path), [node_of(node("x", "gpu:4"))], "gpu", date(2025, 1, 1))
    assert "gpu_model" in warnings[0]  # untyped GRES: the model is a guess, and we say so


def test_records_and_state_map() -> None:
    pending = from_squeue({"job_id": 5, "name": "kf-1.1", "job_state": "PENDING", "start_time": 1796043999})
    assert pending.start_s is None and run_state(pending, False)[0] is RunState.RUNNING
    failed = from_squeue({"job_id": 5, "name": "kf-1.1", "job_state": "FAILED", "exit_code": 768, "end_time": 9})
    assert (failed.exit_code, run_state(failed, False)[0]) == (3, RunState.FAILED)
    assert run_state(failed, True)[0] is RunState.CANCELLED  # kfabric asked it to stop
    table = [("COMPLETED", "succeeded"), ("OUT_OF_MEMORY", "failed"), ("TIMEOUT", "timeout"), ("NODE_FAIL", "lost"),
             ("PREEMPTED", "lost"), ("BOOT_FAIL", "lost"), ("CANCELLED", "cancelled")]  # fmt: skip
    for slurm, ours in table:
        rec = from_squeue({"job_id": 1, "name": "x", "job_state": slurm})
        assert run_state(rec, False)[0].value == ours, slurm
    assert run_state(from_squeue({"job_id": 1, "name": "x", "job_state": "TIMEOUT"}), True)[0] is RunState.TIMEOUT
    rec = from_jobcomp(parse_key_values(JOBCOMP_LINE))
    assert rec is not None and (rec.slurm_id, rec.name, rec.state, rec.exit_code) == (2, "kf-7.1", "FAILED", 3)
    assert rec.end_s is not None and rec.start_s is not None and rec.end_s - rec.start_s == 3


def test_jobcomp_reader_is_incremental(tmp_path: Path) -> None:
    path = tmp_path / "jobcomp.txt"
    reader = JobcompReader(str(path))
    assert reader.read_new() == []  # no file yet: nothing finished
    path.write_text(JOBCOMP_LINE + JOBCOMP_LINE.replace("JobId=2 ", "JobId=3 ")[:50])  # second line half written
    assert [r.slurm_id for r in reader.read_new()] == [2]
    with open(path, "a") as f:
        f.write(JOBCOMP_LINE.replace("JobId=2 ", "JobId=3 ")[50:])
    assert [r.slurm_id for r in reader.read_new()] == [3]
    assert reader.read_new() == []
    path.write_text(JOBCOMP_LINE.replace("JobId=2 ", "JobId=9 "))  # rotated: read from the start
    assert [r.slurm_id for r in reader.read_new()] == [9]


# ------------------------------------------------------------------------------------------- error mapping


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def test_unreachable_controller_is_backend_unavailable_with_backoff(tmp_path: Path) -> None:
    bins = tmp_path / "bin"
    fake_tool(bins, "sbatch", 'echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller '
              '(connect failure)" >&2; exit 1')  # fmt: skip
    fake_tool(bins, "squeue", 'echo \'{"errors": [{"error": "Unspecified error"}], "jobs": []}\'')  # 22.05, ctld down
    now = [100.0]
    cli = SlurmCli("/x/slurm.conf", bin_dir=str(bins), clock=lambda: now[0])
    with pytest.raises(BackendUnavailable, match="Unable to contact"):
        cli.sbatch([], "#!/bin/bash\n")
    calls = cli.calls
    with pytest.raises(BackendUnavailable, match="next try"):
        cli.squeue_jobs()  # in back-off: fails fast, runs nothing
    assert cli.calls == calls
    now[0] += 5
    with pytest.raises(BackendUnavailable, match="squeue --json"):
        cli.squeue_jobs()  # exit 0 but errors and no jobs: never "no jobs"


def test_rejections_and_timeouts(tmp_path: Path) -> None:
    bins = tmp_path / "bin"
    fake_tool(
        bins,
        "sbatch",
        'echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2; exit 1',
    )
    fake_tool(bins, "squeue", "sleep 5")
    fake_tool(
        bins, "scancel", 'echo "scancel: error: Kill job error on job id 9: Invalid job id specified" >&2; exit 1'
    )
    cli = SlurmCli("/x/slurm.conf", timeout_s=0.5, bin_dir=str(bins))
    with pytest.raises(SlurmError, match="Invalid partition"):
        cli.sbatch([], "#!/bin/bash\n")
    assert isinstance(SlurmError("x"), ValueError)  # the controller fails a refused launch
    cli.scancel(9)  # gone already: no error
    with pytest.raises(BackendUnavailable, match="did not answer"):
        cli.squeue_jobs()
    with pytest.raises(SlurmError, match="not found"):
        SlurmCli("/x", bin_dir=str(tmp_path / "nowhere")).sbatch([], "")


def test_clean_environment_reaches_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFABRIC_DB_URL", "postgresql://secret")
    bins = tmp_path / "bin"
    fake_tool(bins, "sbatch", 'echo "$SLURM_CONF ${KFABRIC_DB_URL:-none}" >&2; echo 77')
    cli = SlurmCli("/x/slurm.conf", bin_dir=str(bins))
    assert cli.sbatch([], "") == 77
    assert cli.env()["SLURM_CONF"] == "/x/slurm.conf" and "KFABRIC_DB_URL" not in cli.env()


# ------------------------------------------------------------------------------------------- sbatch


def test_sbatch_flags_realize_the_placement(tmp_path: Path) -> None:
    cfg = config(tmp_path, partition="gpu", account="kf", accounts={"vision": "vis-acct"})
    req = sbatch_request(cfg, launch_spec({"node1": 8, "node2": 8}), lambda nodes: "b200")
    flags = set(req.args)
    assert {"--job-name=kf-42.1", "--comment=kfabric:42:1", "--nodelist=node1,node2", "--nodes=2"} <= flags
    assert {"--ntasks-per-node=1", "--gres=gpu:b200:8", "--time=2", "--no-requeue", "--partition=gpu"} <= flags
    assert {"--account=kf", "--cpus-per-task=4", "--mem=8192M", f"--output={tmp_path}/42.1/stdout"} <= flags
    assert "--export=KFABRIC_JOB_ID=42,KFABRIC_ATTEMPT=1" in flags and f"--chdir={tmp_path}/42.1" in flags
    assert not any(a.startswith(("--uid", "--gid")) for a in flags)  # no account given: submitted as kfabric
    uneven = sbatch_request(cfg, launch_spec({"node1": 8, "node2": 4}), lambda nodes: "")
    assert "--gpus=12" in uneven.args and not any(a.startswith("--gres") for a in uneven.args)
    frac = sbatch_request(cfg, launch_spec({"node1": 1}, milli=250, env=(("KFABRIC_PROJECT", "vision"),)), lambda n: "")
    assert "--gres=gpu:1" in frac.args and "--account=vis-acct" in frac.args
    assert "KFABRIC_GPU_MILLI=250" in frac.script and "srun" not in frac.script


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"job_id": "a b"}, "cannot name a Slurm job"),
        ({"nodes": ()}, "names no nodes"),
        ({"nodes": (NodeGpus("n1", (0,)), NodeGpus("n1", (1,)))}, "twice"),
        ({"env": (("BAD-NAME", "x"),)}, "environment variable"),
        ({"time_limit_s": 0.0}, "time limit"),
    ],
)
def test_specs_slurm_cannot_run(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_spec(replace(launch_spec({"n1": 1}), **change))  # type: ignore[arg-type]


def run_script(tmp_path: Path, script: str, srun_fails_first: int) -> tuple[int, str]:
    """Run a generated batch script with a stand-in ``srun`` that fails (exit 1, no task) the first N times."""
    bins = tmp_path / "fakebin"
    calls = tmp_path / "srun-calls"
    fake_tool(
        bins,
        "srun",
        f"n=$(cat {calls} 2>/dev/null || echo 0); echo $((n + 1)) > {calls}\n"
        f'if [ "$n" -lt {srun_fails_first} ]; then echo "srun: error: Unable to confirm allocation" >&2; exit 1; fi\n'
        'while [ "$1" != /bin/bash ]; do shift; done\n'
        'SLURM_PROCID=0 "$@"',
    )
    env = {**os.environ, "PATH": f"{bins}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, done.stdout


def test_multi_node_script_retries_srun_only_when_no_task_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit_mod, "STEP_RETRY_S", 0)
    cfg = config(tmp_path)
    (tmp_path / "42.1").mkdir()
    spec = launch_spec({"n1": 8, "n2": 8}, command='echo "ran $GREETING"; exit 4', env=(("GREETING", "a, b'c"),))
    code, out = run_script(tmp_path, script_of(cfg, spec), srun_fails_first=2)
    assert (code, out) == (4, "ran a, b'c\n")  # two failed step starts retried, the command ran once
    assert (tmp_path / "srun-calls").read_text().strip() == "3"
    (tmp_path / "srun-calls").unlink()
    code, out = run_script(tmp_path, script_of(cfg, spec), srun_fails_first=0)
    assert code == 4 and (tmp_path / "srun-calls").read_text().strip() == "1"  # it ran and failed: no retry


# ------------------------------------------------------------------------------------------- config


def test_config_yaml_and_errors_name_the_key(tmp_path: Path) -> None:
    text = f"""
slurm_clusters:
  - {{name: a, site: s1, slurm_conf: /etc/a.conf, workdir_root: {tmp_path}, accounts: {{p1: acct1}}}}
  - {{name: b, site: s2, slurm_conf: /etc/b.conf, workdir_root: {tmp_path}, partition: gpu, command_timeout_s: 5}}
"""
    a, b = load_slurm_clusters(text)
    assert a.account_for("p1") == "acct1" and a.account_for("p2") == "" and b.command_timeout_s == 5.0
    bad = [
        ("[{name: a, site: s, slurm_conf: /c, workdir_root: /w, partiton: x}]", "unknown key.*partiton"),
        ("[{name: a, site: s, slurm_conf: /c}]", "missing required key.*workdir_root"),
        ("[{name: a, site: s, slurm_conf: /c, workdir_root: rel}]", "workdir_root must be an absolute"),
        ("[{name: a, site: s, slurm_conf: /c, workdir_root: /w, use_srun: yes-please}]", "use_srun: expected true"),
        ("[{name: a, site: s, slurm_conf: /c, workdir_root: /w, job_name_prefix: '1x'}]", "job_name_prefix"),
        ("[{name: a, site: s, slurm_conf: /c, workdir_root: /w, completion: db}]", "completion must be one of"),
        ("[{name: a, site: s, slurm_conf: /c, workdir_root: /w}, {name: a, site: t, slurm_conf: /d, workdir_root: /w}]",
         "appear twice"),
        ("{clusters: []}", "slurm_clusters"),
    ]  # fmt: skip
    for doc, message in bad:
        with pytest.raises(SlurmConfigError, match=message):
            load_slurm_clusters(doc)
