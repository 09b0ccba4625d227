"""The epoch fence that the ``local`` and ``sim`` backends keep, so that a controller that lost its lease (paused,
cut off) cannot launch or terminate anything after another one took over.

The controller that takes the lease calls ``backend.fence(epoch)`` before its first launch: the backend raises
the fence to ``epoch`` (it never goes down) and remembers that it acts for ``epoch``. A backend object whose own
epoch is lower than the fence refuses every launch and terminate with :class:`Fenced` (a
:class:`~kfabric.backends.base.BackendUnavailable`, so a controller that does not know about fencing keeps the job
as it is and changes nothing).

Shared between processes (:class:`FileFence`): the fence is a folder of marker files, one per epoch raised
(``fence.d/000000000007``); its value is the highest name, so it only grows and no lock is taken: a process paused
at any point cannot block a takeover. A launch checks the fence, creates the attempt, and checks again: if the
fence rose in between, it withdraws the attempt it created (marks it lost before anything runs, so the new leader
requeues it) and refuses. An attempt created before the fence rose is seen by the new leader's first poll (it polls
after raising the fence) and adopted. In one process (:class:`MemoryFence`) the same holds in memory.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Protocol

from kfabric.backends.base import BackendUnavailable


class Fenced(BackendUnavailable):
    """The caller's epoch is older than the backend's fence: another controller leads now. Nothing was changed."""

    def __init__(self, backend: str, mine: int, fence: int) -> None:
        self.mine, self.fence = mine, fence
        super().__init__(
            f"{backend} backend: refused, this controller acts for lease epoch {mine} but epoch {fence} took over "
            "(fencing); it must stop acting and follow the new leader (it becomes a standby by itself)"
        )


class Fence(Protocol):
    def raise_to(self, epoch: int) -> int: ...

    def current(self) -> int: ...


class MemoryFence:
    """The fence of one backend object (in-memory backends: tests, the twin)."""

    def __init__(self) -> None:
        self._epoch = 0

    def raise_to(self, epoch: int) -> int:
        self._epoch = max(self._epoch, epoch)
        return self._epoch

    def current(self) -> int:
        return self._epoch


class FileFence:
    """The fence as marker files in ``path`` (a folder), shared by every process on this machine."""

    #: markers kept below the highest (older ones are removed when the fence rises)
    KEEP = 3

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _epochs(self) -> list[int]:
        try:
            return sorted(int(name) for name in os.listdir(self.path) if name.isdigit())
        except FileNotFoundError:
            return []

    def raise_to(self, epoch: int) -> int:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        marker = self.path / f"{epoch:012d}"
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        epochs = self._epochs()
        for old in epochs[: -self.KEEP]:
            with contextlib.suppress(FileNotFoundError):
                (self.path / f"{old:012d}").unlink()
        return epochs[-1] if epochs else epoch

    def current(self) -> int:
        try:
            epochs = self._epochs()
        except OSError as exc:
            raise BackendUnavailable(f"cannot read the fence {self.path}: {exc.strerror or exc}") from exc
        return epochs[-1] if epochs else 0


class EpochGuard:
    """What a backend object keeps: the fence and the epoch it acts for (None: never fenced, acts unchecked, as
    a controller without leadership does)."""

    def __init__(self, backend: str, fence: Fence) -> None:
        self.backend = backend
        self.fence = fence
        self.epoch: int | None = None

    def raise_to(self, epoch: int) -> None:
        self.fence.raise_to(epoch)
        self.epoch = epoch

    def check(self) -> None:
        """:class:`Fenced` when a newer epoch raised the fence (before acting, and again after creating an attempt)."""
        if self.epoch is None:
            return
        current = self.fence.current()
        if current > self.epoch:
            raise Fenced(self.backend, self.epoch, current)
