"""Issue 16: the Grafana dashboard (docs/grafana-kfabric.json) queries only metrics the service exports. Every PromQL
expression of its panels and template variables is parsed for metric names, which must be names of samples that
``/metrics`` of a busy test server exports (histograms as ``_bucket``/``_sum``/``_count``, counters as ``_total``:
a query on a histogram's bare name would find nothing)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_metrics_promtool import open_busy

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-kfabric.json"
#: PromQL words that are not metric names (aggregation modifiers, set and vector-matching keywords)
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                      "offset", "inf", "nan"})  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<args>.*)\)\s*$", re.DOTALL)
#: what the dashboard must show (docs/operations-observability.md, "Dashboard")
MUST_SHOW = ("kfabric_leader", "kfabric_lease_epoch", "kfabric_last_cycle_age_seconds", "kfabric_cycle_seconds_bucket",
             "kfabric_gpus_online", "kfabric_gpus_allocated", "kfabric_gpus_lent", "kfabric_gpus_out_of_service",
             "kfabric_jobs_pending", "kfabric_job_start_latency_seconds_bucket", "kfabric_admissions_total",
             "kfabric_preemptions_total", "kfabric_requeues_total", "kfabric_job_failures_total",
             "kfabric_backend_calls_total", "kfabric_backend_call_duration_seconds_bucket",
             "kfabric_http_request_duration_seconds_bucket", "kfabric_program_credit_remaining_su_seconds",
             "kfabric_program_reserved_gpus_in_use")  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels, numbers and Grafana variables
    are not names)."""
    values = _LABEL_VALUES.match(expr)
    if values is not None:  # a Grafana variable's label_values([metric{...},] label)
        selector, comma, _label = re.sub(r"\{[^}]*\}", "", _STRING.sub('""', values["args"])).rpartition(",")
        return {selector.strip()} if comma and selector.strip() else set()
    expr = _STRING.sub('""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations
    expr = _LABEL_LIST.sub(" ", expr)
    names = set()
    for found in _NAME.finditer(expr):
        name, before = found.group(), expr[: found.start()]
        if before and (before[-1].isdigit() or before[-1] in ".$"):
            continue  # the exponent of a number (1e3), a Grafana variable
        if expr[found.end() :].lstrip().startswith("(") or name.lower() in KEYWORDS:
            continue  # a function or an aggregation
        names.add(name)
    return names


# (expression, names)
PARSES: list[tuple[str, set[str]]] = [
    ("kfabric_leader", {"kfabric_leader"}),
    ('sum by (site) (kfabric_gpus_online{site=~"$site", pool="a{b}"})', {"kfabric_gpus_online"}),
    ("histogram_quantile(0.95, sum by (le) (rate(x_bucket[$__rate_interval])))", {"x_bucket"}),
    ("sum(rate(a_total[5m])) / sum(rate(b_total[5m] offset 1h)) * 1e3", {"a_total", "b_total"}),
    ("a / on (pool) group_left (site) b > bool 0", {"a", "b"}),
    ("sum(a) without (instance) unless ignoring (x) c", {"a", "c"}),
    ('label_values(kfabric_gpus_installed{site=~"$site"}, pool)', {"kfabric_gpus_installed"}),
    ("label_values(site)", set()),
    ("max_over_time(up[1h:5m])", {"up"}),
]


@pytest.mark.parametrize(("expr", "names"), PARSES, ids=[p[0][:40] for p in PARSES])
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable."""
    out = [(f"panel {p.get('title')!r}", str(target["expr"])) for p in _panels(board["panels"])
           for target in p.get("targets", []) if target.get("expr")]  # fmt: skip
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable ${var['name']}", str(query)))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Names of the samples that /metrics of a busy server exports."""
    with open_busy(f"sqlite:///{tmp_path_factory.mktemp('dashboard')}/kfabric.db") as busy:
        text = busy.scrape()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_query_names_an_exported_metric(exported: set[str]) -> None:
    board = dashboard()
    found = queries(board)
    assert len(found) >= 30
    unknown = [(where, name) for where, expr in found for name in sorted(metric_names(expr)) if name not in exported]
    assert not unknown, f"queries name metrics /metrics does not export: {unknown}"
    for where, expr in found:
        assert metric_names(expr), f"{where}: no metric in {expr!r}"


def test_the_dashboard_shows_the_service_signals() -> None:
    shown = set().union(*(metric_names(expr) for _, expr in queries(dashboard())))
    assert set(MUST_SHOW) <= shown, sorted(set(MUST_SHOW) - shown)


def test_the_dashboard_imports_cleanly() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["__inputs"][0]["pluginId"] == "prometheus"
    panels = list(_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        box = p["gridPos"]
        assert box["x"] >= 0 and box["x"] + box["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
