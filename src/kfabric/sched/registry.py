"""Every policy part registered by name, in one place. No ``if name == ...`` anywhere else."""

from __future__ import annotations

from kfabric.sched import ordering, placement
from kfabric.sched.ordering import OrderingFn
from kfabric.sched.placement import PlacementFn

ORDERINGS: dict[str, OrderingFn] = {
    "fifo": ordering.fifo,
    "sjf": ordering.sjf,
    "qssf": ordering.qssf,
    "las": ordering.las,
    "multifactor": ordering.multifactor,
    "kfabric": ordering.kfabric_order,
}

PLACEMENTS: dict[str, PlacementFn] = {
    "first-fit": placement.first_fit,
    "best-fit": placement.best_fit,
    "fgd": placement.fgd,
    "kfabric": placement.kfabric_place,
}
