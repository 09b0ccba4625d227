"""Node health on the lab fleet with the sim backend and a fake clock: a failed node stops receiving placements and
its running job is requeued with the node's reason; a repair brings the node back; a drain lets running work
finish; a backend that cannot be reached changes nothing; ``GET /v1/fleet/live`` and ``kfabric fleet show
--live`` show nodes by state and why a node is out, to operators and providers only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from kfabric.api.app import create_app
from kfabric.backends.base import Backend, BackendUnavailable, NodeFact
from kfabric.backends.sim import SimBackend
from kfabric.cli.main import main
from kfabric.client import Client
from kfabric.scenarios.policies import load_policy
from kfabric.service import jobs, node_health
from kfabric.service.actors import Actor
from kfabric.service.auth import authenticate
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t

START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()  # both lab pools online
FAILURE = "GPU 3 fell off the bus (XID 79)"


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Fleet:
    rt: Runtime
    clock: Clock
    sim: SimBackend
    op: Actor

    def submit(self, **spec: object) -> int:
        spec = {"gpus": 8, "time_limit_s": 7200.0, "runtime_estimate_s": 3000.0, **spec}
        row, _ = jobs.submit(self.rt.sessions, self.op, "vision-lab", spec, self.clock())
        return int(row.id)

    def tick(self, seconds: float = 30.0, times: int = 1) -> None:
        for _ in range(times):
            self.rt.controller.tick()
            self.clock.now += seconds

    def job(self, job_id: int) -> t.Job:
        with self.rt.sessions() as s:
            row = s.get(t.Job, job_id)
            assert row is not None
            return row

    def node_of(self, job_id: int) -> str:
        placement = self.job(job_id).placement
        assert placement is not None, f"job {job_id} has no placement"
        return str(self.rt.controller.node_names[placement["shares"][0][0]])

    def nodes_in_use(self) -> set[str]:
        """Nodes named by the placement of any admitted or running job."""
        return set(self.jobs_by_node())

    def jobs_by_node(self) -> dict[str, set[int]]:
        """Admitted and running jobs by the nodes of their placements."""
        names = self.rt.controller.node_names
        found: dict[str, set[int]] = {}
        with self.rt.sessions() as s:
            rows = s.execute(select(t.Job.id, t.Job.placement).where(t.Job.state.in_(("admitted", "running"))))
            for job_id, placement in rows:
                for share in (placement or {}).get("shares", []):
                    found.setdefault(names[share[0]], set()).add(job_id)
        return found

    def node_rows(self) -> dict[str, tuple[str, str, str]]:
        with self.rt.sessions() as s:
            return {r.node: (r.source, r.state, r.reason) for r in s.scalars(select(t.NodeState))}

    def audit(self, action: str) -> list[tuple[str, dict[str, Any]]]:
        with self.rt.sessions() as s:
            q = select(t.AuditEntry).where(t.AuditEntry.action == action).order_by(t.AuditEntry.id)
            return [(e.object_id, e.detail) for e in s.scalars(q)]

    def events(self, job_id: int) -> list[str]:
        with self.rt.sessions() as s:
            q = select(t.JobEvent.reason).where(t.JobEvent.job_id == job_id).order_by(t.JobEvent.id)
            return list(s.scalars(q))


@pytest.fixture
def fleet(db_url: str) -> Iterator[Fleet]:
    clock = Clock()
    sim = SimBackend(clock)
    rt = open_runtime(db_url, load_policy("kfabric"), {"sim": sim}, fleet="lab", clock=clock)
    assert rt.bootstrap_token is not None
    with rt.sessions() as s:
        op = authenticate(s, rt.bootstrap_token)
    yield Fleet(rt, clock, sim, op)
    rt.close()


def test_failed_node_is_unschedulable_its_job_is_requeued_with_the_reason_and_a_repair_returns_it(
    fleet: Fleet,
) -> None:
    victim = fleet.submit()
    fleet.tick(times=2)
    assert fleet.job(victim).state == "running"
    node = fleet.node_of(victim)

    assert fleet.sim.fail_node(node, FAILURE) == [(str(victim), 1)]
    fleet.tick()
    assert fleet.node_rows() == {node: ("sim", "fail", FAILURE)}
    assert fleet.rt.controller.live.out_nodes  # the scheduler's view took it out in the same tick
    assert fleet.audit("node.down") == [(node, {"source": "sim", "state": "fail", "reason": FAILURE})]
    assert fleet.job(victim).state in ("pending", "admitted")  # requeued (and maybe placed again at once)
    assert fleet.job(victim).placement is None or fleet.node_of(victim) != node
    requeue = f"requeued after: node {node} failed: {FAILURE}"
    assert requeue in fleet.events(victim)
    [(_, detail)] = [a for a in fleet.audit("job.requeue") if a[0] == str(victim)]
    assert detail["why"] == f"node {node} failed: {FAILURE}"

    # fill the fleet (6 nodes x 8 GPUs): nothing lands on the failed node, the victim runs elsewhere
    for _ in range(7):
        fleet.submit()
    for _ in range(6):
        fleet.tick()
        assert node not in fleet.nodes_in_use()
    assert fleet.job(victim).state == "running" and fleet.job(victim).attempt == 2

    assert fleet.sim.repair_node(node)
    fleet.tick()
    assert fleet.node_rows() == {}
    assert fleet.audit("node.up") == [(node, {"source": "sim", "was": "fail", "reason": FAILURE})]
    fleet.tick(times=2)
    assert node in fleet.nodes_in_use(), "the repaired node takes the job that was waiting"


def test_drain_from_the_backend_lets_running_work_finish(fleet: Fleet) -> None:
    running = fleet.submit(runtime_estimate_s=600.0)
    fleet.tick(times=2)
    node = fleet.node_of(running)
    fleet.sim.drain_node(node, "firmware update")
    fleet.tick()
    assert fleet.node_rows() == {node: ("sim", "drain", "firmware update")}
    for _ in range(7):
        fleet.submit(runtime_estimate_s=600.0)
    for _ in range(6):
        fleet.tick()
        assert fleet.jobs_by_node().get(node, set()) <= {running}, "only the job that ran before the drain"
    assert fleet.job(running).state == "running"
    fleet.tick(times=20)
    row = fleet.job(running)
    assert (row.state, row.attempt) == ("succeeded", 1)  # never requeued
    assert node not in fleet.nodes_in_use()


def test_unreachable_backend_changes_no_node_state(fleet: Fleet) -> None:
    fleet.sim.fail_node("h100-001", "psu")
    fleet.tick()
    before = fleet.node_rows()
    assert before == {"h100-001": ("sim", "fail", "psu")}
    fleet.sim.available = False
    fleet.sim.repair_node("h100-001")
    fleet.sim.fail_node("h100-002", "psu")
    fleet.tick(times=3)
    assert fleet.node_rows() == before  # neither the repair nor the new failure: nothing is known
    fleet.sim.available = True
    fleet.tick()
    assert fleet.node_rows() == {"h100-002": ("sim", "fail", "psu")}


class _Raises:
    """A backend whose ``nodes()`` fails (the controller's poll succeeded)."""

    name = "sim"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def nodes(self) -> list[NodeFact]:
        raise self.exc


class _Reports:
    name = "sim"

    def __init__(self, *facts: NodeFact) -> None:
        self.facts = list(facts)

    def nodes(self) -> list[NodeFact]:
        return self.facts


class _NoNodes:
    name = "sim"


OLD = {"h100-001": ("sim", "down", "old")}


@pytest.mark.parametrize(
    ("backend", "rows", "audited"),
    [
        (_Raises(BackendUnavailable("no route to host")), OLD, 0),
        (_Raises(ValueError("sinfo printed nonsense")), OLD, 0),
        (_NoNodes(), {}, 1),  # a backend without nodes(): every node up
        (_Reports(), {}, 1),  # reports nothing: every node up
        (_Reports(NodeFact("h100-001", "down", "old")), OLD, 0),
        (_Reports(NodeFact("h100-001", "down", "new words")), {"h100-001": ("sim", "down", "new words")}, 0),
        (_Reports(NodeFact("h100-001", "drain", "x")), {"h100-001": ("sim", "drain", "x")}, 1),
        (_Reports(NodeFact("not-in-the-fleet", "down", "x")), {}, 1),  # only the backend's own nodes
        (_Reports(NodeFact("rtx-001", "fail", "y")), {"rtx-001": ("sim", "fail", "y")}, 2),
        (_Reports(NodeFact("h100-001", "up", "fine")), {}, 1),
    ],
    ids=["unavailable", "error", "no-method", "none", "same", "reworded", "drain", "unknown-node", "other", "up"],
)
def test_sync_writes_only_changes_of_what_the_backend_knows(
    fleet: Fleet, backend: object, rows: dict[str, object], audited: int
) -> None:
    with fleet.rt.sessions.begin() as s:
        s.add(t.NodeState(node="h100-001", source="sim", state="down", reason="old", since_s=START, by="controller"))
    ctl = fleet.rt.controller
    ctl.backends["sim"] = cast(Backend, backend)
    with fleet.rt.sessions.begin() as s:
        node_health.sync(s, ctl, ["sim"], {}, fleet.clock())
    assert fleet.node_rows() == rows
    assert len(fleet.audit("node.down")) + len(fleet.audit("node.up")) == audited


# ---- GET /v1/fleet/live and kfabric fleet show --live ----------------------------------------------------------


def _user(client: TestClient, operator: str, **body: object) -> str:
    r = client.post("/v1/users", headers={"Authorization": f"Bearer {operator}"}, json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def test_fleet_live_content_and_who_may_see_it(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = fleet.submit(gpus=4)
    fleet.tick(times=2)
    fleet.sim.fail_node("rtx-002", "fan failure")
    fleet.sim.drain_node(fleet.node_of(busy), "firmware update")
    fleet.tick()
    op = fleet.rt.bootstrap_token
    assert op is not None
    with TestClient(create_app(fleet.rt), raise_server_exceptions=False) as client:
        provider = _user(client, op, name="acme-ops", role="provider", owner="acme")
        member = _user(client, op, name="vis", role="member", organization="snu-vision", projects=["vision-lab"])
        reviewer = _user(client, op, name="rev", role="reviewer")

        def get(token: str) -> Any:
            return client.get("/v1/fleet/live", headers={"Authorization": f"Bearer {token}"})

        r = get(op)
        assert r.status_code == 200, r.text
        live = r.json()
        by_pool = {p["name"]: p for p in live["pools"]}
        assert set(by_pool) == {"h100", "rtx"}
        h100, rtx = by_pool["h100"], by_pool["rtx"]
        assert h100["node_states"] == {"idle": 3, "mixed": 0, "allocated": 0, "drain": 1, "down": 0, "future": 0}
        assert rtx["node_states"] == {"idle": 1, "mixed": 0, "allocated": 0, "drain": 0, "down": 1, "future": 0}
        assert (h100["gpus_free"], h100["gpus_allocated"], h100["gpus_out"]) == (24, 4, 4)
        assert (rtx["gpus_free"], rtx["gpus_allocated"], rtx["gpus_out"]) == (8, 0, 8)
        for p in live["pools"]:
            assert p["gpus_free"] + p["gpus_allocated"] + p["gpus_out"] == p["gpus"]
        out = {o["node"]: o for o in live["out"]}
        drained = fleet.node_of(busy)
        assert set(out) == {drained, "rtx-002"}
        assert out["rtx-002"]["state"] == "fail" and out["rtx-002"]["since_s"] == pytest.approx(START + 60)
        assert out["rtx-002"]["reasons"] == [
            {"source": "sim", "state": "fail", "reason": "fan failure", "since_s": START + 60, "by": "controller"}
        ]
        assert (out[drained]["state"], out[drained]["gpus_allocated"]) == ("drain", 4)  # draining: work still on it

        r = get(provider)
        assert r.status_code == 200
        assert [p["name"] for p in r.json()["pools"]] == ["rtx"]  # acme's pool only
        assert [o["node"] for o in r.json()["out"]] == ["rtx-002"]
        for token in (member, reviewer):
            r = get(token)
            assert r.status_code == 403, r.text
            error = r.json()["error"]
            assert "live fleet" in error["message"] and error["fix"]

        transport = client._transport  # the CLI through the same app
        monkeypatch.setattr(Client, "from_env", lambda url, token: Client("http://testserver", op, transport=transport))
        assert main(["fleet", "show", "--live"]) == 0
        text = capsys.readouterr().out
        for word in ("h100", "rtx", "Nodes out of service", "rtx-002", "fan failure (sim)", "firmware update", drained):
            assert word in text, text
        assert main(["fleet", "show", "--live", "--json"]) == 0
        assert {p["name"] for p in json.loads(capsys.readouterr().out)["pools"]} == {"h100", "rtx"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fleet", "show"], "name a SCENARIO"),
        (["fleet", "show", "--live", "--at", "2027-01-01"], "drop --at"),
        (["fleet", "show", "local", "--live", "--local-gpus", "2"], "drop --at and --local-gpus"),
        (["fleet", "show", "lab", "--url", "http://x"], "--url and --token go with --live"),
    ],
)
def test_fleet_show_live_argument_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
