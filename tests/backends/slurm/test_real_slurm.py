"""The Slurm backend against real Slurm 22.05 clusters (private, started by conftest.py).

Cluster ``alpha`` has 3 nodes x 8 b200 GPUs; ``beta`` 2 nodes and a MinJobAge of 5 s, so its finished jobs
leave ``squeue`` quickly and the jobcomp file is what reports them. Job commands are tiny (all "nodes" share
this machine's cores). Runtime: ~60-90 s, set by the time-limit test — Slurm's smallest limit is one minute
and it kills on its ~30 s timer — whose job is launched when the cluster starts so that the wait overlaps the
other tests (``test_zz_time_limit`` runs last and only collects it).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from slurm_lab import SlurmLab, report, spec, wait_for, wait_state

from kfabric.backends.base import BackendUnavailable, RunState
from kfabric.backends.slurm import SlurmBackend, SlurmCli, discover, node_states
from kfabric.scenarios.loader import load_text
from kfabric.scenarios.local import local_scenario_text

pytestmark = pytest.mark.integration
FINAL = {s for s in RunState if s.final}
ALL_GPUS = "0,1,2,3,4,5,6,7"


def started(backend: SlurmBackend, job_id: str) -> None:
    wait_for(lambda: (r := report(backend, job_id)) is not None and r.started_at_s is not None, 30, f"{job_id} start")


def fleet_doc(*fragments: dict[str, object], sites: list[str]) -> str:
    """A scenario document (the local one) whose clusters and pools are the discovered ones."""
    doc = yaml.safe_load(local_scenario_text(8))
    doc["sites"] = [{**doc["sites"][0], "name": site} for site in sites]
    doc["clusters"] = [c for f in fragments for c in f["clusters"]]  # type: ignore[attr-defined]
    doc["pools"] = [p for f in fragments for p in f["pools"]]  # type: ignore[attr-defined]
    doc.pop("documented_totals", None)
    return yaml.safe_dump(doc, sort_keys=False)


def test_discovery_nodes_gres_pools_and_states(slurm_a: SlurmLab) -> None:
    config = replace(slurm_a.config, owner="local", site="lab-a")
    found = discover(config)
    assert [n.name for n in found.nodes] == ["node1", "node2", "node3"]
    assert {(n.gpu_type, n.gpus, n.cpus, n.memory_mib) for n in found.nodes} == {("b200", 8, 32, 256000)}
    assert found.partition == "gpu" and not found.skipped and not found.warnings
    [pool] = found.pools
    assert pool["gpu_model"] == "B200" and pool["gpus_per_node"] == 8 and pool["nodes"] == 3
    assert pool["node_names"] == ["node1", "node2", "node3"]
    assert pool["node_power_kw"] == 9.5  # 8 x 1000 W + 1.5 kW host
    assert pool["cpu_milli_per_node"] == 32000 and pool["memory_mib_per_node"] == 256000

    debug = discover(replace(config, partition="debug"))  # the start script puts node1-2 in "debug"
    assert debug.pools[0]["node_names"] == ["node1", "node2"] and set(debug.skipped) == {"node3"}

    scenario = load_text(fleet_doc(found.fragment(), sites=["lab-a"]), "discovered")
    [fleet_pool] = scenario.fleet.pools
    assert fleet_pool.node_names == ("node1", "node2", "node3") and fleet_pool.gpus == 24

    assert node_states(config) == {"node1": True, "node2": True, "node3": True}
    slurm_a.cmd("scontrol", "update", "nodename=node1", "state=drain", "reason=kfabric-test")
    try:
        assert node_states(config)["node1"] is False
    finally:
        slurm_a.cmd("scontrol", "update", "nodename=node1", "state=resume")
    wait_for(lambda: node_states(config)["node1"], 10, "node1 back up")


def test_gang_job_two_nodes_eight_gpus(slurm_a: SlurmLab) -> None:
    backend = slurm_a.backend()
    command = 'echo "$SLURMD_NODENAME $CUDA_VISIBLE_DEVICES $KFABRIC_JOB_ID.$KFABRIC_ATTEMPT $GREETING"'
    job = spec("gang", command, ["node1", "node2"], gpus=8, env=(("GREETING", "hi, there"),))
    t0 = time.time()
    backend.launch(job)
    r = wait_state(backend, "gang", FINAL)
    assert r.state is RunState.SUCCEEDED and r.exit_code == 0, r.message
    assert r.started_at_s is not None and r.ended_at_s is not None
    assert t0 - 1 <= r.started_at_s <= r.ended_at_s <= time.time() + 1  # real times from Slurm
    lines = sorted(Path(r.outputs["stdout"]).read_text().splitlines())
    assert lines == [f"node1 {ALL_GPUS} gang.1 hi, there", f"node2 {ALL_GPUS} gang.1 hi, there"]
    [slurm_id] = slurm_a.jobs_named("kf-gang.1")
    shown = slurm_a.cmd("scontrol", "show", "job", slurm_id)
    assert "TresPerNode=gres:gpu:b200:8" in shown and "NodeList=node[1-2]" in shown
    assert "Comment=kfabric:gang:1" in shown
    # an uneven gang (8 + 4 GPUs) is one job asking for 12 GPUs over the two nodes
    backend.launch(spec("uneven", 'echo "$SLURMD_NODENAME $CUDA_VISIBLE_DEVICES"', {"node1": 8, "node2": 4}))
    r = wait_state(backend, "uneven", FINAL)
    assert r.state is RunState.SUCCEEDED, r.message
    lines = sorted(Path(r.outputs["stdout"]).read_text().splitlines())
    assert lines[0] == f"node1 {ALL_GPUS}" and lines[1].startswith("node2 ") and len(lines[1].split(",")) == 4


def test_failing_job_keeps_exit_code_and_fractional_gets_one_gpu(slurm_a: SlurmLab) -> None:
    backend = slurm_a.backend()
    backend.launch(spec("fails", "echo about to fail; exit 3", ["node1"]))
    backend.launch(spec("frac", 'echo "$CUDA_VISIBLE_DEVICES $KFABRIC_GPU_MILLI"', ["node2"], gpu_milli=500))
    r = wait_state(backend, "fails", FINAL)
    assert (r.state, r.exit_code) == (RunState.FAILED, 3), r.message  # not 768, squeue's raw wait status
    frac = wait_state(backend, "frac", FINAL)
    assert frac.state is RunState.SUCCEEDED
    assert Path(frac.outputs["stdout"]).read_text().split() == ["0", "500"]  # one whole GPU, told its share
    again = report(slurm_a.backend(), "fails")  # a restarted controller reads the same from Slurm
    assert again is not None and (again.state, again.exit_code) == (RunState.FAILED, 3)


def test_cancel_now_with_grace_and_from_slurm(slurm_a: SlurmLab) -> None:
    backend = slurm_a.backend()
    checkpoint = "echo checkpoint rank $SLURM_PROCID on $SLURMD_NODENAME; sleep 300"
    trap = f'trap "{checkpoint}" TERM; echo started; sleep 300 & wait'
    backend.launch(spec("cancel-now", "sleep 300", ["node1"]))
    backend.launch(spec("cancel-grace", trap, ["node1", "node2"]))
    backend.launch(spec("cancel-admin", "sleep 300", ["node2"]))
    started(backend, "cancel-now")
    backend.terminate("cancel-now", 1, 0.0)
    backend.terminate("cancel-now", 1, 0.0)  # idempotent
    assert wait_state(backend, "cancel-now", FINAL).state is RunState.CANCELLED

    out = Path(slurm_a.config.workdir_root) / "cancel-grace.1" / "stdout"
    wait_for(lambda: out.exists() and out.read_text().count("started") == 2, 30, "both tasks to start")
    t0 = time.monotonic()
    backend.terminate("cancel-grace", 1, 3.0)
    backend.terminate("cancel-grace", 1, 3.0)  # a repeat does not restart the grace
    r = wait_state(backend, "cancel-grace", FINAL)
    assert r.state is RunState.CANCELLED and time.monotonic() - t0 >= 3.0, r.message
    ranks = {"checkpoint rank 0 on node1", "checkpoint rank 1 on node2"}  # every rank got the SIGTERM
    wait_for(lambda: ranks <= set(out.read_text().splitlines()), 10, f"{ranks} in {out}")
    restarted = report(slurm_a.backend(), "cancel-grace")
    assert restarted is not None and restarted.state is RunState.CANCELLED and "by kfabric" in restarted.message

    started(backend, "cancel-admin")
    slurm_a.cmd("scancel", str(backend.slurm_job_id("cancel-admin", 1)))  # an operator cancels it in Slurm
    r = wait_state(backend, "cancel-admin", FINAL)
    assert r.state is RunState.CANCELLED and "not by kfabric" in r.message
    backend.terminate("never-launched", 1, 0.0)  # unknown: nothing to do
    backend.terminate("cancel-admin", 1, 5.0)  # finished: nothing to do


def test_node_down_mid_job_is_lost(slurm_a: SlurmLab) -> None:
    backend = slurm_a.backend()
    backend.launch(spec("nodedown", "sleep 300", ["node1", "node2"], gpus=2))
    started(backend, "nodedown")
    slurm_a.cmd("scontrol", "update", "nodename=node2", "state=down", "reason=kfabric-test")
    try:
        r = wait_state(backend, "nodedown", FINAL)
        assert r.state is RunState.LOST and "NODE_FAIL" in r.message, r.message
        assert slurm_a.jobs_named("kf-nodedown.1"), "Slurm must not requeue it itself (--no-requeue)"
    finally:
        slurm_a.cmd("scontrol", "update", "nodename=node2", "state=resume", check=False)
        wait_for(lambda: node_states(slurm_a.config)["node2"], 30, "node2 back up")


class _AnswerLost(SlurmCli):
    """sbatch submits, but its answer is lost (as when the client times out after slurmctld took the job)."""

    def sbatch(self, args: list[str], script: str) -> int:  # type: ignore[override]
        super().sbatch(args, script)
        raise BackendUnavailable("sbatch did not answer within 30 s")


def test_launch_is_idempotent_across_retries_and_restarts(slurm_a: SlurmLab) -> None:
    backend = slurm_a.backend()
    job = spec("twice", "sleep 1", ["node1"])
    backend.launch(job)
    backend.launch(job)
    slurm_a.backend().launch(job)  # a restarted controller launching it again
    assert len(slurm_a.jobs_named("kf-twice.1")) == 1

    cfg = slurm_a.config
    lossy = SlurmBackend(cfg, cli=_AnswerLost(cfg.slurm_conf, cfg.command_timeout_s, cfg.backoff_max_s))
    retry = spec("answer-lost", "true", ["node1"])
    with pytest.raises(BackendUnavailable):
        lossy.launch(retry)
    lossy.launch(retry)  # the retry finds the job the lost answer created
    assert len(slurm_a.jobs_named("kf-answer-lost.1")) == 1
    assert wait_state(lossy, "answer-lost", FINAL).state is RunState.SUCCEEDED
    assert wait_state(backend, "twice", FINAL).state is RunState.SUCCEEDED


def test_slurmctld_killed_and_restarted_loses_and_duplicates_nothing(slurm_a: SlurmLab) -> None:
    # a 3 s command timeout: Slurm's clients retry a dead controller for ~9 s before they give up themselves
    backend = slurm_a.backend(command_timeout_s=3.0)
    jobs = [
        spec("ha-long-1", "sleep 40", ["node1"]),
        spec("ha-long-2", "sleep 40", ["node1", "node2"]),
        spec("ha-short", "sleep 4", ["node3"]),  # ends around the time slurmctld dies
    ]
    for job in jobs:
        backend.launch(job)
    for job in jobs:
        started(backend, job.job_id)
    saved_after = time.time()
    state_file = slurm_a.dir / "ctld" / "job_state"  # slurmctld saves its state a few seconds after a change
    wait_for(lambda: state_file.stat().st_mtime > saved_after, 20, "slurmctld to save its job state")

    pid = slurm_a.ctld_pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, "slurmctld to die")
    t_down = time.monotonic()
    with pytest.raises(BackendUnavailable):
        backend.poll()
    with pytest.raises(BackendUnavailable):
        backend.launch(spec("ha-new", "true", ["node3"]))
    backend.launch(jobs[0])  # known attempt: nothing to submit, no error
    with pytest.raises(BackendUnavailable):
        slurm_a.backend(command_timeout_s=3.0).poll()  # a controller restarted meanwhile cannot rebuild its view
    time.sleep(max(0.0, 5.0 - (time.monotonic() - t_down)))
    slurm_a.start_ctld()

    def all_back() -> bool:
        try:
            reports = {r.job_id: r for r in backend.poll()}
        except BackendUnavailable:
            return False
        return all(j.job_id in reports for j in jobs)

    wait_for(all_back, 30, "the backend to reach the restarted slurmctld")
    r = wait_state(backend, "ha-short", FINAL)
    assert r.state is RunState.SUCCEEDED, (r.message, Path(r.outputs["stderr"]).read_text())
    fresh = slurm_a.backend()  # a restarted controller finds the same jobs and launching them submits nothing
    for job in jobs:
        fresh.launch(job)
        assert len(slurm_a.jobs_named(f"kf-{job.job_id}.1")) == 1, job.job_id
    now = {r.job_id: r for r in fresh.poll()}
    assert now["ha-long-1"].state is RunState.RUNNING and now["ha-long-2"].state is RunState.RUNNING
    backend.launch(spec("ha-new", "true", ["node3"]))
    assert wait_state(backend, "ha-new", FINAL).state is RunState.SUCCEEDED
    for job in jobs[:2]:
        fresh.terminate(job.job_id, 1, 0.0)
        assert wait_state(fresh, job.job_id, FINAL).state is RunState.CANCELLED


def test_two_clusters_as_two_sites(slurm_a: SlurmLab, slurm_b: SlurmLab) -> None:
    backends = {lab.name: lab.backend() for lab in (slurm_a, slurm_b)}
    alpha, beta = backends["alpha"], backends["beta"]
    alpha.launch(spec("site-a", 'echo "$SLURM_CLUSTER_NAME $SLURMD_NODENAME"', ["node1"]))
    beta.launch(spec("site-b", 'echo "$SLURM_CLUSTER_NAME $SLURMD_NODENAME"', ["node1", "node2"], gpus=8))
    beta.launch(spec("site-b-fails", "exit 3", ["node1"]))
    ra, rb = wait_state(alpha, "site-a", FINAL), wait_state(beta, "site-b", FINAL)
    rf = wait_state(beta, "site-b-fails", FINAL)
    assert ra.state is RunState.SUCCEEDED and Path(ra.outputs["stdout"]).read_text().split() == ["alpha", "node1"]
    assert rb.state is RunState.SUCCEEDED
    assert sorted(Path(rb.outputs["stdout"]).read_text().splitlines()) == ["beta node1", "beta node2"]
    assert (rf.state, rf.exit_code) == (RunState.FAILED, 3)
    assert report(alpha, "site-b") is None and report(beta, "site-a") is None
    # beta forgets finished jobs after 5 s: then its jobcomp file is the record, for a restarted controller too
    wait_for(lambda: not slurm_b.jobs_named("kf-site-b-fails.1"), 90, "beta to purge the finished job")
    for backend in (beta, slurm_b.backend()):
        r = report(backend, "site-b-fails")
        assert r is not None and (r.state, r.exit_code) == (RunState.FAILED, 3), r
        assert r.started_at_s is not None and r.ended_at_s is not None
        assert abs(r.ended_at_s - (rf.ended_at_s or 0)) <= 1  # jobcomp's local times agree with squeue's epochs

    fragments = [discover(replace(lab.config, owner="local")).fragment() for lab in (slurm_a, slurm_b)]
    scenario = load_text(fleet_doc(*fragments, sites=["site-alpha", "site-beta"]), "two sites")
    assert {p.cluster: p.node_names for p in scenario.fleet.pools} == {
        "alpha": ("node1", "node2", "node3"),
        "beta": ("node1", "node2"),
    }
    assert {c.name: c.site for c in scenario.fleet.clusters} == {"alpha": "site-alpha", "beta": "site-beta"}


def test_zz_time_limit_kill(slurm_a: SlurmLab) -> None:
    """The job launched when the cluster started (60 s limit, ``sleep 600``) ends as TIMEOUT."""
    r = wait_state(slurm_a.backend(), "timelimit", FINAL, timeout_s=150)
    assert r.state is RunState.TIMEOUT, r.message
    assert r.started_at_s is not None and r.ended_at_s is not None
    assert 60 <= r.ended_at_s - r.started_at_s <= 120
