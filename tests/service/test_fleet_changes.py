"""Fleet changes on a running service (``kfabric fleet apply``) and an operator's node drains, on the lab fleet
with the sim backend and a fake clock, on both stores: phases applied one by one (placements follow), a pool
removed or shrunk with running work (finish or requeue, as chosen), dry runs and refused changes that write
nothing, node drain and resume."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from kfabric.backends.sim import SimBackend
from kfabric.model.errors import Conflict, KfabricError, NotFound, PermissionDenied, ValidationError
from kfabric.model.fleet import Fleet
from kfabric.scenarios.loader import load_scenario, load_text, packaged_path
from kfabric.scenarios.policies import load_policy
from kfabric.sched.snapshot import Snapshot
from kfabric.service import fleet_changes, jobs
from kfabric.service.actors import Actor, Role
from kfabric.service.auth import authenticate
from kfabric.service.live_state import fleet_node_names
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t

START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
JUNE = datetime(2026, 6, 1, tzinfo=UTC).timestamp()


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    rt: Runtime
    clock: Clock
    op: Actor

    def submit(self, **spec: object) -> int:
        spec = {"gpus": 8, "time_limit_s": 7200.0, "runtime_estimate_s": 3000.0, "preemptible": False, **spec}
        row, _ = jobs.submit(self.rt.sessions, self.op, "vision-lab", spec, self.clock())
        return int(row.id)

    def tick(self, n: int = 1, step_s: float = 30.0) -> None:
        for _ in range(n):
            self.rt.controller.tick()
            self.clock.now += step_s

    def apply(self, doc: dict[str, Any], **kw: Any) -> fleet_changes.FleetChange:
        text = yaml.safe_dump(doc, sort_keys=False)
        return fleet_changes.apply_fleet(self.rt.sessions, self.op, text, {"sim"}, self.clock(), **kw)

    def job(self, job_id: int) -> t.Job:
        with self.rt.sessions() as s:
            row = s.get(t.Job, job_id)
            assert row is not None
            return row

    def pool_of(self, job_id: int) -> str | None:
        row = self.job(job_id)
        return row.placement["pool"] if row.placement else None

    def nodes_of(self, job_id: int) -> list[str]:
        row = self.job(job_id)
        return [self.rt.controller.node_names[n] for n, *_ in (row.placement or {}).get("shares", [])]

    def counts(self) -> tuple[int, int, int]:
        """Fleet rows, audit entries, node states: what a refused change must leave as it was."""
        with self.rt.sessions() as s:
            return (
                s.scalar(select(func.count()).select_from(t.FleetSource)) or 0,
                s.scalar(select(func.count()).select_from(t.AuditEntry)) or 0,
                s.scalar(select(func.count()).select_from(t.NodeState)) or 0,
            )

    def active_fleet(self) -> Fleet:
        with self.rt.sessions() as s:
            row = fleet_changes.active_source(s)
            return load_text(row.document, "active").fleet


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    clock = Clock()
    rt = open_runtime(db_url, load_policy("kfabric"), {"sim": SimBackend(clock)}, fleet="lab", clock=clock)
    with rt.sessions() as s:
        assert rt.bootstrap_token is not None
        op = authenticate(s, rt.bootstrap_token)
    yield World(rt, clock, op)
    rt.close()


# ---- documents: lab-sized phases, as korea-2030 grows by sites and pools with online dates ----------------------
def lab() -> dict[str, Any]:
    data = yaml.safe_load(packaged_path("lab").read_text())
    assert isinstance(data, dict)
    return data


def phase(n: int) -> dict[str, Any]:
    """Phase 1: the lab. 2: a new site with an H200 pool, online now. 3: a second H200 pool online from June."""
    doc = lab()
    if n >= 2:
        doc["sites"].append({"name": "lab-south", "region": "busan", "operator": "South Lab",
                             "certification": "government-operated", "clearance": "restricted",
                             "power_cap_mw": 0.2, "pue": 1.2})  # fmt: skip
        doc["clusters"].append({"name": "south-a", "site": "lab-south", "backend": "sim"})
        doc["pools"].append(_pool("h200", "south-a", nodes=2, online="2026-01-01"))
    if n >= 3:
        doc["pools"].append(_pool("h200b", "south-a", nodes=2, online="2026-06-01"))
    return doc


def _pool(name: str, cluster: str, nodes: int, online: str) -> dict[str, Any]:
    return {"name": name, "cluster": cluster, "gpu_model": "H200", "gpus_per_node": 8, "nodes": nodes,
            "nodes_per_rack": 2, "racks_per_unit": 1, "node_power_kw": 10.2, "owner": "government",
            "sharing": "shared", "online": datetime.fromisoformat(online).date()}  # fmt: skip


def without_pool(doc: dict[str, Any], name: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["pools"] = [p for p in out["pools"] if p["name"] != name]
    return out


def with_pool(doc: dict[str, Any], name: str, **fields: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for p in out["pools"]:
        if p["name"] == name:
            p.update(fields)
    return out


# ---- tests ----------------------------------------------------------------------------------------------------
def test_node_names_match_the_live_state() -> None:
    fleet = load_scenario("lab").fleet
    assert fleet_changes.node_names(fleet) == fleet_node_names(fleet, Snapshot.for_fleet(fleet))


def test_phases_applied_one_by_one_and_placements_follow(world: World) -> None:
    h200 = [world.submit(gpu_models=["H200"]) for _ in range(4)]
    h100 = world.submit(gpu_models=["H100"])
    world.tick(2)
    assert [world.job(j).state for j in h200] == ["pending"] * 4
    assert world.job(h100).state == "running"

    change = world.apply(phase(2))
    assert change.diff.sites.added == ("lab-south",) and change.diff.pools.added == ("h200",)
    assert change.source_id is not None and not change.dry_run
    world.tick(2)
    assert sorted(world.job(j).state for j in h200) == ["pending", "pending", "running", "running"]
    assert {world.pool_of(j) for j in h200 if world.job(j).state == "running"} == {"h200"}
    assert world.job(h100).state == "running" and world.pool_of(h100) == "h100"  # kept its placement
    assert world.rt.scenario.fleet.pools[-1].name == "h200"  # the API follows

    world.apply(phase(3))  # h200b comes online in June
    world.tick(2)
    assert sum(world.job(j).state == "running" for j in h200) == 2
    assert {world.pool_of(j) for j in h200 if world.job(j).state == "running"} == {"h200"}
    world.clock.now = JUNE  # the first two have ended by then
    h200 += [world.submit(gpu_models=["H200"]) for _ in range(4)]
    world.tick(2)
    running = [j for j in h200 if world.job(j).state == "running"]
    assert len(running) == 4
    assert sorted(world.pool_of(j) or "" for j in running) == ["h200", "h200", "h200b", "h200b"]
    nodes = [n for j in running for n in world.nodes_of(j)]
    assert len(set(nodes)) == 4 and all(n.startswith(("h200-", "h200b-")) for n in nodes)


def test_a_pool_removed_with_running_work_is_refused_without_a_choice(world: World) -> None:
    world.apply(phase(2))
    jid = world.submit(gpu_models=["H200"])
    world.tick(2)
    assert world.pool_of(jid) == "h200"
    before = world.counts()
    with pytest.raises(Conflict, match=r"pool 'h200' loses nodes while 1 job\(s\) run there.*--running finish"):
        world.apply(phase(1))
    assert world.counts() == before


@pytest.mark.parametrize("choice", ["finish", "requeue"])
def test_removing_a_pool_with_running_work_behaves_as_chosen(world: World, choice: str) -> None:
    world.apply(phase(2))
    first, second = world.submit(gpu_models=["H200"]), world.submit(gpu_models=["H200"])
    world.tick(2)
    assert {world.pool_of(first), world.pool_of(second)} == {"h200"}
    waiting = world.submit(gpu_models=["H200"])  # no room: waits
    change = world.apply(phase(1), running=choice)
    assert change.diff.pools.removed == ("h200",)
    assert dict(change.draining) == {"h200": ("h200-001", "h200-002")}
    world.tick(3)
    # the pool takes no new work while it drains
    assert world.job(waiting).state == "pending"
    if choice == "requeue":
        assert [world.job(j).state for j in (first, second)] == ["pending", "pending"]
        assert all(world.job(j).attempt == 1 for j in (first, second))
    else:
        assert [world.job(j).state for j in (first, second)] == ["running", "running"]
        world.tick(110, step_s=30.0)  # their 3000 s run to the end
        assert [world.job(j).state for j in (first, second)] == ["succeeded", "succeeded"]
    world.tick(2)
    assert [p.name for p in world.active_fleet().pools] == ["h100", "rtx"]
    assert [s.name for s in world.active_fleet().sites] == ["lab-gov", "lab-acme"]
    assert "h200" not in world.rt.controller.live.snap.capacity.pool_by_name
    with world.rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(t.NodeState)) == 0
        actions = s.scalars(select(t.AuditEntry.action).where(t.AuditEntry.object_type == "fleet")).all()
    assert actions[-3:] == ["fleet.apply", "fleet.activate", "fleet.drained"]


def test_shrinking_a_pool_keeps_the_busy_node_until_its_work_ends(world: World) -> None:
    jobs_ = [world.submit(gpu_models=["H100"], runtime_estimate_s=600.0 * (k + 1)) for k in range(4)]
    world.tick(2)
    assert sorted(n for j in jobs_ for n in world.nodes_of(j)) == [f"h100-00{k}" for k in range(1, 5)]
    change = world.apply(with_pool(lab(), "h100", nodes=2), running="finish")
    assert dict(change.draining) == {"h100": ("h100-003", "h100-004")}
    assert sorted(change.finishing) == sorted(j for j in jobs_ if set(world.nodes_of(j)) & {"h100-003", "h100-004"})
    world.tick(2)
    assert world.active_fleet().pools[0].nodes == 4  # kept, drained
    world.tick(200)  # every job ends
    assert [world.job(j).state for j in jobs_] == ["succeeded"] * 4
    assert world.active_fleet().pools[0].nodes == 2
    again = world.submit(gpu_models=["H100"])
    world.tick(2)
    assert world.nodes_of(again)[0] in ("h100-001", "h100-002")


def test_dry_run_prints_the_difference_and_changes_nothing(world: World) -> None:
    before = world.counts()
    change = world.apply(with_pool(phase(2), "h100", node_power_kw=11.0, sharing="dedicated"), dry_run=True)
    assert change.dry_run and change.source_id is None
    assert dict(change.diff.pools.changed)["h100"] == (
        ("node_power_kw", "10.2", "11"),
        ("sharing", "shared", "dedicated"),
    )
    assert change.to_json()["diff"]["sites"]["added"] == ["lab-south"]
    assert world.counts() == before
    world.tick()
    assert [p.name for p in world.rt.controller.live.fleet.pools] == ["h100", "rtx"]


def test_the_same_fleet_again_is_no_change(world: World) -> None:
    before = world.counts()
    change = world.apply(lab())
    assert change.diff.empty and change.source_id is None
    assert world.counts() == before


def _with_site(doc: dict[str, Any], name: str, **fields: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for s in out["sites"]:
        if s["name"] == name:
            s.update(fields)
    return out


def _with_cluster(doc: dict[str, Any], name: str, **fields: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for c in out["clusters"]:
        if c["name"] == name:
            c.update(fields)
    return out


REFUSED: list[tuple[str, Callable[[], dict[str, Any]], dict[str, Any], type[KfabricError], str]] = [
    ("unknown model", lambda: with_pool(lab(), "rtx", gpu_model="X9000"), {}, ValidationError, "gpu_model"),
    ("power cap below what runs", lambda: _with_site(lab(), "lab-gov", power_cap_mw=0.01), {}, Conflict,
     r"lab-gov.*0.01 MW is below the 0.0\d+ MW"),
    ("pool removed with running work", lambda: without_pool(lab(), "h100"), {}, Conflict, "--running finish"),
    ("backend not configured", lambda: _with_cluster(lab(), "acme-a", backend="slurm"), {}, ValidationError,
     "backend 'slurm', which this server does not run"),
    ("GPUs change under work that should finish", lambda: with_pool(lab(), "h100", gpus_per_node=4),
     {"running": "finish"}, Conflict, "cannot finish on GPUs that change"),
    ("a choice that does not exist", lambda: without_pool(lab(), "h100"), {"running": "later"}, ValidationError,
     "unknown choice"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "kw", "error", "match"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_invalid_changes_are_refused_whole(
    world: World, doc: Callable[[], dict[str, Any]], kw: dict[str, Any], error: type[KfabricError], match: str
) -> None:
    busy = world.submit(gpu_models=["H100"], gpus=8)
    world.tick(2)
    assert world.job(busy).state == "running"
    before = world.counts()
    with pytest.raises(error, match=match):
        world.apply(doc(), **kw)
    assert world.counts() == before
    world.tick()
    assert world.job(busy).state == "running" and world.job(busy).attempt == 1


def test_a_second_change_waits_for_the_first_to_take_effect(world: World) -> None:
    world.apply(phase(2))
    with pytest.raises(Conflict, match="not in effect yet"):
        world.apply(phase(3))
    world.tick()
    assert world.apply(phase(3)).source_id is not None


def test_only_operators_change_the_fleet(world: World) -> None:
    member = Actor(world.op.user_id, "someone", Role.MEMBER)
    with pytest.raises(PermissionDenied):
        fleet_changes.apply_fleet(world.rt.sessions, member, yaml.safe_dump(phase(2)), {"sim"}, world.clock())
    with pytest.raises(PermissionDenied):
        fleet_changes.drain_node(world.rt.sessions, member, "h100-001", "x", world.clock())


def test_a_restarted_controller_takes_a_stored_change(world: World, db_url: str) -> None:
    first = world.submit(gpu_models=["H100"])
    world.tick(2)
    world.apply(phase(2))  # stored; this controller never ticks again
    rt = open_runtime(db_url, load_policy("kfabric"), {"sim": world.rt.controller.backends["sim"]}, clock=world.clock)
    try:
        waiting = world.submit(gpu_models=["H200"])
        rt.controller.tick()
        rt.controller.tick()
        with rt.sessions() as s:
            row = s.get(t.Job, waiting)
            assert row is not None and row.state in ("admitted", "running") and row.placement["pool"] == "h200"
            kept = s.get(t.Job, first)
            assert kept is not None and kept.state == "running"
        assert rt.scenario.fleet.pools[-1].name == "h200"
    finally:
        rt.close()


def test_serve_with_another_fleet_points_to_fleet_apply(world: World, db_url: str) -> None:
    with pytest.raises(ValidationError, match=r"already runs fleet 'lab'.*kfabric fleet apply korea-2030"):
        open_runtime(db_url, load_policy("kfabric"), {"sim": SimBackend(world.clock)}, fleet="korea-2030")


# ---- node drain and resume ------------------------------------------------------------------------------------
@pytest.mark.parametrize("requeue", [False, True])
def test_a_drained_node_gets_no_new_work_and_resumes(world: World, requeue: bool) -> None:
    running = world.submit(gpu_models=["H100"])
    world.tick(2)
    node = world.nodes_of(running)[0]
    view = fleet_changes.drain_node(world.rt.sessions, world.op, node, "disk swap", world.clock(), requeue=requeue)
    assert (view.pool, view.state, view.reason) == ("h100", "drain", "disk swap")
    world.tick(2)
    if requeue:  # stopped and placed again, elsewhere
        assert world.job(running).attempt == 2 and node not in world.nodes_of(running)
    else:
        assert (world.job(running).state, world.job(running).attempt, world.nodes_of(running)) == ("running", 1, [node])
    others = [world.submit(gpu_models=["H100"], runtime_estimate_s=6000.0) for _ in range(4)]
    world.tick(2)
    assert node not in {n for j in others for n in world.nodes_of(j)}
    assert any(world.nodes_of(j) for j in others)  # the other nodes take work (up to the grant's cap)
    index = world.rt.controller.live.node_index[node]
    assert list(world.rt.controller.live.out_nodes) == [index]
    listed = fleet_changes.list_nodes(world.rt.sessions, world.op)
    assert [(n.node, n.source, n.reason) for n in listed] == [(node, "operator", "disk swap")]
    assert listed[0].jobs == (() if requeue else (running,))

    fleet_changes.resume_node(world.rt.sessions, world.op, node, world.clock())
    world.tick(2)
    assert world.rt.controller.live.out_nodes == {}
    assert world.rt.controller.live.snap.capacity.up[index]
    with world.rt.sessions() as s:
        actions = s.scalars(select(t.AuditEntry.action).where(t.AuditEntry.object_type == "node")).all()
    assert actions == ["node.drain", "node.resume"]


def test_node_commands_name_what_is_wrong(world: World) -> None:
    with pytest.raises(NotFound, match="h100-009"):
        fleet_changes.drain_node(world.rt.sessions, world.op, "h100-009", "x", world.clock())
    with pytest.raises(ValidationError, match="reason"):
        fleet_changes.drain_node(world.rt.sessions, world.op, "h100-001", " ", world.clock())
    with pytest.raises(Conflict, match="not drained"):
        fleet_changes.resume_node(world.rt.sessions, world.op, "h100-001", world.clock())


def test_a_standby_answers_for_the_fleet_the_leader_runs(world: World, db_url: str) -> None:
    """Another server on the store (a standby: it never ticks) follows the fleet in effect, read-only, so that its
    API (``GET /v1/fleet``, the submit-time checks) answers for the leader's fleet."""
    standby = open_runtime(db_url, load_policy("kfabric"), {"sim": SimBackend(world.clock)}, clock=world.clock)
    try:
        before = world.counts()
        standby.controller.follow_as_standby()
        assert world.counts() == before, "a standby wrote something"
        world.apply(phase(2))
        standby.controller.follow_as_standby()
        assert "h200" not in {p.name for p in standby.scenario.fleet.pools}, "a pending change is not in effect yet"
        world.tick()  # the leader takes the change
        standby.controller.follow_as_standby()
        assert "h200" in {p.name for p in standby.scenario.fleet.pools}
    finally:
        standby.close()
