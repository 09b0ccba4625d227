"""The policy config: which implementation of each policy part, and its knobs. Validated on construction.

A policy names its parts (ordering, placement, backfill, the preemption switches); :meth:`Policy.modes` gives
what those names register (:mod:`kfabric.sched.registry`), and the core asks the modes, never the names.

``Policy.from_mapping`` reads a plain mapping (what a YAML file holds); reading the file is the caller's job
(the core touches no files).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from kfabric.model.errors import ValidationError, require
from kfabric.sched import registry
from kfabric.sched.registry import Modes

#: the backfill names a policy may give, in the order operators read them
BACKFILL_MODES = tuple(registry.BACKFILL_MODES)
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class MultifactorWeights:
    """Slurm's multifactor priority: each factor is in [0, 1] and weighted."""

    priority_class: float = 10_000.0
    fairshare: float = 5_000.0
    age: float = 1_000.0
    size: float = 500.0
    max_age_s: float = 7 * DAY_S
    favor_small: bool = True


@dataclass(frozen=True, slots=True)
class Policy:
    name: str = "kfabric"
    ordering: str = "multifactor"
    placement: str = "kfabric"
    backfill: str = "easy"
    weights: MultifactorWeights = field(default_factory=MultifactorWeights)
    fairshare_half_life_s: float = 7 * DAY_S
    # Tiresias discretized LAS: queue thresholds on attained GPU-seconds (2D-LAS)
    las_thresholds_gpu_s: tuple[float, ...] = (3_600.0 * 8, 3_600.0 * 64)
    # QSSF/las tie-break and starvation guard: jobs older than this go first, in FIFO order
    starvation_age_s: float = 0.0
    # kfabric ordering: how much fair share bends shortest-predicted-service order (0 = not at all, 1 = up to 3x)
    fairshare_strength: float = 1.0
    preempt_by_priority: bool = True
    # Tiresias: a pending job in a lower attained-service queue (las_thresholds_gpu_s) preempts running work
    # of its class or below in a higher queue (the minimum run time keeps this from looping)
    preempt_by_service: bool = False
    reclaim: bool = True
    grace_s: float = 60.0
    min_run_s: float = 600.0
    borrow_limit_pct: float = 100.0
    reservations: int = 1
    # backfill: only jobs that have waited this long get a reservation (0 = any blocked job, as in Slurm);
    # younger jobs that do not fit simply wait, and do not hold capacity back from the jobs behind them
    reserve_after_s: float = 0.0
    bf_max_job_test: int = 20_000
    max_preemption_attempts: int = 8

    def __post_init__(self) -> None:
        require(bool(self.name), "policy.name", "must not be empty")
        self.modes()  # the names resolve (an unknown one names the field, the closest name and the choices)
        require(self.fairshare_half_life_s > 0, "policy.fairshare_half_life_s", "must be > 0 seconds")
        require(self.grace_s >= 0, "policy.grace_s", "must be >= 0 seconds")
        require(0 <= self.fairshare_strength <= 1, "policy.fairshare_strength", "must be within 0..1")
        require(self.min_run_s >= 0, "policy.min_run_s", "must be >= 0 seconds")
        require(0 <= self.borrow_limit_pct <= 100, "policy.borrow_limit_pct", "must be within 0..100")
        require(self.reservations >= 0, "policy.reservations", "must be >= 0")
        require(self.reserve_after_s >= 0, "policy.reserve_after_s", "must be >= 0 seconds")
        require(self.bf_max_job_test >= 1, "policy.bf_max_job_test", "must be >= 1")
        require(self.max_preemption_attempts >= 0, "policy.max_preemption_attempts", "must be >= 0")
        w = self.weights
        for key, weight in (
            ("priority_class", w.priority_class),
            ("fairshare", w.fairshare),
            ("age", w.age),
            ("size", w.size),
        ):
            require(weight >= 0, f"policy.weights.{key}", f"must be >= 0, got {weight}")
        require(w.max_age_s > 0, "policy.weights.max_age_s", "must be > 0 seconds")
        require(
            list(self.las_thresholds_gpu_s) == sorted(self.las_thresholds_gpu_s),
            "policy.las_thresholds_gpu_s",
            "must be increasing",
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "policy") -> Policy:
        """Build from a plain mapping; unknown keys and wrong types are errors naming the key."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ValidationError(f"{where}.{key}", "unknown key", f"use one of: {', '.join(sorted(known))}")
            if key == "weights":
                kwargs[key] = _weights(value, f"{where}.weights")
            elif key == "las_thresholds_gpu_s":
                if not isinstance(value, list) or not all(_is_number(v) for v in value):
                    raise ValidationError(f"{where}.{key}", "must be a list of numbers")
                kwargs[key] = tuple(float(v) for v in value)
            else:
                kwargs[key] = _typed(value, getattr(cls(), key), f"{where}.{key}")
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            raise ValidationError(exc.where.replace("policy", where, 1), exc.problem, exc.fix) from None

    def with_(self, **changes: Any) -> Policy:
        return replace(self, **changes)

    def modes(self) -> Modes:
        """What this policy's names register (:mod:`kfabric.sched.registry`), resolved once per distinct set
        of names: the core looks them up once per cycle, never per job."""
        return registry.modes(
            self.ordering,
            self.placement,
            self.backfill,
            self.preempt_by_priority,
            self.preempt_by_service,
            self.reclaim,
        )


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _typed(value: object, default: object, where: str) -> object:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValidationError(where, f"must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError(where, f"must be a whole number, got {value!r}")
        return value
    if isinstance(default, float):
        if not _is_number(value):
            raise ValidationError(where, f"must be a number, got {value!r}")
        return float(value)  # type: ignore[arg-type]
    if not isinstance(value, str):
        raise ValidationError(where, f"must be text, got {value!r}")
    return value


def _weights(value: object, where: str) -> MultifactorWeights:
    if not isinstance(value, Mapping):
        raise ValidationError(where, "must be a mapping of factor -> weight")
    base = MultifactorWeights()
    known = {f.name for f in fields(MultifactorWeights)}
    kwargs: dict[str, Any] = {}
    for key, v in value.items():
        if key not in known:
            raise ValidationError(f"{where}.{key}", "unknown weight", f"use one of: {', '.join(sorted(known))}")
        kwargs[key] = _typed(v, getattr(base, key), f"{where}.{key}")
    return replace(base, **kwargs)
