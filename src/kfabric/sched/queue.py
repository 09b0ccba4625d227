"""The pending queue with column arrays, kept incrementally so a cycle never rebuilds them from objects.

Jobs join with ``add`` and leave with ``remove``; removed rows are tombstoned and compacted in bulk. Every job
gets an equivalence class: jobs of one class (same shape, models, topology, classification, CPU/memory, priority
class, preemptibility and owner affiliation) fit or fail to fit in the same way, so a cycle can skip a class once
one of its jobs failed. (Priority decides what a job may preempt; preemptibility whether it may borrow.)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from kfabric.model.job import Job
from kfabric.sched.estimator import LEVELS, RuntimeEstimator

ShapeKey = tuple[object, ...]


def shape_key(job: Job, affiliation: str) -> ShapeKey:
    return (
        job.gpus,
        job.gpu_milli,
        job.nodes,
        job.gpus_per_node,
        job.gpu_models,
        int(job.min_topology),
        int(job.classification),
        job.cpu_milli,
        job.memory_mib,
        int(job.priority),
        job.preemptible,
        affiliation,
    )


class PendingQueue:
    """Pending jobs in columns. With an ``estimator``, each job's history keys are interned at submission so
    orderings can estimate the whole queue with numpy (``predicted_runtimes``)."""

    def __init__(self, estimator: RuntimeEstimator | None = None) -> None:
        self.estimator = estimator
        self._keys = np.zeros((1024, LEVELS), dtype=np.int64)
        self._jobs: list[Job | None] = []
        #: job id per row; only ever appended to (compaction makes a new list), so readers may keep it
        self.ids: list[str] = []
        self._row: dict[str, int] = {}
        self._project_ids: dict[str, int] = {}
        self.projects: list[str] = []
        self._class_ids: dict[ShapeKey, int] = {}
        self.class_keys: list[ShapeKey] = []
        self._cols = np.zeros((len(_COLUMNS), 1024), dtype=np.float64)
        self._dead = 0

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._row

    def __iter__(self) -> Iterator[Job]:
        return (j for j in self._jobs if j is not None)

    def project_id(self, project: str) -> int | None:
        """The integer id of a project in the ``project`` column, or None if no job of it ever queued."""
        return self._project_ids.get(project)

    def get(self, job_id: str) -> Job:
        job = self._jobs[self._row[job_id]]
        assert job is not None
        return job

    def add(self, job: Job, affiliation: str = "", key_ids: tuple[int, ...] | None = None) -> None:
        """Queue ``job``. ``key_ids``: its estimator key ids if the caller already has them (saves interning)."""
        if job.id in self._row:
            raise ValueError(f"job {job.id} is already pending")
        pid = self._project_ids.setdefault(job.project, len(self._project_ids))
        if pid == len(self.projects):
            self.projects.append(job.project)
        key = shape_key(job, affiliation)
        cid = self._class_ids.setdefault(key, len(self._class_ids))
        if cid == len(self.class_keys):
            self.class_keys.append(key)
        row = len(self._jobs)
        if row == self._cols.shape[1]:
            self._cols = np.concatenate([self._cols, np.zeros_like(self._cols)], axis=1)
            self._keys = np.concatenate([self._keys, np.zeros_like(self._keys)])
        if self.estimator is not None:
            self._keys[row] = key_ids if key_ids is not None else self.estimator.key_ids(job)
        self._row[job.id] = row
        self._jobs.append(job)
        self.ids.append(job.id)
        self._cols[:, row] = (
            job.submit_s,
            float(job.priority),
            float(job.gpu_milli_total),
            job.time_limit_s,
            float(pid),
            float(cid),
            1.0,
        )

    def remove(self, job_id: str) -> Job:
        row = self._row.pop(job_id)
        job = self._jobs[row]
        assert job is not None
        self._jobs[row] = None
        self._cols[_ALIVE, row] = 0.0
        self._dead += 1
        if self._dead > 1024 and self._dead * 2 > len(self._jobs):
            self._compact()
        return job

    def _compact(self) -> None:
        keep = [i for i, j in enumerate(self._jobs) if j is not None]
        self._jobs = [self._jobs[i] for i in keep]
        self.ids = [self.ids[i] for i in keep]
        cols = np.zeros((len(_COLUMNS), max(1024, 2 * len(keep))), dtype=np.float64)
        cols[:, : len(keep)] = self._cols[:, keep]
        self._cols = cols
        keys = np.zeros((cols.shape[1], LEVELS), dtype=np.int64)
        keys[: len(keep)] = self._keys[keep]
        self._keys = keys
        self._row = {j.id: i for i, j in enumerate(self._jobs) if j is not None}
        self._dead = 0

    def rows(self) -> list[Job | None]:
        """Jobs by row (None where removed); rows line up with :meth:`arrays`."""
        return self._jobs

    def predicted_runtimes(self, estimator: RuntimeEstimator) -> npt.NDArray[np.float64]:
        """History-based run-time estimate per row (time limit where there is no history)."""
        n = len(self._jobs)
        limits = self._cols[_COLUMNS.index("time_limit_s"), :n]
        if estimator is self.estimator:
            return estimator.estimate_many(self._keys[:n], limits)
        rows = [j for j in self._jobs]
        return np.fromiter(
            (0.0 if j is None else estimator.estimate(j) for j in rows), dtype=np.float64, count=len(rows)
        )

    def arrays(self) -> dict[str, npt.NDArray[np.float64]]:
        n = len(self._jobs)
        return {name: self._cols[i, :n] for i, name in enumerate(_COLUMNS)}


_COLUMNS = ("submit_s", "priority", "milli", "time_limit_s", "project", "klass", "alive")
_ALIVE = _COLUMNS.index("alive")
