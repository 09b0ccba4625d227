"""The portal in real Chromium against a real ``kfabric serve`` (issue 17): a tenant signs in, submits a job from
the form, sees it pending with its reason, then running, opens its page and cancels it; another tenant's pages
are 404s; a form without its CSRF token is refused; no page requests anything from another host; screenshots of
each main page are saved (``conftest.artifacts``)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from browsing import Browsing, Server, open_page

pytestmark = pytest.mark.integration

FINAL = ("succeeded", "failed", "cancelled", "timeout")
#: the one request a page tries to make elsewhere: ReDoc's bundle always asks its vendor's CDN for a logo; the
#: /redoc page's Content-Security-Policy makes the browser refuse it (web/portal.py)
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def wait_state(
    server: Server, token: str, job_id: int, states: tuple[str, ...], timeout_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with server.client(token) as c:
        while True:
            job: dict[str, Any] = c.job(job_id)
            if job["state"] in states and job["reason_code"] != "new":
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['state']}: {job['reason']}"
            time.sleep(0.1)


def no_foreign_requests(web: Browsing) -> None:
    assert web.requests.urls, "the pages made no request at all"
    assert web.requests.foreign(web.server.url) == []
    assert set(web.requests.blocked) <= {REDOC_LOGO}


def test_tenant_submits_watches_and_cancels_a_job(web: Browsing, server: Server, users: dict[str, str]) -> None:
    url, page = server.url, web.page
    # the H100 pool (32 GPUs) is taken by a job of another project, so the form's job must wait
    with server.client(users["tiny"]) as tiny:
        blocker = tiny.submit("tinyml-llm", gpus=24, gpu_models=["H100"], time_limit_s=7200.0,
                              runtime_estimate_s=7000.0, preemptible=True, name="blocker")  # fmt: skip
    wait_state(server, users["tiny"], blocker["id"], ("running",))

    web.sign_in(users["snu"])
    web.shot("home")
    page.get_by_role("link", name="Submit a job").first.click()
    page.wait_for_url(f"{url}/submit")
    page.get_by_label("Project").select_option("vision-lab")
    page.get_by_label("Name").fill("from-the-form")
    page.get_by_label("GPUs", exact=True).fill("16")
    page.get_by_label("GPU models").fill("H100")
    page.get_by_label("Time limit (seconds)").fill("3600")
    page.get_by_label("Expected run time (seconds)").fill("3000")
    page.get_by_label("Preemptible").uncheck()
    web.shot("submit")
    page.get_by_role("button", name="Submit", exact=True).click()
    page.wait_for_url(re.compile(rf"{re.escape(url)}/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])

    # pending, with the scheduler's reason (the page refreshes itself)
    pending = wait_state(server, users["snu"], job_id, ("pending",))
    page.wait_for_function(  # the first cycle's reason replaces the "submitted" one
        "() => !(document.querySelector('#job-reason') || {textContent: 'next scheduling cycle'})"
        ".textContent.includes('next scheduling cycle')"
    )
    reason = page.locator("#job-reason").inner_text()
    assert pending["state"] == "pending"
    assert page.locator("#job-state").inner_text() == "pending"
    assert wait_state(server, users["snu"], job_id, ("pending",))["reason"] in reason
    web.shot("job-pending")

    page.goto(f"{url}/jobs")
    row = f"tr[data-job='{job_id}']"
    assert "pending" in page.locator(row).inner_text() and "from-the-form" in page.locator(row).inner_text()
    web.shot("queue")

    # the blocker ends: the job runs, and the open queue page shows it without a reload (live refresh)
    with server.client(users["tiny"]) as tiny:
        tiny.cancel(blocker["id"])
    running = wait_state(server, users["snu"], job_id, ("running",))
    page.wait_for_function(f"() => document.querySelector(\"{row}\").innerText.includes('running')")
    page.goto(f"{url}/jobs/{job_id}")
    assert page.locator("#job-state").inner_text() == "running"
    assert running["pool"] == "h100"
    assert "h100" in page.locator("#job-pool").inner_text()
    assert page.locator("ol.timeline li").count() >= 3  # submitted, admitted, running
    assert f"sim: job {job_id} is simulated" in page.locator("#output-out").inner_text()  # its output (sim)
    web.shot("job-running")

    page.get_by_role("button", name="Cancel this job").click()
    page.wait_for_url(f"{url}/jobs/{job_id}")
    ended = wait_state(server, users["snu"], job_id, FINAL)
    assert ended["state"] == "cancelled"
    page.wait_for_function("() => document.querySelector('#job-state').textContent.trim() === 'cancelled'")
    web.shot("job-cancelled")

    for path, name in (("/usage", "usage"), ("/usage/grants/g-vision", "grant"), ("/applications", "applications"),
                       ("/applications/new", "apply"), ("/docs", "docs"), ("/redoc", "redoc")):  # fmt: skip
        response = page.goto(f"{url}{path}")
        assert response is not None and response.status == 200, path
        page.wait_for_load_state("networkidle")
        if name == "grant":  # the burn-down chart, drawn by the Plotly served from this server
            page.wait_for_selector(".chart .main-svg")
        web.shot(name, full_page=name not in ("docs", "redoc"))  # the API documents are very long
    no_foreign_requests(web)


def test_other_tenants_pages_are_404(web: Browsing, server: Server, users: dict[str, str]) -> None:
    with server.client(users["tiny"]) as tiny:
        job = tiny.submit("tinyml-llm", gpus=1, time_limit_s=600.0, name="tiny-private")
    with server.client(users["tiny-admin"]) as admin:
        app = admin._json("POST", "/v1/applications", {
            "program": "lab-grants", "project": "tinyml-llm", "gpu_model_class": "H100", "gpus": 4, "months": 3,
            "justification": "a private plan",
        })  # fmt: skip
    web.sign_in(users["snu"])
    for path in (f"/jobs/{job['id']}", f"/jobs/{job['id']}/live", f"/applications/{app['id']}",
                 "/usage/grants/g-tinyml"):  # fmt: skip
        response = web.page.goto(f"{server.url}{path}")
        assert response is not None and response.status == 404, path
        assert "tiny-private" not in web.page.content() and "private plan" not in web.page.content()
    web.shot("not-found")
    no_foreign_requests(web)


def test_a_form_without_its_csrf_token_is_refused(web: Browsing, server: Server, users: dict[str, str]) -> None:
    with server.client(users["snu"]) as snu:
        job = snu.submit("vision-lab", gpus=1, time_limit_s=600.0, name="csrf-target")
    web.sign_in(users["snu"])
    page = web.page
    page.goto(f"{server.url}/jobs/{job['id']}")
    page.evaluate("document.querySelector('form[action$=\"/cancel\"] input[name=csrf]').remove()")
    page.get_by_role("button", name="Cancel this job").click()
    page.wait_for_load_state()
    assert "Form refused" in page.content()
    web.shot("csrf-refused")
    with server.client(users["snu"]) as snu:
        assert snu.job(job["id"])["state"] not in FINAL  # nothing was cancelled
        snu.cancel(job["id"])


def test_korean_pages_on_a_phone(browser: Any, server: Server, users: dict[str, str], artifacts: Any) -> None:
    """A Korean browser gets Korean pages, dates in its zone; on a phone the queue needs no sideways scroll."""
    with server.client(users["snu"]) as snu:
        job = snu.submit("vision-lab", gpus=1, time_limit_s=600.0, name="seoul-time")
    for web in open_page(browser, server, artifacts, viewport={"width": 390, "height": 844}, is_mobile=True,
                         locale="ko-KR"):  # fmt: skip
        page = web.page
        page.goto(f"{server.url}/signin")
        assert page.locator("html").get_attribute("lang") == "ko"
        page.get_by_label("API 토큰").fill(users["snu"])
        page.get_by_role("button", name="로그인").click()
        page.wait_for_url(f"{server.url}/")
        page.goto(f"{server.url}/jobs")
        assert "내 작업" in page.locator("h1").inner_text()
        assert "Asia/Seoul" in page.locator("footer").inner_text()  # the browser's zone, set by portal.js
        assert "KST" in page.locator(f"tr[data-job='{job['id']}']").inner_text()  # dates in it, zone shown
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1
        web.shot("queue-ko-phone")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        no_foreign_requests(web)
    with server.client(users["snu"]) as snu:
        snu.cancel(job["id"])
