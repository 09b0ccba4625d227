"""The service validates by building the domain objects, so each rule is written once, in ``kfabric.model``, and a
bad input gets the same error (problem and fix) from the model and from the service entry point, which writes
nothing then. Pinned here, each once at the model and once through the service:

* a grant's terms (``GrantTerms``), whether the scenario's grant (in days) or ``grants.create_grant`` (in POSIX
  seconds) builds them;
* an application's ask (``Application``: model name, GPUs, months) and its admission by the program
  (``EligibleApplication``: eligible kind, maximum duration, per-project cap) at ``programs.apply``; a direct
  grant's kind and duration (``ProgramRules.check_kind``/``check_days``);
* program rules that name no kind or no criterion (``ProgramRules``), an unknown organization kind (``OrgKind.parse``)
  in rules and organizations, a review's criteria (``ProgramRules.check_criteria``);
* organization and project names (``Organization``, ``Project``) at ``tenancy.create_organization``/``create_project``;
* a pending job's update (``job_control.update`` builds the changed ``Job``; its fields named ``update.FIELD``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.backends.sim import SimBackend
from kfabric.model.errors import ValidationError
from kfabric.model.job import Job, PriorityClass
from kfabric.model.tenancy import (
    Application,
    EligibleApplication,
    Grant,
    GrantTerms,
    Organization,
    OrgKind,
    Program,
    ProgramRules,
    Project,
)
from kfabric.scenarios.policies import load_policy
from kfabric.service import grants, job_control, jobs, programs, tenancy
from kfabric.service.actors import Actor
from kfabric.service.auth import actor_for
from kfabric.service.runtime import Runtime, open_runtime
from kfabric.store import tables as t
from kfabric.store.db import make_engine, migrate, session_factory

NOW = 1_800_000_000.0
DAY = 86400.0
START = date(2027, 1, 15)  # NOW's day, for the scenario's grant


@dataclass
class Store:
    sessions: sessionmaker[Session]
    op: Actor


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        org = t.Organization(name="uni", kind="university", flags=[])
        s.add(org)
        s.flush()
        s.add(t.Project(name="llm", organization_id=org.id))
        s.add(t.User(name="op", role="operator", organization_id=None, owner=""))
    with sessions() as s:
        op = actor_for(s, s.scalars(select(t.User).where(t.User.name == "op")).one())
    programs.create_program(sessions, op, "round", "a round", "msit", 1.0, {"min_reviews": 0}, NOW)
    yield Store(sessions, op)
    engine.dispose()


@dataclass(frozen=True)
class Terms:
    """Terms in the scenario's units; ``days`` long from START."""

    reserved_model: str | None = "H200"
    reserved_gpus: int = 8
    credit_su_hours: float = 0.0
    weight: float = 1.0
    days: int = 30


BAD: list[tuple[str, Terms, str, str]] = [
    ("negative-gpus", Terms(reserved_gpus=-1), ".reserved_gpus", "must be >= 0"),
    ("model-without-gpus", Terms(reserved_gpus=0, credit_su_hours=5.0), ".reserved_model",
     "reserved_model and reserved_gpus go together"),
    ("gpus-without-model", Terms(reserved_model=None), ".reserved_model",
     "reserved_model and reserved_gpus go together"),
    ("negative-credit", Terms(credit_su_hours=-1.0), ".credit_su_hours", "must be >= 0"),
    ("nan-credit", Terms(credit_su_hours=float("nan")), ".credit_su_hours", "must be >= 0"),
    ("infinite-credit", Terms(credit_su_hours=float("inf")), ".credit_su_hours", "must be >= 0"),
    ("grants-nothing", Terms(reserved_model=None, reserved_gpus=0), "", "grants nothing"),
    ("zero-weight", Terms(weight=0.0), ".weight", "must be > 0, got 0.0"),
    ("infinite-weight", Terms(weight=float("inf")), ".weight", "must be > 0, got inf"),
]  # fmt: skip


def _model_grant(terms: Terms) -> Callable[[], Any]:
    end = date.fromordinal(START.toordinal() + terms.days)
    return lambda: Grant("g1", "round", "llm", START, end, terms.reserved_model, terms.reserved_gpus,
                         terms.credit_su_hours, terms.weight)  # fmt: skip


def _service_grant(store: Store, terms: Terms) -> Callable[[], Any]:
    return lambda: grants.create_grant(
        store.sessions, store.op, "g1", "round", "llm", NOW, NOW + terms.days * DAY, NOW, terms.reserved_model,
        terms.reserved_gpus, terms.credit_su_hours, terms.weight,
    )  # fmt: skip


@pytest.mark.parametrize(("terms", "field", "problem"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_the_model_and_the_service_refuse_bad_terms_alike(store: Store, terms: Terms, field: str, problem: str) -> None:
    errors = []
    for build in (_model_grant(terms), _service_grant(store, terms)):
        with pytest.raises(ValidationError) as info:
            build()
        errors.append((info.value.where, info.value.problem, info.value.fix))
    assert errors[0] == errors[1]
    assert errors[0][:2] == ("grant 'g1'" + field, problem)
    with store.sessions() as s:
        assert s.scalars(select(t.Grant)).first() is None  # nothing was written


def test_an_end_before_the_start_is_refused_in_either_unit(store: Store) -> None:
    with pytest.raises(ValidationError, match="must be after start") as day_error:
        _model_grant(Terms(days=0))()
    with pytest.raises(ValidationError, match="must be after start") as second_error:
        _service_grant(store, Terms(days=0))()
    assert day_error.value.where == second_error.value.where == "grant 'g1'.end"
    assert GrantTerms("g", 0.0, 1.0, None, 0, 1.0).end == 1.0  # a second is enough in the service's unit


def test_good_terms_pass_both_and_the_service_stores_them(store: Store) -> None:
    terms = Terms(reserved_gpus=16, credit_su_hours=100.0, weight=16.0)
    assert _model_grant(terms)().terms().reserved_gpus == 16
    row = _service_grant(store, terms)()
    assert (row.reserved_model, row.reserved_gpus, row.credit_su_hours, row.weight) == ("H200", 16, 100.0, 16.0)


# ---- applications --------------------------------------------------------------------------------------------

ASKS: list[tuple[str, dict[str, Any], str, str]] = [
    ("zero-gpus", {"gpus": 0}, "gpus", "must be >= 1, got 0"),
    ("zero-months", {"months": 0}, "months", "must be >= 1, got 0"),
    ("fractional-gpus", {"gpus": 2.5}, "gpus", "must be a whole number, got 2.5"),
    ("boolean-months", {"months": True}, "months", "must be a whole number, got True"),
    ("model-with-slash", {"model": "H/200"}, "gpu_model_class", "name 'H/200' contains '/'"),
    ("model-padded", {"model": " H200"}, "gpu_model_class",
     "name must be a non-empty string without leading/trailing spaces, got ' H200'"),
    ("model-too-long", {"model": "H" * 65}, "gpu_model_class", "longer than 64 characters"),
]  # fmt: skip


def _same_error(
    model: Callable[[], Any], service: Callable[[], Any], where: str, service_where: str
) -> ValidationError:
    """Both calls raise the same error (problem and fix), the model at ``where``, the service at ``service_where``
    (the field as the API and CLI name it); returns the service's."""
    with pytest.raises(ValidationError) as model_error:
        model()
    with pytest.raises(ValidationError) as service_error:
        service()
    m, s = model_error.value, service_error.value
    assert (m.where, s.where) == (where, service_where)
    assert (m.problem, m.fix) == (s.problem, s.fix)
    return s


def _count(store: Store, table: Any) -> int:
    with store.sessions() as s:
        return len(s.scalars(select(table)).all())


@pytest.mark.parametrize(("ask", "field", "problem"), [a[1:] for a in ASKS], ids=[a[0] for a in ASKS])
def test_an_application_asks_what_the_model_allows(store: Store, ask: dict[str, Any], field: str, problem: str) -> None:
    asked: dict[str, Any] = {"gpus": 8, "months": 6, "model": "H200"} | ask
    error = _same_error(
        lambda: Application("a1", "round", "uni", "llm", asked["model"], asked["gpus"], asked["months"]),
        lambda: programs.apply(store.sessions, store.op, "round", "llm", asked["model"], asked["gpus"],
                               asked["months"], "why", NOW),
        f"application 'a1'.{field}", f"application.{field}",
    )  # fmt: skip
    assert error.problem == problem
    assert _count(store, t.Application) == 0


# ---- an application against its program's rules ---------------------------------------------------------------

UNI = Organization("uni", OrgKind.UNIVERSITY)

ADMISSIONS: list[tuple[str, ProgramRules, int, int, str, str]] = [
    ("ineligible-kind", ProgramRules(eligible_kinds=frozenset({OrgKind.STARTUP, OrgKind.ENTERPRISE})), 8, 6,
     "organization", "organization 'uni' is a university; program 'p' admits only: enterprise, startup"),
    ("longer-than-the-program", ProgramRules(max_duration_days=120), 8, 5, "months",
     "asks 5 months; program 'p' grants at most 120 days = 4 months of 30 days"),
    ("program-shorter-than-a-month", ProgramRules(max_duration_days=14), 8, 1, "months",
     "asks 1 months; program 'p' grants at most 14 days = 0 months of 30 days"),
    ("over-the-per-project-cap", ProgramRules(per_project_cap=(("H200", 16),)), 17, 6, "gpus",
     "asks 17 H200; program 'p' grants one project at most 16"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rules", "gpus", "months", "field", "problem"), [a[1:] for a in ADMISSIONS], ids=[a[0] for a in ADMISSIONS]
)
def test_the_program_admits_an_application_by_the_model(
    store: Store, rules: ProgramRules, gpus: int, months: int, field: str, problem: str
) -> None:
    asked = Application("a1", "p", "uni", "llm", "H200", gpus, months)
    programs.create_program(store.sessions, store.op, "p", "", "msit", 1.0, programs.rules_to_json(rules), NOW)
    error = _same_error(
        lambda: EligibleApplication(Program("p", rules=rules), UNI, asked),
        lambda: programs.apply(store.sessions, store.op, "p", "llm", "H200", gpus, months, "why", NOW),
        f"application 'a1'.{field}", f"application.{field}",
    )  # fmt: skip
    assert error.problem == problem
    assert _count(store, t.Application) == 0


def test_an_application_within_the_rules_is_admitted_and_stored(store: Store) -> None:
    rules = ProgramRules(max_duration_days=120, per_project_cap=(("H200", 16),))
    programs.create_program(store.sessions, store.op, "p", "", "msit", 1.0, programs.rules_to_json(rules), NOW)
    EligibleApplication(Program("p", rules=rules), UNI, Application("a1", "p", "uni", "llm", "H200", 16, 4))
    row = programs.apply(store.sessions, store.op, "p", "llm", "H200", 16, 4, "why", NOW)
    assert (row.gpus, row.months, row.status) == (16, 4, "submitted")


def test_a_direct_grant_keeps_the_programs_kind_and_duration_rules(store: Store) -> None:
    rules = ProgramRules(eligible_kinds=frozenset({OrgKind.STARTUP}), max_duration_days=120)
    programs.create_program(store.sessions, store.op, "p", "", "msit", 1.0, programs.rules_to_json(rules), NOW)
    error = _same_error(
        lambda: rules.check_kind("p", UNI, "grant 'g1'.project"),
        lambda: grants.create_grant(store.sessions, store.op, "g1", "p", "llm", NOW, NOW + DAY, NOW, "H200", 8),
        "grant 'g1'.project", "grant 'g1'.project",
    )  # fmt: skip
    assert error.problem == "organization 'uni' is a university; program 'p' admits only: startup"
    open_rules = ProgramRules(max_duration_days=120)
    programs.create_program(store.sessions, store.op, "q", "", "msit", 1.0, programs.rules_to_json(open_rules), NOW)
    error = _same_error(
        lambda: open_rules.check_days("q", 121.0, "grant 'g1'.end"),
        lambda: grants.create_grant(store.sessions, store.op, "g1", "q", "llm", NOW, NOW + 121 * DAY, NOW, "H200", 8),
        "grant 'g1'.end", "grant 'g1'.end",
    )  # fmt: skip
    assert error.problem == "runs 121 days; program 'q' grants at most 120 days"
    assert _count(store, t.Grant) == 0
    assert grants.create_grant(store.sessions, store.op, "g1", "q", "llm", NOW, NOW + 120 * DAY, NOW, "H200", 8).id


# ---- program rules -------------------------------------------------------------------------------------------

RULES: list[tuple[str, dict[str, Any], dict[str, Any], str, str]] = [
    ("no-eligible-kind", {"eligible_kinds": frozenset()}, {"eligible_kinds": []}, "eligible_kinds", "names no kind"),
    ("no-review-criterion", {"review_weights": ()}, {"review_weights": {}}, "review_weights", "names no criterion"),
]


@pytest.mark.parametrize(("model_kw", "json", "field", "problem"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_program_rules_refuse_alike_in_the_model_and_the_service(
    store: Store, model_kw: dict[str, Any], json: dict[str, Any], field: str, problem: str
) -> None:
    before = _count(store, t.Program)
    error = _same_error(
        lambda: ProgramRules(**model_kw),
        lambda: programs.create_program(store.sessions, store.op, "p", "", "msit", 1.0, json, NOW),
        f"program.rules.{field}", f"program.rules.{field}",
    )  # fmt: skip
    assert error.problem == problem and error.fix
    assert _count(store, t.Program) == before


def test_an_unknown_kind_is_named_alike_in_rules_and_organizations(store: Store) -> None:
    kinds = ", ".join(k.value for k in OrgKind)
    rules = _same_error(
        lambda: OrgKind.parse("school", "program.rules.eligible_kinds[1]"),
        lambda: programs.create_program(store.sessions, store.op, "p", "", "msit", 1.0,
                                        {"eligible_kinds": ["university", "school"]}, NOW),
        "program.rules.eligible_kinds[1]", "program.rules.eligible_kinds[1]",
    )  # fmt: skip
    org = _same_error(
        lambda: OrgKind.parse("castle"),
        lambda: tenancy.create_organization(store.sessions, store.op, "keep", "castle", "", [], NOW),
        "organization.kind", "organization.kind",
    )  # fmt: skip
    assert (rules.problem, rules.fix) == ("unknown kind 'school'", f"use one of: {kinds}")
    assert (org.problem, org.fix) == ("unknown kind 'castle'", f"use one of: {kinds}")
    assert _count(store, t.Program) == 1 and _count(store, t.Organization) == 1


# ---- reviews -------------------------------------------------------------------------------------------------

SCORES: list[tuple[str, dict[str, Any], str]] = [
    ("missing-criterion", {"impact": 8}, "missing readiness"),
    ("extra-criterion", {"impact": 8, "readiness": 4, "novelty": 9}, "not criteria of program 'p': novelty"),
    ("both", {"impact": 8, "novelty": 9}, "missing readiness; not criteria of program 'p': novelty"),
]


@pytest.mark.parametrize(("scores", "problem"), [c[1:] for c in SCORES], ids=[c[0] for c in SCORES])
def test_a_review_scores_exactly_the_programs_criteria(store: Store, scores: dict[str, Any], problem: str) -> None:
    rules = ProgramRules(review_weights=(("impact", 2.0), ("readiness", 1.0)), min_reviews=0)
    programs.create_program(store.sessions, store.op, "p", "", "msit", 1.0, programs.rules_to_json(rules), NOW)
    app = programs.apply(store.sessions, store.op, "p", "llm", "H200", 8, 6, "why", NOW)
    error = _same_error(
        lambda: rules.check_criteria("p", scores, "review.scores"),
        lambda: programs.review(store.sessions, store.op, app.id, scores, "", NOW),
        "review.scores", "review.scores",
    )  # fmt: skip
    assert (error.problem, error.fix) == (problem, "score exactly: impact, readiness (0..10 each)")
    assert _count(store, t.Review) == 0
    assert programs.review(store.sessions, store.op, app.id, {"impact": 8, "readiness": 5}, "", NOW).weighted == 7.0


# ---- organizations and projects ------------------------------------------------------------------------------

NAMES: list[tuple[str, str, str]] = [
    ("slash", "a/b", "name 'a/b' contains '/'"),
    ("empty", "", "name must be a non-empty string without leading/trailing spaces, got ''"),
    ("padded", "lab ", "name must be a non-empty string without leading/trailing spaces, got 'lab '"),
]


@pytest.mark.parametrize(("name", "problem"), [n[1:] for n in NAMES], ids=[n[0] for n in NAMES])
def test_organization_and_project_names_are_the_models(store: Store, name: str, problem: str) -> None:
    org = _same_error(
        lambda: Organization(name, OrgKind.UNIVERSITY),
        lambda: tenancy.create_organization(store.sessions, store.op, name, "university", "", [], NOW),
        "organization.name", "organization.name",
    )  # fmt: skip
    project = _same_error(
        lambda: Project(name, "uni"),
        lambda: tenancy.create_project(store.sessions, store.op, name, "uni", NOW),
        "project.name", "project.name",
    )  # fmt: skip
    assert org.problem == project.problem == problem
    assert (_count(store, t.Organization), _count(store, t.Project)) == (1, 1)


# ---- updates of pending jobs ---------------------------------------------------------------------------------


@dataclass
class Lab:
    rt: Runtime
    op: Actor
    job: int
    spec: dict[str, Any]


@pytest.fixture
def lab(db_url: str) -> Iterator[Lab]:
    """The lab fleet (sim backend, a fixed clock, no cycle run) with one pending job of the operator."""
    rt = open_runtime(db_url, load_policy("kfabric"), {"sim": SimBackend(lambda: NOW)}, fleet="lab", clock=lambda: NOW)
    with rt.sessions() as s:
        op = actor_for(s, s.scalars(select(t.User).where(t.User.role == "operator")).one())
    spec = {"gpus": 8, "time_limit_s": 3600.0, "priority": "normal"}
    row, _ = jobs.submit(rt.sessions, op, "vision-lab", spec, NOW)
    yield Lab(rt, op, row.id, spec)
    rt.close()


CHANGES: list[tuple[str, dict[str, Any], str, str]] = [
    ("negative-gpus", {"gpus": -1}, "gpus", "must be >= 0, got -1"),
    ("zero-time-limit", {"time_limit_s": 0.0}, "time_limit_s", "must be > 0, got 0.0"),
]


@pytest.mark.parametrize(("change", "field", "problem"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_an_updated_job_is_checked_by_building_the_job(
    lab: Lab, change: dict[str, Any], field: str, problem: str
) -> None:
    changed = lab.spec | change
    error = _same_error(
        lambda: Job(str(lab.job), "vision-lab", changed["time_limit_s"], changed["gpus"]),
        lambda: job_control.update(lab.rt.sessions, lab.op, str(lab.job), change, NOW),
        f"job '{lab.job}'.{field}", f"update.{field}",
    )  # fmt: skip
    assert error.problem == problem
    _unchanged(lab)


def test_an_unknown_priority_is_named_as_the_update_field(lab: Lab) -> None:
    with pytest.raises(ValueError) as model_error:
        PriorityClass.parse("critical")
    with pytest.raises(ValidationError) as service_error:
        job_control.update(lab.rt.sessions, lab.op, str(lab.job), {"priority": "critical"}, NOW)
    assert (service_error.value.where, service_error.value.problem) == ("update.priority", str(model_error.value))
    _unchanged(lab)


def _unchanged(lab: Lab) -> None:
    with lab.rt.sessions() as s:
        row = s.get(t.Job, lab.job)
        assert row is not None and {k: row.spec.get(k) for k in lab.spec} == lab.spec
        assert s.scalars(select(t.AuditEntry).where(t.AuditEntry.action == "job.update")).first() is None
