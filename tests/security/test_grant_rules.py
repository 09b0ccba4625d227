"""Grant decisions follow the program's rules (issue 15, hole 6): reviews before a decision (rule
``min_reviews``), requested GPU models that the program's pools hold, a grant that grants something, a
justification that says something. Through the API on both stores (the lab fleet: 32 H100, 16 RTX PRO 6000,
no B200)."""

from __future__ import annotations

from typing import Any

import pytest
from admission_world import refused
from api_world import DAY, NOW, SCORES, World

from kfabric.cli.main import main

APPLICATION = {"program": "lab-grants", "project": "vision-lab", "gpu_model_class": "H100", "gpus": 4, "months": 3,
               "justification": "vision foundation models"}  # fmt: skip


def _apply(w: World, **changes: Any) -> Any:
    return w.api.post("/v1/applications", w.token("org-admin", "snu-vision"), APPLICATION | changes)


def _decide(w: World, app: int, **body: Any) -> Any:
    return w.api.post(f"/v1/applications/{app}/decision", w.api.operator, {"approve": True} | body)


def _review(w: World, app: int) -> None:
    r = w.api.post(f"/v1/applications/{app}/reviews", w.token("reviewer"), {"scores": SCORES})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("approve", [True, False])
def test_no_decision_without_the_reviews_the_program_asks(world: World, approve: bool) -> None:
    app = _apply(world).json()["id"]
    before = world.api.writes()
    refused(_decide(world, app, approve=approve), 409, f"application {app}", "has 0 review(s)",
            "'lab-grants' decides only after 1", f"kfabric review {app}")  # fmt: skip
    assert world.api.writes() == before
    _review(world, app)
    r = _decide(world, app, approve=approve)
    assert r.status_code == 200, r.text
    assert (r.json()["grant"] is not None) == approve


def test_a_program_may_decide_without_review(world: World) -> None:
    op = world.api.operator
    body = {"name": "fast-track", "owner": "government", "rules": {"min_reviews": 0}}
    assert world.api.post("/v1/programs", op, body).status_code == 201
    app = _apply(world, program="fast-track").json()["id"]
    assert _decide(world, app).status_code == 200


# name, application changes, where, words
APPLICATIONS: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    ("model-not-in-the-fleet", {"gpu_model_class": "B200", "gpus": 64}, "application.gpu_model_class",
     ("'B200' is not in the pools program 'lab-grants' can use", "H100 (32 GPUs), RTX-PRO-6000 (16 GPUs)",
      "ask for one of: H100, RTX-PRO-6000")),
    ("model-misspelt", {"gpu_model_class": "H1000"}, "application.gpu_model_class", ("did you mean H100?",)),
    ("empty-justification", {"justification": ""}, "application.justification", ("is empty", "--justification")),
    ("blank-justification", {"justification": " \n\t "}, "application.justification", ("is empty",)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "changes", "where", "words"), APPLICATIONS, ids=[a[0] for a in APPLICATIONS])
def test_applications_that_ask_the_impossible_or_say_nothing_are_refused(
    world: World, name: str, changes: dict[str, Any], where: str, words: tuple[str, ...]
) -> None:
    before = world.api.writes()
    refused(_apply(world, **changes), 422, where, *words)
    assert world.api.writes() == before


def test_an_application_for_more_gpus_than_the_programs_pools_hold_is_refused(world: World) -> None:
    op = world.api.operator
    assert world.api.post("/v1/programs", op, {"name": "uncapped", "owner": "government"}).status_code == 201
    refused(_apply(world, program="uncapped", gpus=64), 422, "application.gpus", "asks 64 H100",
            "hold 32 H100", "at most 32")  # fmt: skip


def test_an_approval_that_grants_nothing_is_refused(world: World) -> None:
    app = _apply(world).json()["id"]
    _review(world, app)
    refused(_decide(world, app, reserved=False), 422, f"application {app}.decision", "grants nothing",
            "--credit SU_HOURS", "drop --no-reserve")  # fmt: skip
    r = _decide(world, app, reserved=False, credit_su_hours=500.0)
    assert r.status_code == 200, r.text
    assert r.json()["grant"]["reserved"] is None and r.json()["grant"]["credit_su_hours"] == 500.0


def test_a_direct_grant_of_hardware_the_fleet_lacks_is_refused(world: World) -> None:
    body = {"name": "g-b200", "program": "lab-grants", "project": "vision-lab", "start_s": NOW,
            "end_s": NOW + 30 * DAY, "reserved_model": "B200", "reserved_gpus": 8}  # fmt: skip
    refused(world.api.post("/v1/grants", world.api.operator, body), 422, "grant 'g-b200'.reserved_model",
            "'B200' is not in the pools")  # fmt: skip


def test_the_cli_asks_for_credit_when_nothing_is_reserved(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["grant", "decide", "5", "--approve", "--no-reserve", "--url", "http://127.0.0.1:9", "--token", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "pass --credit SU_HOURS" in err
