"""History-based run-time estimates (the QSSF idea): what similar jobs took, never the job's true run time.

Keys go from specific to general: (project, user, name, gpus), (project, name), (project, gpus), (project,).
An estimate needs ``min_samples`` finished jobs under a key; otherwise the next key is tried, and finally
the job's time limit. The mean of the last ``window`` run times per key is used (recent behaviour wins).
"""

from __future__ import annotations

from collections import deque

from kfabric.model.job import Job

Key = tuple[object, ...]


def estimator_keys(job: Job) -> tuple[Key, ...]:
    return (
        ("pugn", job.project, job.user, job.name, job.gpus),
        ("pn", job.project, job.name),
        ("pg", job.project, job.gpus),
        ("p", job.project),
    )


class RuntimeEstimator:
    def __init__(self, window: int = 20, min_samples: int = 2) -> None:
        self.window = window
        self.min_samples = min_samples
        self._runs: dict[Key, deque[float]] = {}
        self._sum: dict[Key, float] = {}
        self.version = 0

    def observe(self, job: Job, run_s: float) -> None:
        """Record a finished job's run time (succeeded or failed: both are what users experience)."""
        for key in estimator_keys(job):
            runs = self._runs.setdefault(key, deque())
            runs.append(run_s)
            self._sum[key] = self._sum.get(key, 0.0) + run_s
            if len(runs) > self.window:
                self._sum[key] -= runs.popleft()
        self.version += 1

    def estimate(self, job: Job) -> float:
        for key in estimator_keys(job):
            runs = self._runs.get(key)
            if runs is not None and len(runs) >= self.min_samples:
                return min(self._sum[key] / len(runs), job.time_limit_s)
        # never the declared estimate: the simulator's oracle puts the true run time there (for sjf)
        return job.time_limit_s
