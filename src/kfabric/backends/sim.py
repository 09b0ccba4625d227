"""The sim backend: a virtual cluster, in memory, for demos and tests.

Nothing runs. An attempt starts at ``clock()`` when launched and ends ``runtime / speedup`` seconds of clock
time later, where ``runtime`` is ``spec.runtime_s`` (or ``default_runtime_s``):

* ``runtime <= time_limit_s``: it succeeds, unless its command (or, for a job with a stored script, the script's
  first line that is not blank, a comment or a directive) starts with ``exit N`` (``N != 0``): then it fails with
  exit code ``N``;
* ``runtime > time_limit_s``: it ends in TIMEOUT at the time limit (``time_limit_s / speedup``).

:meth:`SimBackend.terminate` cancels a running attempt at ``clock()``; :meth:`SimBackend.fail_node` makes
every running attempt on a node LOST and reports the node failed (:meth:`SimBackend.nodes`) until
:meth:`SimBackend.repair_node`; :meth:`SimBackend.drain_node` reports a node drained; ``available = False`` makes
the backend unreachable (launch, terminate, poll and nodes raise
:class:`~kfabric.backends.base.BackendUnavailable` and change nothing). Given the clock, all of it is deterministic.

Shared (``state_dir`` given; ``kfabric serve`` uses ``STATE/sim``): every attempt is a file
``state_dir/attempts/JOB.ATTEMPT.json``, created exclusively (a link of a complete temporary file, so launch stays
idempotent across processes) and rewritten atomically when it is stopped; ``state_dir/launches.log`` gets one
JSON line per attempt created (job, attempt, epoch, pid, time), the record tests count launches by. Every process
(sharing the wall clock) sees the same attempts, so a standby that takes over adopts the simulated work running.
``state_dir/fence.d`` is the epoch fence (``backends/fencing.py``): after :meth:`SimBackend.fence` a backend object
whose epoch was overtaken refuses launch and terminate. Without ``state_dir`` (the default: tests, the twin) all of
it is in memory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfabric.backends.base import BackendUnavailable, LaunchSpec, NodeFact, NodeGpus, RunReport, RunState
from kfabric.backends.fencing import EpochGuard, Fence, Fenced, FileFence, MemoryFence
from kfabric.backends.local_runner import publish_once, write_atomic

_EXIT = re.compile(r"\s*exit\s+(\d+)\b")


def _first_command(spec: LaunchSpec) -> str:
    """The command the sim reads the exit code from: the job's command, or its script's first command line."""
    if not spec.script:
        return spec.command
    for line in spec.script.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line
    return ""


@dataclass(slots=True)
class _Attempt:
    spec: LaunchSpec
    started_at_s: float
    #: how the attempt ends by itself, and when
    end_at_s: float
    end_state: RunState
    exit_code: int | None
    message: str
    #: set when the attempt was ended from outside (cancelled, lost) before it ended by itself
    stopped: tuple[RunState, float, str] | None = None
    #: the lease epoch of the controller that launched it (0: unfenced)
    epoch: int = 0

    def to_json(self) -> str:
        spec = self.spec
        return json.dumps({
            "job_id": spec.job_id, "attempt": spec.attempt, "name": spec.name, "command": spec.command,
            "nodes": [[p.node, list(p.gpus), p.gpu_milli] for p in spec.nodes], "time_limit_s": spec.time_limit_s,
            "runtime_s": spec.runtime_s, "started_at_s": self.started_at_s, "end_at_s": self.end_at_s,
            "end_state": self.end_state.value, "exit_code": self.exit_code, "message": self.message,
            "stopped": [self.stopped[0].value, self.stopped[1], self.stopped[2]] if self.stopped else None,
            "epoch": self.epoch, "script": spec.script,
        })  # fmt: skip

    @classmethod
    def of_json(cls, d: dict[str, Any]) -> _Attempt:
        nodes = tuple(NodeGpus(str(n), tuple(int(g) for g in gpus), int(m)) for n, gpus, m in d["nodes"])
        spec = LaunchSpec(
            str(d["job_id"]), int(d["attempt"]), str(d["name"]), str(d["command"]), nodes,
            float(d["time_limit_s"]), runtime_s=d["runtime_s"], script=str(d.get("script") or ""),
        )  # fmt: skip
        stopped = d.get("stopped")
        return cls(
            spec, float(d["started_at_s"]), float(d["end_at_s"]), RunState(d["end_state"]), d["exit_code"],
            str(d["message"]), (RunState(stopped[0]), float(stopped[1]), str(stopped[2])) if stopped else None,
            int(d.get("epoch", 0)),
        )  # fmt: skip


class SimBackend:
    """A virtual cluster driven by ``clock``; see the module docstring."""

    name = "sim"
    #: nothing runs, so no output file is written: ``kfabric job log`` serves the job's state changes instead
    #: (``service/job_output.py``); the stored script is recorded with the attempt (``LaunchSpec.script``)
    output_files = False

    def __init__(
        self,
        clock: Callable[[], float],
        speedup: float = 1.0,
        default_runtime_s: float = 60.0,
        state_dir: Path | None = None,
    ) -> None:
        if speedup <= 0:
            raise ValueError(f"speedup must be positive, got {speedup}")
        self.clock = clock
        self.speedup = speedup
        self.default_runtime_s = default_runtime_s
        #: when False the cluster is unreachable: launch, terminate and poll raise BackendUnavailable
        self.available = True
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self.state_dir = Path(state_dir).resolve() if state_dir is not None else None
        fence: Fence = MemoryFence()
        if self.state_dir is not None:
            (self.state_dir / "attempts").mkdir(mode=0o700, parents=True, exist_ok=True)
            fence = FileFence(self.state_dir / "fence.d")
        self._guard = EpochGuard(self.name, fence)
        #: attempt file name -> (mtime_ns, size) when last read
        self._seen: dict[str, tuple[int, int]] = {}
        #: nodes failed or drained (fail_node, drain_node) until repair_node
        self._node_faults: dict[str, NodeFact] = {}

    # ---- fencing and persistence --------------------------------------------------------------------------
    def fence(self, epoch: int) -> None:
        """Act for lease ``epoch`` from now on, and refuse (Fenced) acts of every backend object of an older one."""
        self._guard.raise_to(epoch)

    def _path(self, key: tuple[str, int]) -> Path:
        assert self.state_dir is not None
        return self.state_dir / "attempts" / f"{key[0]}.{key[1]}.json"

    def _refresh(self) -> None:
        """Bring the attempts up to date with the files (only files changed since they were read are read)."""
        if self.state_dir is None:
            return
        present: set[str] = set()
        with os.scandir(self.state_dir / "attempts") as listing:
            for entry in listing:
                if entry.name.startswith(".") or not entry.name.endswith(".json"):
                    continue
                present.add(entry.name)
                st = entry.stat()
                mark = (st.st_mtime_ns, st.st_size)
                if self._seen.get(entry.name) == mark:
                    continue
                try:
                    att = _Attempt.of_json(json.loads(Path(entry.path).read_text()))
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # vanished or being replaced: read next time
                self._attempts[(att.spec.job_id, att.spec.attempt)] = att
                self._seen[entry.name] = mark
        for name in set(self._seen) - present:
            del self._seen[name]
            job_id, _, attempt = name.removesuffix(".json").rpartition(".")
            self._attempts.pop((job_id, int(attempt)), None)

    def _save(self, att: _Attempt) -> None:
        if self.state_dir is not None:
            write_atomic(self._path((att.spec.job_id, att.spec.attempt)), att.to_json())

    def _record_launch(self, att: _Attempt) -> None:
        assert self.state_dir is not None
        line = json.dumps({
            "job_id": att.spec.job_id, "attempt": att.spec.attempt, "epoch": att.epoch, "pid": os.getpid(),
            "at_s": att.started_at_s,
        })  # fmt: skip
        fd = os.open(self.state_dir / "launches.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def _io(self, what: str, exc: OSError) -> BackendUnavailable:
        return BackendUnavailable(f"sim backend: cannot {what} under {self.state_dir}: {exc.strerror or exc}")

    def _check_available(self) -> None:
        if not self.available:
            raise BackendUnavailable("the simulated cluster is unavailable")

    def _running(self, att: _Attempt, now: float) -> bool:
        return att.stopped is None and now < att.end_at_s

    def launch(self, spec: LaunchSpec) -> None:
        self._check_available()
        self._guard.check()
        try:
            created = self._launch(spec)
            try:
                self._guard.check()  # the fence rose while it was created: withdraw it (lost: requeued), refuse
            except Fenced:
                if created is not None:
                    why = "withdrawn: launched by a fenced controller"
                    created.stopped = (RunState.LOST, created.started_at_s, why)
                    self._save(created)
                raise
        except OSError as exc:
            raise self._io(f"launch {spec.key}", exc) from exc

    def _launch(self, spec: LaunchSpec) -> _Attempt | None:
        """Create the attempt unless it exists; returns it when this call created it."""
        self._refresh()
        key = (spec.job_id, spec.attempt)
        if key in self._attempts:
            return None
        now = self.clock()
        runtime = self.default_runtime_s if spec.runtime_s is None else spec.runtime_s
        if runtime > spec.time_limit_s:
            end, state, code, message = spec.time_limit_s, RunState.TIMEOUT, None, "time limit reached"
        else:
            match = _EXIT.match(_first_command(spec))
            code = int(match.group(1)) if match else 0
            end = runtime
            state = RunState.FAILED if code else RunState.SUCCEEDED
            message = f"exit code {code}" if code else ""
        att = _Attempt(spec, now, now + end / self.speedup, state, code, message, epoch=self._guard.epoch or 0)
        if self.state_dir is not None:
            if not publish_once(self._path(key), att.to_json()):
                self._refresh()  # another process launched it first
                return None
            self._record_launch(att)
        self._attempts[key] = att
        return att

    def terminate(self, job_id: str, attempt: int, grace_s: float = 0.0) -> None:
        self._check_available()
        self._guard.check()
        try:
            self._refresh()
            att = self._attempts.get((job_id, attempt))
            now = self.clock()
            if att is None or not self._running(att, now):
                return
            att.stopped = (RunState.CANCELLED, now, "cancelled")
            self._save(att)
        except OSError as exc:
            raise self._io(f"terminate {job_id}.{attempt}", exc) from exc

    def fail_node(self, node: str, reason: str = "simulated failure", state: str = "fail") -> list[tuple[str, int]]:
        """Make every attempt running on ``node`` LOST now and report the node ``state`` (``fail`` or ``down``) with
        ``reason`` from :meth:`nodes` until :meth:`repair_node`; returns the lost ``(job_id, attempt)``."""
        if state not in ("fail", "down"):
            raise ValueError(f"fail_node({node!r}): state {state!r} is not a failure; use 'fail' or 'down'")
        self._node_faults[node] = NodeFact(node, state, reason)
        self._refresh()
        now = self.clock()
        lost = []
        for key, att in self._attempts.items():
            if self._running(att, now) and any(part.node == node for part in att.spec.nodes):
                att.stopped = (RunState.LOST, now, f"node {node} failed: {reason}")
                self._save(att)
                lost.append(key)
        return lost

    def drain_node(self, node: str, reason: str = "simulated drain") -> None:
        """Report ``node`` drained (no new work; what runs there finishes) until :meth:`repair_node`."""
        self._node_faults[node] = NodeFact(node, "drain", reason)

    def repair_node(self, node: str) -> bool:
        """The node is healthy again (reported up); returns whether it was failed or drained."""
        return self._node_faults.pop(node, None) is not None

    def nodes(self) -> list[NodeFact]:
        """The nodes failed or drained now (every other node is up)."""
        self._check_available()
        return [self._node_faults[n] for n in sorted(self._node_faults)]

    def poll(self) -> list[RunReport]:
        self._check_available()
        try:
            self._refresh()
        except OSError as exc:
            raise self._io("read the attempts", exc) from exc
        now = self.clock()
        reports = []
        for (job_id, attempt), att in self._attempts.items():
            if att.stopped is not None:
                state, ended, message = att.stopped
                reports.append(RunReport(job_id, attempt, state, att.started_at_s, ended, None, message))
            elif now >= att.end_at_s:
                reports.append(
                    RunReport(
                        job_id, attempt, att.end_state, att.started_at_s, att.end_at_s, att.exit_code, att.message
                    )
                )
            else:
                reports.append(RunReport(job_id, attempt, RunState.RUNNING, att.started_at_s))
        return reports

    def forget(self, job_id: str, attempt: int) -> bool:
        """Drop a finished attempt (once the controller recorded it). Returns whether it was dropped."""
        self._refresh()
        att = self._attempts.get((job_id, attempt))
        if att is None or self._running(att, self.clock()):
            return False
        del self._attempts[(job_id, attempt)]
        if self.state_dir is not None:
            self._path((job_id, attempt)).unlink(missing_ok=True)
            self._seen.pop(self._path((job_id, attempt)).name, None)
        return True
