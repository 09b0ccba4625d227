"""How long a job runs on the GPU model it was placed on (docs/gpu-speeds.md).

A workload's true run times (``SimJob.run_s``) hold on one GPU model, its ``reference_model``. On a pool of another
model the twin stretches or shrinks them by ``speed(reference) / speed(model)``:

* per job type, where the workload carries measured throughputs for both models (Gavel's table for the Philly
  traces: K80, P100 and V100 per ``"job_type|gpus"``): ``throughput(reference) / throughput(model)`` at the
  job's GPU count, else at the nearest GPU count measured on both models (nearest in ratio, the smaller on a
  tie); a job spread over several servers (more GPUs than ``gpus_per_server``) reads the ``*_unconsolidated``
  tables when both models have them;
* otherwise by the catalog's per-model speed (``GpuModel.relative_speed``, against H100).

A workload without a reference model runs as long on every model (hand-made test workloads). Pure: no I/O;
the factor of a (job type, GPUs, model) is computed once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from kfabric.model.gpu import REFERENCE_MODEL, GpuModel
from kfabric.model.job import Job

#: Gavel's suffix for throughputs of a job spread over several servers
SPREAD_SUFFIX = "_unconsolidated"

#: ``{MODEL: {job_type: {gpus: steps/s}}}``
TypeTable = dict[str, dict[str, dict[int, float]]]


def type_tables(throughputs: Mapping[str, Mapping[str, object]]) -> tuple[TypeTable, TypeTable]:
    """Gavel's ``{gpu_type: {"job_type|gpus": steps/s}}`` as (consolidated, spread) tables keyed by catalog model
    name (``gpu_type`` upper-cased: ``v100`` -> ``V100``). Entries that are not positive numbers are skipped."""
    packed: TypeTable = {}
    spread: TypeTable = {}
    for gpu_type, entries in throughputs.items():
        is_spread = gpu_type.endswith(SPREAD_SUFFIX)
        model = (gpu_type[: -len(SPREAD_SUFFIX)] if is_spread else gpu_type).upper()
        table = (spread if is_spread else packed).setdefault(model, {})
        for key, value in entries.items():
            job_type, _, gpus = key.rpartition("|")
            # Gavel writes null or 0 for unmeasured pairs (typed object: the compiled build checks element types)
            if not job_type or not gpus.isdigit() or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if value > 0:
                table.setdefault(job_type, {})[int(gpus)] = float(value)
    return packed, spread


class RunTimeScale:
    """``factor(job, model)``: seconds on ``model`` per second of the job's run time on the reference model."""

    def __init__(
        self,
        models: Iterable[GpuModel],
        reference: str | None,
        throughputs: Mapping[str, Mapping[str, float]] | None = None,
        gpus_per_server: int = 8,
    ) -> None:
        speed = {m.name: m.relative_speed for m in models}
        self.reference = reference
        self.gpus_per_server = gpus_per_server
        self._generic: dict[str, float] = {}
        if reference is not None:
            if reference not in speed:
                if reference != REFERENCE_MODEL:
                    raise ValueError(
                        f"workload reference model {reference!r}: not a GPU model of the fleet "
                        f"({', '.join(sorted(speed)) or 'none'}) (fix: run it on a fleet with {reference} pools, "
                        f"or state run times on {REFERENCE_MODEL}, the catalog's speed unit)"
                    )
                speed[reference] = 1.0  # the catalog's unit: speeds are relative to it
            ref = speed[reference]
            self._generic = {name: ref / s for name, s in speed.items()}
        self._packed, self._spread = type_tables(throughputs or {})
        self._types = frozenset(t for table in self._packed.values() for t in table)
        self._typed: dict[tuple[str, int, str], float] = {}

    def factor(self, job: Job, model: str) -> float:
        if self.reference is None or model == self.reference:
            return 1.0
        if job.name in self._types:
            key = (job.name, job.gpus, model)
            got = self._typed.get(key)
            if got is None:
                ratio = self.type_ratio(job.name, job.gpus, model)
                got = self._typed[key] = ratio if ratio is not None else self._generic[model]
            return got
        return self._generic[model]

    def type_ratio(self, job_type: str, gpus: int, model: str) -> float | None:
        """``throughput(reference) / throughput(model)`` for the job type, or None where not measured on both."""
        assert self.reference is not None
        tables = [self._packed]
        if gpus > self.gpus_per_server:
            tables.insert(0, self._spread)
        for table in tables:
            ref = table.get(self.reference, {}).get(job_type, {})
            other = table.get(model, {}).get(job_type, {})
            common = sorted(set(ref) & set(other))
            if common:
                n = min(common, key=lambda s: (abs(math.log(max(gpus, 1) / s)), s))
                return ref[n] / other[n]
        return None


def geometric_mean_ratio(throughputs: Mapping[str, Mapping[str, float]], model: str, reference: str) -> float:
    """Geometric mean over the (job type, GPUs) pairs measured on both of ``throughput(model) /
    throughput(reference)`` in the consolidated tables: how the catalog's P100 and K80 speeds were derived from
    Gavel's V100 table (docs/gpu-speeds.md)."""
    packed, _ = type_tables(throughputs)
    a, b = packed.get(model, {}), packed.get(reference, {})
    logs = [math.log(a[t][n] / b[t][n]) for t in sorted(set(a) & set(b)) for n in sorted(set(a[t]) & set(b[t]))]
    if not logs:
        raise ValueError(f"no job type measured on both {model} and {reference}")
    return math.exp(sum(logs) / len(logs))
