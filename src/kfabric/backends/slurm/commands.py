"""Running Slurm's command-line tools against one cluster, and reading what Slurm 22.05 prints.

Every command runs with ``SLURM_CONF`` naming the cluster's configuration, a small clean environment (the
controller's own environment, which may hold database passwords, never reaches a job through
``sbatch --export=ALL``) and a timeout. Failures are sorted into two kinds:

* the controller cannot be reached (connect failure, socket timeout, our own timeout, a JSON answer whose
  ``errors`` say it could not load jobs or nodes) → :class:`~kfabric.backends.base.BackendUnavailable`;
  after one, calls fail fast for a growing back-off (1 s, 2 s, ... up to ``backoff_max_s``) so a controller
  tick does not wait the clients' ~9 s connect retries again and again;
* anything else (a rejected submission, a bad option) → :class:`SlurmError`, a :class:`ValueError` so the
  controller treats a refused launch as a failed launch.

22.05 quirks handled here: ``squeue --json``/``sinfo --json`` exit 0 with an empty list and an ``errors``
entry when slurmctld is down (so an empty answer is never taken as "no jobs"); ``exit_code`` in
``squeue --json`` is the raw wait status (768 = exit 3, 15 = killed by SIGTERM); ``squeue --json`` ignores
``--name``/``--jobs`` filters; ``scontrol`` has no ``--json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kfabric.backends.base import BackendUnavailable

#: stderr fragments that mean "slurmctld could not be reached" (retry later), not "the request is wrong"
UNREACHABLE = (
    "unable to contact slurm controller",
    "connection refused",
    "connect failure",
    "socket timed out",
    "timed out",
    "zero bytes were transmitted or received",
    "communication connection failure",
    "slurm backup controller in standby mode",
    "resource temporarily unavailable",
    "slurmctld not responding",
    "transport endpoint",
    "no route to host",
    "network is unreachable",
    "munge",  # the credential daemon is down: nothing can be authenticated
)
#: ``squeue -O`` fields read by :meth:`SlurmCli.squeue_rows` and the ``squeue --json`` keys they fill; the two free
#: text fields (Name, Comment) last
SQUEUE_COLUMNS = (
    ("JobID", "job_id"),
    ("State", "job_state"),
    ("Reason", "state_reason"),
    ("exit_code", "exit_code"),
    ("StartTime", "start_time"),
    ("EndTime", "end_time"),
    ("SubmitTime", "submit_time"),
    ("NumNodes", "node_count"),
    ("NodeList", "nodes"),
    ("Name", "name"),
    ("Comment", "comment"),
)
#: environment variables passed through to the Slurm tools (never to jobs: sbatch gets --export without ALL)
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


class SlurmError(ValueError):
    """A Slurm command failed for a reason other than reaching the controller (the message says which)."""


def decode_wait_status(status: int | None) -> int | None:
    """The exit code a shell would show for a raw wait status: ``768`` → 3, ``15`` (SIGTERM) → 143."""
    if status is None:
        return None
    signal_no = status & 0x7F
    if signal_no:
        return 128 + signal_no
    return (status >> 8) & 0xFF


def decode_exit_pair(text: str) -> int | None:
    """``ExitCode=3:0`` (exit:signal, as jobcomp and plain sacct print it) → 3; ``0:15`` → 143."""
    code, _, sig = text.partition(":")
    try:
        if sig and int(sig):
            return 128 + int(sig)
        return int(code)
    except ValueError:
        return None


def parse_key_values(line: str) -> dict[str, str]:
    """``A=1 B=x=y C=`` → ``{"A": "1", "B": "x=y", "C": ""}`` (jobcomp lines, ``scontrol -o`` output)."""
    out: dict[str, str] = {}
    for token in line.split():
        key, eq, value = token.partition("=")
        if eq:
            out[key] = value
    return out


class SlurmCli:
    """The Slurm client tools for one cluster (``slurm_conf``); see the module docstring."""

    def __init__(
        self,
        slurm_conf: str,
        timeout_s: float = 30.0,
        backoff_max_s: float = 30.0,
        bin_dir: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slurm_conf = slurm_conf
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self.bin_dir = bin_dir
        self.clock = clock
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._down_reason = ""
        self.calls = 0  # how many commands were run (tests and benchmarks read it)
        #: guards the back-off state and the count: several sbatch may run at once (``SlurmBackend.launch_many``)
        self._state = threading.Lock()

    # ---------------------------------------------------------------------------------------------- running

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.setdefault("PATH", DEFAULT_PATH)
        env["SLURM_CONF"] = self.slurm_conf
        env.update(extra or {})
        return env

    def run(
        self,
        args: Sequence[str],
        input_text: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        ok_errors: Sequence[str] = (),
    ) -> str:
        """Run one Slurm tool; its stdout. Raises BackendUnavailable or SlurmError (see the module docstring).

        A failure whose stderr contains one of ``ok_errors`` (lower case) is not an error: "" is returned.
        """
        with self._state:
            now = self.clock()
            if now < self._retry_at:
                raise BackendUnavailable(
                    f"slurmctld ({self.slurm_conf}) unreachable: {self._down_reason}; "
                    f"next try in {self._retry_at - now:.1f} s"
                )
            self.calls += 1
        cmd = [os.path.join(self.bin_dir, args[0]) if self.bin_dir else args[0], *args[1:]]
        try:
            done = subprocess.run(
                cmd,
                input=input_text,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                env=self.env(extra_env),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            self._down(f"{args[0]} did not answer within {self.timeout_s:g} s")
            raise BackendUnavailable(self._down_reason) from exc
        except FileNotFoundError as exc:
            raise SlurmError(f"{args[0]} not found (install slurm-client, or set bin_dir): {exc}") from exc
        except OSError as exc:
            raise BackendUnavailable(f"cannot run {args[0]}: {exc}") from exc
        if done.returncode != 0:
            err = (done.stderr or done.stdout).strip()
            low = err.lower()
            if any(fragment in low for fragment in ok_errors):
                self._up()
                return ""
            if any(fragment in low for fragment in UNREACHABLE):
                self._down(f"{args[0]}: {err}")
                raise BackendUnavailable(self._down_reason)
            self._up()  # it answered, so the controller is there
            raise SlurmError(f"{' '.join(args[:1])} failed (exit {done.returncode}): {err or 'no message'}")
        self._up()
        return done.stdout

    def json(self, args: Sequence[str]) -> dict[str, Any]:
        """Run a ``--json`` command; its document. A document carrying ``errors`` is BackendUnavailable:
        22.05 prints ``{"errors": [...], "jobs": []}`` with exit 0 when slurmctld is down."""
        text = self.run([*args, "--json"])
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise BackendUnavailable(f"{args[0]} --json printed no JSON: {text[:200]!r}") from exc
        if not isinstance(doc, dict):
            raise BackendUnavailable(f"{args[0]} --json printed {type(doc).__name__}, not an object")
        errors = doc.get("errors") or []
        if errors:
            self._down(f"{args[0]} --json: {errors}")
            raise BackendUnavailable(self._down_reason)
        return doc

    def _down(self, reason: str) -> None:
        with self._state:
            self._backoff_s = min(self.backoff_max_s, max(1.0, self._backoff_s * 2))
            self._retry_at = self.clock() + self._backoff_s
            self._down_reason = reason

    def _up(self) -> None:
        with self._state:
            self._backoff_s = 0.0
            self._retry_at = 0.0

    def reset_backoff(self) -> None:
        """Try the controller again at the next call (tests; an operator's "retry now")."""
        self._up()

    # ---------------------------------------------------------------------------------------------- tools

    def squeue_jobs(self) -> list[dict[str, Any]]:
        """Every job slurmctld remembers (running, pending, and finished within ``MinJobAge``)."""
        jobs = self.json(["squeue", "--all", "--states=all"]).get("jobs") or []
        return [j for j in jobs if isinstance(j, dict)]

    def squeue_rows(self) -> list[dict[str, Any]]:
        """Every job slurmctld remembers, as :meth:`squeue_jobs` gives them (the same keys), read from text
        ``squeue -O`` with epoch times: with thousands of jobs the JSON answer costs ~0.3 s to print and as much
        to parse, the text one ~20 ms. Name and Comment come last (free text: the comment may hold ``|``)."""
        fmt = ",".join(f"{field}:|" for field, _ in SQUEUE_COLUMNS)
        out = self.run(
            ["squeue", "--all", "--states=all", "--noheader", "-O", fmt], extra_env={"SLURM_TIME_FORMAT": "%s"}
        )
        fixed = len(SQUEUE_COLUMNS) - 2
        rows: list[dict[str, Any]] = []
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) < len(SQUEUE_COLUMNS) + 1 or not parts[0].strip().isdigit():
                continue  # an array or heterogeneous job's id (kfabric submits neither), or a broken line
            row: dict[str, Any] = {key: parts[i].strip() for i, (_, key) in enumerate(SQUEUE_COLUMNS[:fixed])}
            row["name"] = parts[fixed]
            comment = "|".join(parts[fixed + 1 : -1])
            row["comment"] = "" if comment == "(null)" else comment
            for key in ("start_time", "end_time", "submit_time"):
                row[key] = row[key] if row[key].isdigit() else None
            row["exit_code"] = int(row["exit_code"]) if row["exit_code"].isdigit() else None
            row["node_count"] = int(row["node_count"]) if row["node_count"].isdigit() else 0
            row["state_reason"] = "" if row["state_reason"] == "None" else row["state_reason"]
            rows.append(row)
        return rows

    def squeue_names(self, names: Sequence[str]) -> list[tuple[int, str, str]]:
        """``(job id, name, state)`` of the jobs with these names (text squeue: its ``--name`` filter works)."""
        if not names:
            return []
        out = self.run(["squeue", "--all", "--states=all", "--noheader", f"--name={','.join(names)}", "-o", "%i|%j|%T"])
        rows = []
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and parts[0].isdigit():
                rows.append((int(parts[0]), parts[1], parts[2]))
        return rows

    def sinfo_nodes(self) -> list[dict[str, Any]]:
        nodes = self.json(["sinfo"]).get("nodes") or []
        return [n for n in nodes if isinstance(n, dict)]

    def partitions(self) -> list[dict[str, str]]:
        """``scontrol show partition --oneliner`` as key=value dicts (PartitionName, Default, State, ...)."""
        out = self.run(["scontrol", "show", "partition", "--oneliner"])
        return [kv for kv in (parse_key_values(line) for line in out.splitlines()) if "PartitionName" in kv]

    def config(self) -> dict[str, str]:
        """``scontrol show config`` as a dict (``JobCompType``, ``JobCompLoc``, ``MinJobAge``, ...)."""
        out = self.run(["scontrol", "show", "config"])
        conf: dict[str, str] = {}
        for line in out.splitlines():
            key, eq, value = line.partition("=")
            if eq and key.strip() and " " not in key.strip():
                conf[key.strip()] = value.strip()
        return conf

    def sbatch(self, args: Sequence[str], script: str) -> int:
        """Submit ``script`` (on stdin); the new Slurm job id."""
        out = self.run(["sbatch", "--parsable", *args], input_text=script).strip()
        first = out.splitlines()[-1].split(";")[0] if out else ""
        if not first.isdigit():
            raise SlurmError(f"sbatch printed {out!r}, not a job id")
        return int(first)

    def scancel(self, slurm_id: int, signal_name: str | None = None, full: bool = False) -> None:
        """Cancel a job, or with ``signal_name`` signal it: its steps only, or with ``full`` every process of
        the job including the batch script's; a job already gone is no error."""
        args = ["scancel", *([f"--signal={signal_name}"] if signal_name else []), *(["--full"] if full else [])]
        args.append(str(slurm_id))
        self.run(args, ok_errors=("invalid job id", "already completing or completed", "job is pending"))

    def set_comment(self, slurm_id: int, comment: str) -> None:
        self.run(
            ["scontrol", "update", f"JobId={slurm_id}", f"Comment={comment}"],
            ok_errors=("invalid job id", "already completing or completed", "job/step already"),
        )

    def sacct(self, names: Sequence[str], since_epoch: float) -> list[dict[str, str]]:
        """Job records from accounting with these names (all jobs when ``names`` is empty) since a time, through
        plain ``sacct`` (22.05's ``--json`` gets exit codes wrong); times as epoch seconds
        (``SLURM_TIME_FORMAT=%s``)."""
        fields = ("JobIDRaw", "JobName", "State", "ExitCode", "Start", "End", "NodeList")
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since_epoch))
        out = self.run(
            ["sacct", "-X", "-n", "-P", f"-S{start}", "-Enow", f"-o{','.join(fields)}"]
            + ([f"--name={','.join(names)}"] if names else []),
            extra_env={"SLURM_TIME_FORMAT": "%s"},
        )
        rows = []
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) == len(fields):
                rows.append(dict(zip(fields, parts, strict=True)))
        return rows
