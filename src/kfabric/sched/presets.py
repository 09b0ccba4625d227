"""Named policies: the baselines operators know and our default. ``Policy`` files may start from one."""

from __future__ import annotations

from kfabric.sched.policy import Policy

DAY_S = 86_400.0

PRESETS: dict[str, Policy] = {
    # first come, first served; the head of the queue blocks its pools (no backfill, no preemption)
    "fifo": Policy(name="fifo", ordering="fifo", placement="best-fit", backfill="none", preempt_by_priority=False),
    # shortest job first on the declared estimate: with the simulator's oracle, the true run time
    "sjf-oracle": Policy(
        name="sjf-oracle", ordering="sjf", placement="best-fit", backfill="none", preempt_by_priority=False
    ),
    # shortest predicted service first (history-based, Hu et al. SC'21)
    "qssf": Policy(name="qssf", ordering="qssf", placement="best-fit", backfill="none", preempt_by_priority=False),
    # Tiresias' discretized least-attained-service
    "las": Policy(name="las", ordering="las", placement="best-fit", backfill="none", preempt_by_priority=False),
    # Slurm's multifactor priority with EASY backfill
    "multifactor": Policy(name="multifactor", ordering="multifactor", placement="best-fit", backfill="easy"),
    # ours: priority class, then shortest history-predicted service gently bent by fair share; jobs waiting
    # over a day go first and get the backfill reservation (younger blocked jobs hold nothing back);
    # topology- and heterogeneity-aware placement. Tuned on a 30-day slice of the Philly-derived protocol.
    "kfabric": Policy(
        name="kfabric",
        ordering="kfabric",
        placement="kfabric",
        backfill="easy",
        starvation_age_s=1 * DAY_S,
        reserve_after_s=1 * DAY_S,
        fairshare_strength=0.2,
    ),
}
