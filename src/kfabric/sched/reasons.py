"""Pending reasons for a whole queue, stored compactly: one shared reason object per class of cause."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from kfabric.model.reasons import PendingReason


class PendingReasons(Mapping[str, PendingReason]):
    """job id -> reason, built lazily from parallel lists (100k pending jobs cost no per-job objects)."""

    def __init__(
        self,
        id_source: Sequence[str],
        rows: npt.NDArray[np.int64],
        reason_index: npt.NDArray[np.int64],
        reasons: list[PendingReason],
    ) -> None:
        self._source = id_source
        self._rows = rows
        self._idx = reason_index
        self._reasons = reasons
        self._ids: list[str] | None = None
        self._map: dict[str, int] | None = None

    @property
    def job_ids(self) -> list[str]:
        if self._ids is None:
            src = self._source
            self._ids = [src[r] for r in self._rows.tolist()]
        return self._ids

    def _lookup(self) -> dict[str, int]:
        if self._map is None:
            self._map = dict(zip(self.job_ids, self._idx.tolist(), strict=True))
        return self._map

    def __getitem__(self, job_id: str) -> PendingReason:
        return self._reasons[self._lookup()[job_id]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.job_ids)

    def __len__(self) -> int:
        return len(self._rows)
