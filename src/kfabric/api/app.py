"""The FastAPI application: ``create_app(runtime)``. OpenAPI at ``/openapi.json``, docs at ``/docs``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import func, select, text

from kfabric.api import errors
from kfabric.api.fast_submit import FastSubmit
from kfabric.api.routers import audit, fleet, jobs, programs, tenancy, usage
from kfabric.service.runtime import Runtime
from kfabric.store import tables as t


def create_app(rt: Runtime, fast_submit: bool = True) -> FastAPI:
    """The application; ``fast_submit=False`` leaves ``POST /v1/jobs`` to FastAPI alone (tests compare the two)."""
    app = FastAPI(
        title="kfabric",
        version="1",
        description="Control plane for a national AI compute fleet: grants, fair scheduling, accounting.",
    )
    app.state.runtime = rt
    errors.install(app)
    for r in (fleet.router, tenancy.router, programs.router, jobs.router, usage.router, audit.router):
        app.include_router(r)
    if fast_submit:
        app.add_middleware(FastSubmit, runtime=rt)  # POST /v1/jobs without FastAPI's per-request machinery
    registry = CollectorRegistry()
    jobs_gauge = Gauge("kfabric_jobs", "jobs by state", ["state"], registry=registry)
    pending_gauge = Gauge("kfabric_pending_queue", "jobs in the scheduler's queue", registry=registry)
    cycle_gauge = Gauge("kfabric_cycle_ms", "duration of the last scheduling cycle (ms)", registry=registry)
    gpus_gauge = Gauge("kfabric_gpus_allocated", "GPUs held by admitted and running jobs", registry=registry)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        with rt.sessions() as s:
            s.execute(text("SELECT 1"))
        last = rt.controller.last_tick
        return {"ok": True, "last_tick_s": last.now_s if last else None}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        with rt.sessions() as s:
            for state, n in s.execute(select(t.Job.state, func.count()).group_by(t.Job.state)):
                jobs_gauge.labels(state).set(n)
        last = rt.controller.last_tick
        if last is not None:
            pending_gauge.set(last.pending)
            cycle_gauge.set(last.cycle_ms)
        gpus_gauge.set(rt.controller.allocated_gpus())
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
