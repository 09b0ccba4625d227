"""Helpers for the API tests: a runtime + TestClient on a store (``Api``), and a populated ``World`` of users of
every role and of objects owned by two tenant organizations, all created through the HTTP API."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from kfabric.api.app import create_app
from kfabric.backends.sim import SimBackend
from kfabric.scenarios.policies import load_policy
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t

NOW = 1_780_000_000.0  # 2026-05-28: inside the lab grants, after the lab's RTX pool came online
DAY = 86_400.0
TENANTS = ("snu-vision", "tinyml")
PROJECT_OF = {"snu-vision": "vision-lab", "tinyml": "tinyml-llm"}
GPU_MODEL_OF = {"snu-vision": "H100", "tinyml": "RTX-PRO-6000"}  # tinyml's usage lands on acme's pool
PROVIDER_OWNER = "acme"
SCORES = {"impact": 7.0, "ecosystem": 6.0, "readiness": 8.0}  # the lab-grants program's review criteria

_names = itertools.count(1)
#: every table a request can write; ``Api.writes`` counts their rows (index 2: the audit log)
WRITABLE = (t.Job, t.JobEvent, t.AuditEntry, t.Application, t.Review, t.Grant, t.Organization, t.Project, t.User,
            t.Token, t.ProjectMember, t.Program)  # fmt: skip


def unique(prefix: str) -> str:
    """A name no other call in this process returns (objects of a shared world never collide)."""
    return f"{prefix}-{next(_names)}"


def as_(token: str | None) -> dict[str, str]:
    """Request headers authenticating as ``token`` (no header at all for None)."""
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


class Clock:
    """A settable clock shared by the runtime, its controller and the sim backend."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    rt: Runtime
    client: TestClient
    clock: Clock

    @property
    def operator(self) -> str:
        assert self.rt.bootstrap_token is not None
        return self.rt.bootstrap_token

    def get(self, path: str, token: str | None, **kw: Any) -> httpx.Response:
        return self.client.get(path, headers=as_(token), **kw)

    def post(self, path: str, token: str | None, body: Any = None, **kw: Any) -> httpx.Response:
        return self.client.post(path, headers=as_(token), json=body, **kw)

    def tick(self, seconds: float = 30.0, times: int = 1) -> None:
        """Run the controller loop ``times`` times, advancing the clock ``seconds`` after each."""
        for _ in range(times):
            self.rt.controller.tick()
            self.clock.now += seconds

    # ---- facts read straight from the store (to check that failing requests wrote nothing) ----------------------
    def count(self, table: type[t.Base]) -> int:
        with self.rt.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(table)) or 0)

    def writes(self) -> tuple[int, ...]:
        """Row counts of every table a request can write, plus the audit chain head's length."""
        counts = [select(func.count()).select_from(x).scalar_subquery() for x in WRITABLE]
        head = select(t.ChainHead.count).where(t.ChainHead.id == 1).scalar_subquery()
        with self.rt.sessions() as s:
            return tuple(s.execute(select(*counts, head)).one())

    def job_state(self, job_id: int) -> tuple[str, bool]:
        with self.rt.sessions() as s:
            row = s.get(t.Job, job_id)
            assert row is not None
            return row.state, row.cancel_requested

    def application_status(self, application_id: int) -> tuple[str, int]:
        with self.rt.sessions() as s:
            row = s.get(t.Application, application_id)
            assert row is not None
            reviews = s.scalar(select(func.count()).select_from(t.Review).where(t.Review.application_id == row.id))
            return row.status, int(reviews or 0)


@contextmanager
def open_api(db_url: str) -> Iterator[Api]:
    clock = Clock()
    rt = open_runtime(db_url, load_policy("kfabric"), {"sim": SimBackend(clock)}, fleet="lab", clock=clock)
    try:
        with TestClient(create_app(rt), raise_server_exceptions=False) as client:
            yield Api(rt, client, clock)
    finally:
        rt.close()


@dataclass
class World:
    """Users of every role and objects of two tenants. ``tokens`` is keyed by role for the global roles
    (``operator``, ``reviewer``, ``provider``) and by ``ORG/ROLE`` for tenants (``snu-vision/org-admin``,
    ``snu-vision/member``, ``snu-vision/member2`` (a colleague in the same project), ``tinyml/org-admin``,
    ``tinyml/member``). ``jobs``/``applications``/``finished`` map an organization to one of its objects."""

    api: Api
    tokens: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)  # a pending job submitted by the org's member
    finished: dict[str, int] = field(default_factory=dict)  # a job that ran (and left usage records)
    applications: dict[str, int] = field(default_factory=dict)  # an application by the org's admin

    def token(self, role: str, org: str | None = None) -> str:
        return self.tokens[f"{org}/{role}" if org else role]

    def create_user(self, name: str, role: str, org: str | None = None, projects: tuple[str, ...] = (),
                    owner: str = "", by: str | None = None) -> str:  # fmt: skip
        body = {"name": name, "role": role, "organization": org, "projects": list(projects), "owner": owner}
        r = self.api.post("/v1/users", by or self.api.operator, body)
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token

    def submit(self, token: str, project: str, **spec: Any) -> int:
        r = self.api.post("/v1/jobs", token, {"project": project, "time_limit_s": 3600.0, **spec})
        assert r.status_code == 201, r.text
        job_id: int = r.json()["id"]
        return job_id

    def apply(self, token: str, project: str, gpus: int = 4) -> int:
        body = {"program": "lab-grants", "project": project, "gpu_model_class": "H100", "gpus": gpus, "months": 6,
                "justification": "vision foundation models"}  # fmt: skip
        r = self.api.post("/v1/applications", token, body)
        assert r.status_code == 201, r.text
        app_id: int = r.json()["id"]
        return app_id

    def snu_job(self) -> int:
        """A fresh pending job of snu-vision's member (a target for mutations)."""
        return self.submit(self.token("member", "snu-vision"), "vision-lab", name=unique("target"))

    def snu_application(self) -> int:
        """A fresh submitted application of snu-vision's admin."""
        return self.apply(self.token("org-admin", "snu-vision"), "vision-lab")


def build_world(api: Api) -> World:
    """Create, through the API: an org-admin and a member (of its project) for snu-vision and tinyml, a second
    snu-vision member, a reviewer and a provider (owner acme); one finished job per tenant (run by the
    controller on the sim backend, so usage records exist: snu-vision's on the government H100 pool, tinyml's
    on acme's RTX pool); then one pending job and one submitted application per tenant."""
    w = World(api)
    w.tokens["operator"] = api.operator
    w.tokens["reviewer"] = w.create_user("rev", "reviewer")
    w.tokens["provider"] = w.create_user("prov-acme", "provider", owner=PROVIDER_OWNER)
    for org in TENANTS:
        project = PROJECT_OF[org]
        w.tokens[f"{org}/org-admin"] = w.create_user(f"{org}-admin", "org-admin", org)
        # the org-admin creates its own members (the path an org-admin really uses)
        admin = w.tokens[f"{org}/org-admin"]
        w.tokens[f"{org}/member"] = w.create_user(f"{org}-member", "member", org, (project,), by=admin)
    w.tokens["snu-vision/member2"] = w.create_user("snu-vision-member2", "member", "snu-vision", ("vision-lab",))
    for org in TENANTS:
        w.finished[org] = w.submit(
            w.token("member", org), PROJECT_OF[org], name=f"{org}-done", gpus=2, gpu_models=[GPU_MODEL_OF[org]]
        )
    api.tick(30.0, times=3)  # admit + launch, start, end (the sim backend runs a job for 60 s)
    for org in TENANTS:
        r = api.get(f"/v1/jobs/{w.finished[org]}", api.operator)
        assert r.json()["state"] == "succeeded", r.text
    for org in TENANTS:
        w.jobs[org] = w.submit(w.token("member", org), PROJECT_OF[org], name=f"{org}-pending")
        w.applications[org] = w.apply(w.token("org-admin", org), PROJECT_OF[org])
    return w
