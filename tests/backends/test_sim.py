"""The sim backend: end states and times from runtime/limit/command, idempotence, node failure, unavailability."""

from __future__ import annotations

import pytest

from kfabric.backends.base import Backend, BackendUnavailable, LaunchSpec, NodeGpus, RunReport, RunState
from kfabric.backends.sim import SimBackend

T0 = 1000.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = T0) -> None:
        self.now = [start]

    def __call__(self) -> float:
        return self.now[0]

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds

    def set(self, at: float) -> None:
        self.now[0] = at


def spec(
    job_id: str,
    *,
    runtime_s: float | None = 100.0,
    time_limit_s: float = 200.0,
    command: str = "train",
    nodes: tuple[NodeGpus, ...] = (NodeGpus("n1", (0,)),),
    attempt: int = 0,
) -> LaunchSpec:
    return LaunchSpec(job_id, attempt, job_id, command, nodes, time_limit_s, runtime_s=runtime_s)


def report(backend: SimBackend, job_id: str, attempt: int = 0) -> RunReport:
    (found,) = [r for r in backend.poll() if (r.job_id, r.attempt) == (job_id, attempt)]
    return found


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_it_is_a_backend(clock: FakeClock) -> None:
    backend: Backend = SimBackend(clock)
    assert backend.name == "sim"


@pytest.mark.parametrize(
    ("runtime_s", "time_limit_s", "command", "speedup", "state", "ends_after_s", "exit_code"),
    [
        (100.0, 200.0, "train", 1.0, RunState.SUCCEEDED, 100.0, 0),
        (None, 200.0, "train", 1.0, RunState.SUCCEEDED, 60.0, 0),
        (100.0, 200.0, "exit 3", 1.0, RunState.FAILED, 100.0, 3),
        (100.0, 200.0, "exit 0", 1.0, RunState.SUCCEEDED, 100.0, 0),
        (100.0, 200.0, "  exit 42; echo never", 1.0, RunState.FAILED, 100.0, 42),
        (100.0, 200.0, "echo exit 3", 1.0, RunState.SUCCEEDED, 100.0, 0),
        (300.0, 200.0, "train", 1.0, RunState.TIMEOUT, 200.0, None),
        (300.0, 200.0, "exit 3", 2.0, RunState.TIMEOUT, 100.0, None),
        (200.0, 200.0, "train", 1.0, RunState.SUCCEEDED, 200.0, 0),
        (100.0, 200.0, "train", 10.0, RunState.SUCCEEDED, 10.0, 0),
        (None, 30.0, "train", 1.0, RunState.TIMEOUT, 30.0, None),
    ],
    ids=[
        "succeeds",
        "default-runtime",
        "exit-3-fails",
        "exit-0-succeeds",
        "exit-with-rest",
        "exit-not-first",
        "timeout",
        "timeout-beats-exit-sped-up",
        "runtime-equals-limit",
        "speedup",
        "default-runtime-over-limit",
    ],
)
def test_end_state_and_time(
    clock: FakeClock,
    runtime_s: float | None,
    time_limit_s: float,
    command: str,
    speedup: float,
    state: RunState,
    ends_after_s: float,
    exit_code: int | None,
) -> None:
    backend = SimBackend(clock, speedup=speedup, default_runtime_s=60.0)
    backend.launch(spec("j", runtime_s=runtime_s, time_limit_s=time_limit_s, command=command))

    clock.set(T0 + ends_after_s - 0.001)
    running = report(backend, "j")
    assert running.state is RunState.RUNNING
    assert running.started_at_s == T0
    assert running.ended_at_s is None

    clock.set(T0 + ends_after_s)
    done = report(backend, "j")
    assert (done.state, done.started_at_s, done.ended_at_s, done.exit_code) == (
        state,
        T0,
        T0 + ends_after_s,
        exit_code,
    )

    clock.advance(1e6)
    assert report(backend, "j") == done


def test_launch_is_idempotent(clock: FakeClock) -> None:
    backend = SimBackend(clock)
    backend.launch(spec("j", runtime_s=100.0))
    clock.advance(50.0)
    backend.launch(spec("j", runtime_s=10.0))  # known attempt: nothing changes
    assert len(backend.poll()) == 1
    clock.set(T0 + 100.0)
    done = report(backend, "j")
    assert (done.state, done.started_at_s, done.ended_at_s) == (RunState.SUCCEEDED, T0, T0 + 100.0)
    backend.launch(spec("j"))  # finished attempt: nothing changes either
    assert backend.poll() == [done]
    backend.launch(spec("j", attempt=1))  # a new attempt is a new run
    assert [(r.attempt, r.state) for r in backend.poll()] == [(0, RunState.SUCCEEDED), (1, RunState.RUNNING)]


def test_terminate_cancels_now_and_is_idempotent(clock: FakeClock) -> None:
    backend = SimBackend(clock)
    backend.launch(spec("a"))
    backend.launch(spec("b", runtime_s=10.0))
    clock.advance(20.0)
    backend.terminate("a", 0, grace_s=30.0)
    cancelled = report(backend, "a")
    assert (cancelled.state, cancelled.ended_at_s, cancelled.exit_code) == (RunState.CANCELLED, T0 + 20.0, None)

    clock.advance(5.0)
    backend.terminate("a", 0)  # already cancelled
    backend.terminate("b", 0)  # already finished
    backend.terminate("nope", 0)  # unknown
    assert report(backend, "a") == cancelled
    assert report(backend, "b").state is RunState.SUCCEEDED
    clock.advance(1000.0)
    assert report(backend, "a") == cancelled


def test_fail_node_loses_running_attempts_on_it(clock: FakeClock) -> None:
    backend = SimBackend(clock)
    backend.launch(spec("on-n1", nodes=(NodeGpus("n1", (0, 1)),)))
    backend.launch(spec("on-n2", nodes=(NodeGpus("n2", (0,)),)))
    backend.launch(spec("both", nodes=(NodeGpus("n2", (1,)), NodeGpus("n1", (2,)))))
    backend.launch(spec("done-on-n1", runtime_s=5.0, nodes=(NodeGpus("n1", (3,)),)))
    clock.advance(10.0)

    assert backend.fail_node("n1") == [("on-n1", 0), ("both", 0)]
    states = {r.job_id: (r.state, r.ended_at_s) for r in backend.poll()}
    assert states == {
        "on-n1": (RunState.LOST, T0 + 10.0),
        "on-n2": (RunState.RUNNING, None),
        "both": (RunState.LOST, T0 + 10.0),
        "done-on-n1": (RunState.SUCCEEDED, T0 + 5.0),
    }
    assert "n1" in report(backend, "on-n1").message
    assert backend.fail_node("n1") == []  # nothing left running there
    backend.terminate("on-n1", 0)  # lost is final: terminate changes nothing
    assert report(backend, "on-n1").state is RunState.LOST


def test_unavailable_raises_and_changes_nothing(clock: FakeClock) -> None:
    backend = SimBackend(clock)
    backend.launch(spec("running"))
    before = backend.poll()

    backend.available = False
    with pytest.raises(BackendUnavailable):
        backend.launch(spec("new"))
    with pytest.raises(BackendUnavailable):
        backend.terminate("running", 0)
    with pytest.raises(BackendUnavailable):
        backend.poll()

    backend.available = True
    assert backend.poll() == before
    backend.launch(spec("new"))  # the retry after the outage works
    assert [r.job_id for r in backend.poll()] == ["running", "new"]


def test_forget_drops_only_finished_attempts(clock: FakeClock) -> None:
    backend = SimBackend(clock)
    backend.launch(spec("short", runtime_s=1.0))
    backend.launch(spec("long", runtime_s=100.0))
    clock.advance(2.0)
    assert backend.forget("long", 0) is False
    assert backend.forget("short", 0) is True
    assert backend.forget("unknown", 0) is False
    assert [r.job_id for r in backend.poll()] == ["long"]


def test_deterministic_given_the_clock() -> None:
    def run() -> list[RunReport]:
        clock = FakeClock()
        backend = SimBackend(clock, speedup=3.0)
        for i in range(6):
            backend.launch(spec(f"j{i}", runtime_s=50.0 * i, time_limit_s=120.0, command=f"exit {i % 2}"))
            clock.advance(7.0)
        backend.terminate("j5", 0)
        clock.advance(40.0)
        return backend.poll()

    assert run() == run()


def test_rejects_a_non_positive_speedup(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="speedup"):
        SimBackend(clock, speedup=0.0)
