"""Two real Slurm clusters as two sites of one kfabric fleet, driven by the controller (the live service's
loop): jobs of two programs, a ``restricted`` job only ever lands on the cleared site, and fair share and
accounting are one ledger over both clusters."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from slurm_lab import SlurmLab, fresh_prefix, two_site_fleet
from sqlalchemy import func, select

from kfabric.scenarios.policies import load_policy
from kfabric.service import jobs
from kfabric.service.auth import authenticate
from kfabric.service.runtime import open_runtime
from kfabric.store import tables as t
from posix_accounts import map_users

pytestmark = pytest.mark.integration


def test_two_slurm_clusters_are_one_fleet(
    slurm_a: SlurmLab, slurm_b: SlurmLab, tmp_path: Path, job_account: str
) -> None:
    backends = {lab.name: lab.backend(job_name_prefix=fresh_prefix()) for lab in (slurm_a, slurm_b)}
    rt = open_runtime(
        f"sqlite:///{tmp_path}/k.db", load_policy("kfabric"), backends, fleet_document=two_site_fleet(slurm_a, slurm_b)
    )
    try:
        map_users(rt.sessions, job_account)  # jobs run as the test account (sbatch --uid), never as root
        with rt.sessions() as s:
            op = authenticate(s, rt.bootstrap_token)
        command = 'echo "$SLURMD_NODENAME $CUDA_VISIBLE_DEVICES"'
        base = {"gpus": 8, "time_limit_s": 120.0, "command": command}  # CPU/memory: the node's share
        restricted = [
            jobs.submit(
                rt.sessions,
                op,
                "sovereign-fm",
                {**base, "classification": "restricted", "name": f"fm-{i}"},
                time.time(),
            )[0].id
            for i in range(3)
        ]
        public = [
            jobs.submit(rt.sessions, op, "nova-llm", {**base, "name": f"nova-{i}"}, time.time())[0].id for i in range(3)
        ]
        deadline = time.monotonic() + 240  # generous: Slurm commands slow down on a loaded 2-core box
        while time.monotonic() < deadline:
            rt.controller.tick()
            with rt.sessions() as s:
                states = dict(s.execute(select(t.Job.id, t.Job.state)).all())
            if all(states[i] in ("succeeded", "failed", "cancelled", "timeout") for i in states):
                break
            time.sleep(0.5)
        rt.controller.account_running(time.time())
        with rt.sessions() as s:
            reasons = dict(s.execute(select(t.Job.id, t.Job.reason)).all())
        assert {states[i] for i in restricted + public} == {"succeeded"}, reasons
        with rt.sessions() as s:
            backend_of = dict(s.execute(select(t.Job.id, t.Job.backend)).all())
            site_q = select(t.UsageRecord.site, func.sum(t.UsageRecord.gpu_s)).group_by(t.UsageRecord.site)
            by_site = dict(s.execute(site_q).all())
            project_q = (
                select(t.Project.name, func.sum(t.UsageRecord.su))
                .join(t.Project, t.Project.id == t.UsageRecord.project_id)
                .group_by(t.Project.name)
            )
            su_by_project = dict(s.execute(project_q).all())
        # sovereignty: restricted work only on the cleared site (alpha); the rest may use both
        assert {backend_of[i] for i in restricted} == {slurm_a.name}
        # the restricted jobs really ran on alpha's nodes with 8 GPUs each (their Slurm output says so)
        with rt.sessions() as s:
            output_of = dict(s.execute(select(t.Job.id, t.Job.stdout_path)).all())  # -o, default kfabric-%j.out
        for i in restricted:
            out = Path(output_of[i]).read_text().split()
            assert out[0].startswith("node") and out[1] == "0,1,2,3,4,5,6,7"
        # one ledger: usage from both clusters, fair-share usage per project over both
        assert set(by_site) == {slurm_a.config.site, slurm_b.config.site} or set(by_site) == {slurm_a.config.site}
        # fair-share usage counts each second a run holds its GPUs, from admission (sched/ledger.py); billing counts
        # from the start: per job, the billed SU rate over admission..end
        with rt.sessions() as s:
            per_job = s.execute(
                select(
                    t.Project.name,
                    t.Job.admitted_at_s,
                    t.Job.started_at_s,
                    t.Job.ended_at_s,
                    func.sum(t.UsageRecord.su),
                )
                .join(t.Project, t.Project.id == t.Job.project_id)
                .join(t.UsageRecord, t.UsageRecord.job_id == t.Job.id)
                .group_by(t.Job.id, t.Project.name, t.Job.admitted_at_s, t.Job.started_at_s, t.Job.ended_at_s)
            ).all()
        # the live count accrues at each cycle while a run holds its GPUs, and a run leaves at the end Slurm reports
        # once the controller has seen it: it may have accrued up to then. Slurm's end is in whole seconds (up to
        # 1 s early), and an end is seen within a poll interval (1 s) plus a tick: per run at most slack_s more.
        # Slurm's start is in whole seconds too, so a billed run may begin up to 1 s before its admission (CI saw
        # billed 1349.140 > live 1349.083 SU): the live count holds at least the billed part after admission.
        slack_s = 1.0 + 1.0 + 1.0
        held: dict[str, float] = {}
        billed_after_admission: dict[str, float] = {}
        for project, admitted, started, ended, su in per_job:
            rate = su / max(ended - started, 1e-9)
            held[project] = held.get(project, 0.0) + rate * (ended - admitted + slack_s)
            after = rate * (ended - max(started, admitted))
            billed_after_admission[project] = billed_after_admission.get(project, 0.0) + after
        usage = rt.controller.live.snap.usage_su
        for project, su in su_by_project.items():
            # at least what was billed from admission on (within float noise); at most admission..end of the
            # records plus the observation slack
            low = billed_after_admission[project] * (1 - 1e-9)
            assert low <= usage[project] <= held[project], (project, su, low, usage[project], held[project])
        assert set(su_by_project) == {"sovereign-fm", "nova-llm"}
    finally:
        rt.close()
