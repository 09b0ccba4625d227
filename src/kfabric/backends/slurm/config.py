"""Configuration of one Slurm cluster kfabric dispatches to (YAML-loadable, validated with errors naming the key).

Example (``docs/slurm.md`` explains every field)::

    slurm_clusters:
      - name: gov-slurm            # the kfabric cluster this Slurm cluster is (fleet ``clusters[].name``)
        site: lab-gov              # the kfabric site it belongs to
        slurm_conf: /etc/slurm/slurm.conf
        partition: gpu             # optional: Slurm's default partition when left out
        account: kfabric           # optional default --account
        accounts: {vision-lab: vision}   # optional project -> account
        workdir_root: /shared/kfabric/runs   # job outputs; must be visible to the compute nodes
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

FRACTIONAL_MODES = ("whole",)
COMPLETION_SOURCES = ("auto", "jobcomp", "sacct", "none")
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,15}$")


class SlurmConfigError(ValueError):
    """A Slurm cluster configuration is invalid; the message names the key and says what is expected."""


@dataclass(frozen=True, slots=True)
class SlurmClusterConfig:
    #: the kfabric cluster name (also the backend's name: two Slurm clusters are two backends)
    name: str
    #: the kfabric site the cluster belongs to
    site: str
    #: the cluster's slurm.conf, passed to every Slurm tool as SLURM_CONF
    slurm_conf: str
    #: where job outputs go (``ROOT/JOB.ATTEMPT/stdout``); a path the compute nodes see at the same place
    workdir_root: str
    #: partition to submit to; "" = the cluster's default partition
    partition: str = ""
    #: default ``--account``; "" = none (the user's default account)
    account: str = ""
    #: project name → Slurm account, overriding ``account``
    accounts: Mapping[str, str] = field(default_factory=dict)
    #: GRES type requested (``--gres=gpu:TYPE:N``); "" = the type Slurm reports for the placed nodes
    gres_type: str = ""
    #: kfabric GPU model of the cluster's GPUs for discovery; "" = mapped from the GRES type
    gpu_model: str = ""
    #: owner of discovered pools in the fleet fragment ("" = the site's name)
    owner: str = ""
    #: how a fractional GPU (gpu_milli < 1000) is requested: "whole" = one whole GPU (see docs/slurm.md)
    fractional: str = "whole"
    #: run the command on every node with ``srun`` (one task per node); false = once, in the batch script
    use_srun: bool = True
    #: job-name prefix (``PREFIX-JOB.ATTEMPT``); one per kfabric deployment sharing a Slurm cluster
    job_name_prefix: str = "kf"
    #: where finished jobs are read from: "auto" (JobCompType=jobcomp/filetxt → the file, slurmdbd → sacct),
    #: "jobcomp", "sacct", or "none" (only what squeue shows within MinJobAge)
    completion: str = "auto"
    #: the jobcomp file when it differs from slurm.conf's JobCompLoc as seen from kfabric's host
    jobcomp_path: str = ""
    #: timeout of one Slurm command, seconds
    command_timeout_s: float = 30.0
    #: longest back-off after slurmctld was unreachable, seconds
    backoff_max_s: float = 30.0
    #: directory holding sbatch/squeue/...; "" = PATH
    bin_dir: str = ""
    #: sbatch commands in flight at once when the controller hands over several launches (``launch_many``)
    submit_parallel: int = 8
    #: seconds between two reads of squeue and the completion records; a ``poll`` sooner answers from memory
    poll_interval_s: float = 1.0

    def __post_init__(self) -> None:
        where = f"slurm cluster {self.name!r}"
        for key in ("name", "site", "slurm_conf", "workdir_root"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise SlurmConfigError(f"{where}: {key} is required (a non-empty string)")
        if "/" in self.name:
            raise SlurmConfigError(f"{where}: name must not contain '/'")
        if not Path(self.workdir_root).is_absolute():
            raise SlurmConfigError(f"{where}: workdir_root must be an absolute path, got {self.workdir_root!r}")
        if self.fractional not in FRACTIONAL_MODES:
            raise SlurmConfigError(f"{where}: fractional must be one of {FRACTIONAL_MODES}, got {self.fractional!r}")
        if self.completion not in COMPLETION_SOURCES:
            raise SlurmConfigError(f"{where}: completion must be one of {COMPLETION_SOURCES}, got {self.completion!r}")
        if not _PREFIX.match(self.job_name_prefix):
            raise SlurmConfigError(
                f"{where}: job_name_prefix must be a letter then up to 15 letters, digits, '-' or '_', "
                f"got {self.job_name_prefix!r}"
            )
        if isinstance(self.submit_parallel, bool) or not isinstance(self.submit_parallel, int):
            raise SlurmConfigError(f"{where}: submit_parallel must be a whole number, got {self.submit_parallel!r}")
        if not 1 <= self.submit_parallel <= 64:
            raise SlurmConfigError(f"{where}: submit_parallel must be 1..64, got {self.submit_parallel}")
        if not float(self.poll_interval_s) >= 0:
            raise SlurmConfigError(f"{where}: poll_interval_s must be >= 0, got {self.poll_interval_s!r}")
        for key in ("command_timeout_s", "backoff_max_s"):
            if not float(getattr(self, key)) > 0:
                raise SlurmConfigError(f"{where}: {key} must be > 0, got {getattr(self, key)!r}")
        bad = {k: v for k, v in self.accounts.items() if not isinstance(k, str) or not isinstance(v, str) or not v}
        if bad:
            raise SlurmConfigError(f"{where}: accounts must map project names to account names, bad: {bad}")

    def account_for(self, project: str) -> str:
        return self.accounts.get(project, self.account) if project else self.account

    @classmethod
    def from_mapping(cls, raw: Any, where: str = "slurm cluster") -> SlurmClusterConfig:
        """Build from a parsed YAML mapping; unknown keys and wrong types are errors naming the key."""
        if not isinstance(raw, Mapping):
            raise SlurmConfigError(f"{where}: expected a mapping of settings, got {type(raw).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise SlurmConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        missing = [k for k in ("name", "site", "slurm_conf", "workdir_root") if k not in raw]
        if missing:
            raise SlurmConfigError(f"{where}: missing required key(s) {missing}")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            kind = known[key].type
            if kind == "bool":
                if not isinstance(value, bool):
                    raise SlurmConfigError(f"{where}.{key}: expected true or false, got {value!r}")
            elif kind == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise SlurmConfigError(f"{where}.{key}: expected a whole number, got {value!r}")
            elif kind == "float":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise SlurmConfigError(f"{where}.{key}: expected a number, got {value!r}")
                value = float(value)
            elif kind.startswith("Mapping"):
                if not isinstance(value, Mapping):
                    raise SlurmConfigError(f"{where}.{key}: expected a mapping project -> account, got {value!r}")
                value = {str(k): v for k, v in value.items()}
            elif not isinstance(value, str):
                raise SlurmConfigError(f"{where}.{key}: expected a string, got {value!r}")
            values[key] = value
        return cls(**values)


def load_slurm_clusters(text: str, label: str = "slurm config") -> list[SlurmClusterConfig]:
    """Cluster configs from YAML: a list of mappings, or a mapping with a ``slurm_clusters`` list."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SlurmConfigError(f"{label}: not valid YAML: {exc}") from exc
    key = "slurm_clusters"
    if isinstance(doc, Mapping):
        if key not in doc:
            raise SlurmConfigError(f"{label}: expected a '{key}' list")
        doc = doc[key]
    else:
        key = ""
    if not isinstance(doc, list):
        raise SlurmConfigError(f"{label}: expected a list of Slurm clusters")
    configs = [SlurmClusterConfig.from_mapping(item, f"{label}: {key}[{i}]") for i, item in enumerate(doc)]
    names = [c.name for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SlurmConfigError(f"{label}: Slurm cluster name(s) {dupes} appear twice; one backend per cluster")
    return configs


def load_slurm_clusters_file(path: str | Path) -> list[SlurmClusterConfig]:
    return load_slurm_clusters(Path(path).read_text(), label=str(path))
