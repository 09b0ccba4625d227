"""Usage reports over usage records (SQLite, and PostgreSQL where installed): grouping, clipping to an interval,
who sees what, CSV, and totals that add up."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import PermissionDenied, ValidationError
from kfabric.service import accounting
from kfabric.service.actors import Actor
from kfabric.service.auth import actor_for
from kfabric.store import tables as t
from kfabric.store.db import make_engine, migrate, session_factory

T = 1_800_000_000.0
H = 3600.0

# project, program, site, provider, model, start (h after T), end, GPUs, SU per GPU-second, price factor
RECORDS = [
    ("p-uni", "A", "s1", "nhn", "H200", 0, 1, 8, 1.0, 0.0),
    ("p-uni2", "A", "s2", "kt", "B200", 1, 2, 4, 2.0, 1.0),
    ("p-corp", None, "s1", "nhn", "H200", 0, 2, 2, 1.0, 1.0),
]
PROJECTS = {"p-uni": "uni", "p-uni2": "uni", "p-corp": "corp"}
USERS = {  # name: (role, organization, projects, owner)
    "op": ("operator", None, (), ""),
    "rev": ("reviewer", None, (), ""),
    "admin-uni": ("org-admin", "uni", (), ""),
    "admin-corp": ("org-admin", "corp", (), ""),
    "mem-uni": ("member", "uni", ("p-uni",), ""),
    "prov-nhn": ("provider", None, (), "nhn"),
    "prov-kt": ("provider", None, (), "kt"),
    "prov-none": ("provider", None, (), "elsewhere"),
}


@dataclass
class World:
    sessions: sessionmaker[Session]
    actors: dict[str, Actor]

    def report(
        self, who: str, by: str, since: float | None = None, until: float | None = None
    ) -> dict[str, tuple[float, float, float, int]]:
        with self.sessions() as s:
            rows = accounting.usage_report(s, self.actors[who], by, since, until)
        # SU in the report are SU-hours; the table below states SU-seconds as the records hold them
        return {r[by]: (r["gpu_hours"], r["su_hours"] * H, r["charged_su_hours"] * H, r["records"]) for r in rows}


@pytest.fixture
def w(db_url: str) -> Iterator[World]:
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        orgs = {n: t.Organization(name=n, kind=k) for n, k in (("uni", "university"), ("corp", "enterprise"))}
        s.add_all(orgs.values())
        s.flush()
        projects = {p: t.Project(name=p, organization_id=orgs[o].id) for p, o in PROJECTS.items()}
        program = t.Program(name="A", rules={})
        s.add_all([*projects.values(), program])
        s.flush()
        for name, (role, org, member_of, owner) in USERS.items():
            user = t.User(name=name, role=role, organization_id=orgs[org].id if org else None, owner=owner)
            s.add(user)
            s.flush()
            s.add_all(t.ProjectMember(project_id=projects[p].id, user_id=user.id) for p in member_of)
        for project, prog, site, provider, model, h0, h1, gpus, su_w, price in RECORDS:
            p = projects[project]
            job = t.Job(project_id=p.id, user_id=user.id, submitted_at_s=T)
            s.add(job)
            s.flush()
            gpu_s = gpus * (h1 - h0) * H
            s.add(
                t.UsageRecord(
                    job_id=job.id,
                    project_id=p.id,
                    organization_id=p.organization_id,
                    program_id=program.id if prog else None,
                    grant_id=None,
                    site=site,
                    provider=provider,
                    gpu_model=model,
                    start_s=T + h0 * H,
                    end_s=T + h1 * H,
                    gpu_s=gpu_s,
                    su=gpu_s * su_w,
                    price_factor=price,
                    charged_su=gpu_s * su_w * price,
                )
            )
    with sessions() as s:
        actors = {u.name: actor_for(s, u) for u in s.scalars(select(t.User)).all()}
    yield World(sessions, actors)
    engine.dispose()


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("program", {"A": (12, 2 * 8 * H, 8 * H, 2), "(none)": (4, 4 * H, 4 * H, 1)}),
        ("organization", {"uni": (12, 2 * 8 * H, 8 * H, 2), "corp": (4, 4 * H, 4 * H, 1)}),
        ("project", {"p-uni": (8, 8 * H, 0, 1), "p-uni2": (4, 8 * H, 8 * H, 1), "p-corp": (4, 4 * H, 4 * H, 1)}),
        ("site", {"s1": (12, 12 * H, 4 * H, 2), "s2": (4, 8 * H, 8 * H, 1)}),
        ("provider", {"nhn": (12, 12 * H, 4 * H, 2), "kt": (4, 8 * H, 8 * H, 1)}),
        ("gpu_model", {"H200": (12, 12 * H, 4 * H, 2), "B200": (4, 8 * H, 8 * H, 1)}),
    ],
)
def test_usage_groups_by_each_key(w: World, by: str, expected: dict[str, tuple[float, float, float, int]]) -> None:
    got = w.report("op", by)
    assert got == {k: pytest.approx(v) for k, v in expected.items()}
    assert list(got) == sorted(got)  # rows come sorted by key


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (0.5, 1.5, {"p-uni": (4, 4 * H, 0, 1), "p-uni2": (2, 4 * H, 4 * H, 1), "p-corp": (2, 2 * H, 2 * H, 1)}),
        (1, None, {"p-uni2": (4, 8 * H, 8 * H, 1), "p-corp": (2, 2 * H, 2 * H, 1)}),
        (None, 1, {"p-uni": (8, 8 * H, 0, 1), "p-corp": (2, 2 * H, 2 * H, 1)}),
        (None, 0, {}),
        (2, 3, {}),
        (-5, 5, {"p-uni": (8, 8 * H, 0, 1), "p-uni2": (4, 8 * H, 8 * H, 1), "p-corp": (4, 4 * H, 4 * H, 1)}),
    ],
    ids=["both-bounds", "since", "until", "before-all", "after-all", "around-all"],
)
def test_records_are_clipped_pro_rata(
    w: World, since: float | None, until: float | None, expected: dict[str, tuple[float, float, float, int]]
) -> None:
    s0 = None if since is None else T + since * H
    s1 = None if until is None else T + until * H
    assert w.report("op", "project", s0, s1) == {k: pytest.approx(v) for k, v in expected.items()}


@pytest.mark.parametrize("cut_h", [0.25, 1, 1.5, 1.9])
def test_a_cut_splits_usage_without_loss(w: World, cut_h: float) -> None:
    cut = T + cut_h * H
    whole = w.report("op", "site")
    before, after = w.report("op", "site", None, cut), w.report("op", "site", cut, None)
    for key, (gpu_h, su, charged, _n) in whole.items():
        parts = [r[key] for r in (before, after) if key in r]
        assert sum(p[0] for p in parts) == pytest.approx(gpu_h)
        assert sum(p[1] for p in parts) == pytest.approx(su)
        assert sum(p[2] for p in parts) == pytest.approx(charged)


@pytest.mark.parametrize(
    ("who", "projects"),
    [
        ("op", {"p-uni", "p-uni2", "p-corp"}),
        ("admin-uni", {"p-uni", "p-uni2"}),
        ("admin-corp", {"p-corp"}),
        ("mem-uni", {"p-uni"}),
        ("prov-nhn", {"p-uni", "p-corp"}),
        ("prov-kt", {"p-uni2"}),
        ("prov-none", set()),
    ],
)
def test_each_role_sees_its_usage(w: World, who: str, projects: set[str]) -> None:
    assert set(w.report(who, "project")) == projects
    assert sum(n for *_v, n in w.report(who, "gpu_model").values()) == len(projects)


def test_reviewers_see_no_usage(w: World) -> None:
    with pytest.raises(PermissionDenied):
        w.report("rev", "program")


def test_bad_groupings_and_intervals_are_refused(w: World) -> None:
    with pytest.raises(ValidationError) as e:
        w.report("op", "colour")
    assert "program, organization, project, site, provider, gpu_model" in str(e.value)
    with pytest.raises(ValidationError):
        w.report("op", "site", T + H, T)


def test_csv_has_a_header_and_a_line_per_row(w: World) -> None:
    with w.sessions() as s:
        rows = accounting.usage_report(s, w.actors["op"], "project")
    lines = list(csv.reader(io.StringIO(accounting.usage_csv(rows))))
    assert lines[0] == ["project", "gpu_hours", "su_hours", "charged_su_hours", "records"]
    assert [line[0] for line in lines[1:]] == ["p-corp", "p-uni", "p-uni2"]
    assert lines[2][1:] == ["8.0", "8.0", "0.0", "1"]
    assert accounting.usage_csv([], "site") == "site,gpu_hours,su_hours,charged_su_hours,records\n"
    assert accounting.usage_csv([]).startswith("key,")


@pytest.mark.parametrize("by", list(accounting.GROUPS))
def test_totals_equal_the_sum_of_the_rows(w: World, by: str) -> None:
    with w.sessions() as s:
        rows = accounting.usage_report(s, w.actors["op"], by)
        total = accounting.totals(s)
    assert sum(r["gpu_hours"] for r in rows) * H == pytest.approx(total["gpu_s"]) == 4 * 4 * H
    assert sum(r["su_hours"] for r in rows) * H == pytest.approx(total["su"])
    assert sum(r["charged_su_hours"] for r in rows) * H == pytest.approx(total["charged_su"])
    assert sum(r["records"] for r in rows) == total["records"] == len(RECORDS)
