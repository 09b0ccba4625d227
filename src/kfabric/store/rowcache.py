"""Rows looked up by primary key many times in one transaction, loaded once.

A SQLAlchemy session keeps only *weak* references in its identity map: a project, organization or program row
that ``session.get`` loaded for one job is dropped as soon as the caller lets it go, so the next job's
``session.get`` loads it again — and, with autoflush on, flushes every pending change first. The controller's
reconcile, apply and dispatch loops did exactly that per job (3,034 loads, 10.6 s of 40 s for 500 jobs in
``benchmarks/bench_slurm_dispatch.py``). :func:`get` keeps a strong reference for the life of the transaction
(``session.info``, cleared at commit/rollback), so the identity map answers from then on.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session

_KEY = "kfabric.rowcache"
R = TypeVar("R")


def get(session: Session, cls: type[R], pk: Any) -> R | None:
    """``session.get(cls, pk)``, kept alive until the transaction ends (a missing row is looked up each time)."""
    held: dict[tuple[type[Any], Any], Any] = session.info.setdefault(_KEY, {})
    row = held.get((cls, pk))
    if row is None:
        row = session.get(cls, pk)
        if row is not None:
            held[(cls, pk)] = row
    return row


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _drop(session: Session) -> None:
    session.info.pop(_KEY, None)
