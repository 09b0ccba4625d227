"""The Slurm backend: kfabric decides placement, real Slurm clusters execute it (docs/slurm.md).

* :mod:`~kfabric.backends.slurm.config` — one cluster's settings (``SlurmClusterConfig``, YAML loading)
* :mod:`~kfabric.backends.slurm.commands` — the Slurm CLI with timeouts, back-off and error mapping
* :mod:`~kfabric.backends.slurm.discover` — nodes, GRES, partitions → kfabric pools; node up/down states
* :mod:`~kfabric.backends.slurm.submit` — placement → ``sbatch`` flags and batch script
* :mod:`~kfabric.backends.slurm.records` — Slurm job records (squeue, jobcomp, sacct) → kfabric run states
* :mod:`~kfabric.backends.slurm.nodes` — node states (``sinfo --json``) → kfabric node facts (node health)
* :mod:`~kfabric.backends.slurm.backend` — ``SlurmBackend``: launch, terminate, poll, nodes
"""

from kfabric.backends.slurm.backend import SlurmBackend
from kfabric.backends.slurm.commands import SlurmCli, SlurmError
from kfabric.backends.slurm.config import (
    SlurmClusterConfig,
    SlurmConfigError,
    load_slurm_clusters,
    load_slurm_clusters_file,
)
from kfabric.backends.slurm.discover import Discovery, discover, node_states

__all__ = [
    "Discovery",
    "SlurmBackend",
    "SlurmCli",
    "SlurmClusterConfig",
    "SlurmConfigError",
    "SlurmError",
    "discover",
    "load_slurm_clusters",
    "load_slurm_clusters_file",
    "node_states",
]
