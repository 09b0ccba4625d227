"""The fast path of ``POST /v1/jobs`` (kfabric.api.fast_submit) answers exactly as the FastAPI route does: the
same statuses and bodies, whichever of the two answers a request. Table-driven: every request is sent to an
app with the fast path and to one without it, on one runtime; ``path`` says which must answer it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from api_world import NOW, Api, Clock
from fastapi.testclient import TestClient

from kfabric.api import deps, fast_submit
from kfabric.api.app import create_app
from kfabric.backends.sim import SimBackend
from kfabric.scenarios.policies import load_policy
from kfabric.service.runtime import open_runtime

JSON = "application/json"
JOB: dict[str, Any] = {"project": "vision-lab", "time_limit_s": 60, "gpus": 1, "command": "true"}
FULL: dict[str, Any] = JOB | {
    "name": "train", "gpus": 2, "gpu_models": ["H100"], "priority": "high", "preemptible": False,
    "env": {"SEED": "1"}, "runtime_estimate_s": 30.5, "memory_mib": 1024, "workdir": "/w",
}  # fmt: skip

# (name, token, content type, body (bytes are sent as they are), which path answers, expected status)
CASES: list[tuple[str, str | None, str | None, Any, str, int]] = [
    ("minimal", "operator", JSON, JOB, "fast", 201),
    ("every field", "operator", JSON, FULL, "fast", 201),
    ("json with charset", "operator", "application/json; charset=utf-8", JOB, "fast", 201),
    ("vendor +json", "operator", "application/vnd.kfabric+json", JOB, "fast", 201),
    ("unknown project", "operator", JSON, JOB | {"project": "nope"}, "fast", 404),
    ("no token", None, JSON, JOB, "route", 401),
    ("unknown token", "kf_unknown", JSON, JOB, "route", 401),
    ("basic scheme", "basic", JSON, JOB, "route", 401),
    ("reviewer may not submit", "reviewer", JSON, JOB, "route", 403),
    ("invalid json", "operator", JSON, b'{"project": ', "route", 422),
    ("json array", "operator", JSON, [JOB], "route", 422),
    ("empty body", "operator", JSON, b"", "route", 422),
    ("missing time limit", "operator", JSON, {"project": "vision-lab"}, "route", 422),
    ("gpus as a string", "operator", JSON, JOB | {"gpus": "8"}, "route", 422),
    ("unknown field", "operator", JSON, JOB | {"walltime": 5}, "route", 422),
    ("empty client key", "operator", JSON, JOB | {"client_key": ""}, "route", 422),
    ("spec refused by the model", "operator", JSON, JOB | {"priority": "critical"}, "route", 422),
    ("text/plain", "operator", "text/plain", JOB, "route", 422),
    ("no content type", "operator", None, JOB, "route", 422),
]


class Both:
    """One runtime, two apps: ``fast`` (the default app) and ``route`` (no fast path)."""

    def __init__(self, api: Api, route: TestClient, tokens: dict[str, str]) -> None:
        self.api, self.route_client, self.tokens = api, route, tokens

    def send(self, client: TestClient, token: str | None, content_type: str | None, body: Any) -> tuple[int, Any]:
        headers = {}
        if token == "basic":
            headers["Authorization"] = "Basic b3A6b3A="
        elif token is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        if content_type is not None:
            headers["Content-Type"] = content_type
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = client.post("/v1/jobs", content=raw, headers=headers)
        return r.status_code, r.json()


@pytest.fixture
def both(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Both]:
    monkeypatch.setattr(deps, "AUTH_CACHE_S", 1e9)  # tokens stay cached: which path answers never depends on time
    clock = Clock(NOW)
    rt = open_runtime(db_url, load_policy("kfabric"), {"sim": SimBackend(clock)}, fleet="lab", clock=clock)
    try:
        with (
            TestClient(create_app(rt), raise_server_exceptions=False) as fast,
            TestClient(create_app(rt, fast_submit=False), raise_server_exceptions=False) as route,
        ):
            api = Api(rt, fast, clock)
            r = api.post("/v1/users", api.operator, {"name": "rev", "role": "reviewer"})
            assert r.status_code == 201, r.text
            tokens = {"operator": api.operator, "reviewer": r.json()["token"]}
            for token in tokens.values():  # authenticated once: in the cache, as on a busy service
                assert api.get("/v1/jobs?limit=1", token).status_code in (200, 403)
            yield Both(api, route, tokens)
    finally:
        rt.close()


@pytest.mark.parametrize(("token", "content_type", "body", "path", "status"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_fast_path_answers_as_the_route(
    both: Both, monkeypatch: pytest.MonkeyPatch, token: str | None, content_type: str | None, body: Any, path: str,
    status: int,
) -> None:  # fmt: skip
    fast_answers: list[str] = []
    real = fast_submit.submission_answer

    async def counted(*args: Any) -> Any:
        fast_answers.append("fast")
        return await real(*args)

    monkeypatch.setattr(fast_submit, "submission_answer", counted)
    before = both.api.writes()
    route_status, route_body = both.send(both.route_client, token, content_type, body)
    assert not fast_answers
    fast_status, fast_body = both.send(both.api.client, token, content_type, body)
    assert fast_answers == (["fast"] if path == "fast" else [])
    assert fast_status == route_status == status, (fast_body, route_body)
    if status == 201:  # two jobs: the same answer but for the id
        assert fast_body["id"] == route_body["id"] + 1
        assert {**fast_body, "id": 0, "display_id": ""} == {**route_body, "id": 0, "display_id": ""}
    else:
        assert fast_body == route_body
        assert both.api.writes() == before, "a refused submission wrote nothing"


def test_fast_path_client_key_repeats(both: Both) -> None:
    first = both.send(both.api.client, "operator", JSON, JOB | {"client_key": "k1"})
    again = both.send(both.api.client, "operator", JSON, JOB | {"client_key": "k1"})
    by_route = both.send(both.route_client, "operator", JSON, JOB | {"client_key": "k1"})
    assert (first[0], again[0], by_route[0]) == (201, 200, 200)
    assert first[1] == again[1] == by_route[1]
    audit = both.api.get("/v1/audit/verify", both.api.operator)
    assert audit.status_code == 200, audit.text
