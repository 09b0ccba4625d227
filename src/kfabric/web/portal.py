"""Mount the portal on the API's application: its pages, its static files (with the Plotly bundled in the
``plotly`` package) and ``/docs`` and ``/redoc`` from local files (the Swagger UI and ReDoc bundles shipped by the
``fastapi-offline`` package), so that no page loads anything from another host."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, FastAPI, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

from kfabric.web.pages import ROUTERS

#: where the portal's own files and the documentation bundles are served
STATIC = "/static"
DOCS_STATIC = "/static/docs"
#: a day: static files change only with a new kfabric
STATIC_MAX_AGE_S = 86400
#: the documentation pages run the bundles' inline start-up scripts; everything else they load comes from here
#: (ReDoc's sidebar would fetch its vendor's logo from a CDN: the browser refuses it instead)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


@cache
def plotly_js() -> bytes:
    """plotly.min.js as the ``plotly`` package ships it (the report embeds the same file)."""
    return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()


def _assets() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(f"{STATIC}/plotly.min.js")
    def plotly() -> Response:
        headers = {"Cache-Control": f"public, max-age={STATIC_MAX_AGE_S}"}
        return Response(plotly_js(), media_type="text/javascript", headers=headers)

    @router.get("/docs")
    def swagger() -> Response:
        return _local_only(
            get_swagger_ui_html(
                openapi_url="/openapi.json",
                title="kfabric API",
                swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                swagger_favicon_url=f"{STATIC}/favicon.svg",
                # no "valid" badge: Swagger UI would fetch it from validator.swagger.io
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @router.get("/redoc")
    def redoc() -> Response:
        return _local_only(
            get_redoc_html(
                openapi_url="/openapi.json",
                title="kfabric API",
                redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js",
                redoc_favicon_url=f"{STATIC}/favicon.svg",
                with_google_fonts=False,
            )
        )

    return router


def _local_only(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


def install(app: FastAPI) -> None:
    """Add the portal to ``app`` (built with ``docs_url=None, redoc_url=None``: these pages replace FastAPI's)."""
    app.include_router(_assets())
    for router in ROUTERS:
        app.include_router(router)
    app.mount(DOCS_STATIC, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-static")
    app.mount(STATIC, StaticFiles(packages=[("kfabric.web", "static")]), name="portal-static")
