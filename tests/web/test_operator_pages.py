"""The reviewer, program-manager and operator pages without a browser (TestClient on a runtime with a settable
clock): roles as the API has them (a tenant gets the API's 403 for these pages), reviewing with its rubric and
conflicts of interest, ranking and deciding through the same service rules as the API, grants, the fleet, the
queue by reason, usage reports and CSV, and the audit log with its on-demand verification."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
from api_world import World, build_world, open_api
from sqlalchemy import func, select, update
from test_portal import csrf_of, sign_in

from kfabric.store import tables as t

OPERATOR_PAGES = ("/programs", "/programs/lab-grants", "/grants", "/fleet", "/queue", "/reports", "/review")


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    with open_api(db_url) as api:
        yield build_world(api)


@pytest.mark.parametrize("who", ["snu-vision/member", "snu-vision/org-admin", "tinyml/member"])
def test_tenants_get_the_apis_403_on_operator_pages(world: World, who: str) -> None:
    api = world.api
    token = world.tokens[who]
    c = sign_in(api, token)
    for path in (*OPERATOR_PAGES, f"/review/{world.applications['snu-vision']}",
                 f"/decide/{world.applications['snu-vision']}"):  # fmt: skip
        r = c.get(path)
        assert r.status_code == 403 and "Not allowed" in r.text, (path, r.status_code)
    # the API's equivalents answer the same
    assert api.get("/v1/fleet/live", token).status_code == 403
    assert api.post(f"/v1/applications/{world.applications['snu-vision']}/decision", token,
                    {"approve": True}).status_code == 403  # fmt: skip
    assert api.post(f"/v1/applications/{world.applications['snu-vision']}/reviews", token,
                    {"scores": {"impact": 5, "ecosystem": 5, "readiness": 5}}).status_code == 403  # fmt: skip
    nav = c.get("/").text
    for path in OPERATOR_PAGES[:1] + OPERATOR_PAGES[2:]:
        assert f'href="{path}"' not in nav, path


def test_the_audit_page_follows_the_api_org_admins_see_their_organizations_entries(world: World) -> None:
    api = world.api
    member = sign_in(api, world.token("member", "snu-vision"), None).get("/audit")
    assert member.status_code == 403 and api.get("/v1/audit", world.token("member", "snu-vision")).status_code == 403
    page = sign_in(api, world.token("org-admin", "snu-vision")).get("/audit?action=application.submit")
    assert page.status_code == 200
    shown = {int(x) for x in re.findall(r'data-entry="(\d+)"', page.text)}
    listed = api.get("/v1/audit?action=application.submit", world.token("org-admin", "snu-vision")).json()
    from_api = {e["id"] for e in listed}
    assert shown == from_api and shown
    assert 'action="/audit/verify"' not in page.text  # verification is the operators' (as GET /v1/audit/verify)
    r = api.client.post("/audit/verify", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 403


def test_operator_pages_render(world: World) -> None:
    c = sign_in(world.api, world.api.operator)
    for path in (*OPERATOR_PAGES, "/audit", "/reports?by=site", "/reports?by=provider", "/reports?by=program",
                 f"/decide/{world.applications['tinyml']}", f"/review/{world.applications['tinyml']}"):  # fmt: skip
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[-2000:])
    ko = c.get("/programs/lab-grants", headers={"Accept-Language": "ko"})
    assert ko.status_code == 200


def test_korean_operator_pages(world: World) -> None:
    c = sign_in(world.api, world.api.operator)
    page = c.get("/programs")
    c.post("/preferences", data={"csrf": csrf_of(page.text), "lang": "ko", "next": "/programs"})
    for path, word in (("/programs", "프로그램"), ("/grants", "활용률"), ("/fleet", "전력"), ("/queue", "사유별"),
                       ("/reports", "사용량 보고서"), ("/audit", "감사 로그"), ("/review", "심사")):  # fmt: skip
        r = c.get(path)
        assert r.status_code == 200 and 'lang="ko"' in r.text and word in r.text, path


def _review(c: Any, app_id: int, scores: dict[str, str], comment: str = "") -> Any:
    page = c.get(f"/review/{app_id}")
    data = {"csrf": csrf_of(page.text), "comment": comment, **{f"score-{k}": v for k, v in scores.items()}}
    return c.post(f"/review/{app_id}", data=data, follow_redirects=False)


GOOD = {"impact": "8", "ecosystem": "6", "readiness": "7"}


def test_a_reviewer_scores_with_the_rubric_and_the_apis_messages(world: World) -> None:
    api = world.api
    app_id = world.applications["tinyml"]
    c = sign_in(api, world.token("reviewer"))
    listed = c.get("/review").text
    assert f'data-application="{app_id}"' in listed.split('id="scored"')[0]  # to score
    page = c.get(f"/review/{app_id}")
    assert "impact" in page.text and "0.4" in page.text and "vision foundation models" in page.text
    bad = _review(c, app_id, {**GOOD, "impact": "11"})
    answer = api.post(f"/v1/applications/{app_id}/reviews", world.token("reviewer"),
                      {"scores": {"impact": 11, "ecosystem": 6, "readiness": 7}})  # fmt: skip
    assert bad.status_code == answer.status_code == 422
    assert answer.json()["error"]["message"].split(" (fix:")[0].replace("'", "&#39;") in bad.text
    assert api.application_status(app_id) == ("submitted", 0)
    ok = _review(c, app_id, GOOD, "solid plan")
    assert ok.status_code == 303 and api.application_status(app_id) == ("submitted", 1)
    with api.rt.sessions() as s:
        review = s.scalars(select(t.Review).where(t.Review.application_id == app_id)).one()
        assert review.scores == {"impact": 8.0, "ecosystem": 6.0, "readiness": 7.0} and review.comment == "solid plan"
        assert s.scalar(select(func.count()).select_from(t.AuditEntry).where(t.AuditEntry.action == "review.create"))
    listed = c.get("/review").text
    assert f'data-application="{app_id}"' in listed.split('id="scored"')[1]


def test_conflicts_of_interest(world: World) -> None:
    api = world.api
    app_id = world.applications["snu-vision"]
    # a reviewer of the applicant's organization may not score it (page and API alike)
    insider = world.create_user("rev-snu", "reviewer", "snu-vision")
    c = sign_in(api, insider)
    assert "conflict of interest" in c.get(f"/review/{app_id}").text
    r = api.post(f"/v1/applications/{app_id}/reviews", insider, {"scores": {"impact": 9, "ecosystem": 9,
                                                                              "readiness": 9}})  # fmt: skip
    assert r.status_code == 403 and "applicant's organization" in r.json()["error"]["message"]
    # a reviewer who scored, then declares a conflict: the review is withdrawn, scoring is refused from then on
    c = sign_in(api, world.token("reviewer"))
    assert _review(c, app_id, GOOD).status_code == 303
    assert api.application_status(app_id) == ("submitted", 1)
    page = c.get(f"/review/{app_id}")
    r = c.post(f"/review/{app_id}/conflict", data={"csrf": csrf_of(page.text), "note": "co-author"},
               follow_redirects=False)  # fmt: skip
    assert r.status_code == 303
    assert api.application_status(app_id) == ("submitted", 0)
    with api.rt.sessions() as s:
        entry = s.scalars(select(t.AuditEntry).where(t.AuditEntry.action == "review.conflict")).one()
    assert entry.actor == "rev" and entry.object_id == str(app_id) and entry.detail["note"] == "co-author"
    assert entry.detail["withdrawn"]["scores"] == {"impact": 8.0, "ecosystem": 6.0, "readiness": 7.0}
    refused = _review(c, app_id, GOOD)
    assert refused.status_code == 403 and api.application_status(app_id) == ("submitted", 0)
    assert f'data-application="{app_id}"' in c.get("/review").text.split('id="conflicted"')[1]
    again = c.post(f"/review/{app_id}/conflict", data={"csrf": csrf_of(page.text)})
    assert again.status_code == 409


def test_a_reviewer_cannot_decide(world: World) -> None:
    api = world.api
    app_id = world.applications["tinyml"]
    c = sign_in(api, world.token("reviewer"))
    assert c.get(f"/decide/{app_id}").status_code == 403
    page = c.get("/review")
    r = c.post(f"/decide/{app_id}", data={"csrf": csrf_of(page.text), "decision": "approve", "reserve": "on"})
    assert r.status_code == 403 and api.application_status(app_id)[0] == "submitted"
    assert c.get("/programs/lab-grants").status_code == 403
    assert (
        api.post(f"/v1/applications/{app_id}/decision", world.token("reviewer"), {"approve": True}).status_code == 403
    )


def test_ranking_and_deciding_use_the_apis_rules(world: World) -> None:
    api = world.api
    rev = sign_in(api, world.token("reviewer"), None)
    low, high = world.applications["snu-vision"], world.applications["tinyml"]
    _review(rev, low, {"impact": "2", "ecosystem": "2", "readiness": "2"})
    _review(rev, high, {"impact": "9", "ecosystem": "9", "readiness": "9"})
    op = sign_in(api, api.operator, None)
    page = op.get("/programs/lab-grants").text
    ranked = re.findall(r'<tr data-application="(\d+)">', page.split('id="ranked"')[1].split("</table>")[0])
    assert ranked[:2] == [str(high), str(low)]
    # the H100 room: 32 in the pools, 8 reserved by g-vision; each application asks 4
    assert re.search(r'data-model="H100"><td>H100</td><td class="num">32</td><td class="num">8</td><td class="num">24',
                     page)  # fmt: skip
    form = op.get(f"/decide/{high}")
    bad = op.post(f"/decide/{high}", data={"csrf": csrf_of(form.text), "decision": "approve", "credit": "lots"})
    assert bad.status_code == 422 and "credit_su_hours" in bad.text
    none = op.post(f"/decide/{high}", data={"csrf": csrf_of(form.text), "decision": "approve", "credit": "0"})
    answer = api.post(f"/v1/applications/{high}/decision", api.operator, {"approve": True, "reserved": False})
    assert none.status_code == answer.status_code == 422 and "grants nothing" in none.text
    ok = op.post(f"/decide/{high}", data={"csrf": csrf_of(form.text), "decision": "approve", "reserve": "on",
                                         "credit": "100", "note": "top ranked"}, follow_redirects=False)  # fmt: skip
    assert ok.status_code == 303 and ok.headers["location"] == f"/programs/lab-grants?decided={high}"
    shown = api.get(f"/v1/applications/{high}", api.operator).json()
    assert shown["status"] == "approved" and shown["decision_note"] == "top ranked"
    grants = op.get("/grants").text
    assert f'data-grant="g-{high}"' in grants
    after = op.get("/programs/lab-grants").text
    assert re.search(r'data-model="H100"><td>H100</td><td class="num">32</td><td class="num">12</td>', after)
    assert op.post(f"/decide/{high}", data={"csrf": csrf_of(form.text), "decision": "reject"}).status_code == 409


def test_the_queue_by_reason_counts_pending_jobs(world: World) -> None:
    api = world.api
    for i in range(3):
        world.submit(world.token("member", "tinyml"), "tinyml-llm", name=f"q{i}", gpus=24, gpu_models=["H100"])
    api.tick(30.0)
    with api.rt.sessions() as s:
        want = dict(s.execute(select(t.Job.reason_code, func.count()).where(t.Job.state == "pending")
                              .group_by(t.Job.reason_code)).all())  # fmt: skip
    c = sign_in(api, api.operator)
    page = c.get("/queue").text
    got = dict(re.findall(r'<tr data-reason="([^"]*)">.*?<td class="num">(\d+)</td>', page))
    assert {k: int(v) for k, v in got.items()} == want and want
    code = next(iter(want))
    listed = c.get(f"/queue?reason={code}").text
    assert listed.count("<tr data-job=") == want[code]


def test_usage_reports_and_csv_match_the_api(world: World) -> None:
    api = world.api
    c = sign_in(api, api.operator)
    for by in ("organization", "program", "site", "provider"):
        page = c.get(f"/reports?by={by}")
        assert page.status_code == 200
        mine = c.get(f"/reports.csv?by={by}")
        theirs = api.get(f"/v1/usage?by={by}&format=csv", api.operator)
        assert mine.text == theirs.text and len(list(csv.reader(io.StringIO(mine.text)))) >= 2, by
    provider = sign_in(api, world.token("provider"))
    rows = list(csv.DictReader(io.StringIO(provider.get("/reports.csv?by=provider").text)))
    assert [r["provider"] for r in rows] == ["acme"]
    assert provider.get("/reports?since=yesterday").status_code == 422


def test_the_fleet_page_shows_groups_power_and_nodes_out(world: World) -> None:
    api = world.api
    drained = api.post("/v1/nodes/h100-002/drain", api.operator, {"reason": "fan replacement"})
    assert drained.status_code == 200, drained.text
    api.tick(30.0)
    c = sign_in(api, api.operator)
    page = c.get("/fleet").text
    assert 'data-group="lab-gov/government/H100"' in page and 'data-group="lab-acme/acme/RTX-PRO-6000"' in page
    assert 'data-site="lab-gov"' in page and "100.0 kW" in page  # lab-gov's cap: 0.1 MW
    assert 'data-node="h100-002"' in page and "fan replacement" in page
    provider = sign_in(api, world.token("provider")).get("/fleet").text
    assert 'data-group="lab-acme/acme/RTX-PRO-6000"' in provider and "lab-gov/government" not in provider


def test_audit_verification_on_demand(world: World) -> None:
    api = world.api
    c = sign_in(api, api.operator)
    page = c.get("/audit")
    assert "Verified." not in page.text
    r = c.post("/audit/verify", data={"csrf": csrf_of(page.text)})
    with api.rt.sessions() as s:
        head = s.get(t.ChainHead, 1)
        assert head is not None
        count, digest = head.count, head.hash
    assert r.status_code == 200 and "Verified." in r.text and f"{count} entries" in r.text and digest in r.text
    filtered = c.get("/audit?actor=rev&object_type=application")
    assert all(a == "rev" for a in re.findall(r"</td><td>([^<]*)</td><td>[a-z._-]+</td>", filtered.text))
    with api.rt.sessions.begin() as s:  # someone edits an entry behind kfabric's back
        s.execute(update(t.AuditEntry).where(t.AuditEntry.id == 2).values(actor="mallory"))
    broken = c.post("/audit/verify", data={"csrf": csrf_of(page.text)})
    assert "Verification failed" in broken.text and "audit entry 2" in broken.text
