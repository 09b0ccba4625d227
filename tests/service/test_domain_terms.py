"""The service validates by building the domain objects, so each rule is written once, in ``model.tenancy``:
a grant's terms (``GrantTerms``) refuse the same bad terms with the same error whether the scenario's grant (in
days) or the service's grant (``grants.create_grant``, in POSIX seconds, against a real store) is built, and an
application's asked GPUs and months are the model's ``Application`` rules at ``programs.apply``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kfabric.model.errors import ValidationError
from kfabric.model.tenancy import Application, Grant, GrantTerms
from kfabric.service import grants, programs
from kfabric.service.actors import Actor
from kfabric.service.auth import actor_for
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
]


@pytest.mark.parametrize(("ask", "field", "problem"), [a[1:] for a in ASKS], ids=[a[0] for a in ASKS])
def test_an_application_asks_what_the_model_allows(store: Store, ask: dict[str, Any], field: str, problem: str) -> None:
    asked: dict[str, Any] = {"gpus": 8, "months": 6} | ask
    with pytest.raises(ValidationError) as model_error:
        Application("a1", "round", "uni", "llm", "H200", asked["gpus"], asked["months"])
    assert (model_error.value.where, model_error.value.problem) == (f"application 'a1'.{field}", problem)
    with pytest.raises(ValidationError) as service_error:
        programs.apply(store.sessions, store.op, "round", "llm", "H200", asked["gpus"], asked["months"], "why", NOW)
    assert (service_error.value.where, service_error.value.problem) == (f"application.{field}", problem)
    with store.sessions() as s:
        assert s.scalars(select(t.Application)).first() is None
