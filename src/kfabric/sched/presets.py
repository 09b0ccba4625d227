"""Named policies: the baselines operators know and our default. ``Policy`` files may start from one."""

from __future__ import annotations

from kfabric.sched.policy import Policy

DAY_S = 86_400.0


def _baseline(name: str, ordering: str, preempt_by_service: bool = False) -> Policy:
    """A published baseline: best-fit placement, no backfill, no preemption by priority class."""
    return Policy(
        name=name,
        ordering=ordering,
        placement="best-fit",
        backfill="none",
        preempt_by_priority=False,
        preempt_by_service=preempt_by_service,
    )


PRESETS: dict[str, Policy] = {
    # first come, first served; the head of the queue blocks its pools (no backfill, no preemption)
    "fifo": _baseline("fifo", "fifo"),
    # shortest job first on the declared estimate: with the simulator's oracle, the true run time
    "sjf-oracle": _baseline("sjf-oracle", "sjf"),
    # shortest predicted service first (history-based, Hu et al. SC'21)
    "qssf": _baseline("qssf", "qssf"),
    # Tiresias' discretized least-attained-service: a job in a lower attained-service queue preempts one in a
    # higher queue (checkpointed jobs resume where they left off)
    "las": _baseline("las", "las", preempt_by_service=True),
    # Slurm's multifactor priority with EASY backfill
    "multifactor": Policy(name="multifactor", ordering="multifactor", placement="best-fit", backfill="easy"),
    # ours: priority class, then the attained-service queue (Tiresias' LAS thresholds), then shortest
    # history-predicted service gently bent by fair share; a job in a lower service queue preempts work of its
    # class in a higher one (never work on its own reservation; minimum run time against loops); blocked jobs
    # waiting over a day get the backfill reservation; topology- and heterogeneity-aware placement.
    # Tuned on a 30-day slice of the Philly-derived protocol (docs/benchmarks.md).
    "kfabric": Policy(
        name="kfabric",
        ordering="kfabric",
        placement="kfabric",
        backfill="easy",
        preempt_by_service=True,
        reserve_after_s=1 * DAY_S,
        fairshare_strength=0.2,
    ),
}
