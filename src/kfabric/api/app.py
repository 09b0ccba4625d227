"""The FastAPI application: ``create_app(runtime)``. OpenAPI at ``/openapi.json``, docs at ``/docs``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from kfabric.api import errors
from kfabric.api.fast_submit import FastSubmit
from kfabric.api.limits import Limits, RequestLimits
from kfabric.api.metrics import METRICS_ROLES, install_metrics, metrics_reader  # noqa: F401 - importable here too
from kfabric.api.routers import acct, audit, fleet, jobs, programs, tenancy, tokens, usage
from kfabric.api.routers import notify as notify_routes
from kfabric.api.routers import operations as operations_routes  # fleet apply, node drain, policy
from kfabric.api.routers import status as server_status
from kfabric.service import fleet_queries
from kfabric.service.runtime import Runtime
from kfabric.web import portal

ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorBody",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "where", "fix"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable: invalid, not_found, conflict, ..."},
                "message": {"type": "string", "description": "what is wrong"},
                "where": {"type": "string", "description": "the field, object or header concerned"},
                "fix": {"type": "string", "description": "how to fix it"},
            },
        }
    },
}
#: status codes any operation may answer (request limits, request validation) and those of authenticated ones
ANY_OPERATION = {
    408: "the body (or the headers) did not arrive in time; the connection is closed",
    413: "the body is larger than the server's limit (kfabric serve --max-body); the connection is closed",
    422: "invalid request: a field, a parameter, JSON nested too deep, or a value the domain refuses",
}
WITH_BODY = {400: "the body is not JSON text (e.g. not UTF-8)"}
AUTHENTICATED = {
    401: "no valid token: send Authorization: Bearer kf_...",
    403: "the token's role may not do this",
    404: "no such object, or one the caller may not see",
    409: "the request clashes with the object's state, or a name or client key already used",
}


def create_app(
    rt: Runtime, fast_submit: bool = True, limits: Limits | None = None, metrics_open: bool = False
) -> FastAPI:
    """The application; ``fast_submit=False`` leaves ``POST /v1/jobs`` to FastAPI alone (tests compare the two).
    ``limits`` bound every request body (api/limits.py); ``metrics_open`` serves ``/metrics`` without a token."""
    app = FastAPI(
        title="kfabric",
        version="1",
        description="Control plane for a national AI compute fleet: grants, fair scheduling, accounting.",
        docs_url=None,  # /docs and /redoc come from local files (web/portal.py): no CDN
        redoc_url=None,
    )
    app.state.runtime = rt
    errors.install(app)
    for r in (fleet.router, tenancy.router, tokens.router, programs.router, jobs.router, usage.router, audit.router):
        app.include_router(r)
    app.include_router(operations_routes.router)  # fleet apply, nodes, policy (service/fleet_changes.py)
    app.include_router(server_status.router)  # /v1/status: leader, standbys, lease (service/leadership.py)
    app.include_router(notify_routes.router)  # /v1/projects/NAME/webhook-secret (service/notifications.py)
    app.include_router(acct.router)  # /v1/acct: per-job accounting, like sacct (service/acct.py)
    portal.install(app)  # the web portal at /, its static files, /docs and /redoc (kfabric.web)
    if fast_submit:
        app.add_middleware(FastSubmit, runtime=rt)  # POST /v1/jobs without FastAPI's per-request machinery
    # before any auth: only the request observer (install_metrics, below: it times and counts) runs before it
    app.add_middleware(RequestLimits, limits=limits or Limits())
    _ops_routes(app, rt, metrics_open)
    _document_errors(app)
    return app


def _ops_routes(app: FastAPI, rt: Runtime, metrics_open: bool) -> None:
    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        fleet_queries.store_answers(rt.sessions)
        last = rt.controller.last_tick
        return {"ok": True, "last_tick_s": last.now_s if last else None}

    # /metrics (its token rule), and the request observer: added after RequestLimits, so the outermost (every answer
    # gets an X-Request-ID and is timed)
    install_metrics(app, rt, metrics_open)


def _document_errors(app: FastAPI) -> None:
    """Every operation of the OpenAPI document lists the error answers it can give, with the error body's
    schema: the request limits' and validation's everywhere, 400 where a body is parsed, and 401/403/404/409 where
    a token is needed
    (the operation has a security requirement). FastAPI's own 422 schema (its validation list) is replaced:
    errors.py answers every 422 with the error body."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["ErrorBody"] = ERROR_SCHEMA
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                _add_error_answers(operation)
        for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, now referenced by none
            if f'"#/components/schemas/{unused}"' not in json.dumps(document):
                schemas.pop(unused, None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_answers(operation: dict[str, Any]) -> None:
    answers = dict(ANY_OPERATION)
    if "requestBody" in operation:
        answers |= WITH_BODY
    if operation.get("security"):
        answers |= AUTHENTICATED
    responses = operation.setdefault("responses", {})
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for status, description in sorted(answers.items()):
        responses[str(status)] = {"description": description, "content": content}
