"""What every page shares: the signed-in user (from the session cookie), the language and time zone, rendering
with the layout, CSRF checks on every form, and errors as pages (another tenant's object is a 404 page, as in the
API).

A page handler takes ``view: Viewer`` (signed in; anyone else is sent to the sign-in page) or ``view: Visitor``
(signed in or not); a form handler takes ``form: Posted`` too, which refuses a POST whose CSRF token does not match
the session's (403 page). Handlers raise domain errors freely: :class:`PageRoute` turns them into pages.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, quote, unquote

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from kfabric.model.errors import Conflict, KfabricError, NotFound, PermissionDenied, Unauthenticated, ValidationError
from kfabric.service.actors import Actor
from kfabric.service.runtime import Runtime
from kfabric.web import i18n, nav, sessions, timefmt
from kfabric.web.sessions import WebSession

R = TypeVar("R", bound=Response)

SESSION_COOKIE = "kfabric_session"
#: the CSRF secret of a browser not signed in (the sign-in and language forms): a double-submitted cookie
CSRF_COOKIE = "kfabric_csrf"
LANG_COOKIE = "kfabric_lang"
#: set by portal.js from the browser's zone (Intl.DateTimeFormat); the preferences form overrides it
TZ_COOKIE = "kfabric_tz"
CSRF_FIELD = "csrf"
#: the largest form body a page reads (the server's --max-body bounds it before that)
MAX_FORM = 256 * 1024
#: what a portal page may load: only this server (and Plotly's inline styles)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

templates = Environment(
    loader=PackageLoader("kfabric.web", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.globals["duration"] = timefmt.duration


class SignInNeeded(Exception):
    """The page needs a signed-in user (answered with a redirect to the sign-in page)."""


class CsrfRefused(Exception):
    """A form arrived without the session's CSRF token (answered with a 403 page)."""


@dataclass
class View:
    """One request's page context."""

    request: Request
    rt: Runtime
    lang: str
    tz: tzinfo
    tz_name: str
    web: WebSession | None
    #: the CSRF secret of the browser when not signed in (kept in :data:`CSRF_COOKIE`)
    pre_csrf: str
    cookies: dict[str, str] = field(default_factory=dict)  # set on the response by render/redirect

    @property
    def actor(self) -> Actor:
        if self.web is None:
            raise SignInNeeded
        return self.web.actor

    @property
    def now(self) -> float:
        return self.rt.clock()

    @property
    def csrf(self) -> str:
        return self.web.csrf if self.web is not None else self.pre_csrf

    def t(self, key: str, **values: Any) -> str:
        return i18n.text(self.lang, key, **values)

    def when(self, epoch_s: float | None) -> str:
        return timefmt.when(epoch_s, self.tz)

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        page = templates.get_template(template).render(
            view=self,
            t=self.t,
            when=self.when,
            csrf=self.csrf,
            csrf_field=CSRF_FIELD,
            lang=self.lang,
            languages=i18n.LANGUAGES,
            tz_name=self.tz_name,
            nav=nav.for_actor(self.web.actor) if self.web else [],
            me=self.web.actor if self.web else None,
            path=self.request.url.path,
            **context,
        )
        return self._finish(HTMLResponse(page, status_code=status))

    def redirect(self, to: str) -> Response:
        return self._finish(RedirectResponse(to, status_code=303))

    def _finish(self, response: R) -> R:
        secure = self.request.url.scheme == "https"
        if self.web is None and self.request.cookies.get(CSRF_COOKIE) != self.pre_csrf:
            response.set_cookie(CSRF_COOKIE, self.pre_csrf, httponly=True, samesite="strict", secure=secure)
        for name, value in self.cookies.items():
            httponly = name != TZ_COOKIE
            if value:
                response.set_cookie(name, value, httponly=httponly, samesite="lax", secure=secure, path="/",
                                    max_age=ONE_YEAR_S if name in (LANG_COOKIE, TZ_COOKIE) else None)  # fmt: skip
            else:
                response.delete_cookie(name, path="/", httponly=httponly, samesite="lax", secure=secure)
        protect(response)
        return response


ONE_YEAR_S = 365 * 86400


def protect(response: Response) -> None:
    """The headers every portal page carries: only this server may supply what it loads; no framing or sniffing."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")


def _view(request: Request) -> View:
    rt: Runtime = request.app.state.runtime
    web = sessions.lookup(rt.sessions, request.cookies.get(SESSION_COOKIE, ""), rt.clock())
    lang = i18n.choose(
        web.lang if web else None, request.cookies.get(LANG_COOKIE), request.headers.get("accept-language")
    )
    tz_name = timefmt.DEFAULT_ZONE
    for candidate in (web.tz if web else None, unquote(request.cookies.get(TZ_COOKIE, ""))):
        if candidate and timefmt.zone(candidate) is not None:
            tz_name = candidate
            break
    zone = timefmt.zone(tz_name)
    assert zone is not None
    pre = request.cookies.get(CSRF_COOKIE, "")
    if not (20 <= len(pre) <= 64) or not pre.replace("-", "").replace("_", "").isalnum():
        pre = secrets.token_urlsafe(32)
    return View(request, rt, lang, zone, tz_name, web, pre)


def visitor(request: Request) -> View:
    """The page context of anyone (signed in or not). Runs in the thread pool: it reads the store."""
    return _view(request)


Visitor = Annotated[View, Depends(visitor)]


def viewer(view: Visitor) -> View:
    """The page context of a signed-in user; anyone else is sent to the sign-in page."""
    if view.web is None:
        raise SignInNeeded
    return view


Viewer = Annotated[View, Depends(viewer)]


@dataclass(frozen=True, slots=True)
class Form:
    """A posted form whose CSRF token matched: its fields (the last value of each) and lists (all values)."""

    values: dict[str, list[str]]

    def get(self, name: str, default: str = "") -> str:
        found = self.values.get(name)
        return found[-1] if found else default

    def all(self, name: str) -> list[str]:
        return list(self.values.get(name, []))


async def read_form(request: Request) -> dict[str, list[str]]:
    """The fields of an ``application/x-www-form-urlencoded`` body (what the portal's forms send)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise CsrfRefused  # no form of this portal sends anything else: treat as a forged request
    raw = await request.body()
    if len(raw) > MAX_FORM:
        raise ValidationError("form", f"the form is larger than {MAX_FORM} bytes", "send less text")
    try:
        return parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=1000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationError("form", f"cannot read the form: {exc}", "send it from the portal's page") from None


def csrf_matches(expected: str, given: str) -> bool:
    return bool(expected) and hmac.compare_digest(expected.encode(), given.encode())


async def posted(request: Request, view: Visitor) -> Form:
    """The posted form, refused (403 page) unless it carries this browser's CSRF token: the session's when
    signed in, the one in the :data:`CSRF_COOKIE` otherwise."""
    values = await read_form(request)
    given = (values.get(CSRF_FIELD) or [""])[-1]
    expected = view.web.csrf if view.web is not None else request.cookies.get(CSRF_COOKIE, "")
    if not csrf_matches(expected, given):
        raise CsrfRefused
    return Form(values)


Posted = Annotated[Form, Depends(posted)]


# ---- errors as pages -----------------------------------------------------------------------------------------


def error_page(request: Request, exc: Exception) -> Response:
    """The page for an error a handler raised (the view is built again: the handler's may not exist)."""
    if isinstance(exc, SignInNeeded):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response: Response = RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
        protect(response)
        return response
    view = _view(request)
    status, title, message, fix = describe(view, exc)
    return view.render("error.html", status=status, title=title, message=message, fix=fix)


def describe(view: View, exc: Exception, in_form: bool = False) -> tuple[int, str, str, str]:
    """HTTP status, title, message and fix of an error, as the API would answer it (the same statuses). In a form
    (``in_form``), an object named in a field that is not found is said by name, as the API says it."""
    if in_form and isinstance(exc, NotFound):
        return 404, view.t("error.invalid.title"), str(exc).split(" (fix:")[0], exc.fix
    if isinstance(exc, CsrfRefused):
        return 403, view.t("error.csrf.title"), view.t("error.csrf.message"), view.t("error.csrf.fix")
    if isinstance(exc, NotFound | RequestValidationError) or (
        isinstance(exc, StarletteHTTPException) and exc.status_code == 404
    ):
        return 404, view.t("error.not_found.title"), view.t("error.not_found.message"), ""
    if isinstance(exc, PermissionDenied):
        return 403, view.t("error.forbidden.title"), str(exc), exc.fix
    if isinstance(exc, Unauthenticated):
        return 401, view.t("error.unauthenticated.title"), exc.problem, exc.fix
    if isinstance(exc, ValidationError):
        return 422, view.t("error.invalid.title"), f"{exc.where}: {exc.problem}", exc.fix
    if isinstance(exc, Conflict):
        return 409, view.t("error.conflict.title"), f"{exc.where}: {exc.problem}", exc.fix
    return 400, view.t("error.invalid.title"), str(exc), ""


class PageRoute(APIRoute):
    """A route whose errors are pages, not the API's JSON bodies."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except (SignInNeeded, CsrfRefused, KfabricError, RequestValidationError) as exc:
                return await run_in_threadpool(error_page, request, exc)
            except StarletteHTTPException as exc:
                if exc.status_code != 404:
                    raise
                return await run_in_threadpool(error_page, request, exc)

        return page
