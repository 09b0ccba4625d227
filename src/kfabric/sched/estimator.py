"""History-based run-time estimates (the QSSF idea): what similar jobs took, never the job's true run time.

Keys go from specific to general: (project, user, name, gpus), (project, name), (project, gpus), (project,).
An estimate needs ``min_samples`` finished jobs under a key; otherwise the next key is tried, and finally
the job's time limit. The mean of the last ``window`` run times per key is used (recent behaviour wins).

Keys are interned to integers so a whole queue is estimated with a few numpy gathers: the queue stores each
job's key ids once, at submission (``PendingQueue(estimator=...)``).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from kfabric.model.job import Job

Key = tuple[object, ...]
LEVELS = 4


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
        self._ids: dict[Key, int] = {}
        self._runs: list[deque[float]] = []
        self._sum = np.zeros(1024, dtype=np.float64)
        self._count = np.zeros(1024, dtype=np.int64)
        self.version = 0

    def key_ids(self, job: Job) -> tuple[int, ...]:
        """Integer ids of the job's keys, most specific first (new keys start with no history)."""
        out = []
        for key in estimator_keys(job):
            kid = self._ids.get(key)
            if kid is None:
                kid = self._ids[key] = len(self._runs)
                self._runs.append(deque())
                if kid >= self._sum.size:
                    self._sum = np.concatenate([self._sum, np.zeros_like(self._sum)])
                    self._count = np.concatenate([self._count, np.zeros_like(self._count)])
            out.append(kid)
        return tuple(out)

    def observe(self, job: Job, run_s: float, key_ids: tuple[int, ...] | None = None) -> None:
        """Record a finished job's run time (succeeded or failed: both are what users experience).
        ``key_ids``: the job's key ids if the caller kept them from :meth:`key_ids`."""
        for kid in key_ids if key_ids is not None else self.key_ids(job):
            runs = self._runs[kid]
            runs.append(run_s)
            self._sum[kid] += run_s
            if len(runs) > self.window:
                self._sum[kid] -= runs.popleft()
            self._count[kid] = len(runs)
        self.version += 1

    def estimate(self, job: Job) -> float:
        ids = np.asarray([self.key_ids(job)], dtype=np.int64)
        return float(self.estimate_many(ids, np.asarray([job.time_limit_s]))[0])

    def estimate_many(
        self, key_ids: npt.NDArray[np.int64], time_limits_s: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """Estimates for rows of key ids (n x LEVELS), each capped by its time limit, which is also the
        fallback. Never the declared estimate: the simulator's oracle puts the true run time there."""
        out = np.asarray(time_limits_s, dtype=np.float64).copy()
        done = np.zeros(out.size, dtype=bool)
        for level in range(LEVELS):
            ids = key_ids[:, level]
            count = self._count[ids]
            ok = (count >= self.min_samples) & ~done
            mean = self._sum[ids[ok]] / count[ok]
            out[ok] = np.minimum(mean, out[ok])
            done |= ok
        return out
