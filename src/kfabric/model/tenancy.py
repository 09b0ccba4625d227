"""Organizations, projects, programs, applications, reviews and grants (product spec section 3)."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from typing import Generic, TypeVar

from kfabric.model.errors import ValidationError, choice_of, require, require_name
from kfabric.model.job import PriorityClass


class OrgKind(Enum):
    GOVERNMENT = "government"
    UNIVERSITY = "university"
    INSTITUTE = "institute"
    STARTUP = "startup"
    ENTERPRISE = "enterprise"

    @classmethod
    def parse(cls, text: object, where: str = "organization.kind") -> OrgKind:
        """The kind named ``text``; :class:`ValidationError` at ``where`` listing the kinds otherwise."""
        return choice_of(cls, text, where, "kind")


class OnExhausted(Enum):
    """What happens to new work of an expired or exhausted grant."""

    STOP = "stop"
    SCAVENGER = "scavenger"


@dataclass(frozen=True, slots=True)
class Organization:
    name: str
    kind: OrgKind
    region: str = ""
    flags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        require_name(self.name, "organization.name")


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    organization: str
    members: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require_name(self.name, "project.name")
        require_name(self.organization, f"project {self.name!r}.organization")


@dataclass(frozen=True, slots=True)
class ProgramRules:
    """Rules a program carries, as Korea's GPU programs run them.

    ``per_project_cap`` maps a GPU model class to the most GPUs one project may be granted of it;
    ``price_factor`` maps an organization kind or flag (e.g. ``youth-startup``) to the fraction of list
    price charged (0.0 = free, 0.5 = 50% off); the lowest applicable factor wins.

    Admission and decision rules: ``min_reviews`` reviews an application needs before it is decided (0: an
    operator may decide at once); ``max_priority`` the highest priority class a member of a project granted by
    the program may ask for (operators may ask for any); ``allow_cpu_only`` whether jobs asking no GPU
    (``gpus: 0``) may run under the program's grants.
    """

    eligible_kinds: frozenset[OrgKind] = frozenset(OrgKind)
    per_project_cap: tuple[tuple[str, int], ...] = ()
    max_duration_days: int = 365
    max_job_duration_s: float | None = None
    price_factor: tuple[tuple[str, float], ...] = ()
    review_weights: tuple[tuple[str, float], ...] = (("impact", 1.0),)
    concentration_cap_pct: float = 100.0
    preferred_regions: frozenset[str] = frozenset()
    utilization_floor_pct: float = 0.0
    on_exhausted: OnExhausted = OnExhausted.STOP
    min_reviews: int = 1
    max_priority: PriorityClass = PriorityClass.NORMAL
    allow_cpu_only: bool = False

    def __post_init__(self) -> None:
        require(
            self.eligible_kinds != frozenset(),
            "program.rules.eligible_kinds",
            "names no kind",
            "omit the rule to admit every kind",
        )
        require(
            self.review_weights != (),
            "program.rules.review_weights",
            "names no criterion",
            'e.g. {"impact": 2, "readiness": 1}',
        )
        require(
            self.min_reviews >= 0,
            "program.rules.min_reviews",
            f"must be >= 0, got {self.min_reviews}",
            "0 lets an operator decide without review",
        )
        require(self.max_duration_days >= 1, "program.rules.max_duration_days", "must be >= 1 day")
        require(
            self.max_job_duration_s is None or self.max_job_duration_s > 0,
            "program.rules.max_job_duration_s",
            "must be > 0 seconds when set",
        )
        for key, cap in self.per_project_cap:
            require(cap >= 1, f"program.rules.per_project_cap.{key}", f"must be >= 1 GPU, got {cap}")
        for key, factor in self.price_factor:
            require(
                0.0 <= factor <= 1.0,
                f"program.rules.price_factor.{key}",
                f"must be between 0.0 (free) and 1.0 (list price), got {factor}",
            )
        for key, weight in self.review_weights:
            require(weight >= 0, f"program.rules.review_weights.{key}", f"must be >= 0, got {weight}")
        require(
            0 < self.concentration_cap_pct <= 100,
            "program.rules.concentration_cap_pct",
            f"must be in (0, 100], got {self.concentration_cap_pct}",
        )
        require(
            0 <= self.utilization_floor_pct <= 100,
            "program.rules.utilization_floor_pct",
            f"must be in [0, 100], got {self.utilization_floor_pct}",
        )

    def cap_for(self, model_class: str) -> int | None:
        return dict(self.per_project_cap).get(model_class)

    @property
    def max_months(self) -> int:
        """The longest grant, in program months of 30 days, that fits in ``max_duration_days`` (rounded down, so
        a granted ``months × 30`` days never exceeds the program's maximum: 365 days → 12 months)."""
        return self.max_duration_days // 30

    def check_kind(self, program: str, org: Organization, where: str) -> None:
        """Raise :class:`ValidationError` at ``where`` unless the program admits organizations of ``org``'s kind."""
        if org.kind in self.eligible_kinds:
            return
        kinds = ", ".join(sorted(k.value for k in self.eligible_kinds))
        raise ValidationError(
            where,
            f"organization {org.name!r} is a {org.kind.value}; program {program!r} admits only: {kinds}",
            "apply for an organization of an eligible kind, or to another program",
        )

    def check_criteria(self, program: str, scored: Collection[str], where: str) -> None:
        """Raise :class:`ValidationError` at ``where`` unless ``scored`` names exactly the program's review
        criteria (each scored once, 0..10: the :class:`Review` checks the range)."""
        criteria = [c for c, _w in self.review_weights]
        missing, extra = sorted(set(criteria) - set(scored)), sorted(set(scored) - set(criteria))
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"not criteria of program {program!r}: {', '.join(extra)}"] if extra else []
        require(not parts, where, "; ".join(parts), f"score exactly: {', '.join(criteria)} (0..10 each)")

    def check_days(self, program: str, days: float, where: str) -> None:
        """Raise :class:`ValidationError` at ``where`` unless a grant of ``days`` fits in ``max_duration_days``."""
        require(
            days <= self.max_duration_days + 1e-9,
            where,
            f"runs {days:g} days; program {program!r} grants at most {self.max_duration_days} days",
            "end it earlier",
        )

    def price_for(self, org: Organization) -> float:
        factors = dict(self.price_factor)
        keys = [org.kind.value, *sorted(org.flags)]
        applicable = [factors[k] for k in keys if k in factors]
        return min(applicable) if applicable else 1.0


@dataclass(frozen=True, slots=True)
class Program:
    name: str
    description: str = ""
    owner: str = ""
    rules: ProgramRules = field(default_factory=ProgramRules)
    weight: float = 1.0

    def __post_init__(self) -> None:
        require_name(self.name, "program.name")
        require(self.weight > 0, f"program {self.name!r}.weight", f"must be > 0, got {self.weight}")


@dataclass(frozen=True, slots=True)
class Application:
    """What an organization asks of a program: GPUs of a model class for some months, and why."""

    id: str
    program: str
    organization: str
    project: str
    gpu_model_class: str
    gpus: int
    months: int
    justification: str = ""

    def __post_init__(self) -> None:
        where = f"application {self.id!r}"
        require_name(self.gpu_model_class, f"{where}.gpu_model_class")
        require(len(self.gpu_model_class) <= 64, f"{where}.gpu_model_class", "longer than 64 characters")
        for name, value in (("gpus", self.gpus), ("months", self.months)):
            whole = isinstance(value, int) and not isinstance(value, bool)
            require(whole, f"{where}.{name}", f"must be a whole number, got {value!r}")
            require(value >= 1, f"{where}.{name}", f"must be >= 1, got {value}")


@dataclass(frozen=True, slots=True)
class EligibleApplication:
    """An application as its program admits it, checked in this one place: the organization's kind is one the
    program admits, the months fit in its maximum duration and the GPUs in its per-project cap of the model."""

    program: Program
    organization: Organization
    application: Application

    def __post_init__(self) -> None:
        rules, app, name = self.program.rules, self.application, self.program.name
        where = f"application {app.id!r}"
        rules.check_kind(name, self.organization, f"{where}.organization")
        most = rules.max_months
        require(
            app.months <= most,
            f"{where}.months",
            f"asks {app.months} months; program {name!r} grants at most {rules.max_duration_days} days "
            f"= {most} months of 30 days",
            f"ask for at most {most} months" if most else "this program takes no applications by the month",
        )
        cap = rules.cap_for(app.gpu_model_class)
        require(
            cap is None or app.gpus <= cap,
            f"{where}.gpus",
            f"asks {app.gpus} {app.gpu_model_class}; program {name!r} grants one project at most {cap}",
            f"ask for at most {cap} {app.gpu_model_class}",
        )


@dataclass(frozen=True, slots=True)
class Review:
    application: str
    reviewer: str
    scores: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        for criterion, score in self.scores:
            require(
                0 <= score <= 10,
                f"review of {self.application!r}.scores.{criterion}",
                f"must be between 0 and 10, got {score}",
            )

    def weighted(self, weights: tuple[tuple[str, float], ...]) -> float:
        w = dict(weights)
        total = sum(w.values()) or 1.0
        return sum(score * w.get(c, 0.0) for c, score in self.scores) / total


Moment = TypeVar("Moment", date, float)


@dataclass(frozen=True, slots=True)
class GrantTerms(Generic[Moment]):
    """What a grant gives and for how long, checked in this one place: the scenario's :class:`Grant` counts in
    days, the service's grants (``kfabric.service.grants``) in POSIX seconds, and both build these terms."""

    name: str
    start: Moment
    end: Moment
    reserved_model: str | None = None
    reserved_gpus: int = 0
    credit_su_hours: float = 0.0
    weight: float = 1.0

    def __post_init__(self) -> None:
        where = f"grant {self.name!r}"
        require(self.end > self.start, f"{where}.end", f"end {self.end} must be after start {self.start}")
        require(self.reserved_gpus >= 0, f"{where}.reserved_gpus", "must be >= 0")
        require(
            (self.reserved_gpus == 0) == (self.reserved_model is None),
            f"{where}.reserved_model",
            "reserved_model and reserved_gpus go together",
            "set both (e.g. B200 and 128) or neither",
        )
        require(
            math.isfinite(self.credit_su_hours) and self.credit_su_hours >= 0,
            f"{where}.credit_su_hours",
            "must be >= 0",
        )
        require(
            self.reserved_gpus > 0 or self.credit_su_hours > 0,
            where,
            "grants nothing",
            "give it reserved GPUs (reserved_model and reserved_gpus), credit (credit_su_hours), or both",
        )
        require(math.isfinite(self.weight) and self.weight > 0, f"{where}.weight", f"must be > 0, got {self.weight}")


@dataclass(frozen=True, slots=True)
class Grant:
    """A project's entitlement under a program: reserved GPUs of a model class and/or credit in SU-hours."""

    id: str
    program: str
    project: str
    start: date
    end: date
    reserved_model: str | None = None
    reserved_gpus: int = 0
    credit_su_hours: float = 0.0
    weight: float = 1.0

    def __post_init__(self) -> None:
        self.terms()

    def terms(self) -> GrantTerms[date]:
        """What the grant gives (validated: building the terms checks them)."""
        return GrantTerms(
            self.id, self.start, self.end, self.reserved_model, self.reserved_gpus, self.credit_su_hours, self.weight
        )

    def active_on(self, day: date) -> bool:
        return self.start <= day < self.end
