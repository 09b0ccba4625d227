"""The program lifecycle against a real store (SQLite, and PostgreSQL where installed): rules as JSON, applying,
reviewing, deciding, the grant-time caps, under-use detection, visibility and the audit trail."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import Conflict, NotFound, PermissionDenied, ValidationError
from kfabric.model.tenancy import OnExhausted, OrgKind, ProgramRules
from kfabric.service import audit, grants, programs
from kfabric.service.actors import Actor
from kfabric.service.auth import actor_for
from kfabric.store import tables as t
from kfabric.store.db import make_engine, migrate, session_factory

NOW = 1_800_000_000.0
DAY = 86400.0
WEEK = 7 * DAY

ORGS = {"uni": "university", "inst": "institute", "corp": "enterprise", "st": "startup"}
PROJECTS = {"p-uni": "uni", "p-uni2": "uni", "p-inst": "inst", "p-corp": "corp", "p-st": "st"}
USERS = {  # name: (role, organization, projects, owner)
    "op": ("operator", None, (), ""),
    "rev": ("reviewer", None, (), ""),
    "rev2": ("reviewer", None, (), ""),
    "admin-uni": ("org-admin", "uni", (), ""),
    "admin-inst": ("org-admin", "inst", (), ""),
    "admin-corp": ("org-admin", "corp", (), ""),
    "admin-st": ("org-admin", "st", (), ""),
    "mem-uni": ("member", "uni", ("p-uni",), ""),
    "prov": ("provider", None, (), "nhn"),
}
ADMIN_OF = {p: f"admin-{o}" for p, o in PROJECTS.items()}


@dataclass
class World:
    sessions: sessionmaker[Session]
    actors: dict[str, Actor]

    def actor(self, name: str) -> Actor:
        return self.actors[name]

    @property
    def op(self) -> Actor:
        return self.actor("op")

    def program(self, name: str = "round", **rules: Any) -> t.Program:
        rules = {"min_reviews": 0, **rules}  # these rounds decide without review unless a test says otherwise
        return programs.create_program(self.sessions, self.op, name, "a round", "msit", 1.0, rules, NOW)

    def apply(self, project: str, gpus: int = 8, model: str = "H200", months: int = 6, program: str = "round") -> int:
        admin = self.actor(ADMIN_OF[project])
        return programs.apply(self.sessions, admin, program, project, model, gpus, months, "why", NOW).id

    def grant(self, project: str, gpus: int = 8, model: str = "H200", program: str = "round", **kw: Any) -> t.Grant:
        """Apply and approve in one go."""
        app_id = self.apply(project, gpus, model, program=program)
        grant = grants.decide(self.sessions, self.op, app_id, True, NOW, **kw)
        assert grant is not None
        return grant

    def audit_actions(self) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(t.AuditEntry.action).order_by(t.AuditEntry.id)).all())

    def set_grant(self, name: str, **values: Any) -> None:
        with self.sessions.begin() as s:
            row = s.scalars(select(t.Grant).where(t.Grant.name == name)).one()
            for k, v in values.items():
                setattr(row, k, v)

    def grant_row(self, name: str) -> t.Grant:
        with self.sessions() as s:
            return s.scalars(select(t.Grant).where(t.Grant.name == name)).one()


@pytest.fixture
def w(db_url: str) -> Iterator[World]:
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        orgs = {
            n: t.Organization(name=n, kind=k, flags=["youth-startup"] if k == "startup" else [])
            for n, k in ORGS.items()
        }
        s.add_all(orgs.values())
        s.flush()
        projects = {p: t.Project(name=p, organization_id=orgs[o].id) for p, o in PROJECTS.items()}
        s.add_all(projects.values())
        s.flush()
        for name, (role, org, member_of, owner) in USERS.items():
            user = t.User(name=name, role=role, organization_id=orgs[org].id if org else None, owner=owner)
            s.add(user)
            s.flush()
            s.add_all(t.ProjectMember(project_id=projects[p].id, user_id=user.id) for p in member_of)
    with sessions() as s:
        actors = {u.name: actor_for(s, u) for u in s.scalars(select(t.User)).all()}
    yield World(sessions, actors)
    engine.dispose()


# ---- rules as JSON -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rules",
    [
        ProgramRules(),
        ProgramRules(
            eligible_kinds=frozenset({OrgKind.UNIVERSITY, OrgKind.STARTUP}),
            per_project_cap=(("H200", 256), ("B200", 128)),
            max_duration_days=120,
            max_job_duration_s=86400.0,
            price_factor=(("university", 0.0), ("youth-startup", 0.5)),
            review_weights=(("impact", 2.0), ("ecosystem", 1.0), ("readiness", 1.0)),
            concentration_cap_pct=30.0,
            preferred_regions=frozenset({"honam"}),
            utilization_floor_pct=40.0,
            on_exhausted=OnExhausted.SCAVENGER,
        ),
    ],
    ids=["defaults", "every-rule"],
)
def test_rules_survive_json(rules: ProgramRules) -> None:
    assert programs.rules_of_json(json.loads(json.dumps(programs.rules_to_json(rules)))) == rules


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"colour": "red"}, "program.rules.colour"),
        ({"eligible_kinds": ["school"]}, "program.rules.eligible_kinds[0]"),
        ({"eligible_kinds": []}, "program.rules.eligible_kinds"),
        ({"eligible_kinds": "university"}, "program.rules.eligible_kinds"),
        ({"per_project_cap": {"H200": 0}}, "program.rules.per_project_cap.H200"),
        ({"per_project_cap": {"H200": 1.5}}, "program.rules.per_project_cap.H200"),
        ({"per_project_cap": [256]}, "program.rules.per_project_cap"),
        ({"price_factor": {"startup": 1.5}}, "program.rules.price_factor.startup"),
        ({"review_weights": {}}, "program.rules.review_weights"),
        ({"review_weights": {"impact": "high"}}, "program.rules.review_weights.impact"),
        ({"max_duration_days": 0}, "program.rules.max_duration_days"),
        ({"max_duration_days": True}, "program.rules.max_duration_days"),
        ({"concentration_cap_pct": 0}, "program.rules.concentration_cap_pct"),
        ({"utilization_floor_pct": 101}, "program.rules.utilization_floor_pct"),
        ({"on_exhausted": "pause"}, "program.rules.on_exhausted"),
        (["impact"], "program.rules"),
    ],
)
def test_bad_rules_are_named(data: Any, where: str) -> None:
    with pytest.raises(ValidationError) as e:
        programs.rules_of_json(data)
    assert e.value.where == where


def test_rule_errors_say_where_the_rules_are() -> None:
    with pytest.raises(ValidationError) as e:
        programs.rules_of_json({"max_duration_days": 0}, "programs[2].rules")
    assert e.value.where == "programs[2].rules.max_duration_days"


# ---- programs ------------------------------------------------------------------------------------------------


def test_programs_are_created_by_operators_once(w: World) -> None:
    for who in ("rev", "admin-uni", "mem-uni", "prov"):
        with pytest.raises(PermissionDenied):
            programs.create_program(w.sessions, w.actor(who), "x", "", "", 1.0, {}, NOW)
    row = w.program("round", per_project_cap={"H200": 256})
    assert row.rules["per_project_cap"] == {"H200": 256}
    assert row.rules["on_exhausted"] == "stop"  # stored normalized, defaults filled in
    with pytest.raises(Conflict):
        w.program("round")
    with pytest.raises(ValidationError):
        w.program("bad/name")
    with pytest.raises(ValidationError):
        w.program("other", colour="red")
    with w.sessions() as s:
        assert [p.name for p in programs.list_programs(s)] == ["round"]
    assert w.audit_actions() == ["program.create"]


# ---- applications --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("project", "eligible"),
    [("p-uni", True), ("p-inst", True), ("p-corp", False), ("p-st", False)],
)
def test_only_eligible_kinds_apply(w: World, project: str, eligible: bool) -> None:
    w.program(eligible_kinds=["university", "institute"])
    if eligible:
        w.apply(project)
        return
    with pytest.raises(ValidationError) as e:
        w.apply(project)
    assert "admits only: institute, university" in str(e.value)
    assert ORGS[PROJECTS[project]] in str(e.value)


@pytest.mark.parametrize(
    ("max_days", "months", "said"),
    [(365, 12, None), (365, 13, "at most 12 months"), (120, 4, None), (120, 5, "at most 4 months"), (14, 1, "0")],
)
def test_months_are_capped_by_max_duration(w: World, max_days: int, months: int, said: str | None) -> None:
    w.program(max_duration_days=max_days)
    admin = w.actor("admin-uni")
    if said is None:
        assert programs.apply(w.sessions, admin, "round", "p-uni", "H200", 8, months, "why", NOW).months == months
        return
    with pytest.raises(ValidationError) as e:
        programs.apply(w.sessions, admin, "round", "p-uni", "H200", 8, months, "why", NOW)
    assert e.value.where == "application.months"
    assert said in str(e.value)


@pytest.mark.parametrize(
    ("model", "gpus", "ok"),
    [("H200", 256, True), ("H200", 257, False), ("B200", 128, True), ("B200", 129, False), ("A100", 5000, True)],
)
def test_per_project_cap_at_application(w: World, model: str, gpus: int, ok: bool) -> None:
    w.program(per_project_cap={"H200": 256, "B200": 128})
    if ok:
        w.apply("p-uni", gpus, model)
        return
    with pytest.raises(ValidationError) as e:
        w.apply("p-uni", gpus, model)
    assert e.value.where == "application.gpus"
    assert f"at most {gpus - 1}" in str(e.value)


@pytest.mark.parametrize(("gpus", "months"), [(0, 6), (8, 0), (True, 6)])
def test_an_application_asks_for_something(w: World, gpus: int, months: int) -> None:
    w.program()
    with pytest.raises(ValidationError):
        programs.apply(w.sessions, w.op, "round", "p-uni", "H200", gpus, months, "why", NOW)


# ---- the caps at grant time ----------------------------------------------------------------------------------

CAPPED = {"per_project_cap": {"H200": 256, "B200": 128}}


@pytest.mark.parametrize(
    ("second", "prepare", "conflict"),
    [
        (("p-uni", 56, "H200", "round"), None, None),
        (("p-uni", 57, "H200", "round"), None, "would hold 200 + 57 = 257 H200"),
        (("p-uni", 100, "B200", "round"), None, None),
        (("p-uni2", 200, "H200", "round"), None, None),
        (("p-uni", 200, "H200", "other"), None, None),
        (("p-uni", 200, "H200", "round"), {"status": "reclaimed"}, None),
        (("p-uni", 200, "H200", "round"), {"end_s": NOW - DAY, "start_s": NOW - 30 * DAY}, None),
        (("p-uni", 200, "H200", "round"), {"status": "flagged"}, "would hold 200 + 200 = 400 H200"),
    ],
    ids=["fills", "over", "other-model", "other-project", "other-program", "reclaimed", "ended", "flagged"],
)
def test_per_project_cap_counts_the_projects_other_grants(
    w: World, second: tuple[str, int, str, str], prepare: dict[str, Any] | None, conflict: str | None
) -> None:
    w.program("round", **CAPPED)
    w.program("other", **CAPPED)
    first = w.grant("p-uni", 200, "H200")
    if prepare:
        w.set_grant(first.name, **prepare)
    project, gpus, model, program = second
    app_id = w.apply(project, gpus, model, program=program)
    if conflict is None:
        assert grants.decide(w.sessions, w.op, app_id, True, NOW) is not None
        return
    with pytest.raises(Conflict) as e:
        grants.decide(w.sessions, w.op, app_id, True, NOW)
    assert conflict in str(e.value) and "cap is 256" in str(e.value)
    with w.sessions() as s:  # the failed decision changed nothing
        assert programs.get_application(s, w.op, app_id).status == "submitted"


def test_concurrent_decisions_cannot_both_pass_the_cap(w: World) -> None:
    w.program(**CAPPED)
    app_ids = [w.apply("p-uni", 200) for _ in range(4)]
    barrier = threading.Barrier(len(app_ids))

    def decide(app_id: int) -> str:
        barrier.wait()
        try:
            grants.decide(w.sessions, w.op, app_id, True, NOW)
        except Conflict:
            return "conflict"
        return "granted"

    with ThreadPoolExecutor(len(app_ids)) as pool:
        outcomes = sorted(pool.map(decide, app_ids))
    assert outcomes == ["conflict", "conflict", "conflict", "granted"]
    with w.sessions() as s:
        assert audit.verify_chain(s).entries > 0


def test_per_project_cap_applies_to_direct_grants(w: World) -> None:
    w.program(**CAPPED)
    w.grant("p-uni", 200, "H200")
    with pytest.raises(Conflict, match="200 \\+ 100 = 300"):
        grants.create_grant(w.sessions, w.op, "direct", "round", "p-uni", NOW, NOW + 30 * DAY, NOW, "H200", 100)
    row = grants.create_grant(w.sessions, w.op, "direct", "round", "p-uni", NOW, NOW + 30 * DAY, NOW, "H200", 56)
    assert (row.reserved_gpus, row.weight) == (56, 56.0)


@pytest.mark.parametrize(
    ("cap", "steps", "said"),
    [
        (50, [("p-uni", 100, True)], None),  # nothing granted yet: no check
        (50, [("p-uni", 100, True), ("p-uni2", 1, False)], "would hold 101 of the 101 reserved GPUs"),
        (50, [("p-uni", 100, True), ("p-corp", 100, True), ("p-uni", 10, False)], "110 of the 210"),
        (50, [("p-uni", 100, True), ("p-corp", 100, True), ("p-inst", 100, True), ("p-uni2", 100, True)], None),
        (50, [("p-uni", 100, True), ("p-corp", 60, True), ("p-inst", 60, True), ("p-uni2", 21, False)], "121"),
        (100, [("p-uni", 100, True), ("p-uni2", 100, True)], None),
    ],
    ids=["first", "alone", "over", "exactly-at-cap", "one-over", "cap-100"],
)
def test_concentration_cap(w: World, cap: float, steps: list[tuple[str, int, bool]], said: str | None) -> None:
    w.program(concentration_cap_pct=cap)
    for project, gpus, ok in steps:
        app_id = w.apply(project, gpus)
        if ok:
            assert grants.decide(w.sessions, w.op, app_id, True, NOW) is not None
            continue
        with pytest.raises(Conflict) as e:
            grants.decide(w.sessions, w.op, app_id, True, NOW)
        assert said is not None and said in str(e.value)
        assert f"concentration cap is {cap:g}%" in str(e.value)


def test_concentration_cap_says_how_much_fits(w: World) -> None:
    w.program(concentration_cap_pct=50)
    w.grant("p-uni", 100)
    w.grant("p-corp", 100)
    w.grant("p-inst", 60)
    # uni holds 100 of 260: (100 + g) / (260 + g) <= 0.5 while g <= 60
    with pytest.raises(Conflict, match="at most 60 GPUs"):
        grants.create_grant(w.sessions, w.op, "g-x", "round", "p-uni2", NOW, NOW + DAY, NOW, "H200", 61)
    grants.create_grant(w.sessions, w.op, "g-x", "round", "p-uni2", NOW, NOW + DAY, NOW, "H200", 60)


# ---- reviews -------------------------------------------------------------------------------------------------

CRITERIA = {"review_weights": {"impact": 2, "ecosystem": 1, "readiness": 1}}


@pytest.mark.parametrize(
    ("scores", "said"),
    [
        ({"impact": 8, "ecosystem": 6, "readiness": 4}, None),
        ({"impact": 10, "ecosystem": 0, "readiness": 0.5}, None),
        ({"impact": 8, "ecosystem": 6}, "missing readiness"),
        ({"impact": 8, "ecosystem": 6, "readiness": 4, "novelty": 9}, "novelty"),
        ({"impact": 11, "ecosystem": 6, "readiness": 4}, "between 0 and 10"),
        ({"impact": -1, "ecosystem": 6, "readiness": 4}, "between 0 and 10"),
        ({"impact": "8", "ecosystem": 6, "readiness": 4}, "must be a number"),
    ],
)
def test_review_scores_cover_the_criteria_in_range(w: World, scores: dict[str, Any], said: str | None) -> None:
    w.program(**CRITERIA)
    app_id = w.apply("p-uni")
    if said is None:
        row = programs.review(w.sessions, w.actor("rev"), app_id, scores, "fine", NOW)
        assert row.weighted == pytest.approx((2 * scores["impact"] + scores["ecosystem"] + scores["readiness"]) / 4)
        return
    with pytest.raises(ValidationError, match=said):
        programs.review(w.sessions, w.actor("rev"), app_id, scores, "", NOW)


def test_a_second_review_by_the_same_reviewer_updates_it(w: World) -> None:
    w.program(**CRITERIA)
    app_id = w.apply("p-uni")
    first = programs.review(w.sessions, w.actor("rev"), app_id, {"impact": 2, "ecosystem": 2, "readiness": 2}, "", NOW)
    again = programs.review(w.sessions, w.actor("rev"), app_id, {"impact": 9, "ecosystem": 5, "readiness": 5}, "", NOW)
    programs.review(w.sessions, w.actor("rev2"), app_id, {"impact": 1, "ecosystem": 1, "readiness": 1}, "", NOW)
    assert again.id == first.id and again.weighted == 7.0
    with w.sessions() as s:
        assert s.scalar(select(func.count()).select_from(t.Review)) == 2
    assert w.audit_actions()[-3:] == ["review.create", "review.update", "review.create"]


@pytest.mark.parametrize("who", ["admin-uni", "mem-uni", "prov"])
def test_only_reviewers_and_operators_review(w: World, who: str) -> None:
    w.program()
    app_id = w.apply("p-uni")
    with pytest.raises(PermissionDenied):
        programs.review(w.sessions, w.actor(who), app_id, {"impact": 5}, "", NOW)
    assert programs.review(w.sessions, w.op, app_id, {"impact": 5}, "", NOW).weighted == 5.0


def test_decided_applications_take_no_reviews(w: World) -> None:
    w.program()
    app_id = w.apply("p-uni")
    grants.decide(w.sessions, w.op, app_id, False, NOW)
    with pytest.raises(Conflict, match="already rejected"):
        programs.review(w.sessions, w.actor("rev"), app_id, {"impact": 5}, "", NOW)


# ---- decisions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [True, False], ids=["approved", "rejected"])
@pytest.mark.parametrize("second", [True, False], ids=["approve", "reject"])
def test_an_application_is_decided_once(w: World, first: bool, second: bool) -> None:
    w.program()
    app_id = w.apply("p-uni")
    grants.decide(w.sessions, w.op, app_id, first, NOW)
    with pytest.raises(Conflict, match="already"):
        grants.decide(w.sessions, w.op, app_id, second, NOW + 1)


def test_approval_issues_the_asked_grant(w: World) -> None:
    w.program()
    app_id = w.apply("p-uni", 64, "B200")
    start = NOW + 10 * DAY
    g = grants.decide(w.sessions, w.op, app_id, True, NOW, note="ok", start_s=start, credit_su_hours=1000.0)
    assert g is not None
    assert (g.name, g.start_s, g.end_s) == (f"g-{app_id}", start, start + 6 * 30 * DAY)
    assert (g.reserved_model, g.reserved_gpus, g.credit_su_hours, g.weight, g.status) == (
        "B200",
        64,
        1000.0,
        64.0,
        "active",
    )
    with w.sessions() as s:
        app = programs.get_application(s, w.op, app_id)
        assert (app.status, app.decided_at_s, app.decision_note) == ("approved", NOW, "ok")
        view = grants.grant_view(s.get(t.Grant, g.id))  # type: ignore[arg-type]
    assert view["program"] == "round" and view["project"] == "p-uni"
    assert view["reserved"] == {"model": "B200", "gpus": 64} and view["left_su_hours"] == 1000.0


def test_credit_only_and_empty_grants(w: World) -> None:
    w.program()
    empty = w.apply("p-uni")
    with pytest.raises(ValidationError, match="grants nothing"):
        grants.decide(w.sessions, w.op, empty, True, NOW, reserved=False)
    g = grants.decide(w.sessions, w.op, empty, True, NOW, reserved=False, credit_su_hours=5000.0)
    assert g is not None and (g.reserved_model, g.reserved_gpus, g.credit_su_hours) == (None, 0, 5000.0)
    rejected = w.apply("p-uni")
    assert grants.decide(w.sessions, w.op, rejected, False, NOW, note="no") is None


@pytest.mark.parametrize("who", ["rev", "admin-uni", "mem-uni", "prov"])
def test_only_operators_decide_and_grant(w: World, who: str) -> None:
    w.program()
    app_id = w.apply("p-uni")
    with pytest.raises(PermissionDenied):
        grants.decide(w.sessions, w.actor(who), app_id, True, NOW)
    with pytest.raises(PermissionDenied):
        grants.create_grant(w.sessions, w.actor(who), "g", "round", "p-uni", NOW, NOW + DAY, NOW, "H200", 8)


def test_direct_grants_keep_eligibility_and_duration(w: World) -> None:
    w.program(eligible_kinds=["university"], max_duration_days=120)
    with pytest.raises(ValidationError, match="admits only"):
        grants.create_grant(w.sessions, w.op, "g", "round", "p-corp", NOW, NOW + DAY, NOW, "H200", 8)
    with pytest.raises(ValidationError, match="at most 120 days"):
        grants.create_grant(w.sessions, w.op, "g", "round", "p-uni", NOW, NOW + 121 * DAY, NOW, "H200", 8)
    with pytest.raises(ValidationError, match="go together"):
        grants.create_grant(w.sessions, w.op, "g", "round", "p-uni", NOW, NOW + DAY, NOW, "H200", 0)
    grants.create_grant(w.sessions, w.op, "g", "round", "p-uni", NOW, NOW + 120 * DAY, NOW, credit_su_hours=10.0)
    with pytest.raises(Conflict, match="exists already"):
        grants.create_grant(w.sessions, w.op, "g", "round", "p-uni", NOW, NOW + DAY, NOW, credit_su_hours=10.0)


# ---- visibility ----------------------------------------------------------------------------------------------


def test_tenants_see_only_their_organizations_applications_and_grants(w: World) -> None:
    w.program()
    uni_app = w.apply("p-uni")
    corp_app = w.apply("p-corp")
    grants.decide(w.sessions, w.op, uni_app, True, NOW)
    grants.decide(w.sessions, w.op, corp_app, True, NOW)
    with w.sessions() as s:
        with pytest.raises(NotFound):
            programs.get_application(s, w.actor("admin-corp"), uni_app)
        with pytest.raises(NotFound):
            programs.get_application(s, w.actor("prov"), uni_app)
        assert programs.get_application(s, w.actor("rev"), uni_app).id == uni_app

        def apps(who: str) -> list[int]:
            return [a.id for a in programs.list_applications(s, w.actor(who))]

        def grant_names(who: str) -> list[str]:
            return [g.name for g, _p, _q in grants.list_grants(s, w.actor(who))]

        assert apps("admin-corp") == [corp_app]
        assert apps("mem-uni") == apps("admin-uni") == [uni_app]
        assert apps("rev") == apps("op") == [uni_app, corp_app]
        assert apps("prov") == []
        assert grant_names("admin-uni") == grant_names("mem-uni") == [f"g-{uni_app}"]
        assert grant_names("op") == [f"g-{uni_app}", f"g-{corp_app}"]
        assert grant_names("rev") == grant_names("prov") == []


@pytest.mark.parametrize(
    ("who", "project", "error"),
    [
        ("mem-uni", "p-uni", PermissionDenied),
        ("rev", "p-uni", PermissionDenied),
        ("prov", "p-uni", PermissionDenied),
        ("admin-corp", "p-uni", NotFound),
        ("admin-uni", "p-nowhere", NotFound),
    ],
)
def test_who_may_apply_for_what(w: World, who: str, project: str, error: type[Exception]) -> None:
    w.program()
    with pytest.raises(error):
        programs.apply(w.sessions, w.actor(who), "round", project, "H200", 8, 6, "why", NOW)
    with pytest.raises(NotFound):
        programs.apply(w.sessions, w.actor("admin-uni"), "no-such-program", "p-uni", "H200", 8, 6, "why", NOW)
    assert programs.apply(w.sessions, w.op, "round", "p-uni", "H200", 8, 6, "why", NOW).status == "submitted"


# ---- under-use -----------------------------------------------------------------------------------------------


def _use(w: World, grant: str, start: float, end: float, gpus: float, model: str = "H200") -> None:
    with w.sessions.begin() as s:
        g = s.scalars(select(t.Grant).where(t.Grant.name == grant)).one()
        project = s.get(t.Project, g.project_id)
        assert project is not None
        user = s.scalars(select(t.User).where(t.User.name == "op")).one()
        job = t.Job(project_id=g.project_id, user_id=user.id, submitted_at_s=start)
        s.add(job)
        s.flush()
        gpu_s = gpus * (end - start)
        s.add(
            t.UsageRecord(
                job_id=job.id,
                project_id=g.project_id,
                organization_id=project.organization_id,
                program_id=g.program_id,
                grant_id=g.id,
                site="s",
                provider="nhn",
                gpu_model=model,
                start_s=start,
                end_s=end,
                gpu_s=gpu_s,
                su=gpu_s,
                price_factor=1.0,
                charged_su=gpu_s,
            )
        )


def _reserve(w: World, start: float = NOW, floor: float = 50.0) -> str:
    w.program(utilization_floor_pct=floor)
    return grants.create_grant(w.sessions, w.op, "g", "round", "p-uni", start, start + 300 * DAY, start, "H200", 8).name


# (time since the grant started, GPUs busy over the week before it, expected action, status after)
Step = tuple[float, float, str, str]


@pytest.mark.parametrize(
    "steps",
    [
        [(WEEK, 8, "ok", "active"), (2 * WEEK, 4, "ok", "active")],  # 50% is at the floor, not below
        [
            (WEEK, 0, "flagged", "flagged"),
            (WEEK + DAY, 0, "still-flagged", "flagged"),
            (2 * WEEK, 0, "reclaimed", "reclaimed"),
        ],
        [(WEEK, 3.9, "flagged", "flagged"), (WEEK + DAY, 8, "restored", "active"), (3 * WEEK, 0, "flagged", "flagged")],
    ],
    ids=["busy", "flag-then-reclaim", "flag-then-back-to-active"],
)
def test_underused_grants_are_flagged_then_reclaimed(w: World, steps: list[Step]) -> None:
    name = _reserve(w)
    for since_start, busy, action, status in steps:
        now = NOW + since_start
        if busy:
            _use(w, name, now - WEEK, now, busy)
        [(got_name, _pct, got)] = grants.check_underuse(w.sessions, now)
        assert (got_name, got) == (name, action)
        row = w.grant_row(name)
        assert row.status == status
        if status == "flagged" and action == "flagged":
            assert row.flagged_at_s == now
        if status == "reclaimed":
            assert row.end_s == now  # its reserved capacity is free again
        if status == "active":
            assert row.flagged_at_s is None
    if status == "reclaimed":  # a reclaimed grant has ended: nothing left to check
        assert grants.check_underuse(w.sessions, NOW + 100 * DAY) == []


@pytest.mark.parametrize(
    ("uses", "started_before", "pct"),
    [
        ([(-WEEK, 0.0, 8)], WEEK, 100.0),
        ([(-2 * WEEK, -WEEK, 8)], 3 * WEEK, 0.0),  # before the window
        ([(-WEEK - DAY, -WEEK + DAY, 7)], 3 * WEEK, 100.0 * 7 * DAY / (8 * WEEK)),  # half inside
        ([(-DAY, 0.0, 8)], DAY, 100.0),  # the grant started a day ago: judged on that day
        ([(-DAY, 0.0, 8, "B200")], DAY, 0.0),  # not the reserved model
        ([(-WEEK, 0.0, 2), (-WEEK, 0.0, 2)], WEEK, 50.0),
    ],
    ids=["full", "old", "straddles", "young-grant", "other-model", "summed"],
)
def test_utilization_counts_the_window(
    w: World, uses: list[tuple[Any, ...]], started_before: float, pct: float
) -> None:
    name = _reserve(w, start=NOW - started_before)
    for start, end, gpus, *model in uses:
        _use(w, name, NOW + start, NOW + end, gpus, *model)
    [(_name, got, _action)] = grants.check_underuse(w.sessions, NOW)
    assert got == pytest.approx(pct)


def test_grants_without_a_floor_or_reservation_are_not_checked(w: World) -> None:
    w.program(utilization_floor_pct=0.0)
    grants.create_grant(w.sessions, w.op, "g1", "round", "p-uni", NOW - WEEK, NOW + WEEK, NOW, "H200", 8)
    w.program("floored", utilization_floor_pct=50.0)
    grants.create_grant(w.sessions, w.op, "g2", "floored", "p-uni", NOW - WEEK, NOW + WEEK, NOW, credit_su_hours=5)
    grants.create_grant(w.sessions, w.op, "g3", "floored", "p-uni", NOW + DAY, NOW + WEEK, NOW, "H200", 8)
    assert grants.check_underuse(w.sessions, NOW) == []


# ---- the audit trail -----------------------------------------------------------------------------------------


def test_every_mutation_is_audited_and_the_chain_holds(w: World) -> None:
    steps: list[tuple[Callable[[], object], list[str]]] = [
        (lambda: w.program(utilization_floor_pct=50, review_weights={"impact": 1}), ["program.create"]),
        (lambda: w.apply("p-uni"), ["application.submit"]),
        (lambda: programs.review(w.sessions, w.actor("rev"), 1, {"impact": 7}, "", NOW), ["review.create"]),
        (lambda: programs.review(w.sessions, w.actor("rev"), 1, {"impact": 8}, "", NOW), ["review.update"]),
        (lambda: grants.decide(w.sessions, w.op, 1, True, NOW - WEEK), ["grant.create", "application.approve"]),
        (lambda: w.apply("p-corp"), ["application.submit"]),
        (lambda: grants.decide(w.sessions, w.op, 2, False, NOW), ["application.reject"]),
        (
            lambda: grants.create_grant(w.sessions, w.op, "d", "round", "p-st", NOW, NOW + DAY, NOW, credit_su_hours=1),
            ["grant.create"],
        ),
        (lambda: grants.check_underuse(w.sessions, NOW), ["grant.flag"]),
        (lambda: grants.check_underuse(w.sessions, NOW + DAY), []),
        (lambda: grants.check_underuse(w.sessions, NOW + WEEK), ["grant.reclaim"]),
    ]
    for step, actions in steps:
        before = len(w.audit_actions())
        step()
        assert w.audit_actions()[before:] == actions
    failing: list[Callable[[], object]] = [
        lambda: grants.decide(w.sessions, w.op, 1, True, NOW),
        lambda: w.program(),
        lambda: w.apply("p-uni", months=99),
    ]
    for step in failing:
        before = len(w.audit_actions())
        with pytest.raises((Conflict, ValidationError)):
            step()
        assert len(w.audit_actions()) == before  # a failed use case rolls back whole
    entries = len(w.audit_actions())
    with w.sessions() as s:
        assert audit.verify_chain(s).entries == entries == 11
