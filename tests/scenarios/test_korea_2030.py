"""The packaged scenarios agree with the totals written in them, and korea-2030 obeys its own fleet rules."""

from __future__ import annotations

from collections import Counter
from datetime import date
from functools import cache

import pytest

from kfabric.model import Classification, OwnerKind, Sharing, fleet_nodes
from kfabric.scenarios.loader import Scenario, load_scenario
from kfabric.scenarios.summary import summarize

PACKAGED = ["korea-2030", "lab"]


@cache
def scenario(name: str) -> Scenario:
    return load_scenario(name)


@pytest.mark.parametrize("name", PACKAGED, ids=PACKAGED)
def test_gpus_and_nodes_equal_documented_totals(name: str) -> None:
    s = scenario(name)
    totals = s.documented_totals
    assert s.fleet.gpus == totals["gpus"]
    assert sum(p.nodes for p in s.fleet.pools) == totals["nodes"]


@pytest.mark.parametrize("name", PACKAGED, ids=PACKAGED)
def test_gpus_by_owner_equal_documented_totals(name: str) -> None:
    s = scenario(name)
    by_owner: Counter[str] = Counter()
    for p in s.fleet.pools:
        by_owner[p.owner] += p.gpus
    assert dict(by_owner) == s.documented_totals["by_owner"]


def _by_date_cases() -> list[tuple[str, str, int]]:
    return [(name, day, gpus) for name in PACKAGED for day, gpus in scenario(name).documented_totals["by_date"].items()]


@pytest.mark.parametrize(("name", "day", "gpus"), _by_date_cases(), ids=lambda v: str(v))
def test_gpus_online_by_date_equal_documented_totals(name: str, day: str, gpus: int) -> None:
    s = scenario(name)
    online = sum(p.gpus for p in s.fleet.pools_online(date.fromisoformat(day)))
    assert online == gpus
    assert summarize(s, date.fromisoformat(day)).gpus_online == gpus


def test_korea_2030_documents_every_year_2025_to_2030() -> None:
    assert scenario("korea-2030").documented_totals["by_date"] == {
        "2025-12-31": 9_320,
        "2026-12-31": 70_488,
        "2027-12-31": 145_696,
        "2028-12-31": 226_464,
        "2029-12-31": 261_704,
        "2030-12-31": 268_616,
    }


@pytest.mark.parametrize(
    ("owner", "gpus"),
    [("government", 50_000), ("samsung", 50_040), ("sk", 50_000), ("hyundai", 50_176), ("naver", 60_000)],
    ids=["government", "samsung", "sk", "hyundai", "naver"],
)
def test_korea_2030_owner_matches_announcement(owner: str, gpus: int) -> None:
    """NVIDIA, 31 Oct 2025: ≈50k each (government, Samsung, SK, Hyundai) and ≈60k NAVER; > 260k together."""
    by_owner = scenario("korea-2030").documented_totals["by_owner"]
    assert by_owner[owner] == gpus
    assert abs(by_owner[owner] - round(gpus, -4)) <= 200


def test_korea_2030_announced_owners_exceed_260k() -> None:
    by_owner = scenario("korea-2030").documented_totals["by_owner"]
    assert sum(v for k, v in by_owner.items() if k != "kisti") == 260_216


@pytest.mark.parametrize(
    ("pool", "model", "gpus"),
    [("gov-nhn-b200", "B200", 7_656), ("gov-kakao-b200", "B200", 2_424), ("gov-naver-h200", "H200", 3_056)],
    ids=["nhn", "kakao", "naver"],
)
def test_korea_2030_first_government_batch_as_reported(pool: str, model: str, gpus: int) -> None:
    pools = [p for p in scenario("korea-2030").fleet.pools if p.name.startswith(pool)]
    assert pools and {p.gpu_model for p in pools} == {model}
    assert sum(p.gpus for p in pools) == gpus


@pytest.mark.parametrize("name", PACKAGED, ids=PACKAGED)
def test_every_node_topology_path_is_unique(name: str) -> None:
    s = scenario(name)
    paths = [n.path for n in fleet_nodes(s.fleet)]
    assert len(paths) == s.documented_totals["nodes"]
    assert len(set(paths)) == len(paths)


def _site_cases() -> list[tuple[str, str]]:
    return [(name, site.name) for name in PACKAGED for site in scenario(name).fleet.sites]


@pytest.mark.parametrize(("name", "site"), _site_cases(), ids=lambda v: str(v))
def test_peak_it_power_fits_under_site_cap_with_headroom(name: str, site: str) -> None:
    s = scenario(name)
    row = next(r for r in summarize(s).by_site if r.name == site)
    peak_mw = sum(p.power_kw for p in s.fleet.pools if s.fleet.site_of(p).name == site) / 1000
    assert row.peak_it_mw == pytest.approx(peak_mw)
    assert peak_mw > 0
    assert peak_mw <= 0.9 * row.power_cap_mw, f"{site}: {peak_mw:.2f} MW vs cap {row.power_cap_mw} MW"
    assert 1.2 <= row.pue <= 1.4


@pytest.mark.parametrize("name", PACKAGED, ids=PACKAGED)
def test_government_pools_are_shared(name: str) -> None:
    fleet = scenario(name).fleet
    gov = [p for p in fleet.pools if fleet.owner(p.owner).kind is OwnerKind.GOVERNMENT]
    assert gov
    assert {p.name: p.sharing for p in gov} == {p.name: Sharing.SHARED for p in gov}


def test_korea_2030_private_pools_are_lendable_or_dedicated() -> None:
    fleet = scenario("korea-2030").fleet
    private = [p for p in fleet.pools if fleet.owner(p.owner).kind is OwnerKind.PRIVATE]
    assert {p.sharing for p in private} == {Sharing.LENDABLE, Sharing.DEDICATED}


@pytest.mark.parametrize("name", PACKAGED, ids=PACKAGED)
def test_restricted_clearance_only_on_government_operated_sites(name: str) -> None:
    fleet = scenario(name).fleet
    restricted = [s for s in fleet.sites if s.clearance is Classification.RESTRICTED]
    assert restricted
    for site in restricted:
        assert site.certification == "government-operated"
        owners = {p.owner for p in fleet.pools if fleet.site_of(p).name == site.name}
        assert {fleet.owner(o).kind for o in owners} == {OwnerKind.GOVERNMENT}


def test_korea_2030_clearance_by_site() -> None:
    clearance = {s.name: s.clearance.label for s in scenario("korea-2030").fleet.sites}
    assert clearance == {
        "nhn-gwangju": "confidential",
        "kakao-ansan": "confidential",
        "naver-gov-cloud": "confidential",
        "naicc-haenam": "restricted",
        "kisti-daejeon": "restricted",
        "samsung-pyeongtaek": "internal",
        "sk-ulsan": "internal",
        "hyundai-hwaseong": "internal",
        "naver-gak-chuncheon": "internal",
        "naver-gak-sejong": "internal",
    }


def test_korea_2030_phases_span_2025_to_2030() -> None:
    years = {p.online.year for p in scenario("korea-2030").fleet.pools}
    assert years == {2025, 2026, 2027, 2028, 2029, 2030}


def test_korea_2030_grants_respect_their_program_rules() -> None:
    s = scenario("korea-2030")
    programs = {p.name: p for p in s.programs}
    orgs = {o.name: o for o in s.organizations}
    projects = {p.name: p for p in s.projects}
    assert len(s.organizations) >= 30 and len(s.grants) >= 30
    for g in s.grants:
        rules = programs[g.program].rules
        org = orgs[projects[g.project].organization]
        assert org.kind in rules.eligible_kinds, g.id
        assert (g.end - g.start).days <= rules.max_duration_days, g.id
        if g.reserved_model is not None:
            cap = rules.cap_for(g.reserved_model)
            assert cap is None or g.reserved_gpus <= cap, g.id


def test_korea_2030_foundation_model_teams() -> None:
    s = scenario("korea-2030")
    fm = [g for g in s.grants if g.program == "sovereign-fm"]
    orgs = {p.name: p.organization for p in s.projects}
    teams = ["lg-ai-research", "naver-cloud", "nc-ai", "sk-telecom", "upstage"]
    for stage in ("fm-s1-", "fm-s2-"):  # two six-month stages
        assert sorted(orgs[g.project] for g in fm if g.id.startswith(stage)) == teams
    assert {(g.reserved_model, g.reserved_gpus) for g in fm} == {("B200", 1000)}


def test_korea_2030_national_grant_round_rules() -> None:
    rules = next(p for p in scenario("korea-2030").programs if p.name == "national-gpu-grant").rules
    assert (rules.cap_for("H200"), rules.cap_for("B200"), rules.max_duration_days) == (256, 128, 365)
    assert dict(rules.price_factor) == {"university": 0.0, "institute": 0.0, "youth-startup": 0.5}
    assert dict(rules.review_weights) == {"impact": 0.4, "ecosystem": 0.3, "readiness": 0.3}
