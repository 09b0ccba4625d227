"""What Slurm says about one job, from any of its three sources, and how it maps onto kfabric's run states.

Sources: ``squeue --json`` (live jobs and jobs finished within ``MinJobAge``; epoch times; raw wait-status
exit codes), the jobcomp file (``JobCompType=jobcomp/filetxt``: one ``key=value`` line per finished job,
times in slurmctld's local time, ``ExitCode=exit:signal``) and plain ``sacct`` (accounting; epoch times via
``SLURM_TIME_FORMAT=%s``, ``ExitCode=exit:signal``).

State map (Slurm → kfabric):

==============================================================  ===========================================
PENDING, CONFIGURING, RUNNING, COMPLETING, SUSPENDED, ...       RUNNING (kfabric placed it: it is launched)
COMPLETED                                                       SUCCEEDED
FAILED, OUT_OF_MEMORY                                           FAILED (exit code kept)
CANCELLED                                                       CANCELLED
TIMEOUT, DEADLINE                                               TIMEOUT
NODE_FAIL, BOOT_FAIL, PREEMPTED, REVOKED                        LOST (kfabric requeues it)
==============================================================  ===========================================

A job kfabric asked to stop (``terminate``) that then ends in any way but TIMEOUT is CANCELLED, whatever
its exit code (a job that checkpoints on SIGTERM and exits 0 was still cancelled), as in the local backend.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfabric.backends.base import RunState
from kfabric.backends.slurm.commands import decode_exit_pair, decode_wait_status, parse_key_values

log = logging.getLogger(__name__)

LIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "SPECIAL_EXIT",
        "RESV_DEL_HOLD",
        "STOPPED",
    }
)
FINAL_STATES: dict[str, RunState] = {
    "COMPLETED": RunState.SUCCEEDED,
    "FAILED": RunState.FAILED,
    "OUT_OF_MEMORY": RunState.FAILED,
    "CANCELLED": RunState.CANCELLED,
    "TIMEOUT": RunState.TIMEOUT,
    "DEADLINE": RunState.TIMEOUT,
    "NODE_FAIL": RunState.LOST,
    "BOOT_FAIL": RunState.LOST,
    "PREEMPTED": RunState.LOST,
    "REVOKED": RunState.LOST,
}


@dataclass(frozen=True, slots=True)
class SlurmRecord:
    slurm_id: int
    name: str
    state: str
    reason: str = ""
    start_s: float | None = None
    end_s: float | None = None
    exit_code: int | None = None
    nodes: str = ""
    comment: str = ""
    submit_s: float | None = None
    node_count: int = 0
    source: str = "squeue"

    @property
    def final(self) -> bool:
        return self.state not in LIVE_STATES


def _epoch(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def parse_local_time(text: str) -> float | None:
    """``2026-11-30T12:53:22`` (slurmctld's local time; kfabric assumes the same time zone) → epoch."""
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def from_squeue(job: dict[str, Any]) -> SlurmRecord:
    state = str(job.get("job_state") or "UNKNOWN").upper()
    return SlurmRecord(
        slurm_id=int(job["job_id"]),
        name=str(job.get("name") or ""),
        state=state,
        reason=str(job.get("state_reason") or ""),
        start_s=None if state == "PENDING" else _epoch(job.get("start_time")),
        end_s=_epoch(job.get("end_time")) if state not in LIVE_STATES else None,
        exit_code=decode_wait_status(job.get("exit_code")) if state not in LIVE_STATES else None,
        nodes=str(job.get("nodes") or ""),
        comment=str(job.get("comment") or ""),
        submit_s=_epoch(job.get("submit_time")),
        node_count=int(job.get("node_count") or 0),
    )


def from_jobcomp(kv: dict[str, str]) -> SlurmRecord | None:
    if not kv.get("JobId", "").isdigit():
        return None
    return SlurmRecord(
        slurm_id=int(kv["JobId"]),
        name=kv.get("Name", ""),
        state=kv.get("JobState", "UNKNOWN").upper(),
        start_s=parse_local_time(kv.get("StartTime", "")),
        end_s=parse_local_time(kv.get("EndTime", "")),
        exit_code=decode_exit_pair(kv.get("ExitCode", "")),
        nodes=kv.get("NodeList", ""),
        submit_s=parse_local_time(kv.get("SubmitTime", "")),
        node_count=int(kv["NodeCnt"]) if kv.get("NodeCnt", "").isdigit() else 0,
        source="jobcomp",
    )


def from_sacct(row: dict[str, str]) -> SlurmRecord | None:
    if not row.get("JobIDRaw", "").isdigit():
        return None
    return SlurmRecord(
        slurm_id=int(row["JobIDRaw"]),
        name=row.get("JobName", ""),
        state=(row.get("State", "UNKNOWN").split() or ["UNKNOWN"])[0].upper(),  # "CANCELLED by 0"
        start_s=_epoch(row.get("Start")),
        end_s=_epoch(row.get("End")),
        exit_code=decode_exit_pair(row.get("ExitCode", "")),
        nodes=row.get("NodeList", ""),
        source="sacct",
    )


def run_state(rec: SlurmRecord, terminated: bool) -> tuple[RunState, str]:
    """kfabric's state of a Slurm job and a sentence saying why (see the module docstring)."""
    where = f"Slurm job {rec.slurm_id}"
    if rec.state in LIVE_STATES:
        if rec.state == "PENDING":
            why = rec.reason if rec.reason not in ("", "None") else "waiting for Slurm's next scheduling pass"
            return RunState.RUNNING, f"{where} pending in Slurm ({why})"
        return RunState.RUNNING, f"{where} {rec.state.lower()} on {rec.nodes}"
    state = FINAL_STATES.get(rec.state)
    if state is None:
        return RunState.LOST, f"{where} ended in unexpected Slurm state {rec.state}"
    if terminated and state is not RunState.TIMEOUT:
        return RunState.CANCELLED, f"cancelled by kfabric ({where} ended {rec.state}, exit {rec.exit_code})"
    if state is RunState.SUCCEEDED:
        return state, f"{where} completed"
    if state is RunState.FAILED:
        return state, f"{where} {rec.state.lower()}: exit code {rec.exit_code}"
    if state is RunState.CANCELLED:
        return state, f"{where} cancelled in Slurm (not by kfabric)"
    if state is RunState.TIMEOUT:
        return state, f"{where} reached its time limit"
    return state, f"{where} {rec.state} on {rec.nodes or 'its nodes'} ({rec.reason or 'no reason given'}): requeue"


class JobcompReader:
    """Reads the jobcomp file incrementally (offset kept; a shrunk or replaced file is read from the start)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.offset = 0
        self.inode: int | None = None
        self._warned = False

    def read_new(self) -> list[SlurmRecord]:
        try:
            st = os.stat(self.path)
            if st.st_ino != self.inode or st.st_size < self.offset:
                self.inode, self.offset = st.st_ino, 0
            if st.st_size == self.offset:
                return []
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []  # no job has finished yet
        except OSError as exc:
            if not self._warned:
                log.warning("cannot read Slurm's jobcomp file %s: %s (finished jobs only via squeue)", self.path, exc)
                self._warned = True
            return []
        end = data.rfind(b"\n") + 1  # a line being written stays for the next read
        self.offset += end
        records = []
        for line in data[:end].decode(errors="replace").splitlines():
            rec = from_jobcomp(parse_key_values(line))
            if rec is not None:
                records.append(rec)
        return records
