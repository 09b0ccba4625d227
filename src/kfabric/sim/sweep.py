"""Sweeps: scenario variants x policies x seeds, each run an ordinary simulation (``sim.run.simulate``).

This module holds what does not depend on where the runs execute: the spec (``docs/sweeps.md``), read with
line numbers so that every error names ``file:line``, the key path, what is wrong and how to fix it; the
variants applied to the base scenario (site delays, GPU mix, site power caps, program rules); one run into
files; and the collection of the runs' summaries into ``sweep.json`` and ``sweep.csv``. The executors (local
processes, a Ray cluster) live in the command line (``kfabric.cli.sweep_cmd``), so this stays importable
without Ray.

Every run is deterministic given its scenario, workload, policy and seed, so its files are the same whichever
executor ran it; only the wall-clock figures (``WALL_CLOCK_KEYS``) differ, and they are kept apart.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tempfile
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from kfabric.model import GpuModel, NodePool, OnExhausted, Program, Site
from kfabric.model.errors import ValidationError
from kfabric.model.fleet import Fleet
from kfabric.model.suggest import did_you_mean
from kfabric.scenarios.errors import ScenarioError
from kfabric.scenarios.loader import PACKAGED, Scenario, load_gpu_catalog
from kfabric.scenarios.yamldoc import Doc, parse_doc, show_value
from kfabric.sched.policy import Policy
from kfabric.sched.presets import PRESETS
from kfabric.sim.engine import SimOptions
from kfabric.sim.run import simulate
from kfabric.sim.workload import Workload

#: a spec file larger than this is refused (a sweep spec is a few dozen lines)
MAX_SPEC_BYTES = 256 * 1024
#: runs (variants x policies x seeds) a sweep may have unless ``--max-runs`` allows more
DEFAULT_MAX_RUNS = 1000
MAX_VARIANTS = 1000
MAX_POLICIES = 50
MAX_SEEDS = 1000
#: summary keys measured on the wall clock: they differ between executors and machines, never between decisions
WALL_CLOCK_KEYS = ("cycle_s", "jobs_per_min", "wall_s")
#: the files a run directory holds (``sim.run``)
RUN_FILES = ("jobs.csv", "timeline.csv", "summary.json")
#: variant and policy names form run directory names
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NAME_RULE = "letters, digits, '-' and '_', starting with a letter or digit, at most 64 characters"

TOP_KEYS = ("name", "description", "base", "variants", "policies", "seeds")
BASE_KEYS = ("fleet", "workload", "start", "days", "interval_s", "failures")
VARIANT_KEYS = ("name", "description", "site_delays", "gpu_mix", "power_cap_mw", "program_rules")
GPU_MIX_KEYS = ("scale", "model", "node_power_kw", "nvlink_domain_gpus")
#: the program rules the twin honours (``sim.setup``: grants carry the first three, tenants the weight)
PROGRAM_RULE_KEYS = ("max_job_duration_hours", "utilization_floor_pct", "on_exhausted", "weight")


class SweepSpecError(ValidationError):
    """A sweep spec is wrong: ``file:line: key.path: what (fix: how)``."""

    def __init__(self, file: str, line: int | None, path: str, problem: str, fix: str) -> None:
        self.file, self.line, self.path = file, line, path
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {path}" if path else where, problem, fix)


@dataclass(frozen=True)
class GpuMixChange:
    """The pools of GPU model ``model``: node counts times ``scale`` (0 removes them), then optionally turned
    into another model (``replace_with``), with its node power and NVLink domain."""

    model: str
    scale: float = 1.0
    replace_with: str = ""
    node_power_kw: float | None = None
    nvlink_domain_gpus: int | None = None


@dataclass(frozen=True)
class ProgramChange:
    program: str
    max_job_duration_hours: float | None = None
    utilization_floor_pct: float | None = None
    on_exhausted: str = ""
    weight: float | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    description: str = ""
    site_delays: tuple[tuple[str, int], ...] = ()
    gpu_mix: tuple[GpuMixChange, ...] = ()
    power_cap_mw: tuple[tuple[str, float], ...] = ()
    program_rules: tuple[ProgramChange, ...] = ()
    #: the variant's overrides as written (recorded in sweep.json)
    overrides_json: str = "{}"

    @property
    def overrides(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.overrides_json)
        return value


@dataclass(frozen=True)
class Base:
    fleet: str
    workload: str
    start: date | None = None
    days: float | None = None
    interval_s: float = 60.0
    failures: bool = True


@dataclass(frozen=True)
class SweepSpec:
    name: str
    description: str
    file: str
    base: Base
    variants: tuple[Variant, ...]
    #: each a preset name or the absolute path of a policy YAML file
    policies: tuple[str, ...]
    seeds: tuple[int, ...]
    #: the line of each key path of the spec file (errors found when a variant meets the scenario name it)
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def fail(self, path: str, problem: str, fix: str) -> SweepSpecError:
        return SweepSpecError(self.file, Doc(self.file, None, self.lines).line(path), path, problem, fix)

    @property
    def runs(self) -> int:
        return len(self.variants) * len(self.policies) * len(self.seeds)


def run_name(variant: str, policy: str, seed: int) -> str:
    """The run directory's name: ``VARIANT.POLICY.seedN`` (both names are checked against ``NAME_RE``)."""
    return f"{variant}.{policy}.seed{seed}"


# ---- reading the spec ----------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, doc: Doc) -> None:
        self.doc = doc

    def fail(self, path: str, problem: str, fix: str) -> SweepSpecError:
        return SweepSpecError(self.doc.file, self.doc.line(path), path, problem, fix)

    def mapping(self, path: str, value: object, known: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(
                path, f"expected a mapping, found {show_value(value)}", f"write {path or 'the file'} as key: value"
            )
        for key in value:
            if key not in known:
                at = f"{path}.{key}" if path else str(key)
                raise self.fail(
                    at, f"unknown key {key!r}{did_you_mean(str(key), known)}", "use one of " + ", ".join(known)
                )
        return value

    def text(self, path: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected non-empty text, found {show_value(value)}", "write a name or path")
        return value.strip()

    def number(self, path: str, value: object, minimum: float | None = None, above: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(path, f"expected a number, found {show_value(value)}", "write a number such as 0.5")
        if minimum is not None and value < minimum:
            raise self.fail(path, f"must be >= {minimum:g}, found {value:g}", f"use a value of at least {minimum:g}")
        if above is not None and value <= above:
            raise self.fail(path, f"must be > {above:g}, found {value:g}", f"use a value above {above:g}")
        return float(value)

    def integer(self, path: str, value: object, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(
                path, f"expected a whole number, found {show_value(value)}", "write a whole number such as 30"
            )
        if minimum is not None and value < minimum:
            raise self.fail(path, f"must be >= {minimum}, found {value}", f"use a whole number of at least {minimum}")
        return value

    def name(self, path: str, value: object) -> str:
        text = self.text(path, value)
        if not NAME_RE.match(text):
            raise self.fail(path, f"{text!r} cannot name a run directory", f"use {NAME_RULE}")
        return text

    def items(self, path: str, value: object, most: int) -> list[Any]:
        if not isinstance(value, list) or not value:
            raise self.fail(path, f"expected a non-empty list, found {show_value(value)}", f"write {path}: [...]")
        if len(value) > most:
            raise self.fail(path, f"lists {len(value)} entries, more than the limit of {most}", "split the sweep")
        return value


def read_spec(path: Path) -> SweepSpec:
    """Read and check a sweep spec file (``docs/sweeps.md``). Relative fleet and policy file paths are taken
    from the spec file's folder."""
    label = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SweepSpecError(
            label, None, "", "no such file", "give the path of a sweep spec (docs/sweeps.md)"
        ) from None
    except OSError as exc:
        raise SweepSpecError(label, None, "", f"cannot read it ({exc.strerror})", "check the path") from None
    if size > MAX_SPEC_BYTES:
        raise SweepSpecError(
            label, None, "", f"is {size:,} bytes, more than the limit of {MAX_SPEC_BYTES:,}", "split the sweep"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SweepSpecError(label, None, "", f"cannot read it as UTF-8 text ({exc})", "save it as UTF-8") from None
    return parse_spec(text, label, path.resolve().parent)


def parse_spec(text: str, file: str, folder: Path) -> SweepSpec:
    try:
        doc = parse_doc(text, file)
    except ScenarioError as exc:
        raise SweepSpecError(
            file, exc.line, exc.key_path, f"expected {exc.expected}, found {exc.found}", "fix the YAML"
        ) from None
    r = _Reader(doc)
    top = r.mapping("", doc.data, TOP_KEYS)
    if "base" not in top:
        raise r.fail("base", "missing", "add base: {fleet: lab, workload: tiresias, days: 1}")
    if "policies" not in top:
        raise r.fail("policies", "missing", "add policies: [multifactor, kfabric]")
    name = r.name("name", top["name"]) if "name" in top else _default_name(file)
    description = r.text("description", top["description"]) if "description" in top else ""
    base = _base(r, top["base"], folder)
    raw_variants = r.items("variants", top["variants"], MAX_VARIANTS) if "variants" in top else [{"name": "base"}]
    variants = [_variant(r, f"variants[{i}]", v) for i, v in enumerate(raw_variants)]
    _unique(r, "variants", [v.name for v in variants], ".name")
    policies = [
        _policy(r, f"policies[{i}]", p, folder)
        for i, p in enumerate(r.items("policies", top["policies"], MAX_POLICIES))
    ]
    _unique(r, "policies", policies, "")
    raw_seeds = r.items("seeds", top["seeds"], MAX_SEEDS) if "seeds" in top else [0]
    seeds = [r.integer(f"seeds[{i}]", s, minimum=0) for i, s in enumerate(raw_seeds)]
    for i, s in enumerate(seeds):
        if s >= 2**32:
            raise r.fail(f"seeds[{i}]", f"{s} is too large", "use seeds below 4294967296")
    _unique(r, "seeds", [str(s) for s in seeds], "")
    return SweepSpec(name, description, file, base, tuple(variants), tuple(policies), tuple(seeds), doc.lines)


def _default_name(file: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]", "-", Path(file).stem).strip("-_")
    return stem[:64] or "sweep"


def _unique(r: _Reader, key: str, names: list[str], suffix: str) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise r.fail(f"{key}[{i}]{suffix}", f"{n!r} is listed twice", f"give each entry of {key} once")
        seen.add(n)


def _base(r: _Reader, value: object, folder: Path) -> Base:
    raw = r.mapping("base", value, BASE_KEYS)
    for key in ("fleet", "workload"):
        if key not in raw:
            example = {"fleet": "lab", "workload": "tiresias"}[key]
            raise r.fail(f"base.{key}", "missing", f"add {key}: {example} under base")
    fleet = r.text("base.fleet", raw["fleet"])
    if fleet not in PACKAGED and fleet != "openb" and not fleet.startswith("openb:"):
        path = Path(fleet) if Path(fleet).is_absolute() else folder / fleet
        if not path.exists():
            raise r.fail(
                "base.fleet",
                f"{fleet!r} is neither a packaged scenario nor a file next to the spec{did_you_mean(fleet, PACKAGED)}",
                f"use one of {', '.join(PACKAGED)}, openb[:NODES_CSV], or a scenario YAML path",
            )
        fleet = str(path.resolve())
    workload = r.text("base.workload", raw["workload"])
    kinds = ("philly", "openb", "tiresias", "national", "history")
    kind = workload.partition(":")[0]
    if kind not in kinds:
        raise r.fail(
            "base.workload",
            f"unknown workload source {kind!r}{did_you_mean(kind, kinds)}",
            "use national[:scale=X], philly[:DIR], openb[:PODS_CSV], tiresias[:CSV] or history:DB_URL",
        )
    start = raw.get("start")
    if start is not None and (not isinstance(start, date) or hasattr(start, "hour")):
        raise r.fail(
            "base.start", f"expected a date YYYY-MM-DD, found {show_value(start)}", "write e.g. start: 2026-03-01"
        )
    days = r.number("base.days", raw["days"], above=0) if "days" in raw else None
    interval = r.number("base.interval_s", raw["interval_s"], above=0) if "interval_s" in raw else 60.0
    failures = raw.get("failures", True)
    if not isinstance(failures, bool):
        raise r.fail("base.failures", f"expected true or false, found {show_value(failures)}", "write failures: false")
    return Base(fleet, workload, start, days, interval, failures)


def _policy(r: _Reader, path: str, value: object, folder: Path) -> str:
    name = r.text(path, value)
    if name in PRESETS:
        return name
    file = Path(name) if Path(name).is_absolute() else folder / name
    if file.is_file():
        return str(file.resolve())
    raise r.fail(
        path,
        f"{name!r} is neither a policy preset nor a policy file next to the spec{did_you_mean(name, PRESETS)}",
        "use one of " + ", ".join(PRESETS) + ", or the path of a policy YAML file",
    )


def _variant(r: _Reader, path: str, value: object) -> Variant:
    raw = r.mapping(path, value, VARIANT_KEYS)
    if "name" not in raw:
        raise r.fail(f"{path}.name", "missing", "give each variant a name, e.g. name: acme-late")
    name = r.name(f"{path}.name", raw["name"])
    description = r.text(f"{path}.description", raw["description"]) if "description" in raw else ""
    delays: list[tuple[str, int]] = []
    for site, days in _named(r, f"{path}.site_delays", raw.get("site_delays")):
        delays.append((site, r.integer(f"{path}.site_delays.{site}", days)))
    caps: list[tuple[str, float]] = []
    for site, mw in _named(r, f"{path}.power_cap_mw", raw.get("power_cap_mw")):
        caps.append((site, r.number(f"{path}.power_cap_mw.{site}", mw, above=0)))
    mix = [_gpu_mix(r, f"{path}.gpu_mix.{m}", m, v) for m, v in _named(r, f"{path}.gpu_mix", raw.get("gpu_mix"))]
    rules = [
        _program_change(r, f"{path}.program_rules.{p}", p, v)
        for p, v in _named(r, f"{path}.program_rules", raw.get("program_rules"))
    ]
    overrides = {k: v for k, v in raw.items() if k not in ("name", "description")}
    return Variant(
        name, description, tuple(delays), tuple(mix), tuple(caps), tuple(rules), json.dumps(overrides, sort_keys=True)
    )


def _named(r: _Reader, path: str, value: object) -> list[tuple[str, object]]:
    if value is None:
        return []
    if not isinstance(value, dict) or not value:
        raise r.fail(path, f"expected a mapping of names to values, found {show_value(value)}", "write {name: value}")
    return [(str(k), v) for k, v in value.items()]


def _gpu_mix(r: _Reader, path: str, model: str, value: object) -> GpuMixChange:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return GpuMixChange(model, scale=r.number(path, value, minimum=0))
    raw = r.mapping(path, value, GPU_MIX_KEYS)
    if not raw:
        raise r.fail(path, "says nothing", "give scale: F and/or model: OTHER_MODEL")
    scale = r.number(f"{path}.scale", raw["scale"], minimum=0) if "scale" in raw else 1.0
    other = r.text(f"{path}.model", raw["model"]) if "model" in raw else ""
    power = r.number(f"{path}.node_power_kw", raw["node_power_kw"], above=0) if "node_power_kw" in raw else None
    domain = (
        r.integer(f"{path}.nvlink_domain_gpus", raw["nvlink_domain_gpus"], 1) if "nvlink_domain_gpus" in raw else None
    )
    if not other and (power is not None or domain is not None):
        raise r.fail(path, "node_power_kw and nvlink_domain_gpus apply to a replacement", f"add model: under {path}")
    return GpuMixChange(model, scale, other, power, domain)


def _program_change(r: _Reader, path: str, program: str, value: object) -> ProgramChange:
    raw = r.mapping(path, value, PROGRAM_RULE_KEYS)
    if not raw:
        raise r.fail(path, "changes no rule", "give one of " + ", ".join(PROGRAM_RULE_KEYS))
    hours = raw.get("max_job_duration_hours")
    floor = raw.get("utilization_floor_pct")
    exhausted = raw.get("on_exhausted")
    choices = tuple(o.value for o in OnExhausted)
    if exhausted is not None and exhausted not in choices:
        raise r.fail(
            f"{path}.on_exhausted",
            f"unknown value {show_value(exhausted)}{did_you_mean(str(exhausted), choices)}",
            "use one of " + ", ".join(choices),
        )
    return ProgramChange(
        program,
        max_job_duration_hours=r.number(f"{path}.max_job_duration_hours", hours, minimum=0)
        if hours is not None
        else None,
        utilization_floor_pct=r.number(f"{path}.utilization_floor_pct", floor, minimum=0)
        if floor is not None
        else None,
        on_exhausted=str(exhausted) if exhausted is not None else "",
        weight=r.number(f"{path}.weight", raw["weight"], above=0) if "weight" in raw else None,
    )


# ---- applying a variant --------------------------------------------------------------------------------------
def apply_variant(scenario: Scenario, variant: Variant, spec: SweepSpec, index: int) -> Scenario:
    """The base scenario with the variant's overrides; a name the scenario lacks is an error at its key."""
    doc_lines = spec
    path = f"variants[{index}]"
    fleet = scenario.fleet
    site_names = [s.name for s in fleet.sites]
    site_of_cluster = {c.name: c.site for c in fleet.clusters}

    def known_site(key: str, site: str) -> None:
        if site not in site_names:
            raise doc_lines.fail(
                f"{path}.{key}.{site}",
                f"the fleet {fleet.name!r} has no site {site!r}{did_you_mean(site, site_names)}",
                "use one of its sites: " + ", ".join(sorted(site_names)),
            )

    pools = list(fleet.pools)
    for site, days in variant.site_delays:
        known_site("site_delays", site)
        pools = [
            replace(p, online=p.online + timedelta(days=days)) if site_of_cluster[p.cluster] == site else p
            for p in pools
        ]
    sites: list[Site] = list(fleet.sites)
    for site, mw in variant.power_cap_mw:
        known_site("power_cap_mw", site)
        sites = [replace(s, power_cap_mw=mw) if s.name == site else s for s in sites]
    models = {m.name: m for m in fleet.gpu_models}
    for change in variant.gpu_mix:
        pools = _change_mix(doc_lines, f"{path}.gpu_mix.{change.model}", pools, models, change)
    if not pools:
        raise doc_lines.fail(f"{path}.gpu_mix", "removes every pool of the fleet", "keep at least one pool")
    used = {p.gpu_model for p in pools}
    try:
        new_fleet = Fleet(
            name=fleet.name,
            gpu_models=tuple(m for n, m in sorted(models.items()) if n in used),
            owners=fleet.owners,
            sites=tuple(sites),
            clusters=fleet.clusters,
            pools=tuple(pools),
        )
    except ValidationError as exc:
        raise doc_lines.fail(
            path, f"makes an invalid fleet: {exc.where}: {exc.problem}", exc.fix or "change it"
        ) from None
    programs = _change_programs(doc_lines, path, list(scenario.programs), variant.program_rules)
    return replace(scenario, name=f"{scenario.name}/{variant.name}", fleet=new_fleet, programs=tuple(programs))


def _change_mix(
    lines: SweepSpec, path: str, pools: list[NodePool], models: dict[str, GpuModel], change: GpuMixChange
) -> list[NodePool]:
    present = sorted({p.gpu_model for p in pools})
    if change.model not in present:
        raise lines.fail(
            path,
            f"the fleet has no pool of GPU model {change.model!r}{did_you_mean(change.model, present)}",
            "use one of its models: " + ", ".join(present),
        )
    target: GpuModel | None = None
    if change.replace_with:
        catalog = {**load_gpu_catalog(), **models}
        target = catalog.get(change.replace_with)
        if target is None:
            raise lines.fail(
                f"{path}.model",
                f"unknown GPU model {change.replace_with!r}{did_you_mean(change.replace_with, catalog)}",
                "use a model of the GPU catalog: " + ", ".join(sorted(catalog)),
            )
        models[target.name] = target
    old = models[change.model]
    out: list[NodePool] = []
    for p in pools:
        if p.gpu_model != change.model:
            out.append(p)
            continue
        nodes = p.nodes if change.scale == 1.0 else math.floor(p.nodes * change.scale + 0.5)
        if change.scale > 0:
            nodes = max(nodes, 1)
        if nodes == 0:
            continue  # scale 0: the pool is gone
        new = replace(p, nodes=nodes, node_names=()) if nodes != p.nodes else p
        if target is not None:
            # node power follows the boards' power difference unless given (catalog board_power_w values)
            power = change.node_power_kw
            if power is None:
                power = p.node_power_kw + p.gpus_per_node * (target.board_power_w - old.board_power_w) / 1000.0
            if power <= 0:
                raise lines.fail(
                    f"{path}.node_power_kw",
                    f"pool {p.name!r} would draw {power:g} kW per node",
                    "give node_power_kw for the replacement",
                )
            domain = change.nvlink_domain_gpus or target.nvlink_domain_gpus
            try:
                new = replace(new, gpu_model=target.name, node_power_kw=power, nvlink_domain_gpus=domain)
            except ValidationError as exc:
                raise lines.fail(
                    f"{path}.model",
                    f"pool {p.name!r} as {target.name}: {exc.problem}",
                    f"give nvlink_domain_gpus that fits {p.gpus_per_node}-GPU nodes (e.g. {p.gpus_per_node})",
                ) from None
        out.append(new)
    return out


def _change_programs(
    lines: SweepSpec, path: str, programs: list[Program], changes: tuple[ProgramChange, ...]
) -> list[Program]:
    names = [p.name for p in programs]
    for change in changes:
        if change.program not in names:
            raise lines.fail(
                f"{path}.program_rules.{change.program}",
                f"the scenario has no program {change.program!r}{did_you_mean(change.program, names)}",
                "use one of its programs: " + (", ".join(sorted(names)) or "none (it defines no programs)"),
            )
        out: list[Program] = []
        for p in programs:
            if p.name == change.program:
                rules = p.rules
                if change.max_job_duration_hours is not None:
                    hours = change.max_job_duration_hours
                    rules = replace(rules, max_job_duration_s=hours * 3600.0 if hours > 0 else None)
                if change.utilization_floor_pct is not None:
                    rules = replace(rules, utilization_floor_pct=change.utilization_floor_pct)
                if change.on_exhausted:
                    rules = replace(rules, on_exhausted=OnExhausted(change.on_exhausted))
                p = replace(p, rules=rules, weight=change.weight if change.weight is not None else p.weight)
            out.append(p)
        programs = out
    return programs


# ---- one run ---------------------------------------------------------------------------------------------------
def sim_options(start: date, days: float | None, interval_s: float, failures: bool, seed: int) -> SimOptions:
    """The run's options: the engine's defaults (failure rate, repair time, sampling) but for these."""
    rate = SimOptions(start=start).failures_per_gpu_s if failures else 0.0
    return SimOptions(start=start, days=days, interval_s=interval_s, seed=seed, failures_per_gpu_s=rate)


def run_files(
    scenario: Scenario, workload: Workload, policy: Policy, options: SimOptions, info: dict[str, Any]
) -> dict[str, bytes]:
    """Simulate one run and return its run directory's files (``RUN_FILES``); ``info`` is added to the
    summary's ``run`` record (variant, sweep). The files travel back to whoever collects them, so a run may
    execute on another machine."""
    with tempfile.TemporaryDirectory(prefix="kfabric-sweep-") as tmp:
        result = simulate(scenario, workload, policy, options, out_dir=Path(tmp))
        summary = dict(result.summary)
        summary["run"] = {**summary.get("run", {}), **info}
        files = {name: (Path(tmp) / name).read_bytes() for name in RUN_FILES if name != "summary.json"}
    files["summary.json"] = json.dumps(summary, indent=2, sort_keys=True).encode()
    return files


# ---- collecting ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    run: str
    variant: str
    policy: str
    seed: int
    summary: dict[str, Any]

    def metrics(self) -> dict[str, float]:
        """The summary's top-level numbers that decisions determine (wall-clock figures left out)."""
        out: dict[str, float] = {}
        for key, value in sorted(self.summary.items()):
            if key in WALL_CLOCK_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            out[key] = float(value)
        return out

    def timing(self) -> dict[str, float]:
        return {k: float(self.summary[k]) for k in WALL_CLOCK_KEYS if isinstance(self.summary.get(k), int | float)}


def write_run_dir(out: Path, run: str, files: dict[str, bytes]) -> Path:
    """Write a run directory from its files, replacing an older one whole (never half-written)."""
    final = out / run
    tmp = out / f".{run}.tmp"
    if tmp.exists():
        _remove_tree(tmp)
    tmp.mkdir(parents=True)
    for name in RUN_FILES:
        (tmp / name).write_bytes(files[name])
    old = out / f".{run}.old"
    if final.exists():
        if old.exists():
            _remove_tree(old)
        final.replace(old)
    tmp.replace(final)
    if old.exists():
        _remove_tree(old)
    return final


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir():
            _remove_tree(child)
        else:
            child.unlink()
    path.rmdir()


def table_rows(spec: SweepSpec, records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per variant x policy: each metric's mean, min and max over the seeds."""
    rows: list[dict[str, Any]] = []
    by_key: dict[tuple[str, str], list[RunRecord]] = {}
    for rec in records:
        by_key.setdefault((rec.variant, rec.policy), []).append(rec)
    for variant in spec.variants:
        for policy in _policy_labels(records, spec):
            recs = sorted(by_key.get((variant.name, policy), []), key=lambda x: x.seed)
            if not recs:
                continue
            metrics = [r.metrics() for r in recs]
            keys = sorted(set().union(*metrics))
            values = {k: [m[k] for m in metrics if k in m] for k in keys}
            rows.append(
                {
                    "variant": variant.name,
                    "policy": policy,
                    "seeds": [r.seed for r in recs],
                    "mean": {k: sum(v) / len(v) for k, v in values.items()},
                    "min": {k: min(v) for k, v in values.items()},
                    "max": {k: max(v) for k, v in values.items()},
                }
            )
    return rows


def _policy_labels(records: list[RunRecord], spec: SweepSpec) -> list[str]:
    seen: list[str] = []
    for rec in records:
        if rec.policy not in seen:
            seen.append(rec.policy)
    return seen


def sweep_document(spec: SweepSpec, records: list[RunRecord], executor: dict[str, Any]) -> dict[str, Any]:
    return {
        "sweep": spec.name,
        "description": spec.description,
        "spec": spec.file,
        "base": {
            "fleet": spec.base.fleet,
            "workload": spec.base.workload,
            "start": spec.base.start.isoformat() if spec.base.start else None,
            "days": spec.base.days,
            "interval_s": spec.base.interval_s,
            "failures": spec.base.failures,
        },
        "variants": [{"name": v.name, "description": v.description, "overrides": v.overrides} for v in spec.variants],
        "policies": _policy_labels(records, spec),
        "seeds": list(spec.seeds),
        "runs": [
            {
                "run": r.run,
                "variant": r.variant,
                "policy": r.policy,
                "seed": r.seed,
                "dir": r.run,
                "metrics": r.metrics(),
            }
            for r in records
        ],
        "table": table_rows(spec, records),
        # how the runs executed and how long they took: differs between executors, unlike everything above
        "executor": {**executor, "timing": {r.run: r.timing() for r in records}},
    }


def sweep_csv(records: list[RunRecord]) -> str:
    keys = sorted(set().union(*(r.metrics() for r in records))) if records else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "variant", "policy", "seed", *keys])
    for r in records:
        m = r.metrics()
        w.writerow([r.run, r.variant, r.policy, r.seed, *[repr(m[k]) if k in m else "" for k in keys]])
    return buf.getvalue()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
