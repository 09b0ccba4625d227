"""Impossible jobs are refused at submit (issue 15, hole 7): a 422 that says what the largest possible request
is, instead of a job that waits for ever. Through the API on both stores (the lab fleet: 32 H100 at a site cleared
for restricted data, 16 RTX PRO 6000 at one cleared for internal), and on a 4-GPU local fleet."""

from __future__ import annotations

from typing import Any

import pytest
from admission_world import refused, submit, tenant
from api_world import DAY, NOW, World
from sqlalchemy.orm import sessionmaker

from kfabric.model.errors import ValidationError
from kfabric.scenarios.loader import load_text
from kfabric.scenarios.local import local_scenario_text
from kfabric.service.feasibility import Feasibility
from kfabric.service.jobspec import build_job

LARGEST = "the largest request that can run is 32 GPUs of H100 (pool h100: 4 nodes x 8)"

# name, spec, where, words in the message or fix
SHAPES: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    ("beyond-every-pool", {"gpus": 64}, "job.gpus", ("asks 64 GPUs", LARGEST, "at most 32 GPUs")),
    ("unknown-model", {"gpu_models": ["H1000"]}, "job.gpu_models",
     ("H1000 is not in fleet 'lab'", "did you mean H100?", "H100, RTX-PRO-6000", "32 GPUs of H100")),
    ("per-node-beyond-every-node", {"gpus": 16, "nodes": 1, "gpus_per_node": 16}, "job.gpus_per_node",
     ("asks 16 GPUs per node", "largest node of an eligible pool has 8", "at most 8 GPUs per node")),
    ("one-node-beyond-every-node", {"gpus": 16, "min_topology": "node"}, "job.min_topology",
     ("16 GPUs within one node domain", "has 8 GPUs", "at most 8")),
    ("pool-too-small-for-the-model", {"gpus": 24, "gpu_models": ["RTX-PRO-6000"]}, "job.gpus",
     ("asks 24 GPUs", "16 GPUs of RTX-PRO-6000", "at most 16")),
    ("restricted-data-on-an-internal-site", {"classification": "restricted", "gpu_models": ["RTX-PRO-6000"]},
     "job.classification", ("restricted data may run only on sites cleared for restricted",
                            "cleared up to internal: lab-acme (internal)", "lower --classification to internal",
                            "H100")),
    ("over-the-programs-job-maximum", {"time_limit_s": 7200.0}, "job.time_limit_s",
     ("time limit 2 h", "maximum of 1 h per job", "at most 3600 seconds")),
]  # fmt: skip


@pytest.mark.parametrize(("name", "spec", "where", "words"), SHAPES, ids=[s[0] for s in SHAPES])
def test_impossible_shapes_are_refused_with_the_largest_request(
    world: World, name: str, spec: dict[str, Any], where: str, words: tuple[str, ...]
) -> None:
    t = tenant(world, {"max_job_duration_s": 3600})
    before = world.api.writes()
    refused(submit(world.api, t.member, t.project, **spec), 422, where, *words)
    assert world.api.writes() == before, "a refused submission wrote something"


@pytest.mark.parametrize(
    "spec",
    [{"gpus": 32}, {"gpus": 8, "nodes": 1, "gpus_per_node": 8}, {"classification": "restricted"},
     {"gpus": 16, "gpu_models": ["RTX-PRO-6000"]}, {"time_limit_s": 3600.0}, {"gpu_models": ["H100", "H1000"]}],
)  # fmt: skip
def test_the_largest_possible_requests_are_accepted(world: World, spec: dict[str, Any]) -> None:
    t = tenant(world, {"max_job_duration_s": 3600})
    r = submit(world.api, t.member, t.project, **spec)
    assert r.status_code == 201, r.text
    assert r.json()["notes"] == []


def test_a_project_without_a_grant_is_refused_and_says_how_to_apply(world: World) -> None:
    api, op = world.api, world.api.operator
    assert api.post("/v1/projects", op, {"name": "no-grant", "organization": "snu-vision"}).status_code == 201
    refused(submit(api, op, "no-grant"), 422, "job.project", "project no-grant has no grant", "kfabric apply",
            "--project no-grant")  # fmt: skip


def test_an_expired_grant_is_refused_with_its_end_date(world: World) -> None:
    t = tenant(world, start=NOW - 60 * DAY, end=NOW - 2 * DAY)  # ended 2026-05-26
    error = refused(submit(world.api, t.member, t.project), 422, "job.project",
                    f"grant {t.grant} of project {t.project}", "expired on 2026-05-26", "apply for a renewal",
                    "kfabric apply")  # fmt: skip
    assert "no grant in force" in error["message"]


def test_an_expired_grant_of_a_scavenger_program_is_accepted_as_scavenger(world: World) -> None:
    t = tenant(world, {"on_exhausted": "scavenger"}, start=NOW - 60 * DAY, end=NOW - 2 * DAY)
    # twice: the first request of a token takes the FastAPI route, the next the fast path; both say so
    for _ in range(2):
        r = submit(world.api, t.member, t.project)
        assert r.status_code == 201, r.text
        [note] = r.json()["notes"]
        assert f"grant {t.grant} expired on 2026-05-26" in note and "accepted as scavenger" in note
    refused(submit(world.api, t.member, t.project, preemptible=False), 422, "job.preemptible",
            "must be preemptible")  # fmt: skip


def test_a_grant_that_starts_later_is_accepted_with_a_note(world: World) -> None:
    t = tenant(world, start=NOW + 2 * DAY, end=NOW + 30 * DAY)
    r = submit(world.api, t.member, t.project)
    assert r.status_code == 201, r.text
    assert r.json()["notes"] == [
        f"grant {t.grant} of project {t.project} starts on 2026-05-30; the job waits until then"
    ]


def test_a_grant_issued_a_moment_ago_is_not_refused_from_the_cache(world: World) -> None:
    t = tenant(world, start=NOW - 60 * DAY, end=NOW - 2 * DAY)
    refused(submit(world.api, t.member, t.project), 422, "job.project", "expired")  # now cached
    body = {"name": "renewal", "program": t.program, "project": t.project, "start_s": NOW - DAY,
            "end_s": NOW + 30 * DAY, "credit_su_hours": 10.0}  # fmt: skip
    assert world.api.post("/v1/grants", world.api.operator, body).status_code == 201
    assert submit(world.api, t.member, t.project).status_code == 201


def test_unknown_and_foreign_projects_stay_404(world: World) -> None:
    """Admission reveals nothing of projects the caller cannot see: the answer is the commit's 404."""
    member = world.token("member", "tinyml")
    for project in ("vision-lab", "no-such-project"):
        r = submit(world.api, member, project, gpus=64)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"


# ---- a 4-GPU machine (kfabric serve --fleet local --local-gpus 4), checked without a server ------------------


@pytest.mark.parametrize(
    ("spec", "where", "words"),
    [({"gpus": 8}, "job.gpus", ("asks 8 GPUs", "4 GPUs of H100 (pool local: 1 nodes x 4)")),
     ({"gpus": 2, "gpu_models": ["B200"]}, "job.gpu_models", ("B200 is not in fleet 'local'", "its models: H100")),
     ({"gpus": 4}, "", ())],
)  # fmt: skip
def test_a_four_gpu_machine(spec: dict[str, Any], where: str, words: tuple[str, ...]) -> None:
    fleet = load_text(local_scenario_text(4), "local").fleet
    check = Feasibility(fleet, sessionmaker())
    job = build_job("new", "default", "op", {"time_limit_s": 60.0, **spec}, NOW)
    eligibility = check.eligibility(job, "")
    if not where:
        assert eligibility.reason is None
        return
    with pytest.raises(ValidationError) as err:
        check.check_shape(job, "")
    assert err.value.where == where
    for word in words:
        assert word in str(err.value)


def test_operators_get_the_same_refusals(world: World) -> None:
    op = world.api.operator
    refused(submit(world.api, op, "vision-lab", gpus=64), 422, "job.gpus", LARGEST)
