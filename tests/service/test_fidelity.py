"""Fidelity of the twin to the live service (issue 18): the live controller, with the ``sim`` backend on a clock
stepped one policy interval per tick, runs a workload on the ``lab`` fleet; its recorded history (which job
started on which nodes, in which cycle) is then replayed in the twin (``kfabric.sim``) under the same policy,
tenants and grants. Both change state between cycles through ``sched.ledger`` and decide with ``sched.cycle``.

The decisions must match exactly, except for differences whose cause the test names and allows
(:data:`ALLOWED`). Each difference is attributed to a cause from the two histories; a difference with no known
cause fails the test, and so does an allowed cause that no longer occurs (the list stays honest).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pytest
from sqlalchemy import select

from kfabric.backends.sim import SimBackend
from kfabric.model.decision import Decision
from kfabric.scenarios.loader import load_scenario
from kfabric.scenarios.policies import load_policy
from kfabric.sched.snapshot import GrantState
from kfabric.service import jobs
from kfabric.service.actors import Actor
from kfabric.service.auth import actor_for, authenticate
from kfabric.service.controller import Controller
from kfabric.service.jobspec import job_of_row
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.sim.engine import SimOptions, Simulator
from kfabric.sim.workload import SimJob, Workload
from kfabric.store import tables as t

DAY = date(2026, 3, 2)
START = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC).timestamp()
POLICY = "kfabric"
#: jobs in the workload; seconds between live ticks, which is also the twin's cycle interval and the arrivals' slot
JOBS, TICK_S = 300, 60.0
SLOT_S = TICK_S

#: causes of a difference the test accepts (each must still occur: see the module's note). Empty: the decisions
#: match exactly. Differences found while building this test, each removed by sharing code (``sched.ledger``):
#: the twin re-cycled after its own preemptions only at the next unrelated event; it never woke when a victim
#: passed its minimum run time; it counted a time limit from the admission, not the start; it started a job at
#: once on GPUs a victim of the same cycle held through its grace; live launches waited for a whole node, not
#: for the GPUs, of a terminating victim.
ALLOWED: frozenset[str] = frozenset()


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


# ---- the workload ------------------------------------------------------------------------------------------------
def workload_specs(n: int = JOBS) -> list[tuple[float, str, dict[str, object]]]:
    """``(offset from START, project, spec)`` per job; seeded. Arrivals and run times are whole multiples of the
    policy interval, so the live ticks and the twin's cycles fall on the same instants. Some jobs fail, some run
    past their time limit; low-priority preemptible jobs borrow the reserved H100s that vision-lab reclaims."""
    rng = np.random.default_rng(18)
    projects = ("vision-lab", "tinyml-llm", "acme-internal")
    out = []
    at = 0.0
    for i in range(n):
        at += SLOT_S * int(rng.integers(0, 2))
        project = projects[int(rng.integers(0, 3))]
        gpus = int(rng.choice([1, 1, 1, 2, 2, 4, 8, 16]))
        run_s = SLOT_S * int(rng.integers(2, 20))
        # one in ten reaches its time limit (a whole number of intervals too)
        limit = run_s * 2 if rng.random() > 0.1 else SLOT_S * max(1, int(run_s / SLOT_S) // 2)
        spec: dict[str, object] = {"gpus": gpus, "time_limit_s": limit, "runtime_estimate_s": run_s,
                                   "name": f"n{i % 7}"}  # fmt: skip
        if rng.random() < 0.08:
            spec["command"] = "exit 3"
        if project == "tinyml-llm" and rng.random() < 0.5:
            spec["priority"] = "low"
        out.append((at, project, spec))
    return out


# ---- the live run ----------------------------------------------------------------------------------------------
@dataclass
class Live:
    rt: Runtime
    clock: Clock
    op: Actor

    @property
    def ctl(self) -> Controller:
        return self.rt.controller


@pytest.fixture
def live(tmp_path: object) -> Iterator[Live]:
    clock = Clock()
    db = f"sqlite:///{tmp_path}/kfabric.db"
    policy = load_policy(POLICY)
    rt = open_runtime(db, policy, {"sim": SimBackend(clock)}, fleet="lab", clock=clock, account_interval_s=TICK_S)
    with rt.sessions() as s:
        token = rt.bootstrap_token
        if token is None:
            op = actor_for(s, s.scalars(select(t.User).where(t.User.role == "operator")).one())
        else:
            op = authenticate(s, token)
    yield Live(rt, clock, op)
    rt.close()


Start = tuple[str, int, float, str, tuple[str, ...]]  # job, attempt, cycle time (offset), pool, node names


def run_live(w: Live, specs: list[tuple[float, str, dict[str, object]]]) -> tuple[list[Start], dict[str, GrantState]]:
    """Run the workload to the end; returns every admission (from the audit log) and the grants the first cycle
    saw (the twin starts from them)."""
    interval = TICK_S
    w.ctl.tick()
    grants = dict(w.ctl.live.snap.grants)
    nxt = 0
    while True:
        while nxt < len(specs) and START + specs[nxt][0] <= w.clock.now:
            _, project, spec = specs[nxt]
            jobs.submit(w.rt.sessions, w.op, project, dict(spec), w.clock())
            nxt += 1
        w.ctl.tick()
        with w.rt.sessions() as s:
            active = s.scalar(select(t.Job.id).where(t.Job.state.in_(("pending", "admitted", "running"))).limit(1))
        if nxt >= len(specs) and active is None:
            break
        w.clock.now += interval
    with w.rt.sessions() as s:
        rows = s.scalars(select(t.AuditEntry).where(t.AuditEntry.action == "job.admit").order_by(t.AuditEntry.id))
        starts = [
            (e.object_id, int(e.detail["attempt"]), e.at_s - START, str(e.detail["pool"]), tuple(e.detail["nodes"]))
            for e in rows
        ]
    return starts, grants


# ---- the twin ------------------------------------------------------------------------------------------------
class RecordingTwin(Simulator):
    """The twin, recording each admission as it applies it (job, attempt, cycle time, pool, node names)."""

    node_names: list[str]
    starts: list[Start]
    attempts: dict[str, int]

    def _apply(self, decision: Decision) -> None:
        for adm in decision.admissions:
            self.attempts[adm.job_id] = self.attempts.get(adm.job_id, 0) + 1
            nodes = tuple(self.node_names[share.node] for share in adm.placement.shares)
            self.starts.append((adm.job_id, self.attempts[adm.job_id], self.now, adm.placement.pool, nodes))
        super()._apply(decision)


def replay(w: Live, grants: dict[str, GrantState]) -> list[Start]:
    """The live submissions, as the store has them, replayed in the twin under the same policy, tenants and grants
    (times moved to the twin's clock, which starts at DAY)."""
    live = w.ctl.live
    with w.rt.sessions() as s:
        rows = s.scalars(select(t.Job).order_by(t.Job.id)).all()
        users = dict(s.execute(select(t.User.id, t.User.name)).all())
        projects = dict(s.execute(select(t.Project.id, t.Project.name)).all())
        sim_jobs = []
        for row in rows:
            job = job_of_row(row, projects[row.project_id], users.get(row.user_id, ""))
            job = dataclasses.replace(job, submit_s=job.submit_s - START)
            command = str(row.spec.get("command") or "")
            sim_jobs.append(SimJob(job, float(row.spec["runtime_estimate_s"]), fails=command.startswith("exit ")))
    shifted = {
        gid: dataclasses.replace(g, start_s=g.start_s - START, end_s=g.end_s - START) for gid, g in grants.items()
    }
    policy = w.ctl.policy
    options = SimOptions(start=DAY, interval_s=TICK_S, failures_per_gpu_s=0.0, sample_s=86_400.0)
    twin = RecordingTwin(
        load_scenario("lab").fleet, Workload("live", sim_jobs), policy, options, tenants=live.snap.tenants,
        grants=shifted,
    )  # fmt: skip
    twin.node_names, twin.starts, twin.attempts = list(w.ctl.node_names), [], {}
    twin.run()
    return twin.starts


def differences(live: list[Start], twin: list[Start]) -> list[tuple[Start | None, Start | None, str]]:
    """Pairs of admissions that differ (matched by job and attempt), each with its cause."""
    by_key_live = {(s[0], s[1]): s for s in live}
    by_key_twin = {(s[0], s[1]): s for s in twin}
    out: list[tuple[Start | None, Start | None, str]] = []
    for key in sorted(set(by_key_live) | set(by_key_twin), key=lambda k: (int(k[0]), k[1])):
        a, b = by_key_live.get(key), by_key_twin.get(key)
        if a == b:
            continue
        out.append((a, b, cause(a, b)))
    return out


def cause(a: Start | None, b: Start | None) -> str:
    if a is None or b is None:
        return "started in one path only"
    if a[2] != b[2]:
        return "started in another cycle"
    return "placed on other nodes"


def test_the_twin_replays_the_live_service_decisions(live: Live) -> None:
    specs = workload_specs()
    live_starts, grants = run_live(live, specs)
    assert len({s[0] for s in live_starts}) == JOBS, "every job started live"
    assert any(s[1] > 1 for s in live_starts), "the workload exercises preemption and restarts"
    twin_starts = replay(live, grants)
    found = differences(live_starts, twin_starts)
    report = "\n".join(f"{c}: live {a} twin {b}" for a, b, c in found[:20])
    assert {c for _a, _b, c in found} <= ALLOWED, f"{len(found)} differences:\n{report}"
    assert {c for _a, _b, c in found} == ALLOWED, "an allowed cause no longer occurs: remove it from ALLOWED"
