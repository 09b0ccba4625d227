"""Batched, overlapped dispatch to real Slurm 22.05 (cluster ``alpha`` of conftest.py): ``launch_many`` submits
several sbatch at once and stays idempotent per attempt (a repeat, a restarted backend, answers lost in the middle
of a batch: one Slurm job each); a refused spec fails alone; ``poll`` reads Slurm on its own cadence; the text
``squeue`` it reads says what ``squeue --json`` says; and the controller hands a tick's launches over in batches."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from slurm_lab import SlurmLab, fresh_prefix, one_cluster_fleet, spec, wait_for, wait_state

from kfabric.backends.base import BackendUnavailable, LaunchSpec, RunState
from kfabric.backends.slurm import SlurmBackend, SlurmCli
from kfabric.scenarios.policies import load_policy
from kfabric.service import jobs
from kfabric.service.auth import authenticate
from kfabric.service.runtime import open_runtime
from kfabric.store import tables as t
from posix_accounts import JOB_ACCOUNT, map_users

pytestmark = pytest.mark.integration
FINAL = {s for s in RunState if s.final}


def batch(tag: str, n: int, command: str = "true") -> list[LaunchSpec]:
    return [spec(f"{tag}-{i}", command, [f"node{1 + i % 2}"]) for i in range(n)]


class _EveryOtherAnswerLost(SlurmCli):
    """sbatch submits every job, but the answer of every second call is lost (the client timed out)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._n = 0
        self._lock = threading.Lock()

    def sbatch(self, args: list[str], script: str) -> int:  # type: ignore[override]
        slurm_id = super().sbatch(args, script)
        with self._lock:
            self._n += 1
            lost = self._n % 2 == 0
        if lost:
            raise BackendUnavailable("sbatch did not answer within 30 s")
        return slurm_id


def test_launch_many_is_one_slurm_job_per_attempt(slurm_a: SlurmLab) -> None:
    backend = slurm_a.backend(submit_parallel=6)
    specs = batch("many", 12)
    assert backend.launch_many(specs) == [None] * 12
    assert backend.launch_many(specs) == [None] * 12  # known attempts: nothing submitted
    assert slurm_a.backend().launch_many(specs) == [None] * 12  # a restarted controller: nothing either
    for s in specs:
        assert len(slurm_a.jobs_named(f"kf-{s.job_id}.1")) == 1, s.job_id
    for s in specs:
        assert wait_state(backend, s.job_id, FINAL).state is RunState.SUCCEEDED


def test_answers_lost_inside_a_batch_are_retried_without_duplicates(slurm_a: SlurmLab) -> None:
    cfg = dataclasses.replace(slurm_a.config, submit_parallel=4)
    lossy = SlurmBackend(cfg, cli=_EveryOtherAnswerLost(cfg.slurm_conf, cfg.command_timeout_s, cfg.backoff_max_s))
    specs = batch("lossy", 8)
    outcomes = lossy.launch_many(specs)
    assert sum(isinstance(o, BackendUnavailable) for o in outcomes) == 4 and outcomes.count(None) == 4
    assert lossy.launch_many(specs) == [None] * 8  # the retry reads Slurm first and finds what the lost answers made
    assert slurm_a.backend().launch_many(specs) == [None] * 8
    for s in specs:
        assert len(slurm_a.jobs_named(f"kf-{s.job_id}.1")) == 1, s.job_id


def test_a_refused_spec_fails_alone(slurm_a: SlurmLab) -> None:
    backend = slurm_a.backend()
    good = batch("mixed", 3)
    bad = spec("mixed-bad", "true", ["node-nowhere"])
    no_account = dataclasses.replace(spec("mixed-noacct", "true", ["node1"]), posix_user="")
    outcomes = backend.launch_many([good[0], bad, good[1], no_account, good[2]])
    assert [o is None for o in outcomes] == [True, False, True, False, True]
    assert isinstance(outcomes[1], ValueError) and "sbatch" in str(outcomes[1])  # Slurm's refusal, as a SlurmError
    assert isinstance(outcomes[3], ValueError) and "POSIX account" in str(outcomes[3])
    assert slurm_a.jobs_named("kf-mixed-bad.1") == [] and slurm_a.jobs_named("kf-mixed-noacct.1") == []
    for s in good:
        assert wait_state(backend, s.job_id, FINAL).state is RunState.SUCCEEDED


def test_poll_reads_slurm_on_its_own_cadence(slurm_a: SlurmLab) -> None:
    slow = slurm_a.backend(poll_interval_s=3600.0)
    slow.poll()  # the first read
    slow.launch(spec("cadence", "sleep 2", ["node1"]))
    calls = slow.cli.calls
    reports = {r.job_id: r for r in slow.poll()}  # answered from memory: no Slurm command
    assert slow.cli.calls == calls
    assert reports["cadence"].state is RunState.RUNNING  # launched since the last read: never taken for lost
    eager = slurm_a.backend(poll_interval_s=0.0)
    eager.poll()
    before = eager.cli.calls
    eager.poll()
    assert eager.cli.calls > before  # interval 0: every poll reads
    assert wait_state(eager, "cadence", FINAL).state is RunState.SUCCEEDED


def test_text_squeue_says_what_json_squeue_says(slurm_a: SlurmLab) -> None:
    backend = slurm_a.backend()
    backend.launch(spec("parity-fail", "exit 3", ["node1"]))
    backend.launch(spec("parity-run", "sleep 30", ["node2"]))
    assert wait_state(backend, "parity-fail", FINAL).state is RunState.FAILED
    wait_state(backend, "parity-run", {RunState.RUNNING})
    keys = ("job_id", "name", "job_state", "start_time", "end_time", "submit_time", "node_count", "nodes", "comment")

    def rows(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out = {}
        for job in found:
            if str(job.get("name", "")).startswith("kf-parity"):
                out[str(job["name"])] = {k: str(job.get(k) or "") for k in keys} | {
                    "exit_code": job.get("exit_code") if job.get("job_state") == "FAILED" else None
                }
        return out

    text, doc = rows(backend.cli.squeue_rows()), rows(backend.cli.squeue_jobs())
    assert set(text) == {"kf-parity-fail.1", "kf-parity-run.1"}
    assert text == doc
    assert text["kf-parity-fail.1"]["exit_code"] == 768  # raw wait status, as squeue --json gives it
    backend.terminate("parity-run", 1)


def test_controller_hands_a_ticks_launches_over_in_batches(slurm_a: SlurmLab, tmp_path: Path) -> None:
    prefix = fresh_prefix()
    backend = slurm_a.backend(submit_parallel=4, poll_interval_s=0.2, job_name_prefix=prefix)
    calls: list[int] = []
    launch_many = backend.launch_many

    def counted(specs: Sequence[LaunchSpec]) -> list[Exception | None]:
        calls.append(len(specs))
        return launch_many(specs)

    backend.launch_many = counted  # type: ignore[method-assign]
    rt = open_runtime(
        f"sqlite:///{tmp_path}/k.db", load_policy("kfabric"), {slurm_a.name: backend},
        fleet_document=one_cluster_fleet(slurm_a, "batch-dispatch"),
    )  # fmt: skip
    try:
        with rt.sessions() as s:
            assert rt.bootstrap_token is not None
            op = authenticate(s, rt.bootstrap_token)
        map_users(rt.sessions, JOB_ACCOUNT)
        spec_of = {"gpus": 1, "time_limit_s": 120.0, "command": "true"}
        ids = [jobs.submit(rt.sessions, op, "p", {**spec_of, "name": f"b{i}"}, rt.clock())[0].id for i in range(10)]

        def all_final() -> bool:
            rt.controller.tick()
            with rt.sessions() as s:
                return all(s.get(t.Job, i).state == "succeeded" for i in ids)  # type: ignore[union-attr]

        wait_for(all_final, 120, "the 10 jobs to succeed")
    finally:
        rt.close()
    assert calls[0] == 10  # one tick's launches in one call
    for i in ids:
        assert len(slurm_a.jobs_named(f"{prefix}-{i}.1")) == 1


def test_a_cancel_while_the_launch_is_in_flight_terminates_what_it_launched(slurm_a: SlurmLab, tmp_path: Path) -> None:
    """Launches run on the controller's launcher thread while the loop goes on: a cancel that arrives meanwhile
    neither marks the job ended before its sbatch returned (that would leave a Slurm job running unowned) nor
    launches it twice; once the launch is recorded the job is terminated in Slurm."""
    prefix = fresh_prefix()
    backend = slurm_a.backend(poll_interval_s=0.2, job_name_prefix=prefix)
    release, entered = threading.Event(), threading.Event()
    launch_many = backend.launch_many

    def held(specs: Sequence[LaunchSpec]) -> list[Exception | None]:
        entered.set()
        assert release.wait(60), "the test never released the launch"
        return launch_many(specs)

    backend.launch_many = held  # type: ignore[method-assign]
    rt = open_runtime(f"sqlite:///{tmp_path}/k.db", load_policy("kfabric"), {slurm_a.name: backend},
                      fleet_document=one_cluster_fleet(slurm_a, "batch-dispatch"))  # fmt: skip
    try:
        with rt.sessions() as s:
            assert rt.bootstrap_token is not None
            op = authenticate(s, rt.bootstrap_token)
        map_users(rt.sessions, JOB_ACCOUNT)
        job = jobs.submit(rt.sessions, op, "p", {"gpus": 1, "time_limit_s": 120.0, "command": "sleep 60"}, rt.clock())
        job_id = job[0].id
        rt.controller.tick()  # admitted and handed to the launcher, which waits
        assert entered.wait(30)
        jobs.cancel(rt.sessions, op, job_id, rt.clock())
        for _ in range(3):
            rt.controller.tick()  # the loop goes on; the job is in flight: left alone
        with rt.sessions() as s:
            row = s.get(t.Job, job_id)
            assert row is not None and row.state == "admitted" and not row.launched
        release.set()

        def cancelled() -> bool:
            rt.controller.tick()
            with rt.sessions() as s:
                return s.get(t.Job, job_id).state == "cancelled"  # type: ignore[union-attr]

        wait_for(cancelled, 60, "the cancelled job to end")
    finally:
        release.set()
        rt.close()
    name = f"{prefix}-{job_id}.1"
    assert len(slurm_a.jobs_named(name)) == 1  # launched once
    states = slurm_a.cmd("squeue", "--all", "--states=all", "--noheader", f"--name={name}", "-o", "%T").split()
    assert states and states[0] in ("CANCELLED", "COMPLETING", "COMPLETED"), states  # nothing left running
