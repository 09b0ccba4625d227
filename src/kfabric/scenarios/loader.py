"""Load a scenario (fleet + tenants + programs + grants) from YAML, all or nothing, with clear errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from kfabric.model import (
    Classification,
    Cluster,
    Fleet,
    GpuModel,
    Grant,
    NodePool,
    OnExhausted,
    Organization,
    OrgKind,
    Owner,
    OwnerKind,
    PriorityClass,
    Program,
    ProgramRules,
    Project,
    Sharing,
    Site,
    ValidationError,
)
from kfabric.model.suggest import did_you_mean
from kfabric.scenarios.errors import ScenarioError
from kfabric.scenarios.yamldoc import Doc, Fields, parse_doc, read_doc

_T = TypeVar("_T")
PACKAGED = ("korea-2030", "lab", "philly")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    fleet: Fleet
    organizations: tuple[Organization, ...] = ()
    projects: tuple[Project, ...] = ()
    programs: tuple[Program, ...] = ()
    grants: tuple[Grant, ...] = ()
    documented_totals: dict[str, Any] = field(default_factory=dict)


def packaged_path(name: str) -> Path:
    return Path(str(resources.files("kfabric.scenarios") / "data" / f"{name}.yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    """Load a packaged scenario by name (``korea-2030``, ``lab``), ``openb[:CSV]`` or a YAML file path."""
    if name_or_path == "openb" or name_or_path.startswith("openb:"):
        from kfabric.scenarios.openb import DEFAULT_NODES_CSV, load_openb

        csv = name_or_path.partition(":")[2] or str(DEFAULT_NODES_CSV)
        return load_openb(Path(csv))
    if name_or_path in PACKAGED:
        return load_file(packaged_path(name_or_path), label=f"{name_or_path}.yaml (packaged)")
    path = Path(name_or_path)
    if not path.exists():
        known = ", ".join([*PACKAGED, "openb[:NODES_CSV]"])
        found = "neither" + did_you_mean(name_or_path, [*PACKAGED, "openb"])
        raise ScenarioError(name_or_path, "", None, f"a scenario name ({known}) or a YAML file", found)
    return load_file(path)


def load_gpu_catalog() -> dict[str, GpuModel]:
    doc = read_doc(packaged_path("gpu-catalog"), label="gpu-catalog.yaml (packaged)")
    top = Fields(doc, "", doc.data)
    models = _build_all(doc, top, "gpu_models", _gpu_model)
    top.done()
    return {m.name: m for m in models}


def load_file(path: Path, label: str | None = None) -> Scenario:
    doc = read_doc(path, label)
    return build_scenario(doc)


def load_text(text: str, label: str) -> Scenario:
    """A scenario from YAML text (e.g. the fleet document the service stored); errors name ``label``."""
    return build_scenario(parse_doc(text, label))


def scenario_text(name_or_path: str) -> str:
    """The YAML text of a packaged scenario or a scenario file (what the service stores as its fleet)."""
    path = packaged_path(name_or_path) if name_or_path in PACKAGED else Path(name_or_path)
    if not path.exists():
        known = ", ".join(PACKAGED)
        found = "neither" + did_you_mean(name_or_path, PACKAGED)
        raise ScenarioError(name_or_path, "", None, f"a scenario name ({known}) or a YAML file", found)
    return path.read_text()


def build_scenario(doc: Doc) -> Scenario:
    top = Fields(doc, "", doc.data)
    name = top.text("name")
    description = top.text("description", "")
    catalog = load_gpu_catalog() if top.choice("catalog", ("default", "none"), "default") == "default" else {}
    for m in _build_all(doc, top, "gpu_models", _gpu_model, required=False):
        catalog[m.name] = m
    owners = _build_all(doc, top, "owners", _owner)
    sites = _build_all(doc, top, "sites", _site)
    clusters = _build_all(doc, top, "clusters", _cluster)
    pools = _build_all(doc, top, "pools", lambda f: _pool(f, catalog))
    _check_fleet_refs(doc, owners, sites, clusters, pools)
    used_models = {p.gpu_model for p in pools}
    fleet = _guard(
        doc,
        "pools",
        lambda: Fleet(
            name=name,
            gpu_models=tuple(m for n, m in sorted(catalog.items()) if n in used_models),
            owners=tuple(owners),
            sites=tuple(sites),
            clusters=tuple(clusters),
            pools=tuple(pools),
        ),
    )
    orgs = _build_all(doc, top, "organizations", _organization, required=False)
    projects = _build_all(doc, top, "projects", _project, required=False)
    programs = _build_all(doc, top, "programs", _program, required=False)
    grants = _build_all(doc, top, "grants", _grant, required=False)
    totals = top.mapping("documented_totals")
    top.done()
    _check_refs(doc, orgs, projects, programs, grants, catalog)
    return Scenario(name, description, fleet, tuple(orgs), tuple(projects), tuple(programs), tuple(grants), totals)


def _guard(doc: Doc, path: str, build: Callable[[], _T]) -> _T:
    """Turn a domain validation error into one that names the file, key path and line."""
    try:
        return build()
    except ValidationError as exc:
        if isinstance(exc, ScenarioError):
            raise
        field_name = exc.where.rsplit(".", 1)[-1] if "." in exc.where else ""
        key = f"{path}.{field_name}" if field_name and f"{path}.{field_name}" in doc.lines else path
        raise ScenarioError(
            doc.file, key, doc.line(key), exc.fix or "a valid value", f"{exc.where}: {exc.problem}"
        ) from None


def _build_all(doc: Doc, top: Fields, key: str, build: Callable[[Fields], _T], required: bool = True) -> list[_T]:
    out: list[_T] = []
    for i, raw in enumerate(top.items(key, required=required)):
        path = f"{key}[{i}]"
        fields = Fields(doc, path, raw)
        out.append(_guard(doc, path, lambda f=fields: build(f)))  # type: ignore[misc]
        fields.done()
    return out


def _gpu_model(f: Fields) -> GpuModel:
    return GpuModel(
        name=f.text("name"),
        memory_gb=f.number("memory_gb"),
        board_power_w=f.number("board_power_w"),
        nvlink_domain_gpus=f.integer("nvlink_domain_gpus", minimum=1),
        su_weight=f.number("su_weight"),
        # optional: training speed against H100 and where it comes from (docs/gpu-speeds.md)
        speed=f.number("speed") if "speed" in f.data else None,
        speed_source=f.text("speed_source", "") if "speed_source" in f.data else "",
    )


def _owner(f: Fields) -> Owner:
    return Owner(f.text("name"), OwnerKind(f.choice("kind", tuple(k.value for k in OwnerKind))))


def _site(f: Fields) -> Site:
    return Site(
        name=f.text("name"),
        region=f.text("region"),
        operator=f.text("operator"),
        certification=f.text("certification"),
        clearance=Classification.parse(f.choice("clearance", tuple(c.label for c in Classification))),
        power_cap_mw=f.number("power_cap_mw"),
        pue=f.number("pue"),
    )


def _cluster(f: Fields) -> Cluster:
    return Cluster(f.text("name"), f.text("site"), f.text("backend", "sim"))


def _pool(f: Fields, catalog: dict[str, GpuModel]) -> NodePool:
    model_name = f.text("gpu_model")
    model = catalog.get(model_name)
    if model is None:
        raise f.doc.error(f.at("gpu_model"), "a GPU model of the catalog: " + ", ".join(sorted(catalog)), model_name)
    return NodePool(
        name=f.text("name"),
        cluster=f.text("cluster"),
        gpu_model=model_name,
        gpus_per_node=f.integer("gpus_per_node", minimum=0),
        nodes=f.integer("nodes", minimum=1),
        nvlink_domain_gpus=f.integer("nvlink_domain_gpus", model.nvlink_domain_gpus, minimum=1),
        nodes_per_rack=f.integer("nodes_per_rack", minimum=1),
        racks_per_unit=f.integer("racks_per_unit", minimum=1),
        node_power_kw=f.number("node_power_kw"),
        owner=f.text("owner"),
        sharing=Sharing(f.choice("sharing", tuple(s.value for s in Sharing))),
        online=f.day("online"),
        cpu_milli_per_node=f.integer("cpu_milli_per_node", 112_000, minimum=1),
        memory_mib_per_node=f.integer("memory_mib_per_node", 2_097_152, minimum=1),
        node_names=tuple(f.text_list("node_names")),
    )


def _organization(f: Fields) -> Organization:
    return Organization(
        name=f.text("name"),
        kind=OrgKind(f.choice("kind", tuple(k.value for k in OrgKind))),
        region=f.text("region", "-"),
        flags=frozenset(f.text_list("flags")),
    )


def _project(f: Fields) -> Project:
    return Project(f.text("name"), f.text("organization"), tuple(f.text_list("members")))


def _program(f: Fields) -> Program:
    rules_fields = Fields(f.doc, f.at("rules"), f.mapping("rules"))
    rules = _rules(rules_fields)
    rules_fields.done()
    return Program(
        name=f.text("name"),
        description=f.text("description", "-"),
        owner=f.text("owner", "-"),
        rules=rules,
        weight=f.number("weight", 1.0),
    )


def _number_map(f: Fields, key: str) -> tuple[tuple[str, float], ...]:
    raw = f.mapping(key)
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise f.doc.error(f"{f.at(key)}.{k}", "a number", v)
    return tuple(sorted((str(k), float(v)) for k, v in raw.items()))


def _rules(f: Fields) -> ProgramRules:
    kinds = f.text_list("eligible_kinds") or [k.value for k in OrgKind]
    for i, k in enumerate(kinds):
        if k not in {o.value for o in OrgKind}:
            raise f.doc.error(f"{f.at('eligible_kinds')}[{i}]", "one of " + ", ".join(o.value for o in OrgKind), k)
    max_job_h = f.number("max_job_duration_hours", 0.0, minimum=0)
    return ProgramRules(
        eligible_kinds=frozenset(OrgKind(k) for k in kinds),
        per_project_cap=tuple((k, int(v)) for k, v in _number_map(f, "per_project_cap")),
        max_duration_days=f.integer("max_duration_days", 365, minimum=1),
        max_job_duration_s=max_job_h * 3600 if max_job_h else None,
        price_factor=_number_map(f, "price_factor"),
        review_weights=_number_map(f, "review_weights") or (("impact", 1.0),),
        concentration_cap_pct=f.number("concentration_cap_pct", 100.0),
        preferred_regions=frozenset(f.text_list("preferred_regions")),
        utilization_floor_pct=f.number("utilization_floor_pct", 0.0),
        on_exhausted=OnExhausted(f.choice("on_exhausted", tuple(o.value for o in OnExhausted), "stop")),
        min_reviews=f.integer("min_reviews", 1, minimum=0),
        max_priority=PriorityClass.parse(
            f.choice("max_priority", tuple(c.name.lower() for c in PriorityClass), "normal")
        ),
        allow_cpu_only=_flag(f, "allow_cpu_only", False),
    )


def _flag(f: Fields, key: str, default: bool) -> bool:
    """A true/false rule (YAML ``true``/``false``), ``default`` when absent."""
    f.used.add(key)
    value = f.data.get(key, default)
    if not isinstance(value, bool):
        raise f.doc.error(f.at(key), "true or false", value)
    return value


def _grant(f: Fields) -> Grant:
    model = f.data.get("reserved_model")
    return Grant(
        id=f.text("id"),
        program=f.text("program"),
        project=f.text("project"),
        start=f.day("start"),
        end=f.day("end"),
        reserved_model=f.text("reserved_model") if model is not None else None,
        reserved_gpus=f.integer("reserved_gpus", 0, minimum=0),
        credit_su_hours=f.number("credit_su_hours", 0.0, minimum=0),
        weight=f.number("weight", 1.0),
    )


def _unique(doc: Doc, key: str, names: list[str], field_name: str = "name") -> set[str]:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise doc.error(f"{key}[{i}].{field_name}", "a name not used before in " + key, n)
        seen.add(n)
    return seen


def _known(doc: Doc, path: str, name: str, names: set[str], key: str) -> None:
    if name not in names:
        raise doc.error(path, f"a name defined under {key} ({', '.join(sorted(names))})", name)


def _check_fleet_refs(
    doc: Doc, owners: list[Owner], sites: list[Site], clusters: list[Cluster], pools: list[NodePool]
) -> None:
    """Names unique and references resolved, each error at the exact key (the Fleet would only say 'pools')."""
    owner_names = _unique(doc, "owners", [o.name for o in owners])
    site_names = _unique(doc, "sites", [s.name for s in sites])
    cluster_names = _unique(doc, "clusters", [c.name for c in clusters])
    _unique(doc, "pools", [p.name for p in pools])
    for i, c in enumerate(clusters):
        _known(doc, f"clusters[{i}].site", c.site, site_names, "sites")
    for i, p in enumerate(pools):
        _known(doc, f"pools[{i}].cluster", p.cluster, cluster_names, "clusters")
        _known(doc, f"pools[{i}].owner", p.owner, owner_names, "owners")


def _check_refs(
    doc: Doc,
    orgs: list[Organization],
    projects: list[Project],
    programs: list[Program],
    grants: list[Grant],
    catalog: dict[str, GpuModel],
) -> None:
    org_names = _unique(doc, "organizations", [o.name for o in orgs])
    project_names = _unique(doc, "projects", [p.name for p in projects])
    program_names = _unique(doc, "programs", [p.name for p in programs])
    _unique(doc, "grants", [g.id for g in grants], field_name="id")
    for i, p in enumerate(projects):
        if p.organization not in org_names:
            raise doc.error(
                f"projects[{i}].organization", "an organization defined under organizations", p.organization
            )
    for i, g in enumerate(grants):
        if g.program not in program_names:
            raise doc.error(f"grants[{i}].program", "a program defined under programs", g.program)
        if g.project not in project_names:
            raise doc.error(f"grants[{i}].project", "a project defined under projects", g.project)
        if g.reserved_model is not None and g.reserved_model not in catalog:
            raise doc.error(f"grants[{i}].reserved_model", "a GPU model of the catalog", g.reserved_model)


def online_on(scenario: Scenario, day: date | None) -> list[NodePool]:
    return list(scenario.fleet.pools_online(day))
