"""The portal without a browser (TestClient on a runtime with a settable clock): sign-in and its cookie, session
expiry (idle, absolute, token revoked), sign-out, CSRF, tenancy (404 pages), the submit form's messages against
the API's, the message catalog and that no template or static file names another host."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from api_world import Api, World, as_, build_world, open_api
from fastapi.testclient import TestClient
from sqlalchemy import select

from kfabric.api.app import create_app
from kfabric.model.job import JobState
from kfabric.service.actors import Role
from kfabric.store import tables as t
from kfabric.web import i18n, nav, sessions
from kfabric.web.view import CSRF_COOKIE, SESSION_COOKIE

WEB = Path(str(resources.files("kfabric.web")))
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    with open_api(db_url) as api:
        yield build_world(api)


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def sign_in(api: Api, token: str, client: TestClient | None = None) -> TestClient:
    c = client or api.client
    c.cookies.clear()
    page = c.get("/signin")
    r = c.post("/signin", data={"csrf": csrf_of(page.text), "token": token, "next": "/jobs"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/jobs", r.text
    return c


def test_sign_in_sets_a_strict_cookie_and_stores_only_its_hash(world: World) -> None:
    api = world.api
    c = api.client
    c.cookies.clear()
    page = c.get("/signin")
    assert "HttpOnly" in page.headers["set-cookie"] and "SameSite=strict" in page.headers["set-cookie"]
    r = c.post("/signin", data={"csrf": csrf_of(page.text), "token": world.token("member", "snu-vision")},
               follow_redirects=False)  # fmt: skip
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain http here; see the https test below
    session_id = c.cookies[SESSION_COOKIE]
    with api.rt.sessions() as s:
        rows = s.scalars(select(t.WebSession)).all()
        audit = s.scalars(select(t.AuditEntry.action).where(t.AuditEntry.action == "web.signin")).all()
    assert [row.id_hash for row in rows] == [sessions.id_hash(session_id)]
    assert session_id not in {row.id_hash for row in rows}
    assert audit == ["web.signin"]
    assert c.get("/jobs").status_code == 200


def test_cookie_is_secure_over_https(world: World) -> None:
    with TestClient(world.api.client.app, base_url="https://testserver") as c:
        page = c.get("/signin")
        r = c.post("/signin", data={"csrf": csrf_of(page.text), "token": world.token("member", "snu-vision")},
                   follow_redirects=False)  # fmt: skip
        assert "Secure" in r.headers["set-cookie"]


def test_a_bad_token_is_refused_with_the_reason(world: World) -> None:
    c = world.api.client
    c.cookies.clear()
    page = c.get("/signin")
    r = c.post("/signin", data={"csrf": csrf_of(page.text), "token": "kf_not-a-token"}, follow_redirects=False)
    assert r.status_code == 401
    assert "unknown API token" in r.text and SESSION_COOKIE not in r.headers.get("set-cookie", "")


def test_pages_need_a_session(world: World) -> None:
    c = world.api.client
    c.cookies.clear()
    r = c.get("/jobs?state=pending", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin?next=%2Fjobs%3Fstate%3Dpending"


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example"])
def test_sign_in_never_redirects_off_the_server(world: World, target: str) -> None:
    c = world.api.client
    c.cookies.clear()
    page = c.get("/signin")
    r = c.post("/signin", data={"csrf": csrf_of(page.text), "token": world.token("member", "snu-vision"),
                                "next": target}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_an_idle_session_ends(world: World) -> None:
    api = world.api
    c = sign_in(api, world.token("member", "snu-vision"))
    api.clock.now += sessions.IDLE_S - 60
    assert c.get("/jobs", follow_redirects=False).status_code == 200  # a request keeps it alive...
    api.clock.now += sessions.IDLE_S + 1  # ...but not a longer pause
    assert c.get("/jobs", follow_redirects=False).status_code == 303


def test_a_busy_session_still_ends_at_its_absolute_expiry(world: World) -> None:
    api = world.api
    c = sign_in(api, world.token("member", "snu-vision"))
    start = api.clock.now
    while api.clock.now < start + sessions.ABSOLUTE_S - 600:
        api.clock.now += 600
        assert c.get("/jobs/rows", follow_redirects=False).status_code == 200
    api.clock.now = start + sessions.ABSOLUTE_S
    assert c.get("/jobs", follow_redirects=False).status_code == 303


def test_revoking_the_token_ends_the_session(world: World) -> None:
    api = world.api
    made = api.post("/v1/tokens", world.token("member", "snu-vision"), {"name": "browser"})
    assert made.status_code == 201, made.text
    c = sign_in(api, made.json()["token"])
    assert c.get("/jobs", follow_redirects=False).status_code == 200
    revoked = api.post(f"/v1/tokens/{made.json()['id']}/revoke", world.token("member", "snu-vision"))
    assert revoked.status_code == 200, revoked.text
    assert c.get("/jobs", follow_redirects=False).status_code == 303


def test_sign_out_ends_the_session_for_good(world: World) -> None:
    api = world.api
    c = sign_in(api, world.token("member", "snu-vision"))
    stolen = c.cookies[SESSION_COOKIE]
    page = c.get("/jobs")
    r = c.post("/signout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    c.cookies.clear()
    c.cookies.set(SESSION_COOKIE, stolen)  # the old cookie, replayed
    assert c.get("/jobs", follow_redirects=False).status_code == 303
    with api.rt.sessions() as s:
        assert s.scalars(select(t.WebSession)).all() == []
        assert "web.signout" in s.scalars(select(t.AuditEntry.action)).all()


@pytest.mark.parametrize("csrf", [None, "", "wrong-token-0123456789abcdefghij"], ids=["missing", "empty", "wrong"])
def test_a_form_without_the_session_csrf_token_is_refused(world: World, csrf: str | None) -> None:
    api = world.api
    job = world.snu_job()
    c = sign_in(api, world.token("member", "snu-vision"))
    data = {} if csrf is None else {"csrf": csrf}
    r = c.post(f"/jobs/{job}/cancel", data=data, follow_redirects=False)
    assert r.status_code == 403 and "Form refused" in r.text
    assert api.job_state(job) == ("pending", False)
    page = c.get(f"/jobs/{job}")
    assert c.post(f"/jobs/{job}/cancel", data={"csrf": csrf_of(page.text)}, follow_redirects=False).status_code == 303
    assert api.job_state(job)[0] == "cancelled"


def test_a_json_post_is_refused_even_with_the_cookie(world: World) -> None:
    api = world.api
    job = world.snu_job()
    c = sign_in(api, world.token("member", "snu-vision"))
    page = c.get(f"/jobs/{job}")
    r = c.post(f"/jobs/{job}/cancel", json={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 403
    assert api.job_state(job) == ("pending", False)


def test_sign_in_without_the_browser_csrf_cookie_is_refused(world: World) -> None:
    c = world.api.client
    c.cookies.clear()
    page = c.get("/signin")
    c.cookies.delete(CSRF_COOKIE)
    r = c.post("/signin", data={"csrf": csrf_of(page.text), "token": world.token("member", "snu-vision")})
    assert r.status_code == 403 and SESSION_COOKIE not in c.cookies


def test_other_tenants_objects_are_404_pages(world: World) -> None:
    api = world.api
    c = sign_in(api, world.token("member", "tinyml"))
    paths = [
        f"/jobs/{world.jobs['snu-vision']}",
        f"/jobs/{world.jobs['snu-vision']}/live",
        f"/applications/{world.applications['snu-vision']}",
        "/usage/grants/g-vision",
        "/jobs/999999",
        "/jobs/not-a-number",
    ]
    for path in paths:
        r = c.get(path)
        assert r.status_code == 404 and "Not found" in r.text, path
        assert api.get(path.replace("/usage/grants/", "/v1/grants/").replace("/jobs/", "/v1/jobs/", 1),
                       world.token("member", "tinyml")).status_code in (404, 405, 422)  # fmt: skip
    page = c.get("/jobs")
    assert f'/jobs/{world.jobs["snu-vision"]}"' not in page.text and f'/jobs/{world.jobs["tinyml"]}"' in page.text
    r = c.post(f"/jobs/{world.jobs['snu-vision']}/cancel", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 404
    assert api.job_state(world.jobs["snu-vision"]) == ("pending", False)


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        ({"gpus": "many"}, {"gpus": "many"}),
        ({"gpu_models": "Z100"}, {"gpu_models": ["Z100"]}),
        ({"time_limit_s": "-5"}, {"time_limit_s": -5.0}),
        ({"project": "tinyml-llm"}, {"project": "tinyml-llm"}),
    ],
    ids=["not-a-number", "unknown-model", "negative-limit", "other-tenants-project"],
)
def test_the_submit_form_says_what_the_api_says(world: World, fields: dict[str, str], body: dict[str, object]) -> None:
    api = world.api
    token = world.token("member", "snu-vision")
    c = sign_in(api, token)
    page = c.get("/submit")
    form = {"csrf": csrf_of(page.text), "project": "vision-lab", "time_limit_s": "3600", "gpus": "1", **fields}
    before = api.writes()
    r = c.post("/submit", data=form)
    answer = api.post("/v1/jobs", token, {"project": "vision-lab", "time_limit_s": 3600.0, "gpus": 1, **body})
    assert answer.status_code >= 400 and r.status_code == answer.status_code, (r.text, answer.text)
    message = answer.json()["error"]["message"]
    assert message.split(" (fix:")[0].replace("'", "&#39;") in r.text, (message, r.text)
    assert api.writes() == before


def test_the_submit_form_queues_a_job(world: World) -> None:
    api = world.api
    c = sign_in(api, world.token("member", "snu-vision"))
    page = c.get("/submit")
    form = {"csrf": csrf_of(page.text), "project": "vision-lab", "name": "by-form", "time_limit_s": "600",
            "gpus": "2", "env": "A=1\nB=two", "preemptible": "on", "client_key": "form-key-1"}  # fmt: skip
    r = c.post("/submit", data=form, follow_redirects=False)
    assert r.status_code == 303
    job_id = int(r.headers["location"].rsplit("/", 1)[1])
    again = c.post("/submit", data=form, follow_redirects=False)  # a double click: the same job
    assert again.headers["location"] == r.headers["location"]
    shown = api.get(f"/v1/jobs/{job_id}", world.token("member", "snu-vision")).json()
    assert shown["name"] == "by-form" and shown["gpus"] == 2 and shown["spec"]["env"] == {"A": "1", "B": "two"}


def test_queue_filters_and_pages(world: World) -> None:
    api = world.api
    token = world.token("member", "snu-vision")
    for i in range(60):
        world.submit(token, "vision-lab", name=f"many-{i}")
    c = sign_in(api, token)
    first = c.get("/jobs?state=pending")
    assert first.text.count('<tr data-job="') == 50 and "Page 1 of 2" in first.text
    second = c.get("/jobs?state=pending&page=2")
    assert second.text.count('<tr data-job="') == 11 and "Page 2 of 2" in second.text  # 60 + the world's one
    done = c.get("/jobs?state=succeeded")
    assert done.text.count('<tr data-job="') == 1


def test_korean_from_the_browser_language_and_by_choice(world: World) -> None:
    c = world.api.client
    c.cookies.clear()
    assert 'lang="ko"' in c.get("/signin", headers={"Accept-Language": "ko-KR,ko;q=0.9,en;q=0.8"}).text
    assert 'lang="en"' in c.get("/signin", headers={"Accept-Language": "fr-FR,en;q=0.5"}).text
    sign_in(world.api, world.token("member", "snu-vision"))
    page = c.get("/jobs")
    r = c.post("/preferences", data={"csrf": csrf_of(page.text), "lang": "ko", "tz": "Asia/Seoul", "next": "/jobs"})
    assert 'lang="ko"' in r.text and "내 작업" in r.text and "KST" in r.text and "Asia/Seoul" in r.text


def test_the_catalog_has_every_key_in_both_languages() -> None:
    assert set(i18n.EN) == set(i18n.KO)
    fields = string.Formatter()
    for key in i18n.EN:
        names = {f for _, f, _, _ in fields.parse(i18n.EN[key]) if f}
        assert names == {f for _, f, _, _ in fields.parse(i18n.KO[key]) if f}, key
    used = set()
    for template in (WEB / "templates").glob("*.html"):
        used |= set(re.findall(r"""\bt\(\s*["']([a-z0-9_.\-]+)["']""", template.read_text()))
    for module in (WEB / "pages").glob("*.py"):
        used |= set(re.findall(r"""\bt\(\s*["']([a-z0-9_.\-]+)["']""", module.read_text()))
    dynamic = {f"state.{s.value}" for s in JobState} | {f"role.{r.value}" for r in Role}
    dynamic |= {f"lang.{code}" for code in i18n.LANGUAGES} | {f"app.{s}" for s in ("submitted", "approved", "rejected")}
    dynamic |= {f"grant.{s}" for s in ("active", "flagged", "reclaimed")}
    dynamic |= {n.key for n in nav.NAV} | {f"{n.key}.about" for n in nav.NAV}
    used = {k for k in used if not k.endswith(".")}  # t("state." + s): the prefix of a dynamic key (above)
    assert used, "no t('...') call found"
    assert sorted((used | dynamic) - set(i18n.EN)) == []


def test_no_template_or_static_file_names_another_host() -> None:
    files = [*(WEB / "templates").glob("*"), *(WEB / "static").glob("*")]
    assert files
    for f in files:
        text = f.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace name, never fetched
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), f


def test_docs_and_redoc_are_served_from_this_server(world: World) -> None:
    c = world.api.client
    for path in ("/docs", "/redoc"):
        html = c.get(path).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(r"""url: ?['"]([^'"]+)""", html)
        assert urls and all(u.startswith("/") for u in urls), (path, urls)
        for u in urls:
            assert c.get(u).status_code == 200, u
    assert "fonts.googleapis" not in c.get("/redoc").text


def test_pages_carry_a_policy_that_keeps_the_browser_on_this_server(world: World) -> None:
    r = world.api.client.get("/signin")
    policy = r.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_the_api_keeps_its_json_answers(world: World) -> None:
    """The portal's error pages are its own: the API under /v1 still answers JSON."""
    r = world.api.get(f"/v1/jobs/{world.jobs['snu-vision']}", world.token("member", "tinyml"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert world.api.client.get("/v1/jobs", headers=as_(None)).status_code == 401


def test_the_app_is_created_without_fastapis_cdn_pages(world: World) -> None:
    app = create_app(world.api.rt)
    assert app.docs_url is None and app.redoc_url is None


def test_the_job_page_shows_the_output_tail_to_its_user_only(world: World) -> None:
    """The output, read as ``GET /v1/jobs/{id}/log`` reads it: the job's user sees it (on ``sim``: its state changes),
    a colleague in the same project sees the job but not its output."""
    api = world.api
    job = world.finished["snu-vision"]
    own = sign_in(api, world.token("member", "snu-vision")).get(f"/jobs/{job}")
    assert own.status_code == 200 and f"sim: job {job} is simulated" in own.text
    other = sign_in(api, world.token("member2", "snu-vision")).get(f"/jobs/{job}")
    assert other.status_code == 200 and "Only the job&#39;s user and operators read its output." in other.text
    assert f"sim: job {job} is simulated" not in other.text
