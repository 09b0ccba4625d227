"""Domain errors → HTTP answers. Every error body is ``{"error": {"code", "message", "where", "fix"}}``; no
request ever gets a 500 with a traceback for bad input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kfabric.api.limits import error_body as body
from kfabric.model.errors import (
    Conflict,
    KfabricError,
    NotFound,
    PermissionDenied,
    TransitionError,
    Unauthenticated,
    ValidationError,
)

log = logging.getLogger("kfabric.api")


def domain_response(exc: KfabricError) -> JSONResponse:
    """The answer to a domain error (also used outside the exception handlers, by api/fast_submit.py)."""
    status, content = _answer(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(content, status_code=status, headers=headers)


def _answer(exc: Exception) -> tuple[int, dict[str, dict[str, str]]]:
    if isinstance(exc, ValidationError):
        return 422, body("invalid", exc.problem, exc.where, exc.fix)
    if isinstance(exc, NotFound):
        return 404, body("not_found", str(exc), exc.what, exc.fix)
    if isinstance(exc, PermissionDenied):
        return 403, body("forbidden", str(exc), exc.action, exc.fix)
    if isinstance(exc, Conflict):
        return 409, body("conflict", exc.problem, exc.where, exc.fix)
    if isinstance(exc, TransitionError):
        return 409, body("conflict", str(exc), f"job {exc.job_id}")
    if isinstance(exc, Unauthenticated):
        return 401, body("unauthenticated", exc.problem, "Authorization", exc.fix)
    return 400, body("bad_request", str(exc))


def install(app: FastAPI) -> None:
    @app.exception_handler(KfabricError)
    async def domain_error(_request: Request, exc: KfabricError) -> JSONResponse:
        return domain_response(exc)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":  # its loc is ("body", offset): name the body, not a number
            where = "body"
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg', '')}" for e in errors[:5]
        )
        return JSONResponse(
            body("invalid", message, where, "see the request schema at /openapi.json"),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthenticated"}.get(exc.status_code, "error")
        return JSONResponse(body(code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(body("internal", "internal error; the operator's log has the details"), status_code=500)
