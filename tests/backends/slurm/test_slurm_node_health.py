"""Node health from a real Slurm 22.05 cluster, through the controller (the live service's loop): a node set to
DRAIN and a node whose ``slurmd`` was killed stop receiving placements; the job on the killed node is requeued
with the node's reason, the job on the drained node runs on; a restarted ``slurmd`` brings its node back.

Slurm notices a dead ``slurmd`` only after ``SlurmdTimeout`` (300 s in the start script's slurm.conf; it pings
every 100 s and flags the node NOT_RESPONDING first), so after killing ``slurmd`` the test also sets the node
DOWN with ``scontrol`` — what Slurm itself does once the timeout passes. The mapping of NOT_RESPONDING is
checked on ``sinfo --json`` documents in ``test_sinfo_states_map_to_node_facts``.

The cluster (``gamma``, 3 nodes x 8 b200) is this module's own: the test changes node states that the shared
clusters' tests rely on.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from slurm_lab import SlurmLab, port_base, start_lab, stop_lab, wait_for
from sqlalchemy import select

from kfabric.backends.base import NodeFact
from kfabric.backends.slurm import SlurmBackend, discover
from kfabric.backends.slurm.nodes import node_fact
from kfabric.scenarios.local import local_scenario_text
from kfabric.scenarios.policies import load_policy
from kfabric.service import jobs
from kfabric.service.auth import authenticate
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t
from posix_accounts import map_users

FINAL = ("succeeded", "failed", "cancelled", "timeout")


def _raw(state: object, flags: list[str] = [], reason: str = "", **more: Any) -> dict[str, Any]:  # noqa: B006
    return {"name": "n1", "state": state, "state_flags": flags, "reason": reason, "gres": "gpu:b200:8", **more}


def _f(state: str, reason: str = "", healthy: int | None = None, since: float | None = None) -> NodeFact:
    return NodeFact("n1", state, reason, 8, healthy, since)


#: (case, sinfo --json node, the fact): shapes printed by 22.05 (flags apart) and by newer Slurm (a list)
SINFO_CASES = [
    ("idle", _raw("idle"), _f("up", "", 8)),
    ("mixed", _raw("mixed"), _f("up", "", 8)),
    ("power-saving", _raw("allocated", ["POWERED_DOWN"]), _f("up", "", 8)),
    ("drained", _raw("idle", ["DRAIN"], "bad gpu 3"), _f("drain", "Slurm drain: bad gpu 3")),
    ("draining", _raw("mixed", ["DRAIN"], "x", reason_changed_at=17e8), _f("drain", "Slurm drain: x", None, 17e8)),
    ("fail", _raw("idle", ["FAIL"], "failing psu"), _f("fail", "Slurm fail: failing psu")),
    ("down", _raw("down", [], "slurmd killed"), _f("down", "Slurm down: slurmd killed")),
    ("down*", _raw("down", ["NOT_RESPONDING"], "Not responding"), _f("down", "Slurm down: Not responding")),
    ("not-responding", _raw("mixed", ["NOT_RESPONDING"]), _f("down", "Slurm not responding")),
    ("drain+fail", _raw("idle", ["DRAIN", "FAIL"], "r"), _f("fail", "Slurm fail: r")),
    ("drain+no-answer", _raw("idle", ["DRAIN", "NOT_RESPONDING"], "r"), _f("down", "Slurm not responding: r")),
    ("rebooting", _raw("idle", ["REBOOT_ISSUED"]), _f("down", "Slurm rebooting")),
    ("future", _raw("future"), _f("down", "Slurm not in service yet (FUTURE)")),
    ("unknown", _raw("unknown"), _f("down", "Slurm state unknown (slurmd has not registered)")),
    ("other-base", _raw("planned"), _f("down", "Slurm state planned")),
    ("list-state", _raw(["IDLE", "DRAIN"], reason="newer"), _f("drain", "Slurm drain: newer")),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "fact"), [c[1:] for c in SINFO_CASES], ids=[c[0] for c in SINFO_CASES])
def test_sinfo_states_map_to_node_facts(raw: dict[str, Any], fact: NodeFact) -> None:
    assert node_fact(raw) == fact


# ---- a real cluster ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gamma(slurm_root: Path) -> Iterator[SlurmLab]:
    lab = start_lab("gamma", 3, port_base(set()), slurm_root)
    try:
        yield lab
    finally:
        stop_lab(lab)


def _fleet_doc(lab: SlurmLab) -> str:
    doc = yaml.safe_load(local_scenario_text(8))
    found = discover(replace(lab.config, owner="local", site=doc["sites"][0]["name"]))
    doc["clusters"], doc["pools"] = found.fragment()["clusters"], found.fragment()["pools"]
    doc.pop("documented_totals", None)
    return yaml.safe_dump(doc, sort_keys=False)


class Service:
    def __init__(self, rt: Runtime, lab: SlurmLab) -> None:
        self.rt, self.lab = rt, lab
        assert rt.bootstrap_token is not None
        with rt.sessions() as s:
            self.op = authenticate(s, rt.bootstrap_token)

    def submit(self, name: str) -> int:
        spec = {"gpus": 8, "time_limit_s": 1200.0, "command": "sleep 600", "name": name}
        return int(jobs.submit(self.rt.sessions, self.op, "default", spec, time.time())[0].id)

    def jobs(self) -> dict[int, tuple[str, int, str | None]]:
        """Job → (state, attempt, node of its placement)."""
        names = self.rt.controller.node_names
        with self.rt.sessions() as s:
            rows = s.execute(select(t.Job.id, t.Job.state, t.Job.attempt, t.Job.placement)).all()
        return {i: (st, a, names[p["shares"][0][0]] if p else None) for i, st, a, p in rows}

    def slurm_states(self) -> list[str]:
        """What Slurm says of its jobs (kfabric calls a job still pending in Slurm running: it is launched)."""
        return self.lab.cmd("squeue", "--states=all", "--noheader", "-o", "%T").split()

    def node_rows(self) -> dict[str, tuple[str, str]]:
        with self.rt.sessions() as s:
            return {r.node: (r.state, r.reason) for r in s.scalars(select(t.NodeState))}

    def events(self, job_id: int) -> list[str]:
        with self.rt.sessions() as s:
            return list(s.scalars(select(t.JobEvent.reason).where(t.JobEvent.job_id == job_id)))

    def until(self, what: str, done: Any, timeout_s: float = 60.0) -> None:
        def ticked() -> bool:
            self.rt.controller.tick()
            return bool(done())

        try:
            wait_for(ticked, timeout_s, what)
        except AssertionError as exc:  # say where things stand
            events = {j: self.events(j) for j in self.jobs()}
            slurm = self.lab.cmd("squeue", "--states=all", "-o", "%i %j %T %N %r", check=False)
            raise AssertionError(
                f"{exc}; jobs {self.jobs()}; nodes {self.node_rows()}; events {events}; {slurm}"
            ) from None


def test_drained_and_killed_nodes_get_no_placements_and_the_killed_nodes_job_is_requeued(
    gamma: SlurmLab, tmp_path: Path, job_account: str
) -> None:
    backend = SlurmBackend(gamma.config)
    backend.node_facts_every_s = 0.0  # read sinfo at every poll (the default reads it every 10 s)
    rt = open_runtime(
        f"sqlite:///{tmp_path}/k.db", load_policy("kfabric"), {gamma.name: backend}, fleet_document=_fleet_doc(gamma)
    )
    map_users(rt.sessions, job_account)  # jobs run as the test account (sbatch --uid), never as root
    svc = Service(rt, gamma)
    dead: list[str] = []  # a node whose slurmd is down, to start again whatever happens
    try:
        _drain_and_kill(svc, dead)
    finally:
        for node in dead:
            gamma.cmd("slurmd", "-f", str(gamma.dir / "slurm.conf"), "-N", node, check=False)
        for job_id, (state, _attempt, _node) in svc.jobs().items():
            if state not in FINAL:
                jobs.cancel(rt.sessions, svc.op, job_id, time.time())
        rt.controller.tick()
        gamma.cmd("scancel", "--full", f"--user={job_account}", check=False)
        rt.close()


def _drain_and_kill(svc: Service, dead: list[str]) -> None:
    lab, ctl = svc.lab, svc.rt.controller
    first = [svc.submit(f"fill-{k}") for k in range(3)]
    svc.until("three jobs running in Slurm", lambda: svc.slurm_states() == ["RUNNING"] * 3)
    node_of = {j: svc.jobs()[j][2] for j in first}
    assert sorted(str(n) for n in node_of.values()) == ["node1", "node2", "node3"]
    on_drained, on_killed, _on_healthy = first
    drained, killed = str(node_of[on_drained]), str(node_of[on_killed])

    lab.cmd("scontrol", "update", f"nodename={drained}", "state=drain", "reason=kfabric-test maintenance")
    dead.append(killed)
    os.kill(int((lab.dir / "run" / f"slurmd-{killed}.pid").read_text().strip()), signal.SIGKILL)
    # Slurm would mark it down after SlurmdTimeout (300 s here): say it now, as Slurm then will
    lab.cmd("scontrol", "update", f"nodename={killed}", "state=down", "reason=slurmd killed")
    waiting = [svc.submit(f"more-{k}") for k in range(2)]

    def requeues() -> list[str]:
        return [e for e in svc.events(on_killed) if e.startswith("requeued after:")]

    svc.until(f"{killed}'s job requeued", requeues)
    assert svc.node_rows() == {
        drained: ("drain", "Slurm drain: kfabric-test maintenance"),
        killed: ("down", "Slurm down: slurmd killed"),
    }
    [why] = requeues()
    assert why.startswith(f"requeued after: node {killed} is down: Slurm down: slurmd killed"), why
    assert "NODE_FAIL" in why  # and what Slurm said about the job

    for _ in range(8):  # no new placement on either node; the drained node's job runs on
        ctl.tick()
        now = svc.jobs()
        assert now[on_drained] == ("running", 1, drained)
        for job in (on_killed, *waiting):
            assert now[job][2] not in (drained, killed), now
        time.sleep(0.25)

    # slurmd back: Slurm returns the node to service (ReturnToService=2), kfabric places on it again
    lab.cmd("slurmd", "-f", str(lab.dir / "slurm.conf"), "-N", killed)
    dead.remove(killed)
    svc.until(f"{killed} back in service", lambda: killed not in svc.node_rows())

    def placed_on_killed() -> bool:
        return killed in {node for state, _a, node in svc.jobs().values() if state in ("admitted", "running")}

    svc.until(f"a waiting job placed on {killed}", placed_on_killed)
    lab.cmd("scontrol", "update", f"nodename={drained}", "state=resume")
    svc.until(f"{drained} resumed", lambda: svc.node_rows() == {})
