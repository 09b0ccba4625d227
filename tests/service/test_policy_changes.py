"""The live policy (``kfabric policy apply|show``) on both stores: an applied policy changes the next cycle's
decision, invalid documents are refused whole, the stored policy wins over ``serve --policy`` at start; and the
operations API (fleet apply, nodes, policy) through HTTP, with the CLI's rendering of a fleet change."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from kfabric.api.app import create_app
from kfabric.backends.sim import SimBackend
from kfabric.cli.fleet_admin_cmd import describe_change
from kfabric.model.errors import PermissionDenied, ValidationError
from kfabric.scenarios.loader import packaged_path
from kfabric.scenarios.policies import load_policy
from kfabric.service import jobs, policy_changes
from kfabric.service.actors import Actor, Role
from kfabric.service.auth import authenticate
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t

START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
RTX = ["RTX-PRO-6000"]


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
    token: str

    def submit(self, estimate_s: float) -> int:
        spec = {"gpus": 8, "gpu_models": RTX, "time_limit_s": 7200.0, "runtime_estimate_s": estimate_s,
                "preemptible": False}  # fmt: skip
        row, _ = jobs.submit(self.rt.sessions, self.op, "acme-internal", spec, self.clock())
        return int(row.id)

    def tick(self, n: int = 1, step_s: float = 30.0) -> None:
        for _ in range(n):
            self.rt.controller.tick()
            self.clock.now += step_s

    def state(self, job_id: int) -> str:
        with self.rt.sessions() as s:
            row = s.get(t.Job, job_id)
            assert row is not None
            return str(row.state)

    def audit_count(self) -> int:
        with self.rt.sessions() as s:
            return s.scalar(select(func.count()).select_from(t.AuditEntry)) or 0


def _open(db_url: str, clock: Clock, policy: str = "fifo") -> Runtime:
    return open_runtime(db_url, load_policy(policy), {"sim": SimBackend(clock)}, fleet="lab", clock=clock)


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    clock = Clock()
    rt = _open(db_url, clock)
    assert rt.bootstrap_token is not None
    with rt.sessions() as s:
        op = authenticate(s, rt.bootstrap_token)
    yield World(rt, clock, op, rt.bootstrap_token)
    rt.close()


@pytest.mark.parametrize(("applied", "first"), [(None, "long"), ("sjf-oracle", "short"), ("fifo", "long")])
def test_an_applied_policy_decides_the_next_cycle(world: World, applied: str | None, first: str) -> None:
    busy = [world.submit(600.0), world.submit(1200.0)]  # both RTX nodes
    world.tick(2)
    assert [world.state(j) for j in busy] == ["running", "running"]
    waiting = {"long": world.submit(5000.0), "short": world.submit(300.0)}  # submitted in this order
    if applied is not None:
        policy_changes.apply_policy(world.rt.sessions, world.op, applied, applied, world.clock())
    world.tick(22)  # the 600 s job ends: one node frees
    assert world.rt.controller.policy.name == (applied or "fifo")
    assert world.rt.controller.live.policy is world.rt.controller.policy
    started = [k for k, j in waiting.items() if world.state(j) != "pending"]
    assert started == [first]


def test_a_policy_document_is_validated_stored_and_audited(world: World) -> None:
    doc = "base: multifactor\nbackfill: conservative\ngrace_s: 120\n"
    stored, policy = policy_changes.apply_policy(world.rt.sessions, world.op, doc, "night", world.clock())
    assert (policy.name, policy.backfill, policy.grace_s, policy.ordering) == ("night", "conservative", 120.0,
                                                                               "multifactor")  # fmt: skip
    policy_changes.apply_policy(world.rt.sessions, world.op, "fifo", "fifo", world.clock())
    with world.rt.sessions() as s:
        assert policy_changes.stored_policy(s) is not None
        rows = s.scalars(select(t.PolicySource).order_by(t.PolicySource.id)).all()
        entry = s.scalars(select(t.AuditEntry).where(t.AuditEntry.action == "policy.apply")).all()[-1]
    assert [(r.name, r.active) for r in rows] == [("night", False), ("fifo", True)]
    assert (entry.detail["old_document"], entry.detail["document"]) == (doc, "fifo")
    world.tick()
    assert world.rt.controller.policy.name == "fifo" and world.rt.controller.policy_source_id == rows[-1].id
    assert stored.id == rows[0].id


REFUSED = [
    ("unknown key", "base: fifo\nbackfil: easy\n", "backfil"),
    ("bad value", "backfill: sometimes\n", "backfill"),
    ("unknown base", "base: fastest\n", "a preset name"),
    ("not a mapping", "- fifo\n", "mapping"),
    ("not YAML", "backfill: [easy\n", "valid YAML"),
]


@pytest.mark.parametrize(("doc", "match"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_invalid_policies_are_refused_whole(world: World, doc: str, match: str) -> None:
    before = world.audit_count()
    with pytest.raises(ValidationError, match=match):
        policy_changes.apply_policy(world.rt.sessions, world.op, doc, "bad", world.clock())
    assert world.audit_count() == before
    with world.rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(t.PolicySource)) == 0


def test_only_operators_apply_policies(world: World) -> None:
    with pytest.raises(PermissionDenied):
        policy_changes.apply_policy(world.rt.sessions, Actor(1, "m", Role.MEMBER), "fifo", "fifo", world.clock())


def test_the_stored_policy_wins_over_serve_policy_at_start(world: World, db_url: str) -> None:
    policy_changes.apply_policy(world.rt.sessions, world.op, "sjf-oracle", "sjf-oracle", world.clock())
    rt = _open(db_url, world.clock, policy="kfabric")
    try:
        rt.controller.tick()
        assert rt.controller.policy.name == "sjf-oracle"
    finally:
        rt.close()


# ---- the operations API ---------------------------------------------------------------------------------------
def test_operations_over_http(world: World) -> None:
    client = TestClient(create_app(world.rt))
    auth = {"Authorization": f"Bearer {world.token}"}
    lab = yaml.safe_load(packaged_path("lab").read_text())
    lab["sites"][0]["power_cap_mw"] = 0.2
    body = {"document": yaml.safe_dump(lab), "dry_run": True}
    answer = client.post("/v1/fleet/apply", json=body, headers=auth)
    assert answer.status_code == 200, answer.text
    change = answer.json()
    assert change["diff"]["sites"]["changed"] == {"lab-gov": {"power_cap_mw": ["0.1", "0.2"]}}
    assert describe_change(change)[:2] == ["Fleet lab: changes (dry run: nothing changed)",
                                           "  sites       ~ lab-gov: power_cap_mw 0.1 -> 0.2"]  # fmt: skip
    refused = client.post("/v1/fleet/apply", json={"document": "name: x\n"}, headers=auth)
    assert refused.status_code == 422 and "expected" in refused.json()["error"]["message"]
    stray = client.post("/v1/fleet/apply", json={**body, "running": "later"}, headers=auth)
    assert stray.status_code == 422

    drained = client.post("/v1/nodes/rtx-001/drain", json={"reason": "fan"}, headers=auth)
    assert drained.status_code == 200 and drained.json()["pool"] == "rtx"
    assert [n["node"] for n in client.get("/v1/nodes", headers=auth).json()] == ["rtx-001"]
    assert client.post("/v1/nodes/rtx-001/resume", headers=auth).json()["state"] == "up"
    assert client.post("/v1/nodes/rtx-001/resume", headers=auth).status_code == 409
    assert client.post("/v1/nodes/nope/drain", json={"reason": "x"}, headers=auth).status_code == 404

    applied = client.post("/v1/policy", json={"document": "base: fifo\nreservations: 2\n", "name": "two"}, headers=auth)
    assert applied.status_code == 200 and applied.json()["policy"]["reservations"] == 2
    shown = client.get("/v1/policy", headers=auth).json()
    assert (shown["policy"]["name"], shown["pending"]) == ("fifo", True)
    world.tick()
    shown = client.get("/v1/policy", headers=auth).json()
    assert (shown["policy"]["name"], shown["pending"], shown["source"]) == ("two", False, shown["source"])
    assert shown["source"].startswith("policy apply #")
    assert client.get("/v1/policy").status_code == 401
