"""Pending reasons for a whole queue, stored compactly: one shared reason object per class of cause."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from kfabric.model.reasons import PendingReason


class PendingReasons(Mapping[str, PendingReason]):
    """job id -> reason, built lazily from parallel lists (100k pending jobs cost no per-job objects)."""

    def __init__(self, job_ids: list[str], reason_index: list[int], reasons: list[PendingReason]) -> None:
        self._ids = job_ids
        self._idx = reason_index
        self._reasons = reasons
        self._map: dict[str, int] | None = None

    def _lookup(self) -> dict[str, int]:
        if self._map is None:
            self._map = dict(zip(self._ids, self._idx, strict=True))
        return self._map

    def __getitem__(self, job_id: str) -> PendingReason:
        return self._reasons[self._lookup()[job_id]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)
