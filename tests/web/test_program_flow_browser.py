"""The whole program flow in real Chromium against a real ``kfabric serve`` (issue 17): an organization's admin
applies from the form, two reviewers score it against the program's rubric, the program manager (an operator)
sees it ranked with what it would take from the program's pools and approves it, the grant appears, a job runs
under it, and usage, the grant's burn-down and the operator's reports show it. Screenshots of every reviewer,
program-manager and operator page are saved (``conftest.artifacts``), and no page requests anything from another
host."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from browsing import Browsing, Server, open_page
from test_portal_browser import no_foreign_requests, wait_state

pytestmark = pytest.mark.integration

LAPTOP = {"width": 1366, "height": 900}
SCORES = ({"impact": "9", "ecosystem": "7", "readiness": "8"}, {"impact": "8", "ecosystem": "8", "readiness": "6"})


@contextlib.contextmanager
def _other(browser: Any, server: Server, artifacts: Any, token: str) -> Iterator[Browsing]:
    """Another browser (its own cookies), signed in with ``token``."""
    for web in open_page(browser, server, artifacts, viewport=LAPTOP):
        web.sign_in(token)
        yield web


def test_the_whole_program_flow(web: Browsing, browser: Any, server: Server, users: dict[str, str],
                                artifacts: Any) -> None:  # fmt: skip
    url = server.url
    with server.client() as op:
        reviewers = [op.create_user(f"web-rev-{i}", "reviewer")["token"] for i in (1, 2)]

    # 1. tinyml's admin applies from the form, with the program's rules shown
    web.sign_in(users["tiny-admin"])
    page = web.page
    page.goto(f"{url}/applications/new?program=lab-grants")
    assert "impact (0.4)" in page.locator("#rules").inner_text()
    page.locator("#f-project").select_option("tinyml-llm")
    page.locator("#f-gpu_model_class").fill("H100")
    page.locator("#f-gpus").fill("8")
    page.locator("#f-months").fill("3")
    page.locator("#f-justification").fill("Fine-tune a Korean speech model for hearing-aid makers.")
    page.locator("#apply").click()
    page.wait_for_url(re.compile(rf"{re.escape(url)}/applications/\d+$"))
    app_id = int(page.url.rsplit("/", 1)[1])
    assert page.locator("#app-status").inner_text() == "submitted"

    # 2. two reviewers score it against the rubric
    for i, (token, scores) in enumerate(zip(reviewers, SCORES, strict=True), 1):
        with _other(browser, server, artifacts, token) as rev:
            _score(rev, url, app_id, i, scores)

    # 3. the program manager (an operator) ranks and decides
    with _other(browser, server, artifacts, server.operator_token) as pm:
        _decide_and_follow(pm, web, server, users, app_id)


def _score(rev: Browsing, url: str, app_id: int, i: int, scores: dict[str, str]) -> None:
    p = rev.page
    p.get_by_role("link", name="Reviews").first.click()
    p.wait_for_url(f"{url}/review")
    p.locator(f"#todo tr[data-application='{app_id}'] a").click()
    p.wait_for_url(f"{url}/review/{app_id}")
    assert "hearing-aid" in p.locator("#justification").inner_text()
    assert "readiness" in p.locator("#rubric").inner_text()
    for criterion, value in scores.items():
        p.get_by_label(f"Score: {criterion}").fill(value)
    p.get_by_label("Comment").fill(f"reviewer {i}: credible plan")
    if i == 1:
        rev.shot("review-form")
    p.locator("#send-score").click()
    p.wait_for_url(f"{url}/review/{app_id}?saved=1")
    assert p.locator("#saved").is_visible()
    p.goto(f"{url}/review")
    assert p.locator(f"#scored tr[data-application='{app_id}']").count() == 1
    if i == 2:
        rev.shot("review-list")
    no_foreign_requests(rev)


def _decide_and_follow(pm: Browsing, web: Browsing, server: Server, users: dict[str, str], app_id: int) -> None:
    url, page, p = server.url, web.page, pm.page
    p.get_by_role("link", name="Programs").first.click()
    p.wait_for_url(f"{url}/programs")
    pm.shot("programs")
    p.locator("tr[data-program='lab-grants'] a").click()
    p.wait_for_url(f"{url}/programs/lab-grants")
    row = p.locator(f"#ranked tr[data-application='{app_id}']")
    cells = row.locator("td").all_inner_texts()
    assert cells[4].startswith("2 /") and cells[5] == f"{(0.4 * 8.5 + 0.3 * 7.5 + 0.3 * 7):.2f}"
    assert "8 × H100" in cells[6] and re.fullmatch(r"-?\d+|\d+ short|not in its pools", cells[7])
    h100_free = int(p.locator("#room tr[data-model='H100'] td").nth(3).inner_text())
    pm.shot("program-ranked")
    row.get_by_role("link", name=f"Decide application {app_id}").click()
    p.wait_for_url(f"{url}/decide/{app_id}")
    assert p.locator("article.card").count() == 2  # both reviews, with their comments
    assert p.get_by_label("Reserve the asked 8 × H100").is_checked()
    p.get_by_label("Credit (SU-hours)").fill("500")
    p.get_by_label("Note").fill("ranked first; fits the free H100")
    pm.shot("decide")
    p.get_by_role("button", name="Approve and grant").click()
    p.wait_for_url(f"{url}/programs/lab-grants?decided={app_id}")
    assert p.locator(f"#done tr[data-application='{app_id}']").count() == 1
    assert int(p.locator("#room tr[data-model='H100'] td").nth(2).inner_text()) >= 8
    assert int(p.locator("#room tr[data-model='H100'] td").nth(3).inner_text()) == h100_free - 8
    grant = f"g-{app_id}"

    # 4. the grant appears, for the manager and for the organization
    p.goto(f"{url}/grants")
    assert "8 × H100" in p.locator(f"tr[data-grant='{grant}']").inner_text()
    page.goto(f"{url}/applications/{app_id}")
    assert page.locator("#app-status").inner_text() == "approved"
    assert "credible plan" in page.content()

    # 5. a job runs under it (guaranteed by the reservation, so charged to it) and ends
    with server.client(users["tiny"]) as tiny:
        job = tiny.submit("tinyml-llm", gpus=8, gpu_models=["H100"], time_limit_s=600.0, runtime_estimate_s=4.0,
                          preemptible=False, name="under-the-grant")  # fmt: skip
    wait_state(server, users["tiny"], job["id"], ("succeeded",), timeout_s=60)
    page.goto(f"{url}/jobs/{job['id']}")
    assert page.locator(f"a[href='/usage/grants/{grant}']").count() == 1  # the job page names its grant

    # 6. usage and the burn-down show it (the tenant's pages), and the operator's pages
    deadline = time.monotonic() + 30
    with server.client(users["tiny"]) as tiny:
        while (used := next(g for g in tiny._json("GET", "/v1/grants") if g["name"] == grant)["used_su_hours"]) <= 0:
            assert time.monotonic() < deadline, "no usage charged to the grant"
            time.sleep(0.2)
    page.goto(f"{url}/usage")
    shown = page.locator(f"tr:has(a[href='/usage/grants/{grant}']) td").nth(6).inner_text()
    assert shown == f"{used:.1f}"
    web.shot("usage-with-grant")
    page.goto(f"{url}/usage/grants/{grant}")
    page.wait_for_selector(".chart .main-svg")
    rate = re.search(r"([0-9.]+) SU-hours a day", page.locator("#projection").inner_text())
    assert rate is not None and float(rate.group(1)) > 0
    web.shot("grant-burn-down")
    no_foreign_requests(web)

    p.goto(f"{url}/grants")
    util = p.locator(f"tr[data-grant='{grant}'] td").nth(5).inner_text()
    assert util.endswith("%") or "%" in util
    pm.shot("grants")
    p.goto(f"{url}/reports?by=program")
    assert p.locator("#report tr[data-key='lab-grants']").count() == 1
    p.wait_for_selector(".chart .main-svg")
    pm.shot("reports")
    with p.expect_download() as got:
        p.locator("#report-csv").click()
    assert got.value.suggested_filename == "kfabric-usage-by-program.csv"
    p.goto(f"{url}/fleet")
    assert p.locator("#fleet-groups tr[data-group='lab-gov/government/H100']").count() == 1
    assert p.locator("#fleet-power tr[data-site='lab-gov']").count() == 1
    pm.shot("fleet")
    p.goto(f"{url}/queue")
    pm.shot("queue-by-reason")
    p.goto(f"{url}/audit?action=application.approve")
    assert p.locator("#audit tr[data-entry]").count() >= 1
    p.locator("#verify").click()
    p.wait_for_selector("#verified")
    assert "Verified." in p.locator("#verified").inner_text()
    pm.shot("audit-verified")
    # keyboard: the skip link comes first, then the navigation
    p.keyboard.press("Tab")
    assert p.evaluate("document.activeElement.className") == "skip"
    no_foreign_requests(pm)


def test_operator_pages_in_korean_on_a_phone(browser: Any, server: Server, artifacts: Any) -> None:
    for web in open_page(browser, server, artifacts, viewport={"width": 390, "height": 844}, is_mobile=True,
                         locale="ko-KR"):  # fmt: skip
        page = web.page
        page.goto(f"{server.url}/signin")
        page.get_by_label("API 토큰").fill(server.operator_token)
        page.get_by_role("button", name="로그인").click()
        page.wait_for_url(f"{server.url}/")
        for path, title in (("/programs/lab-grants", "프로그램 lab-grants"), ("/fleet", "자원 현황"),
                            ("/audit", "감사 로그")):  # fmt: skip
            page.goto(f"{server.url}{path}")
            assert page.locator("h1").inner_text() == title
            assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1, path  # tables scroll inside
            web.shot("ko-phone" + path.replace("/", "-"))
        no_foreign_requests(web)
