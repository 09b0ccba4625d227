"""Reviews stay independent of the applicant until the decision: before it, the applicant's tenants read their
application through the API without the reviewers' scores, comments or mean (the portal hid them already: one
rule, ``service.programs.reviews_shown``, now answers both); operators and reviewers see them all along; after
the decision the applicant sees them."""

from __future__ import annotations

from typing import Any

from api_world import SCORES, World

APPLICATION = {"program": "lab-grants", "project": "vision-lab", "gpu_model_class": "H100", "gpus": 8, "months": 3,
               "justification": "vision models"}  # fmt: skip


def _views(w: World, app: int) -> dict[str, Any]:
    """The application as each role reads it, by id and in the list."""
    out: dict[str, Any] = {}
    for who, token in (("tenant", w.token("org-admin", "snu-vision")), ("member", w.token("member", "snu-vision")),
                       ("reviewer", w.token("reviewer")), ("operator", w.api.operator)):  # fmt: skip
        one = w.api.get(f"/v1/applications/{app}", token)
        listed = w.api.get("/v1/applications", token)
        assert one.status_code == 200 and listed.status_code == 200, (who, one.text, listed.text)
        in_list = next(a for a in listed.json() if a["id"] == app)
        out[who] = (one.json()["reviews"], one.json()["mean_score"], in_list["reviews"], in_list["mean_score"])
    return out


def test_the_applicant_reads_the_reviews_only_after_the_decision(world: World) -> None:
    r = world.api.post("/v1/applications", world.token("org-admin", "snu-vision"), APPLICATION)
    assert r.status_code == 201, r.text
    app = r.json()["id"]
    review = world.api.post(f"/v1/applications/{app}/reviews", world.token("reviewer"),
                            {"scores": SCORES, "comment": "the data plan is thin"})  # fmt: skip
    assert review.status_code == 201, review.text
    before = _views(world, app)
    for who in ("tenant", "member"):
        assert before[who] == ([], None, [], None), who  # no score, comment or mean leaks before the decision
    for who in ("reviewer", "operator"):
        reviews, mean, listed, listed_mean = before[who]
        assert [x["comment"] for x in reviews] == ["the data plan is thin"] and mean is not None, who
        assert listed == reviews and listed_mean == mean, who
    decided = world.api.post(f"/v1/applications/{app}/decision", world.api.operator,
                             {"approve": False, "note": "resubmit with a data plan"})  # fmt: skip
    assert decided.status_code == 200, decided.text
    after = _views(world, app)
    assert after["tenant"] == after["operator"] and after["tenant"][0][0]["comment"] == "the data plan is thin"
