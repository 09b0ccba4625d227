"""The job list pauses Python's cyclic garbage collector while it builds a large page (``job_queries.COLLECTOR_PAUSE``;
its state is the whole process's). A client that keeps list requests in flight must not keep the collector off for
the server: a pause belongs to one page and ends with it, whatever else is running; the young collection it held
back runs when it ends; a collector someone else turned off stays off; small pages never pause it. Checked through
the pause's watchers (the order of its events), never through wall-clock times."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager

import pytest
from api_world import NOW, Api
from sqlalchemy import insert, select

from kfabric.service import job_queries
from kfabric.service.job_queries import GC_PAUSE_MIN_ROWS, CollectorPause, PauseEvent
from kfabric.store import tables as t

BIG = GC_PAUSE_MIN_ROWS  # a page this long is paused
ALL_STATES = ["pending", "admitted", "running", "preempted", "succeeded", "failed", "cancelled", "timeout"]


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    """Every test starts with the collector on, and leaves it on, whatever it asserted."""
    assert gc.isenabled()
    try:
        yield
    finally:
        gc.enable()


@contextmanager
def watching(pause: CollectorPause) -> Iterator[list[PauseEvent]]:
    events: list[PauseEvent] = []
    pause.watchers.append(events.append)
    try:
        yield events
    finally:
        pause.watchers.remove(events.append)


def enter(cm: AbstractContextManager[None]) -> AbstractContextManager[None]:
    cm.__enter__()
    return cm


def leave(cm: AbstractContextManager[None]) -> None:
    cm.__exit__(None, None, None)


def test_a_pause_ends_with_the_page_that_began_it() -> None:
    """Pages A, B, C overlap (B starts during A's pause, C after A ended while B still runs): the collector is on
    as soon as A is built, though B is still being built; C pauses it again and only C turns it back on."""
    pause = CollectorPause()
    with watching(pause) as events:
        a = enter(pause.around(BIG))
        assert not gc.isenabled()
        b = enter(pause.around(BIG))
        leave(a)
        assert gc.isenabled()  # B still running: before, the last of overlapping pages turned it back on
        c = enter(pause.around(BIG + 1))
        assert not gc.isenabled()
        leave(b)
        assert not gc.isenabled()  # C's pause, not B's
        leave(c)
        assert gc.isenabled()
    assert [(e.kind, e.page, e.rows) for e in events] == [
        ("paused", 1, BIG), ("resumed", 1, BIG), ("paused", 3, BIG + 1), ("resumed", 3, BIG + 1)
    ]  # fmt: skip


class Node:
    """An object that can be in a reference cycle and be watched for its collection."""

    def __init__(self) -> None:
        self.other: Node | None = None


def test_the_collection_a_pause_held_back_runs_when_it_ends() -> None:
    pause = CollectorPause()
    with watching(pause) as events:
        with pause.around(BIG):
            cycle = Node()
            cycle.other = Node()
            cycle.other.other = cycle  # cyclic garbage another request leaves while the collector is off
            gone = weakref.ref(cycle)
            del cycle
            kept = [[i] for i in range(3 * gc.get_threshold()[0])]  # enough new objects to have started a collection
            assert gone() is not None  # nothing collected it during the pause
        assert events[-1].kind == "resumed" and events[-1].collected
        assert gone() is None
        assert len(kept) == 3 * gc.get_threshold()[0]


def test_small_pages_and_a_collector_turned_off_elsewhere_are_left_alone() -> None:
    pause = CollectorPause()
    with watching(pause) as events:
        with pause.around(BIG - 1):
            assert gc.isenabled()
        gc.disable()  # e.g. a trace import that turned it off for its own reasons
        with pause.around(BIG):
            assert not gc.isenabled()
        assert not gc.isenabled()
        gc.enable()
    assert events == []


def _fill(api: Api, n: int) -> None:
    """``n`` pending jobs of one project, written straight into the store (as the queue benchmark does)."""
    with api.rt.sessions.begin() as s:
        org = s.scalar(select(t.Organization.id).order_by(t.Organization.id))
        user = t.User(name="gc-user", organization_id=org, role="member")
        project = t.Project(name="gc-project", organization_id=org)
        s.add_all([user, project])
        s.flush()
        rows = [
            {"project_id": project.id, "user_id": user.id, "name": f"job{i}", "state": "pending",
             "spec": {"gpus": 1 + i % 4, "time_limit_s": 3600.0, "command": ["python", "train.py", str(i)]},
             "reason_code": "resources", "reason": "waiting for free GPUs", "submitted_at_s": NOW + i}
            for i in range(n)
        ]  # fmt: skip
        s.execute(insert(t.Job), rows)


def test_concurrent_list_requests_never_hold_the_collector_beyond_one_page(api: Api) -> None:
    """Many list requests in flight at once (the API's threads): every big page's pause is opened and closed by that
    page, one at a time; the small pages never pause; the collector is on when they are done."""
    total = BIG + 50
    _fill(api, total)
    lock, pausing, overlapped = threading.Lock(), [0], [0]

    def watch(e: PauseEvent) -> None:  # called under the pause's lock, in order
        with lock:
            pausing[0] += 1 if e.kind == "paused" else -1
            overlapped[0] = max(overlapped[0], pausing[0])

    def ask(i: int) -> int:
        limit = 10_000 if i % 3 else 20
        r = api.get("/v1/jobs", api.operator, params={"state": ALL_STATES, "limit": limit})
        assert r.status_code == 200, r.text
        return len(r.json())

    pause = job_queries.COLLECTOR_PAUSE
    pause.watchers.append(watch)
    try:
        with watching(pause) as events, ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(ask, range(36)))
    finally:
        pause.watchers.remove(watch)
    assert gc.isenabled()
    big = [n for n in sizes if n >= BIG]
    assert len(big) == 24 and all(n >= total for n in big) and sizes.count(20) == 12
    assert events and len(events) % 2 == 0 and len(events) // 2 <= len(big)
    for opened, closed in zip(events[::2], events[1::2], strict=True):
        assert (opened.kind, closed.kind) == ("paused", "resumed")
        assert opened.page == closed.page and opened.rows >= BIG  # closed by the page that opened it
    assert overlapped[0] == 1 and pausing[0] == 0  # never two pauses at once, none left open
