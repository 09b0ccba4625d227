"""The report of real simulation runs: its new sections (starvation, delivered GPU-hours, reservations,
fairness) in the HTML, and the page opened in headless Chromium renders without a script error.

Chromium is Debian's (``/usr/bin/chromium``) driven by the ``playwright`` package; no browser is ever downloaded.
Without them the browser test is skipped, saying what to install, unless ``KFABRIC_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from kfabric.model import Job
from kfabric.report.html import SECTION_TITLES, write_report
from kfabric.scenarios.loader import load_scenario
from kfabric.sched.presets import PRESETS
from kfabric.sim.engine import SimOptions
from kfabric.sim.run import simulate
from kfabric.sim.workload import SimJob, Workload
from kfabric.traces.national import synthetic_national

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
MISSING = "Chromium not installed: apt-get install -y chromium (and pip install playwright; never `playwright install`)"
NEW_SECTIONS = ("starvation", "delivered", "reservations", "fairness")


def chromium() -> str:
    path = next((p for p in (os.environ.get("KFABRIC_CHROMIUM", ""), *CHROMIUM) if p and os.access(p, os.X_OK)), None)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        if os.environ.get("KFABRIC_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{MISSING} (required: KFABRIC_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(MISSING)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two policies on the lab fleet: a day of the national workload plus a 40-GPU job that cannot fit the
    32-GPU H100 pool (never started) and a job of a project whose grant has expired (rejected)."""
    root = tmp_path_factory.mktemp("runs")
    scenario = load_scenario("lab")
    base = synthetic_national(scenario, 1.0, seed=1, load=1.2, on=date(2026, 12, 1))
    stuck = Job(id="stuck", project="crowd", gpus=40, gpu_models=("H100",), time_limit_s=7_200.0, submit_s=600.0)
    late = Job(id="late", project="vision-lab", gpus=1, time_limit_s=3_600.0, submit_s=90_000.0)
    jobs = sorted([*base.jobs, SimJob(stuck, 3_600.0), SimJob(late, 600.0)], key=lambda j: j.job.submit_s)
    workload = Workload("lab-demo", jobs, base.tenants)
    options = SimOptions(start=date(2026, 12, 31), days=1.5, interval_s=60.0, failures_per_gpu_s=0.0)
    dirs = []
    for policy in ("fifo", "kfabric"):
        simulate(scenario, workload, PRESETS[policy], options, out_dir=root / policy)
        dirs.append(root / policy)
    return write_report(dirs, root / "report.html")


def test_the_new_sections_show_what_the_runs_did(report: Path) -> None:
    page = report.read_text()
    for key in NEW_SECTIONS:
        assert f'<section id="{key}"><h2>{SECTION_TITLES[key]}</h2>' in page
        assert "No data" not in page.split(f'<section id="{key}">')[1].split("</section>")[0]
    assert "never started: resources" in page or "never started: topology" in page
    assert "rejected: grant_expired" in page
    starvation = page.split('<section id="starvation">')[1].split("</section>")[0]
    assert "9-64 GPUs" in starvation and "jobs never started (censored)" in starvation
    reservations = page.split('<section id="reservations">')[1].split("</section>")[0]
    for project in ("vision-lab", "acme-internal"):
        assert project in reservations
    assert "longest wait of a job that fits inside the reservation" in reservations
    delivered = page.split('<section id="delivered">')[1].split("</section>")[0]
    for owner in ("government", "acme"):
        assert f'<th scope="row">{owner}</th>' in delivered


def test_the_report_renders_in_chromium_without_script_errors(report: Path, tmp_path: Path) -> None:
    path = chromium()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    remote: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("request", lambda r: remote.append(r.url) if r.url.startswith(("http:", "https:")) else None)
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
            headings = page.locator("h2").all_inner_texts()
            plots = page.locator(".js-plotly-plot").count()
            rows = page.locator("#reservations table.cmp tbody tr").count()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert remote == []  # self-contained: nothing fetched
    for key in NEW_SECTIONS:
        assert SECTION_TITLES[key] in headings
    assert plots >= 7 and rows >= 8
    assert (tmp_path / "report.png").stat().st_size > 50_000
