"""Operations endpoints: /healthz, /metrics (Prometheus text), /openapi.json (the published contract)."""

from __future__ import annotations

from api_world import Api


def test_healthz_reports_the_store_and_the_last_tick(api: Api) -> None:
    r = api.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"ok": True, "last_tick_s": None}
    api.tick()
    assert api.client.get("/healthz").json()["last_tick_s"] is not None


def test_metrics_count_jobs_by_state_and_gpus_in_use(api: Api) -> None:
    for _ in range(2):
        body = {"project": "vision-lab", "gpus": 8, "time_limit_s": 3600.0, "runtime_estimate_s": 3000.0}
        assert api.post("/v1/jobs", api.operator, body).status_code == 201
    api.tick(times=3)
    text = api.get("/metrics", api.operator).text  # behind a token (tests/security/test_metrics_auth.py)
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(lines['kfabric_jobs{state="running"}']) == 2.0
    assert sum(float(v) for k, v in lines.items() if k.startswith("kfabric_gpus_allocated{")) == 16.0  # per pool
    assert float(lines["kfabric_pending_queue"]) == 0.0
    assert "kfabric_cycle_seconds_count" in lines  # was kfabric_cycle_ms (docs/operations-observability.md)


def test_openapi_publishes_every_v1_route_with_bearer_auth(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/programs", "/v1/applications",
                 "/v1/grants", "/v1/usage", "/v1/audit", "/v1/fleet", "/v1/users"):  # fmt: skip
        assert path in paths, path
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
